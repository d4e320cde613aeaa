"""The downloader end to end against a local HTTP server on 127.0.0.1 that misbehaves on purpose.

The server serves a small generated checkpoint under /<mode>/<name>/resolve/main/<file>, where the
mode decides how it behaves: ok, cut (drops the connection half-way through the first transfer), stall (goes silent half-way),
norange (ignores Range), badsha (advertises a wrong sha256), 404, noconfig (404 for
config.json only), 500, 500once, redirect / redirectbad
(Hugging Face style: a 302 carrying X-Linked-Etag / X-Linked-Size, then a CDN without them).
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.weights import download
from minigpt.weights.download import ChecksumError, DownloadError, download_file, model_dir
from minigpt.weights.pretrained import from_pretrained, save_pretrained

FAST = dict(progress=False, retries=3, timeout=5.0, backoff=0.0)


class Server:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.log: list[tuple[str, str | None]] = []   # (path, Range header)
        self.count: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"           # one request per connection: a cut is a cut

            def log_message(self, *args):           # keep pytest output clean
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def template(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{{name}}/resolve/main/{{file}}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler):
        rng = h.headers.get("Range")
        self.log.append((h.path, rng))
        n = self.count[h.path] = self.count.get(h.path, 0) + 1
        parts = h.path.strip("/").split("/")
        mode, file = parts[0], parts[-1]
        data = self.files.get(file)
        if data is None or mode == "404" or (mode == "noconfig" and file == "config.json"):
            return self.error(h, 404)
        if mode == "500" or (mode == "500once" and n == 1):
            return self.error(h, 500)
        if mode in ("redirect", "redirectbad"):
            sha = hashlib.sha256(data).hexdigest() if mode == "redirect" else "0" * 64
            h.send_response(302)
            h.send_header("Location", f"/cdn/{file}")
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        start = 0
        if rng and mode != "norange":
            start = int(rng.split("=")[1].split("-")[0])
        body = data[start:]
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        if mode != "cdn":
            sha = hashlib.sha256(data if mode != "badsha" else data + b"x").hexdigest()
            h.send_header("ETag", f'"{sha}"')
        h.end_headers()
        if mode == "stall" and n == 1:             # half the body, then silence
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            time.sleep(1.5)
            return None
        if mode == "cut" and n == 1:
            h.wfile.write(body[: len(body) // 2])   # then the connection closes
            h.wfile.flush()
            return None
        h.wfile.write(body)
        return None

    @staticmethod
    def error(h, code):
        msg = f"error {code}".encode()
        h.send_response(code)
        h.send_header("Content-Length", str(len(msg)))
        h.end_headers()
        h.wfile.write(msg)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = minigpt.GPTConfig(vocab_size=101, context_length=16, emb_dim=24, n_heads=2, n_layers=2,
                            drop_rate=0.0, qkv_bias=True, tie_weights=True)
    model = minigpt.GPTModel(cfg, seed=3, dtype=np.float32)
    d = save_pretrained(model, tmp_path_factory.mktemp("ckpt"))
    files = {f: (d / f).read_bytes() for f in ("config.json", "model.safetensors")}
    return model, files


@pytest.fixture
def server(checkpoint):
    s = Server(checkpoint[1])
    yield s
    s.close()


def weights_requests(server) -> list[tuple[str, str | None]]:
    return [(p, r) for p, r in server.log if p.endswith("model.safetensors")]


def test_download_verifies_and_installs(tmp_path, server, checkpoint):
    folder = model_dir("gpt2", root=tmp_path, templates=[server.template("ok")], **FAST)
    assert folder == tmp_path / "gpt2"
    for f, data in checkpoint[1].items():
        assert (folder / f).read_bytes() == data
    assert not list(folder.glob("*.part"))
    assert [r for _, r in weights_requests(server)] == [None]
    # a second call uses the cache: no new request
    model_dir("gpt2", root=tmp_path, templates=[server.template("ok")], **FAST)
    assert len(server.log) == 2


def test_end_to_end_from_pretrained_by_name(tmp_path, server, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)                   # so "gpt2" is not a local path
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIGPT_BASE_URLS", server.template("ok"))
    monkeypatch.delenv("MINIGPT_OFFLINE", raising=False)
    m = from_pretrained("gpt2", progress=False)
    assert np.array_equal(m.flat_params, checkpoint[0].flat_params)
    assert (tmp_path / "cache" / "gpt2" / "model.safetensors").is_file()


def test_interrupted_transfer_is_resumed(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    dest = download_file([server.template("cut").format(name="gpt2", file="model.safetensors")],
                         tmp_path / "model.safetensors", **FAST)
    assert dest.read_bytes() == data
    ranges = [r for _, r in weights_requests(server)]
    assert ranges == [None, f"bytes={len(data) // 2}-"]   # the second request resumed half-way


def test_stalled_transfer_times_out_and_resumes(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    url = server.template("stall").format(name="gpt2", file="model.safetensors")
    dest = download_file([url], tmp_path / "model.safetensors", progress=False, retries=3,
                         timeout=0.3, backoff=0.0)
    assert dest.read_bytes() == data
    assert [r for _, r in weights_requests(server)] == [None, f"bytes={len(data) // 2}-"]


def test_existing_part_file_is_resumed(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    (tmp_path / "model.safetensors.part").write_bytes(data[:1000])
    url = server.template("ok").format(name="gpt2", file="model.safetensors")
    download_file([url], tmp_path / "model.safetensors", **FAST)
    assert (tmp_path / "model.safetensors").read_bytes() == data
    assert [r for _, r in weights_requests(server)] == ["bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    (tmp_path / "model.safetensors.part").write_bytes(b"garbage" * 100)
    url = server.template("norange").format(name="gpt2", file="model.safetensors")
    download_file([url], tmp_path / "model.safetensors", **FAST)
    assert (tmp_path / "model.safetensors").read_bytes() == data


def test_wrong_advertised_checksum_fails_and_leaves_nothing(tmp_path, server):
    url = server.template("badsha").format(name="gpt2", file="model.safetensors")
    with pytest.raises(ChecksumError, match="sha256 .*server-advertised"):
        download_file([url], tmp_path / "model.safetensors", **FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors.lock"]  # no file, no .part


def test_expected_sha256_is_checked(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    url = server.template("ok").format(name="gpt2", file="model.safetensors")
    with pytest.raises(ChecksumError, match="expected"):
        download_file([url], tmp_path / "a", sha256="ab" * 32, **FAST)
    good = hashlib.sha256(data).hexdigest()
    assert download_file([url], tmp_path / "b", sha256=good, **FAST).read_bytes() == data
    with pytest.raises(ValueError, match="64 hex"):
        download_file([url], tmp_path / "c", sha256="1234", **FAST)


def test_hf_style_redirect_headers_are_used(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    # the CDN answer carries no hash: only X-Linked-Etag on the redirect can catch this one
    bad = server.template("redirectbad").format(name="gpt2", file="model.safetensors")
    with pytest.raises(ChecksumError, match="server-advertised 0000"):
        download_file([bad], tmp_path / "x", **FAST)
    good = server.template("redirect").format(name="gpt2", file="model.safetensors")
    assert download_file([good], tmp_path / "y", **FAST).read_bytes() == data


def test_404_moves_to_the_mirror_without_retrying(tmp_path, server, checkpoint):
    model_dir("gpt2", root=tmp_path, templates=[server.template("404"), server.template("ok")],
              **FAST)
    assert (tmp_path / "gpt2" / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    assert [p.split("/")[1] for p, _ in weights_requests(server)] == ["404", "ok"]


def test_500_is_retried_then_reported(tmp_path, server):
    url = server.template("500").format(name="gpt2", file="model.safetensors")
    with pytest.raises(DownloadError, match=r"HTTP 500.*\n.*attempt 2/3.*\n.*attempt 3/3") as e:
        download_file([url], tmp_path / "model.safetensors", **FAST)
    assert "save it as" in str(e.value) and str(tmp_path / "model.safetensors") in str(e.value)
    assert len(server.log) == 3
    assert not (tmp_path / "model.safetensors").exists()


def test_transient_500_recovers(tmp_path, server, checkpoint):
    url = server.template("500once").format(name="gpt2", file="model.safetensors")
    dest = download_file([url], tmp_path / "model.safetensors", **FAST)
    assert dest.read_bytes() == checkpoint[1]["model.safetensors"]


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="connection failed"):
        download_file(["http://127.0.0.1:9/x"], tmp_path / "x", progress=False, retries=1,
                      timeout=2.0, backoff=0.0)


def test_no_network_error_says_where_to_put_the_weights(tmp_path, monkeypatch):
    """Online mode without a network (here: nothing listens on the port): the error is about the
    weights file, the one that matters, and says where to save it by hand."""
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIGPT_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    dead = "http://127.0.0.1:9/{name}/resolve/main/{file}"
    with pytest.raises(DownloadError) as e:
        from_pretrained("gpt2", progress=False, templates=[dead], retries=1, timeout=2.0,
                        backoff=0.0)
    msg = str(e.value)
    assert "could not download model.safetensors" in msg and "connection failed" in msg
    assert f"save it as {tmp_path / 'cache' / 'gpt2' / 'model.safetensors'}" in msg
    assert "http://127.0.0.1:9/gpt2/resolve/main/model.safetensors" in msg
    assert "config.json is optional" in msg and "MINIGPT_OFFLINE=1" in msg
    assert not (tmp_path / "cache" / "gpt2" / "config.json").exists()


def test_missing_config_is_only_a_warning(tmp_path, server, checkpoint):
    with pytest.warns(UserWarning, match=r"config\.json could not be downloaded.*HTTP 404"):
        folder = model_dir("gpt2", root=tmp_path, templates=[server.template("noconfig")], **FAST)
    assert (folder / "model.safetensors").read_bytes() == checkpoint[1]["model.safetensors"]
    assert not (folder / "config.json").exists()
    # weights already cached: no request at all (config.json is not chased on every load)
    n = len(server.log)
    model_dir("gpt2", root=tmp_path, templates=[server.template("noconfig")], **FAST)
    assert len(server.log) == n


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setenv("MINIGPT_OFFLINE", "1")
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)                   # no local "gpt2-medium" folder here
    want = tmp_path / "cache" / "gpt2-medium" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        from_pretrained("gpt2-medium")
    msg = str(e.value)
    assert str(want) in msg
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors" in msg
    # put the files there by hand: now it loads, still offline
    want.parent.mkdir(parents=True)
    for f, data in checkpoint[1].items():
        (want.parent / f).write_bytes(data)
    m = from_pretrained("gpt2-medium")
    assert np.array_equal(m.flat_params, checkpoint[0].flat_params)


def test_cache_dir_environment(monkeypatch, tmp_path):
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
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache" / "gpt2").mkdir(parents=True)
    (tmp_path / "cache" / "gpt2" / "model.safetensors").write_bytes(
        checkpoint[1]["model.safetensors"])
    with pytest.raises(ValueError, match=r"wte\.weight: file \(101, 24\), expected \(50257, 768\)"):
        from_pretrained("gpt2")


def test_concurrent_downloads_of_one_file_take_turns(tmp_path, server, checkpoint):
    data = checkpoint[1]["model.safetensors"]
    url = server.template("ok").format(name="gpt2", file="model.safetensors")
    results, errors = [], []

    def fetch():
        try:
            results.append(download_file([url], tmp_path / "model.safetensors", **FAST))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 3
    assert (tmp_path / "model.safetensors").read_bytes() == data
    assert len(weights_requests(server)) == 1        # the others found the finished file
