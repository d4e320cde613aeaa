"""Loading and saving GPT-2 checkpoints: parity with transformers (via a fixture), names, strictness.

The fixture tests/fixtures/gpt2_tiny was written by transformers itself (see its README and
benchmarks/check_transformers_parity.py); no torch is imported here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import minigpt
from minigpt.inference.generate import generate
from minigpt.weights.pretrained import (
    config_from_hf,
    from_pretrained,
    hf_state,
    load_model,
    save_pretrained,
)
from minigpt.training.checkpoint import save_tensors as save_file
from minigpt.weights.pretrained import SafetensorsError


def load_file(path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


FIXTURE = Path(__file__).parent / "fixtures" / "gpt2_tiny"
TOL = 1e-9  # float64 round-off through two layers is ~1e-15; 1e-9 leaves room, catches any bug


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.fixture(scope="module")
def expected():
    with safe_open(str(FIXTURE / "expected.safetensors"), framework="numpy") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        out["grad_norm_names"] = json.loads(f.metadata()["grad_norm_names"])
    return out


@pytest.fixture(scope="module")
def hf_weights():
    return {k.removeprefix("transformer."): v
            for k, v in load_file(FIXTURE / "model.safetensors").items()}


def tiny_cfg(**kw) -> minigpt.GPTConfig:
    base = dict(vocab_size=257, context_length=64, emb_dim=48, n_heads=3, n_layers=2,
                drop_rate=0.0, qkv_bias=True, tie_weights=True)
    base.update(kw)
    return minigpt.GPTConfig(**base)


def perturbed_model(cfg, seed=0, dtype=np.float64) -> minigpt.GPTModel:
    m = minigpt.GPTModel(cfg, seed=seed, dtype=dtype)
    m.flat_params += (0.1 * np.random.default_rng(seed).standard_normal(m.flat_params.shape)
                      ).astype(dtype)
    return m


# --- parity with transformers ------------------------------------------------------------------
def test_fixture_was_written_by_transformers():
    keys = set(load_file(FIXTURE / "model.safetensors"))
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    assert json.loads((FIXTURE / "config.json").read_text())["n_head"] == 3


def test_logits_loss_gradients_match_transformers(expected):
    m = from_pretrained(FIXTURE, dtype=np.float64)
    assert m.cfg == tiny_cfg()
    assert rel(m.forward(expected["idx"]), expected["logits"]) < TOL
    loss, grads = m.loss_and_grads(expected["idx"], expected["targets"])
    assert rel(loss, expected["loss"]) < TOL
    names = expected["grad_norm_names"]
    assert sorted(grads) == sorted(names)          # same parameters, tied head not duplicated
    norms = np.array([np.linalg.norm(grads[k]) for k in names])
    assert rel(norms, expected["grad_norms"]) < TOL
    for key in [k for k in expected if k.startswith("grad.")]:
        assert rel(grads[key[5:]], expected[key]) < TOL, key


def test_greedy_tokens_match_transformers(expected):
    m = from_pretrained(FIXTURE, dtype=np.float64)
    prompt, want = expected["prompt"], expected["greedy"]
    n_new = want.shape[1] - prompt.shape[1]
    assert np.array_equal(generate(m, prompt, max_new_tokens=n_new, temperature=0.0), want)
    idx = prompt.copy()                             # and the plain argmax loop, no KV cache
    for _ in range(n_new):
        idx = np.concatenate([idx, m.forward(idx)[:, -1].argmax(-1)[:, None]], axis=1)
    assert np.array_equal(idx, want)


def test_float32_load_is_exact_copy_of_the_file(hf_weights):
    m = from_pretrained(FIXTURE, dtype=np.float32)
    assert m.dtype == np.float32
    for name, p in m.params.items():
        assert np.array_equal(p, hf_weights[name]), name


def test_half_precision_files_are_converted(tmp_path, hf_weights):
    d = write_variant(tmp_path, lambda s: s.update({k: v.astype(np.float16) for k, v in s.items()}))
    m = from_pretrained(d, dtype=np.float64)
    for name, p in m.params.items():
        assert np.array_equal(p, hf_weights[name].astype(np.float16).astype(np.float64)), name


# --- the book's converted names ----------------------------------------------------------------
def to_book(s: dict[str, np.ndarray], C: int, L: int, T: int) -> dict[str, np.ndarray]:
    """HF names -> the book's module names, nn.Linear (out, in) layout (ch05 load_weights_into_gpt)."""
    out = {"tok_emb.weight": s["wte.weight"], "pos_emb.weight": s["wpe.weight"],
           "final_norm.scale": s["ln_f.weight"], "final_norm.shift": s["ln_f.bias"],
           "out_head.weight": s.get("lm_head.weight", s["wte.weight"])}
    for i in range(L):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        q, k, v = np.split(s[h + "attn.c_attn.weight"], 3, axis=-1)
        out[b + "att.W_query.weight"], out[b + "att.W_key.weight"] = q.T.copy(), k.T.copy()
        out[b + "att.W_value.weight"] = v.T.copy()
        if h + "attn.c_attn.bias" in s:
            qb, kb, vb = np.split(s[h + "attn.c_attn.bias"], 3)
            out[b + "att.W_query.bias"], out[b + "att.W_key.bias"] = qb, kb
            out[b + "att.W_value.bias"] = vb
        out[b + "att.out_proj.weight"] = s[h + "attn.c_proj.weight"].T.copy()
        out[b + "att.out_proj.bias"] = s[h + "attn.c_proj.bias"]
        out[b + "ff.layers.0.weight"] = s[h + "mlp.c_fc.weight"].T.copy()
        out[b + "ff.layers.0.bias"] = s[h + "mlp.c_fc.bias"]
        out[b + "ff.layers.2.weight"] = s[h + "mlp.c_proj.weight"].T.copy()
        out[b + "ff.layers.2.bias"] = s[h + "mlp.c_proj.bias"]
        out[b + "norm1.scale"], out[b + "norm1.shift"] = s[h + "ln_1.weight"], s[h + "ln_1.bias"]
        out[b + "norm2.scale"], out[b + "norm2.shift"] = s[h + "ln_2.weight"], s[h + "ln_2.bias"]
        out[b + "att.mask"] = np.triu(np.ones((T, T), np.float32), k=1)
    return out


