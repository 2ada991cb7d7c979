"""Hugging Face Hub snapshots for the fetch step.

Downloads go through ``huggingface_hub.snapshot_download`` into the user's
own Hub cache (``HF_HUB_CACHE`` / ``HF_HOME``), so a model already downloaded
by ``transformers`` or ``hf download`` is not fetched again, partial blobs
resume, and ``HF_HUB_OFFLINE=1`` builds from what the cache holds.
``HF_ENDPOINT`` and the token (``HF_TOKEN`` or ``hf auth login``) are read
when the download starts, in the usual way; the token is never returned,
logged or put in an error message.

Example::

    from modelbuild.ml.hub import fetch_snapshot
    snap = fetch_snapshot("HuggingFaceTB/SmolLM2-135M-Instruct", revision="main",
                          patterns=["*.json", "*.safetensors"])
    snap.commit       # the resolved 40-hex commit
    snap.files        # {"config.json": Path(...), ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modelbuild.errors import StepError

__all__ = [
    "Snapshot",
    "Resolution",
    "fetch_snapshot",
    "parse_hf_source",
    "offline",
    "split_revision",
    "pinned",
    "resolve_revision",
]

_TRUE = {"1", "on", "yes", "true"}
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Snapshot:
    """A downloaded (or cached) repo snapshot: commit and file name -> local path."""

    repo_id: str
    revision: str
    commit: str
    files: dict[str, Path] = field(default_factory=dict)


def parse_hf_source(source: str) -> str:
    """``"hf://org/repo"`` -> ``"org/repo"``; raises ValueError on a malformed id.

    >>> parse_hf_source("hf://meta-llama/Llama-3.2-1B-Instruct")
    'meta-llama/Llama-3.2-1B-Instruct'
    """
    if not source.startswith("hf://"):
        raise ValueError(f"not an hf:// source: {source!r}")
    repo = source[len("hf://") :].strip("/")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise ValueError(f"expected hf://<org>/<repo>, got {source!r}")
    return repo


def split_revision(revision: str) -> tuple[str, str | None]:
    """``(name as written, pinned commit or None)`` of a revision.

    A 40-hex commit is pinned; ``"main@<commit>"`` is what resolution makes of
    a branch (the name kept for the record, the commit for the download and
    the key); anything else (a branch, a tag) floats.

    >>> split_revision("main")
    ('main', None)
    >>> split_revision("main@" + "a" * 40)[1] == "a" * 40
    True
    >>> split_revision("b" * 40) == ("b" * 40, "b" * 40)
    True
    """
    if _COMMIT.fullmatch(revision):
        return revision, revision
    name, sep, commit = revision.rpartition("@")
    if sep and name and _COMMIT.fullmatch(commit):
        return name, commit
    return revision, None


def pinned(revision: str) -> bool:
    """Whether ``revision`` names exactly one commit (never resolved again)."""
    return split_revision(revision)[1] is not None


@dataclass(frozen=True)
class Resolution:
    """What a floating revision resolved to.

    ``commit`` is None when nothing could be found; ``note`` is what the user
    must be told (an old or offline resolution); ``good_until_ns`` is when a
    remembered resolution must be asked again (None: not time-bound, e.g. an
    offline fallback that is re-checked next time anyway).
    """

    commit: str | None
    note: str | None = None
    good_until_ns: int | None = None


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _remembered_path(remember: Path, repo_id: str, revision: str, endpoint: str) -> Path:
    name = hashlib.sha256(f"{endpoint}\n{repo_id}\n{revision}".encode()).hexdigest()[:32]
    return remember / f"hf-{name}.json"


def _read_remembered(path: Path) -> tuple[str, int] | None:
    try:
        data = json.loads(path.read_text())
        commit, at = data["commit"], int(data["resolved_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (commit, at) if isinstance(commit, str) and _COMMIT.fullmatch(commit) else None


def _hub_cache_ref(repo_id: str, revision: str) -> str | None:
    """The commit the user's Hub cache last saw ``revision`` at (``refs/<revision>``), if any."""
    from huggingface_hub import constants

    cache = Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    ref = cache / ("models--" + repo_id.replace("/", "--")) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def resolve_revision(
    repo_id: str,
    revision: str,
    *,
    remember: Path,
    ttl_s: float,
    refresh: bool = False,
) -> Resolution:
    """The commit a floating ``revision`` (a branch or tag) of ``repo_id`` names now.

    Asks the Hub (``HF_ENDPOINT``; the token as usual) unless a resolution
    remembered in ``remember/`` is younger than ``ttl_s`` and ``refresh`` is
    false. Offline (``HF_HUB_OFFLINE``) or when the Hub cannot be reached, the
    last remembered resolution is used, else the user's Hub cache
    ``refs/<revision>``, and the note says so. A revision the Hub says does
    not exist resolves to nothing: the download then fails with the Hub's
    answer. Never raises for a network problem.
    """
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    path = _remembered_path(Path(remember), repo_id, revision, endpoint)
    remembered = _read_remembered(path)
    now = time.time_ns()
    ttl_ns = int(ttl_s * 1e9)
    if remembered is not None and not refresh and now - remembered[1] < ttl_ns:
        commit, at = remembered
        age = _age((now - at) / 1e9)
        return Resolution(commit, f"revision {revision} is commit {commit[:12]} as resolved {age} ago "
                                  "(--refresh to ask the Hub now)", at + ttl_ns)
    if offline():
        why = "offline (HF_HUB_OFFLINE)"
    else:
        try:
            commit = _ask_hub(repo_id, revision, endpoint)
        except _NoSuchRevision:
            return Resolution(None)
        except Exception as err:  # noqa: BLE001 - any failure to reach the Hub: fall back, say so
            why = _Scrubber()(f"cannot reach the Hub ({_first_line(err)})")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"repo": repo_id, "revision": revision, "commit": commit, "resolved_ns": now}))
            os.replace(tmp, path)
            return Resolution(commit, None, now + ttl_ns)
    if remembered is not None:
        commit, at = remembered
        return Resolution(commit, f"{why}: revision {revision} taken as commit {commit[:12]}, as resolved "
                                  f"{_age((now - at) / 1e9)} ago; it may be stale", now)
    commit = _hub_cache_ref(repo_id, revision)
    if commit is not None:
        return Resolution(commit, f"{why}: revision {revision} taken as commit {commit[:12]} from the Hub "
                                  f"cache's refs/{revision}; it may be stale", now)
    return Resolution(None, f"{why}: revision {revision} could not be resolved; the key names the branch "
                            "and may be stale", now)


