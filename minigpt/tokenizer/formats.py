"""Reading and writing byte-level BPE vocabularies in the three common file formats.

A vocabulary here is two things:
- ``ranks``: ``{token bytes: id}`` for the mergeable tokens (the 256 single bytes and every merge);
- ``merges``: the ordered list of merges ``(left bytes, right bytes)``; merge k has priority k.

Formats:
- OpenAI GPT-2 release: ``encoder.json`` (``{byte-to-unicode string: id}``) + ``vocab.bpe``
  (``#version: 0.2`` then one ``left right`` merge per line, in priority order);
- Hugging Face ``tokenizers``: ``vocab.json`` + ``merges.txt`` (the same two formats, the JSON written
  as raw UTF-8 with ids ascending);
- tiktoken rank files: one ``base64(token bytes) SP rank`` per line; no merges, which tiktoken does not
  need (it merges the adjacent pair whose concatenation has the lowest rank).

The byte-to-unicode map is GPT-2's: the 188 printable bytes map to themselves, the other 68 to U+0100
upward in order (space -> 'Ġ', LF -> 'Ċ'), so every token is a printable string in the text formats.
"""
from __future__ import annotations

import base64
import json
from functools import lru_cache

from minigpt.atomic import atomic_path


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (OpenAI ``encoder.py``)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    """Token bytes -> the printable string the text formats use."""
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def str_to_token(s: str, where: str = "") -> bytes:
    """The printable string of the text formats -> token bytes (clear error on a bad character)."""
    m = unicode_to_bytes()
    try:
        return bytes(m[c] for c in s)
    except KeyError as e:
        raise ValueError(f"{where}: {s!r} holds {e.args[0]!r}, which is not a character of GPT-2's "
                         "byte-to-unicode map; is this a byte-level BPE vocabulary?") from None


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through the one atomic writer (``minigpt.atomic``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- encoder.json/vocab.json + merges

def read_vocab_and_merges(vocab_path: str, merges_path: str
                          ) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]], dict[str, int]]:
    """Read ``encoder.json``+``vocab.bpe`` (OpenAI) or ``vocab.json``+``merges.txt`` (Hugging Face).

    Returns (ranks, merges, special_tokens). Entries of the JSON whose string is not made of
    byte-to-unicode characters (``<|endoftext|>``) are special tokens.
    """
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_path}: expected a JSON object {{token: id}}, got {type(vocab).__name__}")
    merges: list[tuple[bytes, bytes]] = []
    with open(merges_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if (lineno == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{lineno}: expected 'left right', got {line!r}")
            where = f"{merges_path}:{lineno}"
            merges.append((str_to_token(parts[0], where), str_to_token(parts[1], where)))
    # a mergeable token is a single byte or the result of a merge; anything else is special
    # (GPT-2's "<|endoftext|>" is printable ASCII, so the characters alone cannot tell)
    u2b = unicode_to_bytes()
    made = {a + b for a, b in merges}
    ranks: dict[bytes, int] = {}
    special: dict[str, int] = {}
    for s, i in vocab.items():
        if not isinstance(i, int):
            raise ValueError(f"{vocab_path}: id of {s!r} is {i!r}, expected an integer")
        b = bytes(u2b[c] for c in s) if all(c in u2b for c in s) else None
        if b is not None and (len(b) == 1 or b in made):
            ranks[b] = i
        else:
            special[s] = i
    return ranks, merges, special


def write_vocab_and_merges(vocab_path: str, merges_path: str, ranks: dict[bytes, int],
                           merges: list[tuple[bytes, bytes]], special_tokens: dict[str, int],
                           hf_style: bool = True) -> None:
    """Write ``vocab.json``+``merges.txt`` (``hf_style``: raw UTF-8, ids ascending, like
    ``tokenizers``' ``BPE.save``) or OpenAI's ``encoder.json``+``vocab.bpe`` (ASCII escapes)."""
    items = sorted([(i, token_to_str(b)) for b, i in ranks.items()]
                   + [(i, s) for s, i in special_tokens.items()])
    vocab = {s: i for i, s in items}
    if hf_style:
        text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(vocab)
    _atomic_write(vocab_path, text.encode("utf-8"))
    lines = ["#version: 0.2"] + [f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges]
    _atomic_write(merges_path, ("\n".join(lines) + "\n").encode("utf-8"))


# ---------------------------------------------------------------- tiktoken rank files

def read_tiktoken(path: str) -> dict[bytes, int]:
    """Read a tiktoken rank file: lines ``base64(token) rank``."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r}") from None
    return ranks


def write_tiktoken(path: str, ranks: dict[bytes, int]) -> None:
    """Write a tiktoken rank file (loadable with ``tiktoken.load.load_tiktoken_bpe``)."""
    lines = [base64.b64encode(b) + b" " + str(i).encode() for b, i in sorted(ranks.items(), key=lambda kv: kv[1])]
    _atomic_write(path, b"\n".join(lines) + b"\n")
