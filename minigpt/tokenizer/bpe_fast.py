"""The compiled encoder for GPT-2's split pattern: pre-tokenize, cache and merge in one Numba pass.

``Tokenizer.encode_ordinary`` uses this when the pattern is GPT-2's (either spelling); the readable
path (``regex.findall`` + a dict cache + ``minigpt.tokenizer.bpe_merge``) stays as its reference, and the tests
hold the two equal on the fixture, the-verdict and random text.

1. **Pre-tokenizing** walks the UTF-8 bytes, decodes each code point, and classifies it with a table
   built from the ``regex`` package itself (letter \\p{L}, number \\p{N}, whitespace \\s, other), so
   the classes are exactly those of ``regex.findall``. At each position the pattern's alternatives
   are tried in order, as the regex engine does:
   ``'s|'t|'re|'ve|'m|'ll|'d``, `` ?\\p{L}+``, `` ?\\p{N}+``, `` ?[^\\s\\p{L}\\p{N}]+``, then a whitespace
   run: to the end of the text, or all but its last character when something follows (``\\s+(?!\\S)``),
   or a single character (``\\s``).
2. **Caching**: each pre-token's bytes are hashed (FNV-1a) into an open-addressing table that maps
   them to their ids; the table lives across calls and is emptied when full.
3. **Merging** a cache miss: the whole pre-token if it is a token (tiktoken's shortcut, rank
   vocabularies only), else ``minigpt.tokenizer.bpe_merge._merge_piece`` (heap + linked list).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import regex

from minigpt.tokenizer.bpe_merge import _merge_piece, numba

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
_MAX_ENTRIES = 1 << 17            # distinct pre-tokens cached (table: 2x slots)
_KEY_BYTES = 1 << 21              # bytes of cached pre-tokens
_VAL_IDS = 1 << 19                # ids of cached pre-tokens
_MAX_CACHED_PIECE = 1 << 12       # longer pre-tokens are merged but not cached
_WS = 256                         # merge workspace kept between calls (longer pieces allocate)
_WS_LEN = 3 * _WS + 4 * (3 * _WS + 4)
_OUT = 1 << 16                    # output buffer kept between calls (longer texts allocate)


@lru_cache(maxsize=1)
def category_table() -> np.ndarray:
    """(0x110000,) uint8: the class of every code point, as the ``regex`` package sees it."""
    s = "".join(map(chr, range(0x110000)))
    cat = np.zeros(0x110000, dtype=np.uint8)
    for code, pat in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for m in regex.finditer(pat, s):
            cat[m.start():m.end()] = code
    return cat


def _cp_impl(data, i):
    """The code point starting at byte i of valid UTF-8, and its length in bytes."""
    b0 = data[i]
    if b0 < 0x80:
        return np.int64(b0), 1
    if b0 < 0xE0:
        return ((np.int64(b0) & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
    if b0 < 0xF0:
        return (((np.int64(b0) & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6)
                | (np.int64(data[i + 2]) & 0x3F)), 3
    return (((np.int64(b0) & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12)
            | ((np.int64(data[i + 2]) & 0x3F) << 6) | (np.int64(data[i + 3]) & 0x3F)), 4


def _piece_end_impl(data, cat, i, n):
    """End (byte offset) of the pre-token that starts at byte i: GPT-2's pattern, alternative by alternative."""
    b0 = data[i]
    if b0 == 39 and i + 1 < n:                                   # 's 't 'm 'd 're 've 'll
        b1 = data[i + 1]
        if b1 == 115 or b1 == 116 or b1 == 109 or b1 == 100:
            return i + 2
        if i + 2 < n:
            b2 = data[i + 2]
            if (b1 == 114 and b2 == 101) or (b1 == 118 and b2 == 101) or (b1 == 108 and b2 == 108):
                return i + 3
    cp, ln = _cp(data, i)
    c = cat[cp]
    j = i
    if b0 == 32 and i + 1 < n:                                   # optional leading space
        cp1, ln1 = _cp(data, i + 1)
        c1 = cat[cp1]
        if c1 != SPACE:
            c = c1
            j = i + 1
    if c != SPACE:                                               # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
        k = j
        while k < n:
            cpk, lk = _cp(data, k)
            if cat[cpk] != c:
                break
            k += lk
        return k
    k = i                                                        # a whitespace run
    last = i
    while k < n:
        cpk, lk = _cp(data, k)
        if cat[cpk] != SPACE:
            break
        last = k
        k += lk
    if k == n:
        return n                                                 # runs to the end of the text
    if last > i:
        return last                                              # \s+(?!\S): leave the last one
    return k                                                     # a single whitespace character