def test_book_names_give_the_same_logits(tmp_path, hf_weights, expected):
    path = tmp_path / "gpt2-tiny.safetensors"
    save_file(to_book(hf_weights, 48, 2, 64), path)
    m = from_pretrained(path, dtype=np.float64, n_heads=3)
    assert m.cfg == tiny_cfg()                      # V, T, C, L, bias inferred; head found tied
    assert rel(m.forward(expected["idx"]), expected["logits"]) < TOL


def test_book_untied_head_and_no_qkv_bias(tmp_path):
    cfg = tiny_cfg(qkv_bias=False, tie_weights=False)
    m = perturbed_model(cfg)
    path = tmp_path / "book.safetensors"
    save_file(to_book(dict(m.params), 48, 2, 64), path)
    back = from_pretrained(path, dtype=np.float64, n_heads=3)
    assert back.cfg == cfg
    assert np.array_equal(back.flat_params, m.flat_params)


def test_heads_needed_for_a_nonstandard_width_without_config(tmp_path, hf_weights):
    path = tmp_path / "weights.safetensors"
    save_file(hf_weights, path)
    with pytest.raises(ValueError, match="n_heads"):
        from_pretrained(path)
    assert from_pretrained(path, n_heads=3).cfg == tiny_cfg()


def test_config_beside_model_safetensors_is_used(tmp_path):
    shutil.copy(FIXTURE / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    assert from_pretrained(tmp_path / "model.safetensors").cfg == tiny_cfg()


def write_shards(directory: Path, n_shards: int = 3) -> dict[str, str]:
    """The fixture split over ``n_shards`` files + model.safetensors.index.json (transformers'
    layout for a model bigger than max_shard_size). Returns the weight map."""
    directory.mkdir(exist_ok=True)
    shutil.copy(FIXTURE / "config.json", directory / "config.json")
    s = load_file(FIXTURE / "model.safetensors")
    names = sorted(s)
    weight_map = {}
    for j in range(n_shards):
        shard = f"model-{j + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: s[k] for k in names[j::n_shards]}
        save_file(part, directory / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return weight_map


def test_sharded_checkpoint(tmp_path, expected):
    write_shards(tmp_path)
    for where in (tmp_path, tmp_path / "model.safetensors.index.json"):
        m = from_pretrained(where, dtype=np.float64)
        assert m.cfg == tiny_cfg()
        assert rel(m.forward(expected["idx"]), expected["logits"]) < TOL


def test_sharded_checkpoint_errors(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    weight_map = write_shards(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors.*incomplete"):
        from_pretrained(tmp_path)
    (tmp_path / "moved.safetensors").rename(tmp_path / "model-00002-of-00003.safetensors")
    wrong = dict(weight_map, **{"transformer.wte.weight": "model-00003-of-00003.safetensors"})
    index.write_text(json.dumps({"weight_map": wrong}))
    with pytest.raises(SafetensorsError, match=r"disagree.*transformer\.wte\.weight"):
        from_pretrained(tmp_path)
    index.write_text("{not json")
    with pytest.raises(SafetensorsError, match="not a valid JSON index"):
        from_pretrained(tmp_path)


# --- saving ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("qkv_bias,tied", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_pretrained_round_trip(tmp_path, qkv_bias, tied, dtype):
    cfg = tiny_cfg(qkv_bias=qkv_bias, tie_weights=tied, drop_rate=0.1)
    m = perturbed_model(cfg, dtype=dtype)
    save_pretrained(m, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 48
    assert config["tie_word_embeddings"] is tied
    # the independent reader (the safetensors package) sees GPT2LMHeadModel's names
    import safetensors.numpy
    raw = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in raw) is (not tied)
    assert "transformer.h.1.attn.c_attn.bias" in raw            # always present in GPT-2's format
    for name, p in m.params.items():
        key = name if name == "lm_head.weight" else "transformer." + name
        assert raw[key].dtype == dtype and np.array_equal(raw[key], p)
    back = from_pretrained(tmp_path, dtype=dtype, drop_rate=0.1)
    assert back.cfg == cfg and np.array_equal(back.flat_params, m.flat_params)


def test_save_can_cast(tmp_path):
    m = perturbed_model(tiny_cfg())
    save_pretrained(m, tmp_path, dtype=np.float32)
    back = from_pretrained(tmp_path, dtype=np.float64)
    assert np.array_equal(back.flat_params, m.flat_params.astype(np.float32).astype(np.float64))


def test_gptmodel_methods_delegate(tmp_path):
    m = perturbed_model(tiny_cfg(), dtype=np.float32)
    minigpt.save_pretrained(m, tmp_path)
    back = minigpt.from_pretrained(tmp_path, dtype=np.float32)
    assert np.array_equal(back.flat_params, m.flat_params)


# --- strictness --------------------------------------------------------------------------------
def write_variant(tmp_path, change) -> Path:
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    s = dict(load_file(FIXTURE / "model.safetensors"))
    change(s)
    save_file(s, tmp_path / "model.safetensors")
    return tmp_path


def test_missing_tensor_is_named(tmp_path):
    d = write_variant(tmp_path, lambda s: s.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(SafetensorsError, match=r"missing \(1\): h\.1\.mlp\.c_fc\.bias"):
        from_pretrained(d)


def test_unexpected_tensor_is_named(tmp_path):
    d = write_variant(tmp_path, lambda s: s.update({"transformer.h.2.ln_1.weight": np.ones(48)}))
    with pytest.raises(SafetensorsError, match=r"unexpected \(1\): h\.2\.ln_1\.weight"):
        from_pretrained(d)


def test_wrong_shape_is_named(tmp_path):
    d = write_variant(tmp_path, lambda s: s.update({"transformer.wpe.weight": np.zeros((32, 48))}))
    with pytest.raises(SafetensorsError, match=r"wpe\.weight: file \(32, 48\), expected \(64, 48\)"):
        from_pretrained(d)


def test_known_buffers_are_skipped(tmp_path, expected):
    def add(s):
        for i in range(2):
            s[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
            s[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    d = write_variant(tmp_path, add)
    m = from_pretrained(d, dtype=np.float64)
    assert rel(m.forward(expected["idx"]), expected["logits"]) < TOL


def test_head_must_equal_wte_when_config_says_tied(tmp_path):
    def add(s):
        s["lm_head.weight"] = s["transformer.wte.weight"] + 1.0
    with pytest.raises(SafetensorsError, match="tied"):
        from_pretrained(write_variant(tmp_path, add))
    # an identical stored copy is fine
    d2 = tmp_path / "ok"
    d2.mkdir()
    write_variant(d2, lambda s: s.update({"lm_head.weight": s["transformer.wte.weight"].copy()}))
    assert from_pretrained(d2).cfg.tie_weights


def test_untied_head_required_when_config_says_untied(tmp_path):
    d = write_variant(tmp_path, lambda s: None)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SafetensorsError, match=r"missing \(1\): lm_head\.weight"):
        from_pretrained(d)


def test_nonfinite_weights_are_refused(tmp_path):
    def poison(s):
        s["transformer.h.0.ln_2.bias"] = s["transformer.h.0.ln_2.bias"].copy()
        s["transformer.h.0.ln_2.bias"][3] = np.nan
    with pytest.raises(SafetensorsError, match=r"non-finite.*h\.0\.ln_2\.bias"):
        from_pretrained(write_variant(tmp_path, poison))


def test_truncated_file_is_reported(tmp_path):
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    data = (FIXTURE / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(SafetensorsError, match="incomplete metadata.*truncated or interrupted"):
        from_pretrained(tmp_path)


def test_pickle_files_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(FileNotFoundError, match="pickle"):
        from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="never"):
        from_pretrained(tmp_path / "pytorch_model.bin")


def test_unknown_name_or_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt2-medium"):
        from_pretrained("gpt3")


@pytest.mark.parametrize("change,match", [
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"activation_function": "relu"}, "relu"),
    ({"n_inner": 100}, "n_inner"),
    ({"model_type": "llama"}, "llama"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"n_head": 5}, r"config\.json describes an impossible GPT-2 \(n_embd=48, n_head=5"),
])
def test_configs_minigpt_cannot_run_are_refused(change, match):
    d = json.loads((FIXTURE / "config.json").read_text())
    d.update(change)
    with pytest.raises(ValueError, match=match):
        config_from_hf(d)


def test_hf_state_never_copies_params():
    m = perturbed_model(tiny_cfg(), dtype=np.float32)
    s = hf_state(m)
    assert np.shares_memory(s["transformer.wte.weight"], m.flat_params)


def test_load_model_reads_training_checkpoints(tmp_path):
    from minigpt.training.checkpoint import save_checkpoint
    m = perturbed_model(tiny_cfg(tie_weights=False), dtype=np.float32)
    step_dir = save_checkpoint(tmp_path, m, step=3)
    for where in (tmp_path, step_dir):            # the run directory (follows latest) or one step
        back = load_model(where, dtype=np.float64)
        assert back.dtype == np.float64 and back.cfg == m.cfg
        assert np.array_equal(back.flat_params, m.flat_params.astype(np.float64))


def test_load_model_reads_hf_directories():
    assert load_model(FIXTURE, dtype=np.float32).cfg == tiny_cfg()


def test_tokenizer_files_for_gpt2_vocabulary(tmp_path):
    cfg = tiny_cfg(vocab_size=50257, emb_dim=8, n_heads=2, n_layers=1, context_length=16)
    save_pretrained(minigpt.GPTModel(cfg, seed=0), tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) == 50001
    tc = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|endoftext|>" and tc["model_max_length"] == 16
    # a different vocabulary gets no GPT-2 tokenizer files, and asking for them is an error
    other = tmp_path / "other"
    save_pretrained(perturbed_model(tiny_cfg()), other)
    assert not (other / "vocab.json").exists()
    with pytest.raises(ValueError, match="50257"):
        save_pretrained(perturbed_model(tiny_cfg()), other, tokenizer=True)