class _NoSuchRevision(Exception):
    pass


def _ask_hub(repo_id: str, revision: str, endpoint: str) -> str:
    """One API call: the commit sha ``revision`` names on the Hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise _NoSuchRevision() from None
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise ValueError(f"the Hub gave no commit for {repo_id}@{revision}")
    return sha


def _set_ref(repo_dir: Path, ref: str, commit: str) -> None:
    """Write ``refs/<ref>`` of a Hub cache repo (atomically; a failure only loses a hint)."""
    path = repo_dir / "refs" / ref
    try:
        if path.read_text() == commit:
            return
    except OSError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, path)
    except OSError:
        pass


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


class _Scrubber:
    """Removes the user's token from any text we are about to show."""

    def __init__(self) -> None:
        try:
            from huggingface_hub import get_token

            self._token = get_token()
        except Exception:  # a broken token file must not hide the real error
            self._token = None

    def __call__(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _transfer_errors() -> tuple[type[BaseException], ...]:
    """OSError plus the HTTP client's own error base (httpx2, httpx or requests by hub version)."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _denied(err: BaseException) -> int | None:
    """401 or 403 if an HTTP refusal is somewhere in ``err``'s cause chain."""
    seen = 0
    while err is not None and seen < 10:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return status
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def _progress_class(progress: Callable[[int, int | None, str], None]):
    """A tqdm stand-in that forwards snapshot_download's byte counts to ``progress``."""
    from tqdm.auto import tqdm

    class _Forward(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # the engine draws its own bar
            super().__init__(*args, **kwargs)
            self._done = 0
            self._label = str(kwargs.get("desc") or "downloading")

        def update(self, n=1):
            self._done += int(n or 0)
            total = int(self.total) if self.total else None
            progress(self._done, total, self._label)
            return None

    return _Forward


def fetch_snapshot(
    repo_id: str,
    *,
    revision: str = "main",
    patterns: list[str] | None = None,
    cache_dir: Path | None = None,
    jobs: int = 2,
    progress: Callable[[int, int | None, str], None] | None = None,
    ref: str | None = None,
) -> Snapshot:
    """Download (or find in the cache) the files of ``repo_id`` at ``revision``.

    ``patterns`` are glob patterns (``"*.safetensors"``); None means every
    file. Raises :class:`StepError` with the action to take for a gated or
    private repo, a missing repo or revision, no matching files, or offline
    mode without a cached copy. ``ref``: the branch or tag that ``revision``
    (a commit) was resolved from; the Hub cache's ``refs/<ref>`` is set to it,
    as huggingface_hub does when it downloads by branch, so an offline build
    (or ``transformers``) finds the same commit later.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import filter_repo_objects

    scrub = _Scrubber()
    # Read at call time, not at huggingface_hub's import time, so a changed
    # environment (tests, a long-lived worker) is honoured.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    cache = cache_dir or Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    no_network = offline()
    url = f"{(endpoint or constants.ENDPOINT).rstrip('/')}/{repo_id}"
    login_hint = (
        f"accept the licence on {url} and log in (`hf auth login`, or set HF_TOKEN to a token with read access)"
    )
    kwargs = dict(
        revision=revision,
        cache_dir=str(cache),
        allow_patterns=patterns or None,
        local_files_only=no_network,
        max_workers=max(1, jobs),
        endpoint=endpoint,
    )
    if progress is not None:
        kwargs["tqdm_class"] = _progress_class(progress)
    try:
        folder = Path(snapshot_download(repo_id, **kwargs))
    except GatedRepoError:
        raise StepError(f"hf://{repo_id} is gated: {login_hint}") from None
    except RevisionNotFoundError:
        raise StepError(f"hf://{repo_id} has no revision '{revision}' (check the branch, tag or commit)") from None
    except RepositoryNotFoundError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        raise StepError(
            f"hf://{repo_id} not found (HTTP {status}): check the repo id; "
            f"if it is private or gated, {login_hint}"
        ) from None
    except LocalEntryNotFoundError as err:
        # huggingface_hub wraps a refused file request (403 without a GatedRepo
        # code) in "not in the local cache": look underneath.
        if _denied(err):
            raise StepError(f"hf://{repo_id}: access denied (HTTP {_denied(err)}): {login_hint}") from None
        if no_network:
            raise StepError(
                f"HF_HUB_OFFLINE is set and the Hub cache ({cache}) has no complete copy of "
                f"hf://{repo_id}@{revision}; unset HF_HUB_OFFLINE once to download it"
            ) from None
        raise StepError(
            scrub(
                f"cannot download hf://{repo_id}@{revision} and the Hub cache has no complete copy: "
                f"{_first_line(err.__cause__ or err)} (check the network and HF_ENDPOINT)"
            )
        ) from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise StepError(f"hf://{repo_id}: access denied (HTTP {status}): {login_hint}") from None
        raise StepError(scrub(f"hf://{repo_id}@{revision}: HTTP {status}: {_first_line(err)}")) from None
    except _transfer_errors() as err:
        # A transfer that broke mid-file (timeouts, resets, a full disk): the
        # Hub cache keeps the partial blob, so rerunning resumes it.
        raise StepError(
            scrub(f"downloading hf://{repo_id}@{revision} failed: {type(err).__name__}: {_first_line(err)}; "
                  "rerun to resume")
        ) from None

    commit = folder.name  # snapshots/<commit> in the cache layout
    if ref and ref != commit and _COMMIT.fullmatch(commit) and ".." not in ref.split("/"):
        _set_ref(folder.parent.parent, ref, commit)
    present = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")
    )
    # The snapshot folder is shared by every pattern set ever fetched for this
    # commit: keep only what this recipe asked for.
    wanted = list(filter_repo_objects(present, allow_patterns=patterns or None))
    if not wanted:
        shown = ", ".join(patterns or []) or "*"
        raise StepError(f"no file of hf://{repo_id}@{revision} matches files = [{shown}]")
    return Snapshot(repo_id, revision, commit, {name: folder / name for name in wanted})
