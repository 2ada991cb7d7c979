"""modelbuild.ml.download against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from modelbuild.errors import StepError
from modelbuild.ml.download import download, redact_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import FileServer, Loopback, Reply  # noqa: E402

BODY = bytes(range(256)) * 40  # 10 KiB, every byte value, position-dependent
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment must not intercept loopback requests.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def data_files(directory: Path) -> list[str]:
    """What a directory holds besides the (empty) lock files of finished downloads."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def _get(url, dest, partial_dir, **kw):
    kw.setdefault("backoff", 0.0)
    kw.setdefault("timeout", 10.0)
    return download(url, dest, sha256=kw.pop("sha256", DIGEST), partial_dir=partial_dir, **kw)


def test_success_reports_progress_and_keeps_only_the_verified_file(tmp_path):
    seen = []
    with FileServer({"/m.gguf": BODY}) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "out" / "m.gguf", tmp_path / "dl",
                    progress=lambda d, t, m: seen.append((d, t, m)))
    assert dest.read_bytes() == BODY
    # No partial left; the verified file is the destination's other name.
    assert data_files(tmp_path / "dl") == [f"sha256-{DIGEST}"]
    assert (tmp_path / "dl" / f"sha256-{DIGEST}").stat().st_ino == dest.stat().st_ino
    assert seen[-1][:2] == (len(BODY), len(BODY))
    assert "m.gguf" in seen[-1][2]


def test_resumes_with_range_after_dropped_connection(tmp_path):
    logs = []
    with FileServer({"/m.gguf": BODY}, drop_first={"/m.gguf": 3000}) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", tmp_path / "dl", log=logs.append)
        gets = [r for r in srv.requests if r.method == "GET"]
    assert dest.read_bytes() == BODY
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == "bytes=3000-"
    assert any("retry 1/" in line for line in logs)


def test_killed_build_resumes_from_partial_file(tmp_path):
    partial_dir = tmp_path / "dl"
    partial_dir.mkdir()
    (partial_dir / f"sha256-{DIGEST}.part").write_bytes(BODY[:7000])
    with FileServer({"/m.gguf": BODY}) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", partial_dir)
        gets = [r for r in srv.requests if r.method == "GET"]
    assert dest.read_bytes() == BODY
    assert [g.headers.get("range") for g in gets] == ["bytes=7000-"]


def test_complete_partial_file_answered_416_is_verified_and_kept(tmp_path):
    partial_dir = tmp_path / "dl"
    partial_dir.mkdir()
    (partial_dir / f"sha256-{DIGEST}.part").write_bytes(BODY)
    with FileServer({"/m.gguf": BODY}) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", partial_dir)
    assert dest.read_bytes() == BODY


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    partial_dir = tmp_path / "dl"
    partial_dir.mkdir()
    (partial_dir / f"sha256-{DIGEST}.part").write_bytes(b"stale bytes that are not the body")
    with Loopback(lambda seen: Reply(200, BODY)) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", partial_dir)
    assert dest.read_bytes() == BODY


def test_verified_download_is_reused_without_network(tmp_path):
    with FileServer({"/m.gguf": BODY}) as srv:
        _get(srv.url + "/m.gguf", tmp_path / "a" / "m.gguf", tmp_path / "dl")
        url = srv.url + "/m.gguf"
    # The server is gone; the same digest still resolves, from the downloads dir.
    logs = []
    dest = _get(url, tmp_path / "b" / "m.gguf", tmp_path / "dl", log=logs.append, retries=0)
    assert dest.read_bytes() == BODY
    assert any("reusing the verified download" in line for line in logs)


def test_damaged_verified_download_is_fetched_again(tmp_path):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / f"sha256-{DIGEST}").write_bytes(b"bit rot")
    with FileServer({"/m.gguf": BODY}) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", tmp_path / "dl")
        assert len(srv.requests) == 1
    assert dest.read_bytes() == BODY


def test_checksum_mismatch_stores_nothing(tmp_path):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with FileServer({"/m.gguf": BODY}) as srv:
        with pytest.raises(StepError) as info:
            _get(srv.url + "/m.gguf", tmp_path / "out" / "m.gguf", tmp_path / "dl", sha256=wrong)
    message = str(info.value)
    assert wrong in message and DIGEST in message
    assert not (tmp_path / "out" / "m.gguf").exists()
    assert data_files(tmp_path / "dl") == []


def test_404_fails_at_once_with_status_and_url(tmp_path):
    with FileServer({}) as srv:
        url = srv.url + "/missing.gguf"
        with pytest.raises(StepError) as info:
            _get(url, tmp_path / "m.gguf", tmp_path / "dl")
        assert len(srv.requests) == 1
    assert "404" in str(info.value) and url in str(info.value)
    assert not (tmp_path / "m.gguf").exists()


def test_server_errors_are_retried_a_bounded_number_of_times(tmp_path):
    with Loopback(lambda seen: Reply(503, b"busy")) as srv:
        with pytest.raises(StepError) as info:
            _get(srv.url + "/m.gguf", tmp_path / "m.gguf", tmp_path / "dl", retries=2)
        assert len(srv.requests) == 3
    assert "503" in str(info.value)


def test_transient_error_then_success(tmp_path):
    answers = [Reply(503, b"busy"), Reply(200, BODY)]
    with Loopback(lambda seen: answers.pop(0)) as srv:
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", tmp_path / "dl")
    assert dest.read_bytes() == BODY


def test_credentials_in_url_never_reach_messages(tmp_path):
    assert redact_url("https://me:s3cret@example.org:8443/a.gguf?x=1") == "https://example.org:8443/a.gguf?x=1"
    with FileServer({}) as srv:
        url = srv.url.replace("http://", "http://me:s3cret@") + "/missing.gguf"
        with pytest.raises(StepError) as info:
            _get(url, tmp_path / "m.gguf", tmp_path / "dl")
        # Sent as Basic auth, not as part of the host name.
        assert srv.requests[0].headers["authorization"] == "Basic bWU6czNjcmV0"
    assert "404" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_bad_digest_argument(tmp_path):
    with pytest.raises(StepError, match="64 hex"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc", partial_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_killed_process_resumes_where_it_stopped(tmp_path):
    """A download process killed mid-body leaves its partial file; the next run asks only for the rest."""
    import signal
    import subprocess
    import time

    partial_dir = tmp_path / "dl"
    first = {"served": False}

    def app(seen):
        if not first["served"]:
            first["served"] = True
            return Reply(200, BODY, {"Accept-Ranges": "bytes"}, drop_after=4096, stall=True)
        from servers import ranged

        return ranged(BODY, seen)

    with Loopback(app) as srv:
        code = (
            "import sys; from pathlib import Path\n"
            "from modelbuild.ml.download import download\n"
            f"download({srv.url + '/m.gguf'!r}, Path({str(tmp_path / 'never.gguf')!r}), sha256={DIGEST!r},\n"
            f"         partial_dir=Path({str(partial_dir)!r}), timeout=30)\n"
        )
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            part = partial_dir / f"sha256-{DIGEST}.part"
            deadline = time.monotonic() + 60
            while not (part.exists() and part.stat().st_size == 4096):
                assert proc.poll() is None, "the downloader exited before it was killed"
                assert time.monotonic() < deadline, "the partial file never reached 4096 bytes"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        dest = _get(srv.url + "/m.gguf", tmp_path / "m.gguf", partial_dir)
        ranges = [r.headers.get("range") for r in srv.requests]
    assert dest.read_bytes() == BODY
    assert ranges == [None, "bytes=4096-"]
    assert not (tmp_path / "never.gguf").exists()
