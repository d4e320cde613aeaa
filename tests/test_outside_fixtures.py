"""minigpt against values computed OUTSIDE it, frozen in tests/fixtures/outside/ (issue 10, item 4).

benchmarks/make_outside_fixtures.py wrote the files with tiktoken, torch and transformers (see
tests/fixtures/outside/README.md); none of them is imported here. Every check has a negative control
that perturbs the frozen value slightly and shows the same comparison rejects it.

(a) vocab_sha256.json        the shipped GPT-2 vocabulary files have the sha256 tiktoken pins
(b) tiktoken_lines.json      Tokenizer.gpt2() gives tiktoken's gpt2 ids on 4,090 lines and 9 chunks
(c) edu_bpe_train_...json    Tokenizer.train(the-verdict, 1000) learns tiktoken._educational's
                             merges
(d) gpt_train_untied_T33     the book's training model (untied head, no qkv bias, T = 33) matches
                             PyTorch's logits, loss and every gradient on both kernel paths
"""

from __future__ import annotations

import copy
import hashlib
import json
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import minigpt
from kernels.attention import BLAS_MIN_T
from safetensors import safe_open
from minigpt.tokenizer import R50K_PATTERN, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "outside"
ASSETS = Path(str(resources.files("minigpt") / "assets" / "gpt2"))
EOT = "<|endoftext|>"
TOL = 1e-9  # per tensor: max |minigpt - torch| / max |torch|; float64 round-off is ~1e-15

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def read_json(name: str) -> dict:
    with open(FIXTURES / name, encoding="ascii") as f:
        return json.load(f)


