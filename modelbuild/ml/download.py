"""Resumable HTTP(S) downloads verified against a sha256 before they are kept.

Standard library only (``urllib``), so the fetch step needs no extra package.

The partial file lives in a directory that survives across builds (the step's
``ctx.downloads``) and is named after the *expected* digest, so a build that
was killed, or a connection that dropped, resumes with a ``Range`` request
instead of starting over. Nothing reaches the destination until the whole
file hashes to the expected digest; a mismatch deletes the partial file.
A verified file stays there as ``sha256-<digest>`` (hardlinked to the
destination, so it costs no extra space while the build store holds the
same inode): fetching the same digest again needs no network.

Example::

    from modelbuild.ml.download import download
    download(
        "https://example.org/model.gguf",
        Path("out/model.gguf"),
        sha256="9f86d08...",
        partial_dir=Path("downloads"),
        progress=lambda done, total, msg: None,
    )
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from modelbuild.errors import StepError

__all__ = ["download", "redact_url", "file_sha256", "SHA256_RE"]

#: A sha256 hex digest (lower or upper case).
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

#: Statuses worth retrying: the server may answer differently next time.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

_CHUNK = 1 << 20

Progress = Callable[[int, "int | None", str], None]


class _Dropped(Exception):
    """The transfer stopped before the whole body arrived (retryable)."""


def redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part, safe for logs and manifests.

    >>> redact_url("https://me:s3cret@host/x.gguf")
    'https://host/x.gguf'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "modelbuild", "Accept-Encoding": "identity"}
    if parts.username is not None:
        # urllib does not act on user:password@ in a URL: send it as Basic auth.
        userinfo = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        url = redact_url(url)
    request = urllib.request.Request(url, headers=headers)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the recipe chose the URL


def _total_from(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full size of the resource, from Content-Range (206) or Content-Length (200)."""
    if response.status == 206:
        match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        if match:
            return int(match.group(1))
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _transfer(url: str, partial: Path, timeout: float, progress: Progress, label: str) -> None:
    """One attempt: append to ``partial`` from where it stops. Raises _Dropped if cut short."""
    offset = partial.stat().st_size if partial.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file already holds the whole body (killed after the
            # last byte, before the move) or is longer than the resource: the
            # digest check after this attempt decides which.
            return
        raise
    with response:
        if offset and response.status != 206:
            # The server ignored the Range header: start over from byte 0.
            offset = 0
        total = _total_from(response, offset)
        mode = "ab" if offset else "wb"
        done = offset
        with open(partial, mode) as fh:
            try:
                while True:
                    chunk = response.read1(_CHUNK)  # what has arrived, not a full MiB
                    if not chunk:
                        break
                    fh.write(chunk)
                    # Flushed per chunk so a killed build keeps what arrived.
                    fh.flush()
                    done += len(chunk)
                    progress(done, total, label)
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as err:
                raise _Dropped(f"connection dropped after {done} bytes ({type(err).__name__})") from err
            finally:
                fh.flush()
                os.fsync(fh.fileno())
        if total is not None and done < total:
            raise _Dropped(f"connection closed after {done} of {total} bytes")


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    partial_dir: Path,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` once its sha256 equals ``sha256``.

    Retries dropped connections, timeouts and 408/429/5xx answers up to
    ``retries`` times with exponential backoff (``backoff``, 2x, 4x, ...),
    resuming with a ``Range`` request each time. Other HTTP errors (404,
    401, ...) fail at once. Raises :class:`StepError` on failure; a digest
    mismatch deletes the partial file so nothing wrong is kept anywhere.
    """
    expected = sha256.lower()
    if not SHA256_RE.match(expected):
        raise StepError(f"sha256 must be 64 hex digits, got {sha256!r}")
    shown = redact_url(url)
    label = f"downloading {Path(urllib.parse.urlsplit(url).path).name or shown}"
    progress = progress or (lambda done, total, msg: None)
    log = log or (lambda msg: None)
    partial_dir.mkdir(parents=True, exist_ok=True)
    # Named by the expected digest: the same bytes resume whatever the URL.
    partial = partial_dir / f"sha256-{expected}.part"
    from filelock import FileLock

    # Two targets (or two builds) fetching the same bytes must not append to
    # one partial file at once. The empty lock file stays: deleting it on
    # release would let a third process lock a new file while a second still
    # holds the old one.
    with FileLock(str(partial) + ".lock"):
        _download_locked(url, shown, label, partial, expected, dest, progress, retries, backoff, timeout, log)
    return dest


def _download_locked(url, shown, label, partial, expected, dest, progress, retries, backoff, timeout, log) -> None:
    complete = partial.with_suffix("")  # sha256-<digest>: a verified earlier download
    if complete.exists():
        if file_sha256(complete) == expected:
            # Same digest, same bytes: whatever the URL serves today is not needed.
            log(f"{shown}: reusing the verified download {complete.name}")
            _link_or_copy(complete, dest)
            return
        complete.unlink()  # damaged since: fetch it again
    attempt = 0
    while True:
        try:
            _transfer(url, partial, timeout, progress, label)
            break
        except urllib.error.HTTPError as err:
            if err.code not in _RETRY_STATUSES or attempt >= retries:
                raise StepError(f"HTTP {err.code} {err.reason} fetching {shown}") from None
            reason = f"HTTP {err.code}"
        except _Dropped as err:
            reason = str(err)
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException) as err:
            reason = str(getattr(err, "reason", err))
        if attempt >= retries:
            raise StepError(f"download of {shown} failed after {retries + 1} attempts: {reason}")
        delay = backoff * (2**attempt)
        attempt += 1
        log(f"{shown}: {reason}; retry {attempt}/{retries} in {delay:.1f}s (resuming)")
        time.sleep(delay)

    actual = file_sha256(partial)
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise StepError(
            f"sha256 mismatch for {shown}: expected {expected}, got {actual}; nothing was stored"
        )
    os.replace(partial, complete)
    _link_or_copy(complete, dest)


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink (no second copy of a large file) or, across filesystems, copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
