"""Training a byte-level BPE vocabulary (the algorithm behind ``Tokenizer.train``).

The rule, step by step (Sennrich et al. 2016 on bytes, as in GPT-2):
1. split the text into pre-tokens with the pattern; a merge never crosses a pre-token boundary;
2. start with the 256 single bytes as tokens (id = byte value);
3. count every adjacent pair of tokens inside the pre-tokens (overlapping: "aaa" holds (a, a) twice);
4. merge the most frequent pair into a new token (next id), everywhere, left to right;
5. repeat 3-4 until the vocabulary has ``vocab_size`` tokens.

Tie-break (deterministic): of equally frequent pairs, the one whose first occurrence comes first in
the text (scanning the current tokens of the pre-tokens in text order) wins. That is what
``tiktoken._educational.bpe_train`` does (``max`` over a ``Counter`` filled in text order), so the
tokens here equal its tokens, in order.

Speed: the educational trainer recounts every pair of every pre-token after each merge. Here:
- the text becomes its distinct pre-tokens with their counts (1 MB of prose: ~15,000 words for
  ~220,000 pre-tokens);
- pair counts and the set of words holding each pair are kept up to date: a merge only touches the
  words that contain the merged pair;
- the most frequent pair comes from a heap with lazy deletion; ties are resolved exactly by looking
  up the first occurrence of each tied pair.
"""
from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection

import regex


def _add_where(where: dict[tuple[int, int], set[int]], p: tuple[int, int], w: int) -> None:
    s = where.get(p)
    if s is None:
        where[p] = {w}
    else:
        s.add(w)


def _first_occurrence(pair: tuple[int, int], where: set[int], words: list[list[int]]) -> tuple[int, int]:
    """(word index, symbol index) of the first occurrence of ``pair`` in text order."""
    a, b = pair
    for w in sorted(where):
        sym = words[w]
        for i in range(len(sym) - 1):
            if sym[i] == a and sym[i + 1] == b:
                return (w, i)
    raise AssertionError("pair with a positive count has no occurrence")  # pragma: no cover


def bpe_train(text: str, vocab_size: int, pattern: str, verbose: bool = False,
              progress: bool | None = None, split_on: Collection[str] = ()
              ) -> tuple[list[tuple[bytes, bytes]], dict[bytes, int]]:
    """Learn ``vocab_size - 256`` merges from ``text``.

    split_on: texts (the special tokens) removed from ``text`` before counting; the text on either
    side is pre-tokenized separately, so no merge learns or crosses them.

    Returns (merges, ranks): ``merges[k] = (left bytes, right bytes)`` in the order learned, and
    ``ranks = {token bytes: id}`` with the 256 bytes at ids 0..255 and merge k's token at 256 + k.
    Raises ValueError on an empty text, a vocab_size below 256, or a text too small to give
    ``vocab_size`` tokens.
    """
    if not isinstance(text, str):
        raise TypeError(f"train expects the text as str, got {type(text).__name__}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (one token per byte), got {vocab_size}")
    if not text:
        raise ValueError("cannot train a tokenizer on an empty text")
    n_merges = vocab_size - 256

    # 1. distinct pre-tokens (in order of first appearance) with their counts
    counts: Counter[str] = Counter()
    if split_on:
        alts = "|".join(regex.escape(t) for t in sorted(set(split_on), key=len, reverse=True))
        for part in regex.split(alts, text):
            counts.update(regex.findall(pattern, part))
    else:
        counts.update(regex.findall(pattern, text))
    words: list[list[int]] = [list(w.encode("utf-8")) for w in counts]   # symbols = token ids
    wcount: list[int] = list(counts.values())
    token: list[bytes] = [bytes([i]) for i in range(256)]                  # id -> bytes
    ranks: dict[bytes, int] = {t: i for i, t in enumerate(token)}

    # 2. pair counts, and which words hold each pair
    pc: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, sym in enumerate(words):
        c = wcount[w]
        for p in zip(sym, sym[1:], strict=False):
            pc[p] = pc.get(p, 0) + c
            s = where.get(p)
            if s is None:
                where[p] = {w}
            else:
                s.add(w)
    heap = [(-c, p) for p, c in pc.items()]
    heapq.heapify(heap)

    bar = None
    if progress or (progress is None and n_merges > 2000):
        from tqdm.auto import tqdm
        bar = tqdm(total=n_merges, desc="bpe merges", unit="merge")

    merges: list[tuple[bytes, bytes]] = []
    while len(ranks) < vocab_size:
        # 3. the most frequent pair (all pairs tied at that count, then the first seen in the text)
        best_c, tied = 0, []
        while heap:
            negc, p = heap[0]
            if pc.get(p, 0) != -negc or (tied and -negc < best_c):
                if tied and -negc < best_c:
                    break
                heapq.heappop(heap)                       # stale entry
                continue
            heapq.heappop(heap)
            if p not in tied:
                tied.append(p)
                best_c = -negc
        if not tied:
            raise ValueError(f"the text has no more pairs to merge after {len(merges)} merges: it can "
                             f"give at most {len(ranks)} tokens, asked for vocab_size={vocab_size}")
        if len(tied) == 1:
            pair = tied[0]
        else:
            pair = min(tied, key=lambda q: _first_occurrence(q, where[q], words))
            for q in tied:
                if q != pair:
                    heapq.heappush(heap, (-best_c, q))
        a, b = pair
        new_bytes = token[a] + token[b]
        new = ranks.get(new_bytes)
        if new is None:                     # (two different pairs can spell the same bytes: reuse)
            new = len(token)
            token.append(new_bytes)
            ranks[new_bytes] = new
        merges.append((token[a], token[b]))
        if verbose:
            print(f"merge {len(merges)}: {token[a]!r} + {token[b]!r} -> {new_bytes!r} (id {new}, count {best_c})")

        # 4. merge it in every word that holds it, left to right; each merge at i changes only
        #    the pairs around it: (left, a) -> (left, new), (a, b) goes, (b, right) -> (new, right)
        #    (a merge right after another sees left == new, which cancels the earlier +1 exactly)
        changed: set[tuple[int, int]] = set()
        d: dict[tuple[int, int], int] = {}
        for w in where.pop(pair):
            sym = words[w]
            n = len(sym)
            if n < 2:
                continue
            out: list[int] = []
            i = 0
            c = wcount[w]
            hit = False
            while i < n:
                if i < n - 1 and sym[i] == a and sym[i + 1] == b:
                    hit = True
                    if out:
                        left = out[-1]
                        d[(left, a)] = d.get((left, a), 0) - c
                        q = (left, new)
                        d[q] = d.get(q, 0) + c
                        _add_where(where, q, w)
                    if i + 2 < n:
                        right = sym[i + 2]
                        d[(b, right)] = d.get((b, right), 0) - c
                        q = (new, right)
                        d[q] = d.get(q, 0) + c
                        _add_where(where, q, w)
                    out.append(new)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            if hit:
                words[w] = out
        for p, v in d.items():
            if v:
                pc[p] = pc.get(p, 0) + v
                changed.add(p)
        pc.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            c = pc[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                del pc[p]
                where.pop(p, None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges, ranks
