"""OpenAI's GPT-2 weights by name, through the Hugging Face Hub's own client and cache.

    path = minigpt.weights.download.model_dir("gpt2")    # -> a folder with model.safetensors (+ config.json)

The files are ``model.safetensors`` and ``config.json`` of the hub's ``openai-community/{name}``
repositories (the files the book's ``weight-loading-hf-safetensors.ipynb`` uses). ``huggingface_hub``
(``hf_hub_download``) fetches them into the Hugging Face cache, so a copy that transformers or
``hf download`` already put there is used without a byte of network, and the usual variables work as
everywhere else: ``HF_HOME`` / ``HF_HUB_CACHE`` (where the cache is), ``HF_ENDPOINT`` (a mirror),
``HF_HUB_OFFLINE=1`` (no network), ``HF_TOKEN``, ``HF_HUB_DISABLE_PROGRESS_BARS``.

What minigpt adds around it:
- a file already on disk is used without asking the hub anything (hf_hub_download would send a
  HEAD request to check for a newer revision on every call);
- a folder for files fetched by hand, ``$MINIGPT_CACHE/<name>/`` (default ``~/.cache/minigpt``, also
  where minigpt's own downloader used to put them), looked at first;
- offline (``MINIGPT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) with nothing on disk, the error names the
  URL to fetch and the exact path to save it to;
- a fresh download's sha256 is checked against every hash that is known: the one the hub advertises
  for the file (its LFS ``ETag``, which huggingface_hub uses as the blob's name but does not check)
  and the one you pass (``sha256=``). A file that fails is deleted. minigpt ships no table of
  hashes: it was written offline and could not verify any;
- a failure is one ``DownloadError`` (a ValueError, so the ``minigpt`` command prints one line) that
  says what went wrong, the URL, and where to put the file by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from pathlib import Path


def _hub():
    """``huggingface_hub``, imported on first use: a run that never downloads (training from a
    bundled text, a checkpoint on disk) does not carry it (8 MiB resident, ~70 ms of start-up)."""
    import huggingface_hub
    import huggingface_hub.utils  # noqa: F401  (the errors and progress-bar switches below)
    return huggingface_hub


MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
REPO = "openai-community/{name}"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(ValueError):
    """A download that failed for good (a ValueError, so the ``minigpt`` command prints one line)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


@contextlib.contextmanager
def _progress_bars(on: bool):
    """huggingface_hub's progress bars as asked (``progress=False`` hides them for the call)."""
    hub = _hub()
    if on or hub.utils.are_progress_bars_disabled():
        yield
        return
    hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        hub.utils.enable_progress_bars()


