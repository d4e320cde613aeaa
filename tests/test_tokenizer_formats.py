"""Loading and saving vocabularies: OpenAI encoder.json+vocab.bpe, Hugging Face vocab.json+merges.txt,
tiktoken rank files; each loaded GPT-2 gives the same ids, and a saved tokenizer loads back equal."""
import json
import os

import pytest

from minigpt.tokenizer import formats as fmt
from minigpt.tokenizer import Tokenizer

ASSETS = os.path.join(os.path.dirname(__file__), "..", "minigpt", "assets", "gpt2")
SAMPLE = ("Hello, world! It's 2024 -- naïve café, 日本語, 😀.\n    return x  \n\n"
          "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough")


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.gpt2()


def test_byte_map():
    m = fmt.bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("A")] == "A"
    assert fmt.str_to_token(fmt.token_to_str(bytes(range(256)))) == bytes(range(256))


def test_openai_files_equal_tiktoken_file(gpt2, verdict):
    tok = Tokenizer.from_openai_files(os.path.join(ASSETS, "encoder.json"), os.path.join(ASSETS, "vocab.bpe"))
    assert tok.n_vocab == 50257 and tok.eot_token == 50256
    assert tok.mergeable_ranks == gpt2.mergeable_ranks
    assert len(tok.merges) == 50_000
    assert tok.encode(verdict) == gpt2.encode(verdict)
    assert tok.encode(SAMPLE) == gpt2.encode(SAMPLE)


def test_hf_roundtrip_of_gpt2(gpt2, tmp_path, verdict):
    files = gpt2.save(str(tmp_path), format="hf")
    assert set(files) == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    # the merges recovered from the ranks are GPT-2's own vocab.bpe, byte for byte
    with open(os.path.join(ASSETS, "vocab.bpe"), "rb") as f:
        assert (tmp_path / "merges.txt").read_bytes() == f.read()
    with open(os.path.join(ASSETS, "encoder.json"), encoding="utf-8") as f:
        assert json.loads((tmp_path / "vocab.json").read_text("utf-8")) == json.load(f)
    tok = Tokenizer.from_hf_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert tok.encode(verdict) == gpt2.encode(verdict)
    back = Tokenizer.load(str(tmp_path))
    assert back.encode(SAMPLE, allowed_special="all") == gpt2.encode(SAMPLE, allowed_special="all")


def test_tiktoken_save_is_byte_identical(gpt2, tmp_path):
    gpt2.save(str(tmp_path), format="tiktoken")
    with open(os.path.join(ASSETS, "gpt2.tiktoken"), "rb") as f:
        assert (tmp_path / "tokenizer.tiktoken").read_bytes() == f.read()
    back = Tokenizer.load(str(tmp_path))
    assert back.encode(SAMPLE) == gpt2.encode(SAMPLE) and back.eot_token == 50256


@pytest.mark.parametrize("format", ["hf", "openai", "tiktoken"])
def test_trained_tokenizer_roundtrip(verdict, tmp_path, format):
    tok = Tokenizer.train(verdict, 256 + 120, special_tokens=["<|endoftext|>"])
    tok.save(str(tmp_path), format=format)
    back = Tokenizer.load(str(tmp_path))
    assert back.mergeable_ranks == tok.mergeable_ranks
    assert back.special_tokens == {"<|endoftext|>": 376}
    s = verdict[:3000] + "<|endoftext|>" + SAMPLE
    assert back.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")


def test_bad_files(tmp_path):
    (tmp_path / "v.json").write_text("[1, 2]")
    (tmp_path / "m.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="JSON object"):
        Tokenizer.from_hf_files(str(tmp_path / "v.json"), str(tmp_path / "m.txt"))
    (tmp_path / "v.json").write_text('{"a": 0}')
    with pytest.raises(ValueError, match="256 single bytes"):
        Tokenizer.from_hf_files(str(tmp_path / "v.json"), str(tmp_path / "m.txt"))
    (tmp_path / "m.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="m.txt:2"):
        fmt.read_vocab_and_merges(str(tmp_path / "v.json"), str(tmp_path / "m.txt"))
    (tmp_path / "r.tiktoken").write_text("not-base64!! 1\n")
    with pytest.raises(ValueError, match="r.tiktoken:1"):
        fmt.read_tiktoken(str(tmp_path / "r.tiktoken"))
    with pytest.raises(ValueError, match="format must be"):
        Tokenizer.gpt2().save(str(tmp_path), format="pickle")
