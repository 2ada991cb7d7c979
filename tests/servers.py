"""Loopback HTTP servers for tests: a static file server and a tiny Hub stand-in.

Both bind 127.0.0.1 on a free port, serve from a daemon thread, record every
request (method, path, headers) and stop when the ``with`` block ends::

    with FileServer({"/m.gguf": b"..."}) as srv:
        url = srv.url + "/m.gguf"
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Send the full Content-Length but only this many body bytes, then close.
    drop_after: int | None = None
    #: With drop_after: hold the connection open (up to 30 s, or until the
    #: server stops) before closing it, like a stalled transfer.
    stall: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def _serve(self, method: str) -> None:
        server: Loopback = self.server.owner  # type: ignore[attr-defined]
        seen = Seen(method, self.path, {k.lower(): v for k, v in self.headers.items()})
        server.requests.append(seen)
        if server.down:  # a network failure: hang up without an answer (even on a kept-alive connection)
            self.close_connection = True
            return
        reply = server.app(seen)
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        if reply.drop_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        if reply.drop_after is not None:
            self.wfile.write(reply.body[: reply.drop_after])
            self.wfile.flush()
            if reply.stall:
                server.stopping.wait(30)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(reply.body)

    def do_GET(self):
        self._serve("GET")

    def do_HEAD(self):
        self._serve("HEAD")


class Loopback:
    """A threaded HTTP server on 127.0.0.1 answering with ``app(Seen) -> Reply``."""

    def __init__(self, app: Callable[[Seen], Reply]):
        self.app = app
        self.requests: list[Seen] = []
        #: True: every request is dropped without an answer, as by a network failure.
        self.down = False
        self.stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "Loopback":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def ranged(body: bytes, seen: Seen, headers: dict[str, str] | None = None) -> Reply:
    """A 200 or, if the request carries ``Range: bytes=N-``, a 206 for the rest."""
    headers = dict(headers or {})
    headers.setdefault("Accept-Ranges", "bytes")
    match = re.fullmatch(r"bytes=(\d+)-", seen.headers.get("range", ""))
    if not match:
        return Reply(200, body, headers)
    start = int(match.group(1))
    if start >= len(body):
        return Reply(416, b"", {**headers, "Content-Range": f"bytes */{len(body)}"})
    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
    return Reply(206, body[start:], headers)


class FileServer(Loopback):
    """Serves ``files`` (path -> bytes) with Range support; 404 for anything else.

    ``drop_first``: paths whose first GET is cut after that many bytes.
    """

    def __init__(self, files: dict[str, bytes], drop_first: dict[str, int] | None = None):
        self.files = files
        self.drop_first = dict(drop_first or {})
        super().__init__(self._answer)

    def _answer(self, seen: Seen) -> Reply:
        body = self.files.get(seen.path)
        if body is None:
            return Reply(404, b"not found")
        reply = ranged(body, seen)
        cut = self.drop_first.pop(seen.path, None)
        if cut is not None and seen.method == "GET":
            reply.drop_after = cut
        return reply


class HubServer(Loopback):
    """The routes huggingface_hub's snapshot_download needs, for fake model repos.

    ``repos``: repo id -> {file name -> bytes}; ``gated``: repo ids whose file
    downloads answer 401 GatedRepo (as the Hub does before the licence is
    accepted); every other repo id answers 404 RepoNotFound. One commit per
    repo, derived from its content; branch ``main`` and that commit resolve.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] | None = None,
                 gated_status: int = 401, gated_code: str | None = "GatedRepo"):
        self.repos = repos
        self.gated = set(gated or ())
        self.gated_status = gated_status
        self.gated_code = gated_code
        self.commits = {
            repo: hashlib.sha1(json.dumps(sorted((k, v.hex()) for k, v in files.items())).encode()).hexdigest()
            for repo, files in repos.items()
        }
        super().__init__(self._answer)

    def _json(self, obj, status: int = 200) -> Reply:
        return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str) -> Reply:
        return Reply(status, json.dumps({"error": message}).encode(),
                     {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message})

    def _resolve(self, repo: str, rev: str) -> str | None:
        commit = self.commits[repo]
        return commit if rev in ("main", commit) else None

    def _answer(self, seen: Seen) -> Reply:
        path = seen.path.split("?", 1)[0]
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        if api:
            repo, what, rev = api.groups()
            if repo not in self.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            commit = self._resolve(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            files = self.repos[repo]
            if what == "revision":
                return self._json({"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]})
            return self._json([
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in sorted(files.items())
            ])
        res = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if res:
            repo, rev, fname = res.groups()
            if repo not in self.repos:
                return self._error(404, "RepoNotFound", "Repository not found")
            if repo in self.gated:
                message = f"Access to model {repo} is restricted."
                if self.gated_code is None:
                    return Reply(self.gated_status, message.encode())
                return self._error(self.gated_status, self.gated_code, message)
            commit = self._resolve(repo, rev)
            if commit is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            body = self.repos[repo].get(fname)
            if body is None:
                return self._error(404, "EntryNotFound", "Entry not found")
            etag = hashlib.sha1(body).hexdigest()
            return ranged(body, seen, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'})
        return Reply(404, b"no such route")