# --- where things live ----------------------------------------------------------------------------
def cache_dir() -> Path:
    """The folder for files fetched by hand: ``$MINIGPT_CACHE``, else ``$MINIGPT_HOME``, else
    ``$XDG_CACHE_HOME/minigpt``, else ``~/.cache/minigpt``. Downloads go to the Hugging Face cache."""
    for var in ("MINIGPT_CACHE", "MINIGPT_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "minigpt"


def is_offline() -> bool:
    """True when ``MINIGPT_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    on = ("1", "true", "yes", "on")
    return (os.environ.get("MINIGPT_OFFLINE", "").strip().lower() in on
            or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in on
            or _hub().constants.HF_HUB_OFFLINE)


def check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"unknown model name {name!r}: the names minigpt can download are {', '.join(MODEL_NAMES)}"
            f"; for anything else pass a path to a Hugging Face GPT-2 directory or .safetensors file"
        )


# --- by model name --------------------------------------------------------------------------------
def model_dir(name: str, *, offline: bool | None = None, progress: bool = True,
              sha256: str | None = None, endpoint: str | None = None,
              hub_cache: str | os.PathLike | None = None, revision: str = "main") -> Path:
    """A folder holding ``name``'s ``model.safetensors`` (and ``config.json`` when the hub has it).

    Looked for, in order: the folder for files fetched by hand (``cache_dir()``), the Hugging Face
    cache (``hub_cache=`` or ``HF_HUB_CACHE``), then the hub (``endpoint=`` or ``HF_ENDPOINT``),
    unless offline. ``sha256``: the expected hash of model.safetensors, checked on any copy.
    ``config.json`` is optional (minigpt knows the four GPT-2 shapes): it is fetched after a fresh
    weights download, and a failure to fetch it is a warning.
    """
    check_name(name)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _SHA256.match(sha256):
            raise ValueError(f"expected sha256 must be 64 hex digits, got {sha256!r}")
    by_hand = cache_dir() / name
    if (by_hand / WEIGHTS_FILE).is_file():
        _check_sha256(by_hand / WEIGHTS_FILE, None, sha256, delete=False)
        return by_hand
    repo = REPO.format(name=name)
    where = dict(repo_id=repo, revision=revision, cache_dir=hub_cache)
    try:  # already in the Hugging Face cache: no request at all
        cached = Path(_hub().hf_hub_download(filename=WEIGHTS_FILE, local_files_only=True,
                                             **where))
        _check_sha256(cached, None, sha256, delete=False)
        return cached.parent
    except _hub().utils.LocalEntryNotFoundError:
        pass
    url = _hub().hf_hub_url(repo, WEIGHTS_FILE, revision=revision, endpoint=endpoint)
    hand = f"Download\n    {url}\nby hand and save it as\n    {by_hand / WEIGHTS_FILE}\n"
    if is_offline() if offline is None else offline:
        hub_cache = hub_cache if hub_cache is not None else _hub().constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"offline (MINIGPT_OFFLINE=1, HF_HUB_OFFLINE=1 or --offline) and {name}'s weights are "
            f"neither in the Hugging Face cache ({hub_cache}) nor in {by_hand}. {hand}"
            f"(config.json from the same folder may go beside it; for {name} it is optional), "
            f"or run `hf download {repo} {WEIGHTS_FILE} {CONFIG_FILE}` where there is a network "
            f"and copy that cache, or go online"
        )
    try:
        with _progress_bars(progress):
            path = Path(_hub().hf_hub_download(filename=WEIGHTS_FILE, endpoint=endpoint, **where))
    except (TypeError, AttributeError, NameError):  # a bug, not a download problem
        raise
    except Exception as e:  # no network, proxy, DNS, 404, 5xx, a cut transfer: say how to do without
        raise DownloadError(
            f"could not download {WEIGHTS_FILE} from {url}: {_why(e)}\nCheck your connection (or "
            f"proxy / HF_ENDPOINT) and run again. Or {hand[0].lower()}{hand[1:]}"
            f"(config.json is optional for {name}: minigpt knows its shape. With the file in place, "
            f"MINIGPT_OFFLINE=1 skips the network entirely.)"
        ) from e
    _check_sha256(path, url, sha256, delete=True)
    try:
        with _progress_bars(False):
            _hub().hf_hub_download(filename=CONFIG_FILE, endpoint=endpoint, **where)
    except (TypeError, AttributeError, NameError):
        raise
    except Exception as e:  # noqa: BLE001 - optional file: the weights are in place
        warnings.warn(f"{name}: model.safetensors is in place, but config.json could not be "
                      f"downloaded ({_why(e)}); minigpt uses its own GPT-2 {name} configuration",
                      stacklevel=2)
    return path.parent


def _why(e: BaseException) -> str:
    """One line for what huggingface_hub (or the network below it) raised."""
    cause = e.__cause__ or e.__context__
    errors = _hub().utils
    if isinstance(e, errors.LocalEntryNotFoundError):  # "not in the local cache either": say why not
        return _why(cause) if cause is not None else "not found in the cache, and no answer"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 404 or isinstance(e, (errors.EntryNotFoundError, errors.RepositoryNotFoundError)):
        return "HTTP 404: no such file on this server"
    first = (str(e).strip().splitlines() or [""])[0]
    return type(e).__name__ + (f" (HTTP {status})" if status else "") + (f": {first}" if first else "")


# --- verification ---------------------------------------------------------------------------------
def _check_sha256(path: Path, url: str | None, expected: str | None, *, delete: bool) -> None:
    """Compare ``path``'s sha256 with ``expected`` and, for a fresh download (``url``), with the one
    the hub advertised: huggingface_hub names an LFS blob after its ETag, the file's sha256."""
    blob = path.resolve()
    wanted = [("expected", expected)]
    if url is not None and _SHA256.match(blob.name):
        wanted.append(("hub-advertised", blob.name))
    wanted = [(label, h) for label, h in wanted if h]
    if not wanted:
        return
    digest = sha256_of(blob)
    for label, want in wanted:
        if digest != want:
            if delete:  # the blob and the snapshot's link to it: nothing half-trusted stays
                path.unlink(missing_ok=True)
                blob.unlink(missing_ok=True)
            gone = " It was deleted; run again." if delete else ""
            raise ChecksumError(f"{url or path}: sha256 {digest}, {label} {want} (a corrupt "
                                f"transfer or a different file).{gone}")


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, hex (to check a file you downloaded by hand)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "MODEL_NAMES",
    "ChecksumError",
    "DownloadError",
    "cache_dir",
    "is_offline",
    "model_dir",
    "sha256_of",
]
