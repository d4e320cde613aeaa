"""The book's numbers with OpenAI's real GPT-2 124M weights (book-notes §5, §9.1 item 6).

Skipped unless the weights are already on disk: at ``$MINIGPT_GPT2_DIR``, in the folder for files
fetched by hand (``minigpt.weights.download.cache_dir() / "gpt2"``) or in the Hugging Face cache
(``minigpt eval --model gpt2 --text the-verdict`` puts them there). The test never downloads. minigpt was developed offline, so these tests have not been
run against the real weights by its authors; they state what the book's notebooks print.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from minigpt.weights import download



def _on_disk() -> Path:
    """Where the weights are, without any request (the last place looked at when none has them)."""
    if os.environ.get("MINIGPT_GPT2_DIR"):
        return Path(os.environ["MINIGPT_GPT2_DIR"])
    try:
        return download.model_dir("gpt2", offline=True)
    except FileNotFoundError:
        return download.cache_dir() / "gpt2"


GPT2_DIR = _on_disk()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (GPT2_DIR / "model.safetensors").is_file(),
                       reason=f"needs OpenAI's GPT-2 124M weights at {GPT2_DIR}/model.safetensors"),
]


@pytest.fixture(scope="module")
def gpt2():
    from minigpt.weights.pretrained import from_pretrained
    return from_pretrained(GPT2_DIR, dtype=np.float32)


def test_first_embedding_values(gpt2):
    # ch05.ipynb cell 136 prints wte[0, :3] of the same weights (from OpenAI's TF checkpoint)
    assert np.allclose(gpt2.params["wte.weight"][0, :3], [-0.11010301, -0.03926672, 0.03310751],
                       atol=1e-7)


def test_verdict_loss(gpt2, tok):
    from minigpt.cli.eval import evaluate_text, read_text
    r = evaluate_text(gpt2, read_text("the-verdict")[0], tok)
    # exercise-solutions.ipynb, Ex 5.5: 3.754748503367106 / 3.559617757797241 (PyTorch float32)
    assert r["train_loss"] == pytest.approx(3.7547485, abs=5e-4)
    assert r["val_loss"] == pytest.approx(3.5596178, abs=5e-4)


@pytest.mark.parametrize("prompt,n,text", [
    ("Every effort moves you", 15,
     "Every effort moves you forward.\nThe first step is to understand the importance of your work"),
    ("Every effort moves", 30,
     "Every effort moves forward, but it's not enough.\n\n\"I'm not going to sit here and say, "
     "'I'm not going to do this,'"),
])
def test_greedy_continuations(gpt2, tok, prompt, n, text):
    from minigpt.inference.generate import generate
    ids = np.array([tok.encode(prompt)], np.int64)
    out = generate(gpt2, ids, max_new_tokens=n, temperature=0.0)
    assert tok.decode(out[0].tolist()) == text
