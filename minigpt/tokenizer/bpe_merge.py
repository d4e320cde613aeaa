"""The BPE merge loop: turn one pre-token's bytes into token ids.

The rule (tiktoken's, and for GPT-2's vocabulary identical to OpenAI's ``encoder.py``): start from
one token per byte; repeatedly merge the adjacent pair with the lowest priority, the leftmost one on
ties; stop when no adjacent pair has a merge. A *pair table* ``{(left id, right id): (priority, new
id)}`` holds the rule's data:
- built from a merge list (OpenAI / Hugging Face files, a trained tokenizer): merge k has priority k;
- built from tiktoken ranks: every split of a token into two tokens is a pair, with the token's rank
  as the priority (tiktoken merges the pair whose concatenated bytes have the lowest rank).

:func:`bpe_merge_py` is the readable reference. :func:`bpe_merge_batch` is the fast path: a Numba
kernel that merges many pieces in one call with a heap over a linked list of symbols (O(n log n),
so a 1 MB run of one character is fine), looking pairs up in a CSR copy of the table.
The tests hold the kernel to the reference.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; keep a slow path anyway
    numba = None


def bpe_merge_py(ids: list[int], table: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Reference merge loop. ids: the piece's byte token ids. Returns the merged ids."""
    ids = list(ids)
    while len(ids) >= 2:
        best, best_i = None, -1
        for i in range(len(ids) - 1):
            m = table.get((ids[i], ids[i + 1]))
            if m is not None and (best is None or m[0] < best[0]):  # strict <: leftmost wins ties
                best, best_i = m, i
        if best is None:
            break
        ids[best_i:best_i + 2] = [best[1]]
    return ids