def _hash_impl(data, s, e):
    h = np.uint64(14695981039346656037)
    for t in range(s, e):
        h = (h ^ np.uint64(data[t])) * np.uint64(1099511628211)
    return np.int64(h >> np.uint64(1))


def _lookup_impl(slots, meta, keys, data, s, e, h):
    """(entry, slot): the entry holding data[s:e], or -1 and the empty slot where it would go."""
    mask = len(slots) - 1
    j = h & mask
    ln = e - s
    while True:
        k = slots[j]
        if k < 0:
            return -1, j
        if meta[k, 0] == h and meta[k, 2] == ln:
            off = meta[k, 1]
            same = True
            for t in range(ln):
                if keys[off + t] != data[s + t]:
                    same = False
                    break
            if same:
                return k, j
        j = (j + 1) & mask


def _encode_impl(data, cat, byte_ids, rows, cols, prios, news, whole, v_slots, v_meta, v_keys,
                 c_slots, c_meta, c_keys, c_vals, c_n, out, wsbuf):
    """Encode UTF-8 bytes (no special tokens) into out[:M] (len(out) >= len(data)); returns M.

    whole: use the whole-token table (v_*: slots, meta rows (hash, key offset, key length, id), key
    bytes). c_*: the cache (slots, meta rows (hash, key off, key len, val off, val len), key bytes,
    value ids, counters [entries, key bytes used, ids used]), updated in place.
    """
    n = len(data)
    o = 0
    ws = _WS                                                         # merge workspace: views of wsbuf
    hcap = 3 * ws + 4
    ids = wsbuf[0:ws]
    nxt = wsbuf[ws:2 * ws]
    prv = wsbuf[2 * ws:3 * ws]
    hp = wsbuf[3 * ws:3 * ws + hcap]
    hpos = wsbuf[3 * ws + hcap:3 * ws + 2 * hcap]
    hl = wsbuf[3 * ws + 2 * hcap:3 * ws + 3 * hcap]
    hr = wsbuf[3 * ws + 3 * hcap:3 * ws + 4 * hcap]
    max_entries = c_meta.shape[0]
    i = 0
    while i < n:
        e = _piece_end(data, cat, i, n)
        ln = e - i
        h = _hash(data, i, e)
        k, slot = _lookup(c_slots, c_meta, c_keys, data, i, e, h)
        if k >= 0:                                                   # cache hit
            voff = c_meta[k, 3]
            for t in range(c_meta[k, 4]):
                out[o + t] = c_vals[voff + t]
            o += c_meta[k, 4]
            i = e
            continue
        o0 = o
        kv = -1
        if whole:
            kv, _ = _lookup(v_slots, v_meta, v_keys, data, i, e, h)
        if kv >= 0:                                                  # the pre-token is a token
            out[o] = v_meta[kv, 3]
            o += 1
        else:
            if ln > ws:                                              # grow the merge workspace
                ws = 2 * ln
                ids = np.empty(ws, dtype=np.int64)
                nxt = np.empty(ws, dtype=np.int64)
                prv = np.empty(ws, dtype=np.int64)
                hp = np.empty(3 * ws + 4, dtype=np.int64)
                hpos = np.empty(3 * ws + 4, dtype=np.int64)
                hl = np.empty(3 * ws + 4, dtype=np.int64)
                hr = np.empty(3 * ws + 4, dtype=np.int64)
            o = _merge_piece(data, i, ln, byte_ids, rows, cols, prios, news, ids, nxt, prv,
                             hp, hpos, hl, hr, out, o)
        vl = o - o0
        if ln <= _MAX_CACHED_PIECE and ln <= len(c_keys) and vl <= len(c_vals):   # remember it
            if c_n[0] + 1 > max_entries or c_n[1] + ln > len(c_keys) or c_n[2] + vl > len(c_vals):
                c_slots[:] = -1                                      # full: start over
                c_n[:] = 0
                _, slot = _lookup(c_slots, c_meta, c_keys, data, i, e, h)
            k = c_n[0]
            c_meta[k, 0] = h
            c_meta[k, 1] = c_n[1]
            c_meta[k, 2] = ln
            c_meta[k, 3] = c_n[2]
            c_meta[k, 4] = vl
            for t in range(ln):
                c_keys[c_n[1] + t] = data[i + t]
            for t in range(vl):
                c_vals[c_n[2] + t] = out[o0 + t]
            c_slots[slot] = k
            c_n[0] += 1
            c_n[1] += ln
            c_n[2] += vl
        i = e
    return o


