"""Chapter 7's evaluation without a judge: responses for the test set, and simple scores.

    rows = generate_responses(model, tok, test_data)       # each entry + "model_response"
    write_responses(rows, "instruction-data-with-response.json")
    scores = automatic_scores(rows)                         # exact match, word F1, ROUGE-L F
    loss = response_loss(model, tok, test_data)             # cross-entropy on the reference responses

Generation is the book's: greedy, at most 256 new tokens, the end-of-text (50256) stops each row, KV
cache on; the response is ``generated_text[len(prompt):].replace("### Response:", "").strip()``. The
book's ``generate`` stops *before* appending the end-of-text; here the ids are cut at it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minigpt.atomic import write_text_atomic
from minigpt.inference.generate import generate
from minigpt.training.instruction_data import (
    PAD_TOKEN_ID,
    InstructionDataset,
    InstructionLoader,
    extract_response,
    format_input,
)
from minigpt.training.loop import calc_loss_loader

RESPONSE_FILE = "instruction-data-with-response.json"


def generate_response(model: Any, tokenizer, entry: dict, max_new_tokens: int = 256,
                      style: str = "alpaca", eos_id: int = PAD_TOKEN_ID) -> str:
    """The model's answer to one entry (greedy, KV cache, stops at ``eos_id``)."""
    prompt = format_input(entry, style)
    ids = tokenizer.encode(prompt)
    T = model.cfg.context_length
    if len(ids) >= T:
        raise ValueError(f"the prompt is {len(ids)} tokens, the model's context_length is {T}: no "
                         "room to answer")
    idx = np.asarray(ids, dtype=np.int64)[None, :]
    out = generate(model, idx, max_new_tokens=max_new_tokens, eos_id=eos_id, use_cache=True)[0]
    new = out[len(ids):]
    stop = np.flatnonzero(new == eos_id)
    new = new[:stop[0]] if stop.size else new                  # the book never appends the EOT
    text = tokenizer.decode(list(ids) + new.tolist())
    return extract_response(text, prompt, style)


def generate_responses(model: Any, tokenizer, data: Sequence[dict], max_new_tokens: int = 256,
                       style: str = "alpaca", progress: Callable | None = None) -> list[dict]:
    """Each entry with its ``model_response`` (the book's loop over the test set)."""
    rows = []
    for i, entry in enumerate(data):
        rows.append({**entry, "model_response": generate_response(model, tokenizer, entry,
                                                                  max_new_tokens, style)})
        if progress is not None:
            progress(i + 1, len(data))
    return rows


def write_responses(rows: Sequence[dict], path: str | Path) -> Path:
    """The book's ``instruction-data-with-response.json`` (indent 4), written atomically."""
    path = Path(path)
    write_text_atomic(path, json.dumps(list(rows), indent=4))
    return path


# --------------------------------------------------------------------------------- scores
def _words(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped (SQuAD-style normalisation)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def word_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of words (SQuAD): 1 for the same words, 0 for none in common."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words over both lengths."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def automatic_scores(rows: Sequence[dict], key: str = "model_response") -> dict[str, float]:
    """Means over the rows, 0-100: exact match (normalised words), word F1, ROUGE-L."""
    if not rows:
        raise ValueError("no responses to score")
    em = [100.0 * (_words(r[key]) == _words(r["output"])) for r in rows]
    f1 = [100.0 * word_f1(r[key], r["output"]) for r in rows]
    rl = [100.0 * rouge_l(r[key], r["output"]) for r in rows]
    return {"exact_match": float(np.mean(em)), "word_f1": float(np.mean(f1)),
            "rouge_l": float(np.mean(rl)), "n": len(rows)}


def response_loss(model: Any, tokenizer, data: Sequence[dict], style: str = "alpaca",
                  batch_size: int = 8) -> float:
    """The mean cross-entropy of the reference responses given their prompts (the prompt's targets
    masked, as exercise 7.2), batch by batch as the book's ``calc_loss_loader``."""
    ds = InstructionDataset(data, tokenizer, style, context_length=model.cfg.context_length)
    loader = InstructionLoader(ds, batch_size, mask_instruction=True,
                               allowed_max_length=model.cfg.context_length)
    return calc_loss_loader(loader, model)