# ---------------------------------------------------------------- (a) vocabulary file hashes
def vocab_mismatches(folder: Path, pinned: dict) -> list[str]:
    """Names of the files in ``folder`` whose size or sha256 differs from ``pinned``."""
    bad = []
    for name, want in pinned.items():
        data = (folder / name).read_bytes()
        if len(data) != want["bytes"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
            bad.append(name)
    return bad


def test_shipped_vocabulary_files_have_the_outside_hashes():
    pinned = read_json("vocab_sha256.json")["files"]
    shipped = sorted(p.name for p in ASSETS.iterdir() if not p.name.startswith(("_", ".")))
    assert shipped == sorted(pinned) == ["encoder.json", "gpt2.tiktoken", "vocab.bpe"]
    assert vocab_mismatches(ASSETS, pinned) == []


def test_vocabulary_hash_check_can_fail(tmp_path):
    pinned = read_json("vocab_sha256.json")["files"]
    wrong = copy.deepcopy(pinned)                                    # one hex digit of one hash
    h = wrong["encoder.json"]["sha256"]
    wrong["encoder.json"]["sha256"] = h[:-1] + ("0" if h[-1] != "0" else "1")
    assert vocab_mismatches(ASSETS, wrong) == ["encoder.json"]
    for name in pinned:                                              # one flipped byte of one file
        (tmp_path / name).write_bytes((ASSETS / name).read_bytes())
    data = bytearray((tmp_path / "vocab.bpe").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "vocab.bpe").write_bytes(bytes(data))
    assert vocab_mismatches(tmp_path, pinned) == ["vocab.bpe"]


# ---------------------------------------------------------------- (b) tiktoken's ids
@pytest.fixture(scope="module")
def lines():
    return read_json("tiktoken_lines.json")


def line_mismatches(encode, rows) -> list[int]:
    """Indices of the ``[text, ids]`` rows where ``encode(text) != ids``."""
    return [i for i, (text, ids) in enumerate(rows) if encode(text) != ids]


def chunk_text(texts: list[str], start: int, stop: int) -> str:
    return "\n".join(texts[start:stop]) + "\n"


def test_fixture_covers_the_hard_cases(lines):
    texts = [t for t, _ in lines["lines"]]
    assert len(texts) >= 4000 and len(lines["chunks"]) >= 5
    everything = "".join(texts)
    names = {unicodedata.name(c, "").split(" ")[0] for c in set(everything)}
    for script in ("CJK", "ARABIC", "DEVANAGARI", "CYRILLIC", "GREEK", "HEBREW", "THAI", "HANGUL",
                   "HIRAGANA", "ARMENIAN"):
        assert script in names, script
    assert "\u200d" in everything and "\U0001F3FD" in everything             # ZWJ, skin tone
    assert any(unicodedata.combining(c) for c in everything)
    for needle in ("def ", "#include", '{"', " " * 16, "\t\t", "\n\n\n", "\r\n", "'ll", "'VE",
                   "9876", EOT + EOT):
        assert needle in everything, needle
    assert any(t.endswith((" ", "\t", "\n")) for t in texts)                 # trailing whitespace
    assert len(lines["special"]) >= 100


def test_gpt2_encode_ordinary_equals_tiktoken_line_by_line(tok, lines):
    bad = line_mismatches(tok.encode_ordinary, lines["lines"])
    assert bad == [], f"{len(bad)} lines differ; the first: {lines['lines'][bad[0]][0]!r}"


def test_gpt2_encode_with_special_equals_tiktoken(tok, lines):
    texts = [t for t, _ in lines["lines"]]
    rows = [[texts[i], ids] for i, ids in lines["special"]]
    assert all(EOT in t for t, _ in rows) and any(50256 in ids for _, ids in rows)
    assert line_mismatches(lambda s: tok.encode(s, allowed_special={EOT}), rows) == []
    # without a special token in it, encode() with its defaults is encode_ordinary
    plain = [row for row in lines["lines"] if EOT not in row[0]]
    assert line_mismatches(tok.encode, plain) == []
    with pytest.raises(ValueError, match="endoftext"):                        # tiktoken's default
        tok.encode(rows[0][0])


def test_gpt2_equals_tiktoken_on_multi_line_chunks(tok, lines):
    texts = [t for t, _ in lines["lines"]]
    for start, stop, ordinary, special in lines["chunks"]:
        text = chunk_text(texts, start, stop)
        assert tok.encode_ordinary(text) == ordinary, (start, stop)
        if special is not None:
            assert tok.encode(text, allowed_special={EOT}) == special, (start, stop)
    assert any(s is not None for *_, s in lines["chunks"])


def test_tiktoken_line_check_can_fail(tok, lines):
    rows = copy.deepcopy(lines["lines"][:400])
    k = 321
    rows[k][1][len(rows[k][1]) // 2] += 1                                     # one id, off by one
    assert line_mismatches(tok.encode_ordinary, rows) == [k]
    texts = [t for t, _ in lines["lines"]]
    special = [[texts[i], list(ids)] for i, ids in lines["special"][:20]]
    special[5][1][special[5][1].index(50256)] = 50255                        # one special id
    assert line_mismatches(lambda s: tok.encode(s, allowed_special={EOT}), special) == [5]
    start, stop, ordinary, _ = lines["chunks"][0]
    assert tok.encode_ordinary(chunk_text(texts, start, stop)) != ordinary[:-1] + [ordinary[-1] + 1]


# ---------------------------------------------------------------- (c) educational BPE training
def first_difference(got: list[bytes], want: list[bytes]) -> int | None:
    """Index of the first token that differs (or where one list ends early), None if equal."""
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


@pytest.fixture(scope="module")
def edu():
    return read_json("edu_bpe_train_verdict_1000.json")


@pytest.mark.parametrize("run", ["gpt2", "r50k"])
def test_train_equals_tiktoken_educational_bpe_train(verdict, edu, run):
    assert hashlib.sha256(verdict.encode("utf-8")).hexdigest() == edu["text_sha256"]
    spec = next(r for r in edu["runs"] if r["name"] == run)
    want = [bytes.fromhex(t) for t in spec["tokens"]]
    assert edu["vocab_size"] == 1000 and len(want) == 1000 - 256
    if run == "gpt2":      # tiktoken's educational example pattern: OpenAI's, minigpt's default
        tok = Tokenizer.train(verdict, vocab_size=1000)
    else:
        assert spec["pattern"] == R50K_PATTERN
        tok = Tokenizer.train(verdict, vocab_size=1000, pattern=R50K_PATTERN)
    got = [b for b, r in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1]) if r >= 256]
    assert first_difference(got, want) is None
    assert tok.mergeable_ranks == {**{bytes([i]): i for i in range(256)},
                                   **{t: 256 + k for k, t in enumerate(want)}}
    assert [a + b for a, b in tok.merges] == want                             # each merge's pair


def test_educational_train_check_can_fail(edu):
    want = [bytes.fromhex(t) for t in edu["runs"][0]["tokens"]]
    swapped = want[:500] + [want[501], want[500]] + want[502:]                # two merges swapped
    assert first_difference(swapped, want) == 500
    one_byte = want[:700] + [want[700] + b"x"] + want[701:]
    assert first_difference(one_byte, want) == 700
    assert first_difference(want[:-1], want) == len(want) - 1