def _encode_packed_impl(data, u8, i64, out, whole):
    """``_encode`` with its arrays packed into two buffers (one call argument each: a Numba call
    costs ~0.25 us per array argument, which matters when encoding short lines).

    i64 starts with a header of (offset, length) pairs for: byte_ids, rows, cols, prios, news,
    v_slots, v_meta, c_slots, c_meta, c_vals, c_n; u8 with (offset, length) of cat, v_keys, c_keys
    stored in i64's header after those (entries 22..27), then the workspace (28, 29).
    Writes the ids to out[:M] and returns M.
    """
    byte_ids = i64[i64[0]:i64[0] + i64[1]]
    rows = i64[i64[2]:i64[2] + i64[3]]
    cols = i64[i64[4]:i64[4] + i64[5]]
    prios = i64[i64[6]:i64[6] + i64[7]]
    news = i64[i64[8]:i64[8] + i64[9]]
    v_slots = i64[i64[10]:i64[10] + i64[11]]
    v_meta = i64[i64[12]:i64[12] + i64[13]].reshape((-1, 4))
    c_slots = i64[i64[14]:i64[14] + i64[15]]
    c_meta = i64[i64[16]:i64[16] + i64[17]].reshape((-1, 5))
    c_vals = i64[i64[18]:i64[18] + i64[19]]
    c_n = i64[i64[20]:i64[20] + i64[21]]
    cat = u8[i64[22]:i64[22] + i64[23]]
    v_keys = u8[i64[24]:i64[24] + i64[25]]
    c_keys = u8[i64[26]:i64[26] + i64[27]]
    wsbuf = i64[i64[28]:i64[28] + i64[29]]
    return _encode(data, cat, byte_ids, rows, cols, prios, news, whole, v_slots, v_meta, v_keys,
                   c_slots, c_meta, c_keys, c_vals, c_n, out, wsbuf)


def _build_table_impl(keys, offsets, ids, slots, meta):
    """Insert token k (keys[offsets[k]:offsets[k+1]] -> ids[k]) into an open-addressing table."""
    for k in range(len(ids)):
        s, e = offsets[k], offsets[k + 1]
        h = _hash(keys, s, e)
        _, slot = _lookup(slots, meta, keys, keys, s, e, h)
        meta[k, 0] = h
        meta[k, 1] = s
        meta[k, 2] = e - s
        meta[k, 3] = ids[k]
        slots[slot] = k


def _pre_tokenize_impl(data, cat):
    """Byte offsets of the pre-token boundaries (for tests): (P+1,) int64."""
    n = len(data)
    bounds = np.empty(n + 1, dtype=np.int64)
    bounds[0] = 0
    p = 0
    i = 0
    while i < n:
        i = _piece_end(data, cat, i, n)
        p += 1
        bounds[p] = i
    return bounds[:p + 1]


if numba is not None:
    _jit = numba.njit(cache=True)  # holds the GIL: the cache and buffers are shared between calls
    _cp = _jit(_cp_impl)
    _piece_end = _jit(_piece_end_impl)
    _hash = _jit(_hash_impl)
    _lookup = _jit(_lookup_impl)
    _encode = _jit(_encode_impl)
    _encode_packed = _jit(_encode_packed_impl)
    _build_table = _jit(_build_table_impl)
    _pre_tokenize = _jit(_pre_tokenize_impl)
else:  # pragma: no cover
    _cp, _piece_end, _hash, _lookup = _cp_impl, _piece_end_impl, _hash_impl, _lookup_impl
    _encode, _build_table, _pre_tokenize = _encode_impl, _build_table_impl, _pre_tokenize_impl
    _encode_packed = _encode_packed_impl


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (2 * n - 1).bit_length())


