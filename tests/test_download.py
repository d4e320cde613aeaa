"""Downloading by name through huggingface_hub, against a local server on 127.0.0.1 that answers
like the hub (and misbehaves on purpose). No test touches the internet.

The fake hub serves a small generated checkpoint as ``openai-community/gpt2`` under
``/<mode>/openai-community/gpt2/resolve/main/<file>`` (the endpoint is ``http://127.0.0.1:<port>/<mode>``).
Like huggingface.co, it answers an LFS file (model.safetensors) with a 302 to a CDN on another host
(``localhost``) carrying ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``,
and a small file (config.json) directly with its git ``ETag``. Modes: ok, badsha (advertises a
wrong sha256), cut (the CDN drops the first transfer half-way), 404, noconfig (404 for config.json
only), 500, 500once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

import minigpt
from minigpt.weights import download
from minigpt.weights.download import ChecksumError, DownloadError, model_dir
from minigpt.weights.pretrained import from_pretrained, save_pretrained

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_DIR = "models--openai-community--gpt2"


class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.log: list[tuple[str, str, str | None]] = []   # (method, path, Range header)
        self.count: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"           # one request per connection: a cut is a cut

            def log_message(self, *args):           # keep pytest output clean
                pass

            def do_HEAD(self):
                hub.handle(self, body=False)

            def do_GET(self):
                hub.handle(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def endpoint(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, method=None, file="model.safetensors"):
        return [(m, p, r) for m, p, r in self.log if p.endswith(file) and method in (None, m)]

    def handle(self, h: BaseHTTPRequestHandler, body: bool):
        rng = h.headers.get("Range")
        self.log.append((h.command, h.path, rng))
        n = self.count[h.path] = self.count.get(h.path, 0) + 1   # HEAD and GET alike
        parts = h.path.strip("/").split("/")
        if parts[0] == "cdn":                       # /cdn/<mode>/<file>: the bytes, Range honoured
            return self.serve_bytes(h, parts[1], self.files[parts[2]], rng, body, n)
        mode, file = parts[0], parts[-1]
        data = self.files.get(file)
        if data is None or mode == "404" or (mode == "noconfig" and file == "config.json"):
            return self.error(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
        if mode == "500" or (mode == "500once" and n == 1):
            return self.error(h, 500, {})
        if file.endswith(".safetensors"):           # an LFS file: redirect to the CDN
            sha = hashlib.sha256(data + (b"x" if mode == "badsha" else b"")).hexdigest()
            h.send_response(302)
            h.send_header("Location", f"http://localhost:{self.port}/cdn/{mode}/{file}")
            h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("ETag", f'"{sha}"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        git_sha = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        h.send_response(200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{git_sha}"')
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
        return None

    @staticmethod
    def serve_bytes(h, mode, data, rng, body, n):
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        chunk = data[start:]
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(chunk)))
        h.end_headers()
        if not body:
            return
        if mode == "cut" and n == 1:
            h.wfile.write(chunk[: len(chunk) // 2])   # then the connection closes
            h.wfile.flush()
            return
        h.wfile.write(chunk)

    @staticmethod
    def error(h, code, headers):
        msg = f"error {code}".encode()
        h.send_response(code)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(msg)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(msg)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = minigpt.GPTConfig(vocab_size=101, context_length=16, emb_dim=24, n_heads=2, n_layers=2,
                            drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = minigpt.GPTModel(cfg, seed=3, dtype=np.float32)
    d = save_pretrained(model, tmp_path_factory.mktemp("ckpt"), tokenizer=False)
    files = {f: (d / f).read_bytes() for f in ("config.json", "model.safetensors")}
    return model, files


@pytest.fixture
def hub(checkpoint):
    s = FakeHub(checkpoint[1])
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """An empty HF cache and hand folder in tmp_path, online, and no real waiting between retries
    (huggingface_hub backs off 1, 2, 4, 8, 8 s): the waits are recorded instead."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "by_hand"))
    for var in ("MINIGPT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)                   # so "gpt2" is not a local path
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


def test_fresh_download_lands_in_the_hf_cache_and_is_reused_without_a_request(tmp_path, hub,
                                                                               checkpoint):
    folder = model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False)
    assert folder == tmp_path / "hf" / REPO_DIR / "snapshots" / COMMIT
    for f, data in checkpoint[1].items():
        assert (folder / f).read_bytes() == data
    sha = hashlib.sha256(checkpoint[1]["model.safetensors"]).hexdigest()
    assert (folder / "model.safetensors").resolve() == tmp_path / "hf" / REPO_DIR / "blobs" / sha
    assert [(m, r) for m, _, r in hub.requests()] == [("HEAD", None), ("GET", None)]
    n = len(hub.log)
    assert model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False) == folder
    assert len(hub.log) == n                      # the cache answered: no request at all