# ---------------------------------------------------------------- (d) the training model
@pytest.fixture(scope="module")
def torch_ref():
    with safe_open(FIXTURES / "gpt_train_untied_T33.safetensors", framework="numpy") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(f.metadata()["fixture"])
    return info, out


def fixture_model(info: dict, tensors: dict, **changes) -> minigpt.GPTModel:
    cfg = minigpt.GPTConfig(**info["config"]).replace(**changes)
    model = minigpt.GPTModel(cfg, seed=None, dtype=np.float64)
    model.load_state_dict({k.removeprefix("weight."): v for k, v in tensors.items()
                           if k.startswith("weight.")}, strict=True)
    return model


def worst_rel(got: dict, want: dict) -> tuple[float, str]:
    """Largest per-tensor relative error max|got - want| / max|want| and its tensor's name."""
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    return max((float(np.abs(got[k] - want[k]).max() / np.abs(want[k]).max()), k) for k in want)


def model_outputs(model, tensors) -> dict[str, np.ndarray]:
    idx, targets = tensors["idx"], tensors["targets"]
    out = {"logits": model.forward(idx)}
    loss, grads = model.loss_and_grads(idx, targets)
    out["loss"] = np.asarray(loss)
    out |= {"grad." + k: g.copy() for k, g in grads.items()}
    return out


def expected_outputs(tensors) -> dict[str, np.ndarray]:
    return {k: v for k, v in tensors.items() if k in ("logits", "loss") or k.startswith("grad.")}


def test_fixture_is_the_books_training_configuration(torch_ref):
    info, tensors = torch_ref
    cfg = minigpt.GPTConfig(**info["config"])
    assert cfg.tie_weights is False and cfg.qkv_bias is False and cfg.drop_rate == 0.0
    B, T = tensors["idx"].shape
    assert T == 33 and T >= BLAS_MIN_T and cfg.context_length >= T        # numba: BLAS attention
    assert "weight.lm_head.weight" in tensors and "grad.lm_head.weight" in tensors
    assert not any(k.endswith("c_attn.bias") for k in tensors)
    assert (tensors["targets"] == -100).sum() == 3
    assert tensors["logits"].shape == (B, T, cfg.vocab_size)


@pytest.mark.parametrize("path", ["numba", "numpy"])
def test_training_model_equals_pytorch(torch_ref, path, monkeypatch):
    info, tensors = torch_ref
    model = fixture_model(info, tensors)
    calls = []                                   # which attention kernels the numba path takes
    import kernels.attention_blas as blas

    for name in ("heads_forward", "heads_backward"):  # the BLAS attention kernels, by module
        kernel = getattr(blas, name)
        monkeypatch.setattr(blas, name, lambda *a, _k=kernel, _n=name, **kw: (
            calls.append(_n), _k(*a, **kw))[1])
    with minigpt.backend.use(path):
        got = model_outputs(model, tensors)
    err, name = worst_rel(got, expected_outputs(tensors))
    assert len(got) == 2 + len(model.params) == 29
    assert err <= TOL, f"{name}: {err:.2e}"
    L = model.cfg.n_layers       # forward, then forward + backward of the loss; the backward
    want_calls = {"heads_forward": 3 * L, "heads_backward": L}   # recomputes the weights
    assert {n: calls.count(n) for n in set(calls)} == (want_calls if path == "numba" else {})


def test_dropout_rate_without_rng_is_the_same_model(torch_ref):
    """Dropout runs only with an rng: drop_rate 0.1 without one gives PyTorch's eval outputs."""
    info, tensors = torch_ref
    model = fixture_model(info, tensors, drop_rate=0.1)
    err, name = worst_rel(model_outputs(model, tensors), expected_outputs(tensors))
    assert err <= TOL, f"{name}: {err:.2e}"


def test_training_model_check_can_fail(torch_ref):
    info, tensors = torch_ref
    want = expected_outputs(tensors)
    got = model_outputs(fixture_model(info, tensors), tensors)
    g = got["grad.h.1.attn.c_attn.weight"]                      # one element, 1e-6 of the scale
    g[3, 40] += 1e-6 * np.abs(want["grad.h.1.attn.c_attn.weight"]).max()
    err, name = worst_rel(got, want)
    assert name == "grad.h.1.attn.c_attn.weight" and err > TOL
    # a model that differs by 1e-6 (relative) in one weight misses the fixture as well
    model = fixture_model(info, tensors)
    model.params["lm_head.weight"][7, 5] *= 1 + 1e-6
    err, _ = worst_rel(model_outputs(model, tensors), want)
    assert err > TOL