def pair_table_csr(left: np.ndarray, right: np.ndarray, prio: np.ndarray, new: np.ndarray, n_ids: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pair table as CSR arrays by left id: rows (n_ids+1,), right ids, priorities, new ids.

    left, right, prio, new: (P,) int arrays, one entry per pair. Within a row the right ids are
    sorted, so the kernel finds a pair by binary search.
    """
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    order = np.lexsort((right, left))                                     # by left, then right
    rows = np.zeros(n_ids + 1, dtype=np.int64)
    np.cumsum(np.bincount(left, minlength=n_ids)[:n_ids], out=rows[1:])
    return (rows, right[order].copy(), np.asarray(prio, np.int64)[order].copy(),
            np.asarray(new, np.int64)[order].copy())


def _merge_piece_impl(data, s, n, byte_ids, rows, cols, prios, news, ids, nxt, prv, hp, hpos, hl, hr, out, o):
    """Merge the piece data[s:s+n] and write its ids to out[o:]; returns the new o.

    Workspace: ids, nxt, prv need n entries, the heap arrays (hp, hpos, hl, hr) 3n + 4.
    The symbols form a linked list (nxt/prv over the original byte positions); the heap holds
    candidate pairs keyed (priority, position), checked on pop (lazy deletion).
    """
    for i in range(n):
        ids[i] = byte_ids[data[s + i]]
        nxt[i] = i + 1
        prv[i] = i - 1
    hn = 0
    for i in range(n - 1):
        a, b = ids[i], ids[i + 1]
        lo, hi = rows[a], rows[a + 1]
        while lo < hi:                                  # binary search b among a's right ids
            mid = (lo + hi) >> 1
            if cols[mid] < b:
                lo = mid + 1
            else:
                hi = mid
        if lo < rows[a + 1] and cols[lo] == b:
            j = hn                                      # heap push (prios[lo], i)
            hn += 1
            while j > 0:
                p = (j - 1) >> 1
                if hp[p] < prios[lo] or (hp[p] == prios[lo] and hpos[p] < i):
                    break
                hp[j], hpos[j], hl[j], hr[j] = hp[p], hpos[p], hl[p], hr[p]
                j = p
            hp[j], hpos[j], hl[j], hr[j] = prios[lo], i, a, b
    while hn > 0:
        pos, a, b = hpos[0], hl[0], hr[0]               # pop the minimum (priority, position)
        hn -= 1
        if hn > 0:
            lp, lpos, la, lb = hp[hn], hpos[hn], hl[hn], hr[hn]
            j = 0
            while True:
                c = 2 * j + 1
                if c >= hn:
                    break
                if c + 1 < hn and (hp[c + 1] < hp[c] or (hp[c + 1] == hp[c] and hpos[c + 1] < hpos[c])):
                    c += 1
                if lp < hp[c] or (lp == hp[c] and lpos < hpos[c]):
                    break
                hp[j], hpos[j], hl[j], hr[j] = hp[c], hpos[c], hl[c], hr[c]
                j = c
            hp[j], hpos[j], hl[j], hr[j] = lp, lpos, la, lb
        r = nxt[pos]
        if ids[pos] != a or r >= n or ids[r] != b:
            continue                                    # stale entry
        # merge pos and r: this was [.., a, b, ..] so now it is [.., new, ..]
        lo, hi = rows[a], rows[a + 1]
        while lo < hi:
            mid = (lo + hi) >> 1
            if cols[mid] < b:
                lo = mid + 1
            else:
                hi = mid
        ids[pos] = news[lo]
        ids[r] = -1
        nxt[pos] = nxt[r]
        if nxt[r] < n:
            prv[nxt[r]] = pos
        for side in range(2):                           # the new pairs (prev, pos) and (pos, next)
            if side == 0:
                li = prv[pos]
                if li < 0:
                    continue
            else:
                li = pos
                if nxt[pos] >= n:
                    continue
            a2, b2 = ids[li], ids[nxt[li]]
            lo, hi = rows[a2], rows[a2 + 1]
            while lo < hi:
                mid = (lo + hi) >> 1
                if cols[mid] < b2:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < rows[a2 + 1] and cols[lo] == b2:
                j = hn
                hn += 1
                while j > 0:
                    p = (j - 1) >> 1
                    if hp[p] < prios[lo] or (hp[p] == prios[lo] and hpos[p] < li):
                        break
                    hp[j], hpos[j], hl[j], hr[j] = hp[p], hpos[p], hl[p], hr[p]
                    j = p
                hp[j], hpos[j], hl[j], hr[j] = prios[lo], li, a2, b2
    i = 0
    while i < n:
        out[o] = ids[i]
        o += 1
        i = nxt[i]
    return o


def _bpe_merge_batch_impl(data, offsets, byte_ids, rows, cols, prios, news):
    """Merge every piece data[offsets[k]:offsets[k+1]] (bytes). Returns (out ids, out offsets)."""
    n_pieces = len(offsets) - 1
    out = np.empty(len(data), dtype=np.int64)
    out_off = np.zeros(n_pieces + 1, dtype=np.int64)
    maxn = 1
    for k in range(n_pieces):
        maxn = max(maxn, offsets[k + 1] - offsets[k])
    ids = np.empty(maxn, dtype=np.int64)
    nxt = np.empty(maxn, dtype=np.int64)
    prv = np.empty(maxn, dtype=np.int64)
    cap = 3 * maxn + 4
    hp = np.empty(cap, dtype=np.int64)
    hpos = np.empty(cap, dtype=np.int64)
    hl = np.empty(cap, dtype=np.int64)
    hr = np.empty(cap, dtype=np.int64)
    o = 0
    for k in range(n_pieces):
        o = _merge_piece(data, offsets[k], offsets[k + 1] - offsets[k], byte_ids, rows, cols, prios, news,
                         ids, nxt, prv, hp, hpos, hl, hr, out, o)
        out_off[k + 1] = o
    return out[:o], out_off


if numba is not None:
    _merge_piece = numba.njit(cache=True, nogil=True)(_merge_piece_impl)
    _bpe_merge_batch_kernel = numba.njit(cache=True, nogil=True)(_bpe_merge_batch_impl)
else:  # pragma: no cover
    _merge_piece = _merge_piece_impl
    _bpe_merge_batch_kernel = _bpe_merge_batch_impl


def bpe_merge_batch(data: np.ndarray, offsets: np.ndarray, byte_ids: np.ndarray,
                    csr: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Merge many pieces at once.

    data: (N,) uint8, the pieces' bytes back to back; offsets: (K+1,) int64 piece boundaries;
    byte_ids: (256,) int64 token id of each byte; csr: :func:`pair_table_csr`.
    Returns out (M,) int64 ids and out_offsets (K+1,) int64: piece k is out[out_offsets[k]:out_offsets[k+1]].
    """
    rows, cols, prios, news = csr
    return _bpe_merge_batch_kernel(data, offsets, byte_ids, rows, cols, prios, news)