def test_end_to_end_from_pretrained_by_name(hub, checkpoint):
    m = from_pretrained("gpt2", progress=False, endpoint=hub.endpoint("ok"))
    assert np.array_equal(m.flat_params, checkpoint[0].flat_params)


def test_hf_environment_variables_behave_as_everywhere_else(tmp_path, hub, checkpoint):
    """HF_HOME and HF_ENDPOINT (read by huggingface_hub when it is imported: hence subprocesses)
    place and source the download; then HF_HUB_OFFLINE=1 with the server gone loads from the cache."""
    code = ("from minigpt.weights import download; "
            "print(download.model_dir('gpt2', progress=False))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MINIGPT_"))}
    env.update(HF_HOME=str(tmp_path / "home"), HF_ENDPOINT=hub.endpoint("ok"),
               MINIGPT_CACHE=str(tmp_path / "by_hand"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    want = tmp_path / "home" / "hub" / REPO_DIR / "snapshots" / COMMIT
    assert out.stdout.strip() == str(want)
    assert (want / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    hub.close()
    n = len(hub.log)
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == str(want) and len(hub.log) == n


def test_offline_with_a_cached_file_works(tmp_path, hub, checkpoint, monkeypatch):
    model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False)
    n = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = from_pretrained("gpt2", endpoint=hub.endpoint("ok"))
    assert np.array_equal(m.flat_params, checkpoint[0].flat_params) and len(hub.log) == n


@pytest.mark.parametrize("var", ["MINIGPT_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_error_names_the_url_and_the_path(tmp_path, monkeypatch, checkpoint, var):
    monkeypatch.setenv(var, "1")
    want = tmp_path / "by_hand" / "gpt2-medium" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        from_pretrained("gpt2-medium")
    msg = str(e.value)
    assert str(want) in msg and str(tmp_path / "hf") in msg
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors" in msg
    # put the files there by hand: now it loads, still offline
    want.parent.mkdir(parents=True)
    for f, data in checkpoint[1].items():
        (want.parent / f).write_bytes(data)
    m = from_pretrained("gpt2-medium")
    assert np.array_equal(m.flat_params, checkpoint[0].flat_params)


def test_offline_error_names_the_endpoints_url(hub, monkeypatch):
    monkeypatch.setenv("MINIGPT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=rf"{hub.endpoint('ok')}/openai-community/gpt2/"):
        model_dir("gpt2", endpoint=hub.endpoint("ok"))
    assert hub.log == []


def test_wrong_advertised_sha256_is_refused_and_deleted(tmp_path, hub):
    with pytest.raises(ChecksumError, match="sha256 [0-9a-f]{64}, hub-advertised") as e:
        model_dir("gpt2", endpoint=hub.endpoint("badsha"), progress=False)
    assert "deleted" in str(e.value)
    assert not list((tmp_path / "hf" / REPO_DIR / "blobs").iterdir())
    assert not (tmp_path / "hf" / REPO_DIR / "snapshots" / COMMIT / "model.safetensors").exists()


def test_expected_sha256_is_checked(tmp_path, hub, checkpoint):
    with pytest.raises(ValueError, match="64 hex"):
        model_dir("gpt2", endpoint=hub.endpoint("ok"), sha256="1234")
    with pytest.raises(ChecksumError, match="expected abab"):
        model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False, sha256="ab" * 32)
    good = hashlib.sha256(checkpoint[1]["model.safetensors"]).hexdigest()
    folder = model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False, sha256=good.upper())
    assert (folder / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    with pytest.raises(ChecksumError, match="expected cdcd"):   # a cached copy is checked too
        model_dir("gpt2", endpoint=hub.endpoint("ok"), sha256="cd" * 32)


def test_404_is_a_clear_error(tmp_path, hub):
    with pytest.raises(DownloadError) as e:
        model_dir("gpt2", endpoint=hub.endpoint("404"), progress=False)
    msg = str(e.value)
    assert "HTTP 404" in msg and f"{hub.endpoint('404')}/openai-community/gpt2/resolve" in msg
    assert f"save it as\n    {tmp_path / 'by_hand' / 'gpt2' / 'model.safetensors'}" in msg


def test_500_is_retried_then_reported(tmp_path, hub, isolated):
    with pytest.raises(DownloadError, match=r"could not download model\.safetensors.*HTTP 500"):
        model_dir("gpt2", endpoint=hub.endpoint("500"), progress=False)
    assert len(hub.requests("HEAD")) > 1 and isolated     # retried, with back-off waits
    assert not (tmp_path / "hf" / REPO_DIR / "blobs").exists() or \
        not list((tmp_path / "hf" / REPO_DIR / "blobs").iterdir())


def test_transient_500_recovers(hub, checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # config.json too
        folder = model_dir("gpt2", endpoint=hub.endpoint("500once"), progress=False)
    assert (folder / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]


def test_cut_transfer_is_resumed(hub, checkpoint, monkeypatch, isolated):
    """What huggingface_hub does with a connection dropped half-way: it waits 1 s and asks for the
    rest from the last whole chunk it received (10 MB chunks; 4 KiB here, for a 70 KB file)."""
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    data = checkpoint[1]["model.safetensors"]
    folder = model_dir("gpt2", endpoint=hub.endpoint("cut"), progress=False)
    assert (folder / "model.safetensors").read_bytes() == data
    ranges = [r for _, _, r in hub.requests("GET")]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    start = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= len(data) // 2 and start % 4096 == 0, ranges   # resumed, not restarted
    assert isolated == [1]


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError) as e:
        from_pretrained("gpt2", progress=False, endpoint="http://127.0.0.1:9")
    msg = str(e.value)
    assert "could not download model.safetensors" in msg
    assert "http://127.0.0.1:9/openai-community/gpt2/resolve/main/model.safetensors" in msg
    assert f"save it as\n    {tmp_path / 'by_hand' / 'gpt2' / 'model.safetensors'}" in msg
    assert "config.json is optional" in msg and "MINIGPT_OFFLINE=1" in msg


def test_missing_config_is_only_a_warning(hub, checkpoint):
    with pytest.warns(UserWarning, match=r"config\.json could not be downloaded \(HTTP 404"):
        folder = model_dir("gpt2", endpoint=hub.endpoint("noconfig"), progress=False)
    assert (folder / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    assert not (folder / "config.json").exists()
    n = len(hub.log)   # weights cached: no request at all (config.json is not chased every time)
    model_dir("gpt2", endpoint=hub.endpoint("noconfig"), progress=False)
    assert len(hub.log) == n


def test_concurrent_downloads_of_one_file_take_turns(hub, checkpoint):
    results, errors = [], []

    def fetch():
        try:
            results.append(model_dir("gpt2", endpoint=hub.endpoint("ok"), progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert (results[0] / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    assert len(hub.requests("GET")) == 1          # the others found the finished blob


def test_hand_folder_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIGPT_CACHE", raising=False)
    monkeypatch.setenv("MINIGPT_HOME", str(tmp_path / "home"))
    assert download.cache_dir() == tmp_path / "home"
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    assert download.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MINIGPT_CACHE")
    monkeypatch.delenv("MINIGPT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.cache_dir() == tmp_path / "xdg" / "minigpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert download.cache_dir() == Path.home() / ".cache" / "minigpt"


def test_unknown_model_name():
    with pytest.raises(ValueError, match="gpt2-xl"):
        model_dir("gpt-5")


def test_offline_weights_without_config_use_the_known_gpt2_shapes(tmp_path, monkeypatch, checkpoint):
    """For a GPT-2 name, config.json is optional; a file of the wrong size is then refused clearly."""
    monkeypatch.setenv("MINIGPT_OFFLINE", "1")
    (tmp_path / "by_hand" / "gpt2").mkdir(parents=True)
    (tmp_path / "by_hand" / "gpt2" / "model.safetensors").write_bytes(
        checkpoint[1]["model.safetensors"])
    with pytest.raises(ValueError, match=r"wte\.weight: file \(101, 24\), expected \(50257, 768\)"):
        from_pretrained("gpt2")
