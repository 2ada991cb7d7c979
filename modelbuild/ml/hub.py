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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modelbuild.errors import StepError

__all__ = ["Snapshot", "fetch_snapshot", "parse_hf_source", "offline"]

_TRUE = {"1", "on", "yes", "true"}


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
) -> Snapshot:
    """Download (or find in the cache) the files of ``repo_id`` at ``revision``.

    ``patterns`` are glob patterns (``"*.safetensors"``); None means every
    file. Raises :class:`StepError` with the action to take for a gated or
    private repo, a missing repo or revision, no matching files, or offline
    mode without a cached copy.
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
