"""Download OpenAI's GPT-2 weights by name, resumably, verified, into a cache directory.

    path = minigpt.weights.download.model_dir("gpt2")    # -> ~/.cache/minigpt/gpt2/ with model.safetensors

Where the files come from: the Hugging Face hub's ``openai-community/{name}`` repositories
(``model.safetensors`` and ``config.json``, the files the book's
``weight-loading-hf-safetensors.ipynb`` uses), then a mirror with the same layout. Override the
list with ``MINIGPT_BASE_URLS`` (space- or comma-separated templates with ``{name}`` and ``{file}``).

How a download is made safe:
- bytes go to ``<file>.part``; an interrupted transfer (a dropped connection, a timeout, a 5xx
  answer) is retried with an HTTP ``Range`` request that resumes where the ``.part`` file ends;
- the finished file is checked against the size the server advertised (``Content-Length`` /
  ``Content-Range`` / Hugging Face's ``X-Linked-Size``) and, when known, a sha256: the one you pass,
  or the one Hugging Face advertises for LFS files (``X-Linked-Etag`` / ``ETag``, 64 hex digits).
  minigpt does not ship a table of hashes: it was written offline and could not verify any, so it
  trusts only what the server says or what you give it;
- only a verified file is renamed into place, so the cache never holds half a file;
- 404 moves on to the next mirror at once; other errors are retried ``retries`` times per URL with
  exponential back-off; the final error lists every attempt and says where to put the file by hand.

Environment:
  MINIGPT_CACHE (or MINIGPT_HOME)  cache root (default ``$XDG_CACHE_HOME/minigpt`` or
                                   ``~/.cache/minigpt``); files live in ``<root>/<name>/``
  MINIGPT_OFFLINE=1                never touch the network; a missing file is an error that names
                                   the URL to fetch and the exact path to save it to
  MINIGPT_BASE_URLS                URL templates to try, in order
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BASE_URLS = (
    "https://huggingface.co/openai-community/{name}/resolve/main/{file}",
    "https://hf-mirror.com/openai-community/{name}/resolve/main/{file}",  # a public hub mirror
)
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_USER_AGENT = "minigpt-downloader/0.1 (+urllib)"


class DownloadError(ValueError):
    """A download that failed for good (a ValueError, so the ``minigpt`` command prints one line)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected size or sha256."""


class _NotFound(Exception):
    pass


class _Transient(Exception):
    pass


# --- where things live ----------------------------------------------------------------------------
def cache_dir() -> Path:
    """The cache root: ``$MINIGPT_CACHE``, else ``$MINIGPT_HOME``, else ``~/.cache/minigpt``."""
    for var in ("MINIGPT_CACHE", "MINIGPT_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "minigpt"


def is_offline() -> bool:
    """True when ``MINIGPT_OFFLINE`` is set to 1/true/yes/on."""
    return os.environ.get("MINIGPT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def base_urls() -> list[str]:
    """URL templates to try in order (``MINIGPT_BASE_URLS`` overrides the built-in list)."""
    env = os.environ.get("MINIGPT_BASE_URLS", "").replace(",", " ").split()
    return env or list(BASE_URLS)


def urls_for(name: str, file: str, templates: Sequence[str] | None = None) -> list[str]:
    return [t.format(name=name, file=file) for t in (templates or base_urls())]


def check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"unknown model name {name!r}: the names minigpt can download are {', '.join(MODEL_NAMES)}"
            f"; for anything else pass a path to a Hugging Face GPT-2 directory or .safetensors file"
        )


# --- by model name --------------------------------------------------------------------------------
def model_dir(name: str, *, root: str | os.PathLike | None = None, offline: bool | None = None,
              progress: bool = True, templates: Sequence[str] | None = None,
              sha256: str | None = None, retries: int = 3, timeout: float = 30.0,
              backoff: float = 1.0) -> Path:
    """Make sure ``<root>/<name>/model.safetensors`` exists (fetching it, then ``config.json``, if it
    does not); return the folder.

    A file already in the cache is used as it is, without touching the network (a safetensors
    file's header is validated when it is loaded, which catches truncation). ``sha256`` is the
    expected hash of model.safetensors, if you know it. ``config.json`` is optional: minigpt knows
    the four GPT-2 configurations, so it is fetched only after a fresh weights download, and a
    failure to fetch it is a warning. When the weights cannot be fetched, the error lists every
    attempt and names the URL to fetch by hand and the exact path to save it to.
    """
    check_name(name)
    folder = Path(root).expanduser() if root is not None else cache_dir()
    folder = folder / name
    offline = is_offline() if offline is None else offline
    weights = folder / WEIGHTS_FILE
    if offline:
        if not weights.is_file():
            url = urls_for(name, WEIGHTS_FILE, templates)[0]
            part = " (a partial download, " + weights.name + ".part, is there)" if \
                weights.with_name(weights.name + ".part").exists() else ""
            raise FileNotFoundError(
                f"MINIGPT_OFFLINE=1 and {name}'s weights are not in the cache{part}. Download\n"
                f"    {url}\n"
                f"by hand and save it as\n"
                f"    {weights}\n"
                f"(config.json from the same folder may go beside it; for {name} it is optional), "
                f"or set MINIGPT_CACHE to the folder that holds {name}/, or unset MINIGPT_OFFLINE"
            )
        return folder
    if weights.is_file():
        return folder  # in the cache (or put there by hand): config.json is optional, see below
    try:
        download_file(urls_for(name, WEIGHTS_FILE, templates), weights, sha256=sha256,
                      progress=progress, retries=retries, timeout=timeout, backoff=backoff)
    except ChecksumError:
        raise
    except DownloadError as e:  # no network, proxy, DNS ...: say how to do without it
        raise DownloadError(
            f"{e}\n(config.json is optional for {name}: minigpt knows its shape. With the file in "
            f"place, MINIGPT_OFFLINE=1 skips the network entirely.)"
        ) from None
    # config.json makes the folder a complete Hugging Face directory (transformers can load it);
    # minigpt knows the four GPT-2 shapes, so a config that cannot be fetched costs only a warning
    config = folder / CONFIG_FILE
    if not config.is_file():
        try:
            download_file(urls_for(name, CONFIG_FILE, templates), config, progress=False,
                          retries=retries, timeout=timeout, backoff=backoff)
        except DownloadError as e:
            lines = str(e).splitlines()
            why = (lines[1] if len(lines) > 1 else lines[0]).strip()
            warnings.warn(f"{name}: model.safetensors is in place, but config.json could not be "
                          f"downloaded ({why}); minigpt uses its own GPT-2 {name} configuration",
                          stacklevel=2)
    return folder


# --- one file -------------------------------------------------------------------------------------
def download_file(urls: Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
                  size: int | None = None, progress: bool = True, retries: int = 3,
                  timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Fetch ``dest`` from the first of ``urls`` that works; resume, verify, then rename into place.

    ``sha256`` / ``size``: expected values (optional; the server's advertised ones are checked too).
    An existing ``dest`` that passes them is returned as it is.
    Raises ``ChecksumError`` for bytes that fail verification on every URL and ``DownloadError``
    when no URL gives the file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA256.match(sha256):
            raise ValueError(f"expected sha256 must be 64 hex digits, got {sha256!r}")
    with _locked(dest.with_name(dest.name + ".lock")):
        if dest.is_file():   # e.g. another process finished it while this one waited for the lock
            try:
                _verify(dest, sha256=sha256, size=size, adv_sha=None, adv_size=None, url=None)
                return dest
            except ChecksumError:
                dest.unlink()
        return _download_locked(urls, dest, sha256=sha256, size=size, progress=progress,
                                retries=retries, timeout=timeout, backoff=backoff)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock (POSIX ``flock``) held while a file is downloaded, so two processes
    fetching the same file take turns instead of appending to one ``.part`` together. The small
    ``.lock`` file stays (removing it would race). A no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _download_locked(urls: Sequence[str], dest: Path, *, sha256: str | None, size: int | None,
                     progress: bool, retries: int, timeout: float, backoff: float) -> Path:
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    checksum_failed = False
    for url in urls:
        for attempt in range(max(1, retries)):
            try:
                _fetch(url, part, sha256=sha256, size=size, progress=progress, timeout=timeout)
                os.replace(part, dest)
                return dest
            except _NotFound as e:
                failures.append(f"{url}: {e}")
                break
            except ChecksumError as e:
                failures.append(f"{url}: {e}")
                checksum_failed = True
                part.unlink(missing_ok=True)
                break
            except _Transient as e:
                failures.append(f"{url} (attempt {attempt + 1}/{retries}): {e}")
                if attempt + 1 < retries and backoff > 0:
                    time.sleep(backoff * 2**attempt)
    cls = ChecksumError if checksum_failed else DownloadError
    partial = f" A partial file is kept at {part} and will be resumed." if part.exists() else ""
    raise cls(
        f"could not download {dest.name}; tried:\n  " + "\n  ".join(failures) +
        f"\nCheck your connection (or proxy / SSL settings) and run again.{partial} Or fetch "
        f"{urls[0] if urls else dest.name} by hand and save it as {dest}"
    )


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, keeping each hop's headers: Hugging Face puts the file's
    sha256 and size (``X-Linked-Etag``, ``X-Linked-Size``) on the redirect, not on the CDN answer."""

    def __init__(self) -> None:
        self.hops: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _advertised(headers_list) -> tuple[str | None, int | None]:
    """(sha256, size) a server advertises, from the first header set that has each."""
    sha, size = None, None
    for h in headers_list:
        for key in ("X-Linked-Etag", "ETag"):
            v = h.get(key)
            if v and sha is None:
                v = v.strip()
                v = v.removeprefix("W/")
                v = v.strip('"').lower()
                if _SHA256.match(v):
                    sha = v
        v = h.get("X-Linked-Size")
        if v and size is None and v.strip().isdigit():
            size = int(v)
    return sha, size


def _fetch(url: str, part: Path, *, sha256: str | None, size: int | None, progress: bool,
           timeout: float) -> None:
    """One attempt: GET (with Range if ``part`` has bytes), append to ``part``, verify it."""
    have = part.stat().st_size if part.exists() else 0
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing after `have`: maybe the part is complete already
            total = _content_range_total(e.headers.get("Content-Range"))
            if total is not None and total == have:
                _verify(part, sha256=sha256, size=size, adv_sha=_advertised([e.headers])[0],
                        adv_size=total, url=url)
                return
            part.unlink(missing_ok=True)
            raise _Transient(f"HTTP 416 for a resume at byte {have}; restarting from 0") from None
        if e.code in (404, 410):
            raise _NotFound(f"HTTP {e.code} {e.reason}: no such file on this server") from None
        if e.code in (401, 403):
            raise _NotFound(f"HTTP {e.code} {e.reason}: access denied") from None
        raise _Transient(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"connection failed: {reason}") from None
    with resp:
        # like huggingface_hub: trust the first answer (the hub's own), not a CDN's ETag after it
        adv_sha, adv_size = _advertised(redirects.hops[:1] or [resp.headers])
        status = resp.status
        if status == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, not {have}; restarting from 0")
            total = _content_range_total(resp.headers.get("Content-Range"))
            mode = "ab"
        elif status == 200:
            have = 0  # the server ignored the Range header (or there was none): start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        else:
            raise _Transient(f"unexpected HTTP status {status}")
        total = adv_size if total is None else total
        if adv_size is not None and total != adv_size:
            raise _Transient(f"server says {total} bytes here but advertised {adv_size}")
        hasher = hashlib.sha256()
        if have:
            _hash_file(part, hasher)
        done = have
        bar = _progress_bar(part.name[: -len(".part")], total, have, progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read1(_CHUNK)  # what has arrived: a stall loses nothing
                    except (OSError, http.client.HTTPException) as e:
                        raise _Transient(f"connection lost after {done} bytes ({e!r})") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes; will resume")
    _verify(part, sha256=sha256, size=size, adv_sha=adv_sha, adv_size=total, url=url,
            digest=hasher.hexdigest())


def _verify(part: Path, *, sha256, size, adv_sha, adv_size, url, digest=None) -> None:
    got_size = part.stat().st_size
    for label, want in (("expected", size), ("server-advertised", adv_size)):
        if want is not None and got_size != want:
            raise ChecksumError(f"size {got_size} bytes, {label} {want}")
    wanted = [(lbl, h) for lbl, h in (("expected", sha256), ("server-advertised", adv_sha)) if h]
    if wanted:
        if digest is None:
            digest = _hash_file(part, hashlib.sha256()).hexdigest()
        for label, want in wanted:
            if digest != want:
                raise ChecksumError(f"sha256 {digest}, {label} {want} (corrupt transfer?)")


def _hash_file(path: Path, hasher):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _progress_bar(desc: str, total: int | None, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a progress bar is not worth failing for
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, leave=False)


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, hex (to check a file you downloaded by hand)."""
    return _hash_file(Path(path), hashlib.sha256()).hexdigest()


__all__ = [
    "BASE_URLS",
    "MODEL_NAMES",
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "download_file",
    "is_offline",
    "model_dir",
    "sha256_of",
]
