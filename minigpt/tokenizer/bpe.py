"""Byte-level BPE tokenizer: GPT-2 exact, loadable from every common format, trainable, fast.

    tok = Tokenizer.gpt2()                      # the vocabulary ships inside the package (offline)
    tok.encode("Hello, world")                  # [15496, 11, 995]
    tok.encode("a<|endoftext|>", allowed_special="all")   # [64, 50256]
    tok.encode_ordinary("<|endoftext|>")        # special text as plain text: [27, 91, 437, 1659, 5239, 91, 29]
    tok.decode([15496, 11, 995])                # 'Hello, world'

Encoding is two steps (docs/tokenizer.md):
1. split the text into pre-tokens with GPT-2's regex (words with their leading space, numbers,
   punctuation runs, whitespace);
2. turn each pre-token's UTF-8 bytes into ids with the BPE merge loop (``minigpt.tokenizer.bpe_merge``).
Step 2 is cached per distinct pre-token (text has few distinct words), and cache misses are merged
in one batch by a Numba kernel.

Special tokens follow tiktoken: ``encode`` raises ``ValueError`` when the text contains a special
token's text that is not in ``allowed_special`` (pass ``disallowed_special=()`` to encode it as plain
text instead); ``encode_ordinary`` never produces special ids. Lone surrogates (a ``str`` that is not
valid Unicode) are replaced by U+FFFD before encoding, as tiktoken does.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from importlib import resources
from itertools import chain
from typing import Literal

import numpy as np
import regex

from minigpt.tokenizer import formats as fmt
from minigpt.tokenizer.bpe_merge import bpe_merge_batch, bpe_merge_py, numba, pair_table_csr

_HAVE_NUMBA = numba is not None

# GPT-2's split pattern as OpenAI wrote it. tiktoken's r50k pattern
#   '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
# gives identical pre-tokens (tests/test_tokenizer_gpt2.py checks both) and is ~25% slower in `regex`.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
_CACHE_MAX = 1_000_000  # distinct pre-tokens kept; the cache is emptied when it grows past this


def _asset(name: str) -> str:
    return str(resources.files("minigpt") / "assets" / "gpt2" / name)


class Tokenizer:
    """A byte-level BPE tokenizer.

    Build one with :meth:`gpt2`, :meth:`from_openai_files`, :meth:`from_hf_files`,
    :meth:`from_tiktoken_file`, :meth:`train`, :meth:`load`, or the constructor.

    Args:
        ranks: ``{token bytes: id}`` for the mergeable tokens; must hold all 256 single bytes.
        merges: ordered merges ``(left bytes, right bytes)``; merge k has priority k. When ``None``,
            pairs come from the ranks (tiktoken's rule: the pair whose concatenation has the lowest
            rank merges first) and a pre-token that is itself a token encodes to that token.
        special_tokens: ``{text: id}``, e.g. ``{"<|endoftext|>": 50256}``.
        pattern: the pre-tokenization regex (``regex`` syntax).
        name: a label.
    """

    def __init__(self, ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]] | None = None,
                 special_tokens: dict[str, int] | None = None, pattern: str = GPT2_PATTERN,
                 name: str = "bpe"):
        special_tokens = dict(special_tokens or {})
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"a byte-level BPE vocabulary needs all 256 single bytes as tokens; "
                             f"{len(missing)} are missing (first: {missing[0]})")
        ids = list(ranks.values()) + list(special_tokens.values())
        if len(set(ids)) != len(ids):
            raise ValueError("token ids must be unique across mergeable and special tokens")
        if min(ids) < 0:
            raise ValueError("token ids must be >= 0")
        self.name = name
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        self._ranks = dict(ranks)                                  # bytes -> id
        self._special = special_tokens                              # str -> id
        self._decoder = {i: b for b, i in self._ranks.items()}     # id -> bytes
        for s, i in special_tokens.items():
            self._decoder[i] = s.encode("utf-8")
        self.n_vocab = max(ids) + 1
        self._byte_ids = np.array([self._ranks[bytes([b])] for b in range(256)], dtype=np.int64)
        self._merges = None if merges is None else [(bytes(a), bytes(b)) for a, b in merges]
        self._table_dict = None
        self._csr = pair_table_csr(*self._build_pairs(), self.n_vocab)
        self._whole_lookup = merges is None                        # tiktoken's shortcut
        self._cache: dict[str, tuple[int, ...]] = {}
        # the compiled encoder (minigpt.tokenizer.bpe_fast) knows GPT-2's pattern only; built (and its
        # compiled code loaded) here, so that the first encode is as fast as the others
        self.use_fast = pattern in (GPT2_PATTERN, R50K_PATTERN) and _HAVE_NUMBA
        self._fast = None
        if self.use_fast:
            from minigpt.tokenizer.bpe_fast import FastEncoder
            self._fast = FastEncoder(self._ranks, self._byte_ids, self._csr, self._whole_lookup)
            self._fast.encode("warm up: it’s 1 ü".encode())
            self._fast.clear()
        self._special_re = None
        if special_tokens:
            alts = sorted(special_tokens, key=len, reverse=True)
            self._special_re = regex.compile("|".join(regex.escape(s) for s in alts))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's tokenizer (tiktoken ``gpt2``/``r50k_base``), from the files shipped in the package."""
        tok = cls.from_tiktoken_file(_asset("gpt2.tiktoken"), special_tokens={ENDOFTEXT: 50256})
        tok.name = "gpt2"
        return tok

    @classmethod
    def from_tiktoken_file(cls, path: str, special_tokens: dict[str, int] | None = None,
                           pattern: str = GPT2_PATTERN) -> Tokenizer:
        """Load a tiktoken rank file (``base64(token) rank`` lines); tiktoken's merge rule."""
        return cls(fmt.read_tiktoken(path), None, special_tokens, pattern, name=os.path.basename(path))

    @classmethod
    def from_openai_files(cls, encoder_json: str, vocab_bpe: str, pattern: str = GPT2_PATTERN) -> Tokenizer:
        """Load OpenAI's ``encoder.json`` + ``vocab.bpe`` (GPT-2's original release format)."""
        ranks, merges, special = fmt.read_vocab_and_merges(encoder_json, vocab_bpe)
        return cls(ranks, merges, special, pattern, name="openai-files")

    @classmethod
    def from_hf_files(cls, vocab_json: str, merges_txt: str, pattern: str = GPT2_PATTERN) -> Tokenizer:
        """Load Hugging Face's ``vocab.json`` + ``merges.txt`` (byte-level BPE)."""
        ranks, merges, special = fmt.read_vocab_and_merges(vocab_json, merges_txt)
        return cls(ranks, merges, special, pattern, name="hf-files")

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT2_PATTERN,
              special_tokens: Collection[str] | dict[str, int] = (), verbose: bool = False,
              progress: bool | None = None) -> Tokenizer:
        """Learn a byte-level BPE vocabulary of ``vocab_size`` mergeable tokens from ``text``.

        Deterministic. Each step merges the most frequent adjacent pair (counted over the
        pre-tokens of ``pattern``); of equally frequent pairs, the one whose first occurrence comes
        first in the text wins (the rule of ``tiktoken._educational.bpe_train``, whose tokens this
        reproduces in order). Special tokens get the ids after the mergeable ones (or the ids given
        in a dict); their text is cut out of the training text first (no merge learns or crosses it). ``progress`` shows a tqdm bar (default: when more than 2,000 merges).
        See ``minigpt.tokenizer.bpe_train`` for the algorithm.
        """
        from minigpt.tokenizer.bpe_train import bpe_train

        merges, ranks = bpe_train(text, vocab_size, pattern, verbose=verbose, progress=progress,
                                  split_on=list(special_tokens))
        if isinstance(special_tokens, dict):
            special = dict(special_tokens)
        else:
            special = {s: len(ranks) + k for k, s in enumerate(dict.fromkeys(special_tokens))}
        return cls(ranks, merges, special, pattern, name="trained")

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Load a tokenizer written by :meth:`save` (a directory)."""
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        if cfg.get("format") == "tiktoken":
            return cls.from_tiktoken_file(os.path.join(path, cfg["file"]), cfg["special_tokens"], cfg["pattern"])
        ranks, merges, special = fmt.read_vocab_and_merges(os.path.join(path, "vocab.json"),
                                                           os.path.join(path, "merges.txt"))
        return cls(ranks, merges, special, cfg["pattern"], name=cfg.get("name", "bpe"))

    def save(self, path: str, format: Literal["hf", "openai", "tiktoken"] = "hf") -> list[str]:
        """Write the tokenizer into directory ``path`` and return the files written.

        ``"hf"``: ``vocab.json`` + ``merges.txt`` (Hugging Face ``tokenizers``: ``models.BPE.from_file``);
        ``"openai"``: ``encoder.json`` + ``vocab.bpe``; ``"tiktoken"``: ``<name>.tiktoken`` rank file
        (``tiktoken.load.load_tiktoken_bpe``). Each comes with ``tokenizer_config.json`` (pattern,
        special tokens) so :meth:`load` restores the same tokenizer.
        """
        os.makedirs(path, exist_ok=True)
        merges = self.merges
        files = []
        if format == "tiktoken":
            fname = "tokenizer.tiktoken"
            fmt.write_tiktoken(os.path.join(path, fname), self._ranks)
            files.append(fname)
        elif format in ("hf", "openai"):
            names = ("vocab.json", "merges.txt") if format == "hf" else ("encoder.json", "vocab.bpe")
            fmt.write_vocab_and_merges(os.path.join(path, names[0]), os.path.join(path, names[1]),
                                       self._ranks, merges, self._special, hf_style=format == "hf")
            files += list(names)
            if format == "openai":  # load() reads the HF names; the same content
                fmt.write_vocab_and_merges(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                                           self._ranks, merges, self._special)
                files += ["vocab.json", "merges.txt"]
        else:
            raise ValueError(f"format must be 'hf', 'openai' or 'tiktoken', got {format!r}")
        cfg = {"format": format, "name": self.name, "pattern": self.pattern,
               "special_tokens": self._special, "n_vocab": self.n_vocab}
        if format == "tiktoken":
            cfg["file"] = files[0]
        fmt._atomic_write(os.path.join(path, "tokenizer_config.json"),
                          json.dumps(cfg, indent=1, ensure_ascii=False).encode("utf-8"))
        return files + ["tokenizer_config.json"]

    # ------------------------------------------------------------------ properties
    @property
    def eot_token(self) -> int:
        """The id of ``<|endoftext|>``."""
        if ENDOFTEXT not in self._special:
            raise ValueError(f"this tokenizer has no {ENDOFTEXT} special token")
        return self._special[ENDOFTEXT]

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """``{token bytes: id}`` of the mergeable tokens (a copy)."""
        return dict(self._ranks)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges in priority order. For a rank-built tokenizer they are recovered from the
        ranks: each token's two parts are what BPE over the lower ranks leaves of its bytes."""
        if self._merges is None:
            self._merges = self._recover_merges()
        return list(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self.decode_bytes([token_id])

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab}, special={self._special})"

    # ------------------------------------------------------------------ encoding
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special tokens: ``<|endoftext|>`` is plain text here."""
        if not isinstance(text, str):
            raise TypeError(f"encode_ordinary expects str, got {type(text).__name__}"
                            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""))
        try:
            return self._encode_chunk(text)
        except UnicodeEncodeError:
            return self._encode_chunk(_fix_surrogates(text))

    def encode(self, text: str, *, allowed_special: Literal["all"] | Collection[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Encode ``text``; special tokens only where allowed (tiktoken's semantics).

        allowed_special: ``"all"`` or a set of special-token texts to encode as their ids.
        disallowed_special: special texts whose presence raises ``ValueError`` (default ``"all"``:
            every special token not allowed). Pass ``()`` to encode them as plain text instead.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}"
                            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""))
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ValueError(f"allowed_special must be 'all' or a set of strings, got {allowed_special!r}")
            allowed = set(self._special)
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self._special)
            if unknown:
                raise ValueError(f"allowed_special holds {sorted(unknown)}, which are not special tokens "
                                 f"of this tokenizer (it has {sorted(self._special)})")
        if isinstance(disallowed_special, str):
            if disallowed_special != "all":
                raise ValueError(f"disallowed_special must be 'all' or a set of strings, got {disallowed_special!r}")
            disallowed = set(self._special) - allowed
        else:
            disallowed = set(disallowed_special)
        if not any(sp in text for sp in self._special):         # the common case: C-speed scans
            return self.encode_ordinary(text)
        if disallowed:
            for m in self._special_re.finditer(text):
                if m.group() in disallowed:
                    tok = m.group()
                    raise ValueError(
                        f"the text contains the special token {tok!r}, which is not allowed.\n"
                        f"To encode it as the special token, pass allowed_special={{{tok!r}}} (or 'all').\n"
                        f"To encode it as plain text, pass disallowed_special=() or use encode_ordinary().")
        if not allowed or self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for m in self._special_re.finditer(text):
            if m.group() not in allowed:
                continue  # plain text (disallowed check passed): stays inside the ordinary chunk
            out += self.encode_ordinary(text[start:m.start()])
            out.append(self._special[m.group()])
            start = m.end()
        out += self.encode_ordinary(text[start:])
        return out

    def encode_batch(self, texts: Iterable[str], **kw) -> list[list[int]]:
        """``encode`` each text (one thread)."""
        return [self.encode(t, **kw) for t in texts]

    def _encode_chunk(self, text: str) -> list[int]:
        if self.use_fast:
            return self._fast.encode(text.encode("utf-8"))
        return self._encode_chunk_regex(text)

    def _encode_chunk_regex(self, text: str) -> list[int]:
        """The readable path: ``regex.findall``, a dict cache of pre-token ids, batched merges."""
        pieces = self._pat.findall(text)
        cache = self._cache
        parts = list(map(cache.get, pieces))                  # cached ids of each pre-token, or None
        n_miss = parts.count(None)
        if n_miss:
            if 4 * n_miss > len(parts):                        # mostly new text: dedupe all first
                missing = [p for p in dict.fromkeys(pieces) if p not in cache]
            else:
                missing = list(dict.fromkeys([p for p, v in zip(pieces, parts, strict=True) if v is None]))
            new = self._merge_pieces(missing)
            if len(cache) + len(new) > _CACHE_MAX:             # bound memory: keep only this text's words
                keep = {p: v for p, v in zip(pieces, parts, strict=True) if v is not None}
                cache.clear()
                cache.update(keep)
            cache.update(new)
            parts = list(map(cache.__getitem__, pieces))
        return list(chain.from_iterable(parts))

    def _merge_pieces(self, missing: list[str]) -> dict[str, tuple[int, ...]]:
        """Ids of distinct pre-tokens: whole-token lookups, then one kernel call for the rest."""
        new: dict[str, tuple[int, ...]] = {}
        todo = []
        ranks = self._ranks
        for p in missing:
            b = p.encode("utf-8")
            if self._whole_lookup:
                i = ranks.get(b)
                if i is not None:
                    new[p] = (i,)
                    continue
            todo.append((p, b))
        if not todo:
            return new
        data = np.frombuffer(b"".join([b for _, b in todo]), dtype=np.uint8)
        offsets = np.zeros(len(todo) + 1, dtype=np.int64)
        np.cumsum([len(b) for _, b in todo], out=offsets[1:])
        out, out_off = bpe_merge_batch(data, offsets, self._byte_ids, self._csr)
        out = out.tolist()
        out_off = out_off.tolist()
        for k, (p, _) in enumerate(todo):
            new[p] = tuple(out[out_off[k]:out_off[k + 1]])
        return new

    def encode_piece_reference(self, piece: str) -> list[int]:
        """One pre-token through the readable Python merge loop (no cache, no kernel; for tests)."""
        b = piece.encode("utf-8")
        if self._whole_lookup and b in self._ranks:
            return [self._ranks[b]]
        return bpe_merge_py([int(self._byte_ids[x]) for x in b], self._table)

    def pre_tokenize(self, text: str) -> list[str]:
        """The pre-tokens of ``text`` (step 1 of encoding)."""
        return self._pat.findall(text)

    def clear_cache(self) -> None:
        """Forget the cached pre-token encodings (benchmarks use this to time a cold start)."""
        self._cache.clear()
        if self._fast is not None:
            self._fast.clear()

    # ------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the raw bytes they stand for (no UTF-8 decoding; never loses information)."""
        dec = self._decoder
        try:
            return b"".join([dec[i] for i in ids])
        except KeyError as e:
            if not isinstance(e.args[0], (int, np.integer)):
                raise TypeError(f"decode expects a sequence of int ids, got an element {e.args[0]!r} "
                                f"of type {type(e.args[0]).__name__}") from None
            raise ValueError(f"token id {e.args[0]!r} is not in the vocabulary "
                             f"(ids are 0..{self.n_vocab - 1}, with no gaps unless the vocabulary has them)") from None
        except TypeError:
            bad = next((i for i in ids if not isinstance(i, (int, np.integer))), None)
            raise TypeError(f"decode expects a sequence of int ids, got an element {bad!r} "
                            f"of type {type(bad).__name__}") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Ids -> text. Bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD
        with ``errors="replace"``; use :meth:`decode_bytes` for the exact bytes."""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"decode expects a sequence of int ids, got {type(ids).__name__}")
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got shape {ids.shape}")
            ids = ids.tolist()
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """Each id's bytes, separately."""
        return [self.decode_bytes([i]) for i in ids]

    # ------------------------------------------------------------------ internals
    def _build_pairs(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """The pairs of ``minigpt.tokenizer.bpe_merge``: left ids, right ids, priorities, new ids."""
        ranks = self._ranks
        get = ranks.get
        L: list[int] = []
        R: list[int] = []
        P: list[int] = []
        N: list[int] = []
        if self._merges is not None:
            seen = set()
            for k, (a, b) in enumerate(self._merges):
                ia, ib, inew = get(a), get(b), get(a + b)
                if ia is None or ib is None or inew is None:
                    raise ValueError(f"merge {k} ({a!r} + {b!r}) uses a token that is not in the vocabulary")
                if (ia, ib) in seen:                   # a repeated merge line: the first one counts
                    continue
                seen.add((ia, ib))
                L.append(ia)
                R.append(ib)
                P.append(k)
                N.append(inew)
            return L, R, P, N
        for t, i in ranks.items():                     # tiktoken's rule: every split into two tokens
            for s in range(1, len(t)):
                ia = get(t[:s])
                if ia is not None:
                    ib = get(t[s:])
                    if ib is not None:
                        L.append(ia)
                        R.append(ib)
                        P.append(i)
                        N.append(i)
        return L, R, P, N

    @property
    def _table(self) -> dict[tuple[int, int], tuple[int, int]]:
        """The pair table as a dict (left id, right id) -> (priority, new id), for the reference loop."""
        if self._table_dict is None:
            L, R, P, N = self._build_pairs()
            self._table_dict = {(a, b): (p, n) for a, b, p, n in zip(L, R, P, N, strict=True)}
        return self._table_dict

    def _recover_merges(self) -> list[tuple[bytes, bytes]]:
        """Merges of a rank vocabulary: BPE each token's bytes using only lower ranks."""
        merges = []
        for t, r in sorted(self._ranks.items(), key=lambda kv: kv[1]):
            if len(t) < 2:
                continue
            parts = [bytes([x]) for x in t]
            while len(parts) > 2:
                best, bi = None, -1
                for i in range(len(parts) - 1):
                    rr = self._ranks.get(parts[i] + parts[i + 1])
                    if rr is not None and rr < r and (best is None or rr < best):
                        best, bi = rr, i
                if best is None:
                    break
                parts[bi:bi + 2] = [parts[bi] + parts[bi + 1]]
            if len(parts) != 2:
                raise ValueError(f"token {t!r} (rank {r}) cannot be built from two lower-ranked tokens; "
                                 "this vocabulary cannot be written as a merge list")
            merges.append((parts[0], parts[1]))
        return merges


def _fix_surrogates(text: str) -> str:
    """tiktoken's treatment of text that is not valid Unicode: lone surrogates become U+FFFD
    (and a surrogate pair written as two code points becomes the character it encodes)."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