class FastEncoder:
    """The compiled encoder of one vocabulary (built by ``Tokenizer``; holds the cache)."""

    def __init__(self, ranks: dict[bytes, int], byte_ids: np.ndarray, csr, whole: bool):
        self.byte_ids = byte_ids
        self.csr = csr
        self.whole = whole
        self.cat = category_table()
        if whole:
            toks = list(ranks.items())
            keys = np.frombuffer(b"".join(t for t, _ in toks), dtype=np.uint8)
            offsets = np.zeros(len(toks) + 1, dtype=np.int64)
            np.cumsum([len(t) for t, _ in toks], out=offsets[1:])
            ids = np.array([i for _, i in toks], dtype=np.int64)
            self.v_slots = np.full(_pow2_at_least(len(toks)), -1, dtype=np.int64)
            self.v_meta = np.zeros((len(toks), 4), dtype=np.int64)
            self.v_keys = keys
            _build_table(keys, offsets, ids, self.v_slots, self.v_meta)
        else:
            self.v_slots = np.full(1, -1, dtype=np.int64)
            self.v_meta = np.zeros((1, 4), dtype=np.int64)
            self.v_keys = np.zeros(1, dtype=np.uint8)
        c_slots = np.full(2 * _MAX_ENTRIES, -1, dtype=np.int64)
        c_meta = np.zeros((_MAX_ENTRIES, 5), dtype=np.int64)
        c_keys = np.zeros(_KEY_BYTES, dtype=np.uint8)
        c_vals = np.zeros(_VAL_IDS, dtype=np.int64)
        c_n = np.zeros(3, dtype=np.int64)
        # pack everything into one int64 and one uint8 buffer; keep named views for Python
        rows, cols, prios, news = csr
        parts = [byte_ids, rows, cols, prios, news, self.v_slots, self.v_meta.ravel(), c_slots,
                 c_meta.ravel(), c_vals, c_n]
        u8_parts = [self.cat, self.v_keys, c_keys]
        header = 2 * (len(parts) + len(u8_parts) + 1)
        lens = [len(a) for a in parts]
        offs = np.cumsum([header] + lens)[:-1]
        u8_lens = [len(a) for a in u8_parts]
        u8_offs = np.cumsum([0] + u8_lens)[:-1]
        ws_off = header + sum(lens)
        head = np.ravel(np.column_stack([np.r_[offs, u8_offs, ws_off], np.r_[lens, u8_lens, _WS_LEN]]))
        self.i64 = np.concatenate([head.astype(np.int64)] + [np.asarray(a, np.int64) for a in parts]
                                  + [np.zeros(_WS_LEN, np.int64)])
        self.out = np.empty(_OUT, dtype=np.int64)
        self.u8 = np.concatenate([np.asarray(a, np.uint8) for a in u8_parts])
        v = [self.i64[o:o + n] for o, n in zip(offs.tolist(), lens, strict=True)]
        (self.byte_ids, rows, cols, prios, news, self.v_slots, v_meta, self.c_slots, c_meta,
         self.c_vals, self.c_n) = v
        self.csr = (rows, cols, prios, news)
        self.v_meta = v_meta.reshape(-1, 4)
        self.c_meta = c_meta.reshape(-1, 5)
        u = [self.u8[o:o + n] for o, n in zip(u8_offs.tolist(), u8_lens, strict=True)]
        self.cat, self.v_keys, self.c_keys = u

    def encode(self, data: bytes) -> list[int]:
        """UTF-8 bytes -> ids."""
        out = self.out if len(data) <= len(self.out) else np.empty(len(data), dtype=np.int64)
        m = _encode_packed(np.frombuffer(data, dtype=np.uint8), self.u8, self.i64, out, self.whole)
        return out[:m].tolist()

    def clear(self) -> None:
        self.c_slots[:] = -1
        self.c_n[:] = 0

    def pre_tokenize(self, text: str) -> list[str]:
        """The pre-tokens as this encoder splits them (for tests against ``regex.findall``)."""
        data = text.encode("utf-8")
        b = _pre_tokenize(np.frombuffer(data, dtype=np.uint8), self.cat).tolist()
        return [data[s:e].decode("utf-8") for s, e in zip(b[:-1], b[1:], strict=True)]
