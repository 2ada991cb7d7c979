"""The shared remote cache (modelbuild/remote.py) against real remotes on this machine:
a directory (``file://``) and an S3-compatible server on 127.0.0.1 (moto's
ThreadedMotoServer) spoken to through s3fs. Command steps only, so these stay
in the fast subset.

One origin project builds a two-step chain once per module and pushes it to
each test's own remote (a new directory or S3 prefix); each test then builds
a fresh clone (same recipes and data, another directory, an empty cache).
"""

from __future__ import annotations

import json
import logging
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

from modelbuild import fastpath
from modelbuild.api import build, cache_pull, cache_push, explain, plan
from modelbuild.config import ConfigError, load_config
from modelbuild.errors import ModelbuildError
from modelbuild.remote import RemoteCache, RemoteUnavailable, redact
from modelbuild.store import Store
from tests.conftest import Project, run_cli
from tests.plugin_steps import install_test_steps
from tests.servers import Loopback, Reply

TWO = """
default = "b"

[targets.a]
step = "command"
command = "cat {project}/data.txt > $MODELBUILD_OUT/a.txt; echo made >> $MODELBUILD_OUT/a.txt"
deps = ["data.txt"]
outs = ["a.txt"]

[targets.b]
step = "command"
inputs = { src = "a" }
command = "tr a-z A-Z < $MODELBUILD_INPUT_SRC/a.txt > $MODELBUILD_OUT/b.txt"
outs = ["b.txt"]
"""

AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _project(root: Path, config: str = "") -> Project:
    p = Project(root)
    p.recipe(TWO)
    p.file("data.txt", "data\n")
    if config:
        p.file("modelbuild.toml", textwrap.dedent(config))
    return p


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Project:
    """A project that has built a -> b (no remote involved)."""
    p = _project(tmp_path_factory.mktemp("origin") / "proj")
    result = p.build()
    assert p.statuses(result) == {"a": "built", "b": "built"}
    return p


@pytest.fixture(scope="module")
def moto_endpoint():
    """An S3-compatible server on 127.0.0.1 (moto), with a bucket named ``team``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in AWS.items():
            mp.setenv(k, v)
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir("team")
    yield endpoint
    server.stop()


@pytest.fixture
def aws(monkeypatch):
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)


def _s3(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


@pytest.fixture(params=["file", "s3"])
def remote(request, origin, tmp_path):
    """(url, clone config, backend filesystem or None): a remote holding the origin's chain."""
    if request.param == "file":
        url, config = (tmp_path / "remote").as_uri(), ""
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        request.getfixturevalue("aws")
        url = f"s3://team/{request.node.name.replace('[', '-').rstrip(']')}"  # a prefix of its own
        config = f'remote-options = {{ endpoint_url = "{endpoint}" }}\n'
    origin.file("modelbuild.toml", config)
    pushed = cache_push(["b"], project=origin.root, remote_cache=url)
    assert {n: s for n, (s, _) in pushed.rows.items()} == {"a": "pushed", "b": "pushed"}, pushed.rows
    return url, config


def _blob_files(store_root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (store_root / "blobs").rglob("*") if p.is_file()}


EDITED = TWO.replace("/a.txt > $MODELBUILD_OUT/b.txt", "/a.txt > $MODELBUILD_OUT/b.txt; echo edited >> $MODELBUILD_OUT/b.txt")


@pytest.fixture
def fetched(monkeypatch) -> list[str]:
    """The remote's read log: the path (in its artifact) of every blob downloaded, in order."""
    log: list[str] = []
    real = RemoteCache._fetch_one

    def logged(self, fs, e, local):
        log.append(e.path)
        return real(self, fs, e, local)

    monkeypatch.setattr(RemoteCache, "_fetch_one", logged)
    return log


@pytest.mark.slow
def test_fresh_clone_downloads_only_what_out_needs(remote, origin, tmp_path, fetched, monkeypatch):
    """Lazy materialization: the final target's blobs come down, the chain's intermediate stays
    remote until asked for or needed by a step that runs here (Bazel's build without the bytes)."""
    url, config = remote
    clone = _project(tmp_path / "clone", config)
    planned = plan(["b"], project=clone.root, remote_cache=url)  # the build's own decision, nothing fetched
    assert [(r.decision, r.reasons) for r in planned.rows] == [("hit", (f"remote hit: from {url}",))] * 2
    clone.file("out/a/a.txt", "stale\n")  # from some earlier build: out/ must not show it as a's output
    result = clone.build(remote_cache=url)
    a, b = result.targets["a"], result.targets["b"]
    assert clone.statuses(result) == {"a": "cached", "b": "cached"} and result.ok and result.warnings == []
    assert a.remote_hit and a.remote_only and a.out is None and not (clone.out / "a").exists()
    assert a.reason == f"remote hit: from {url} (not downloaded: no step here needs it)"
    assert b.remote_hit and not b.remote_only and b.reason == f"remote hit: from {url}"
    assert (clone.out / "b" / "b.txt").read_text() == "DATA\nMADE\n"
    assert fetched == ["b.txt"] and list(_blob_files(clone.cache).values()) == [b"DATA\nMADE\n"]
    assert not list((clone.cache / "logs").iterdir())  # no step ran
    assert {n: e["remote_only"] for n, e in ((e["target"], e) for e in explain("b", project=clone.root).entries)} \
        == {"a": True, "b": False}
    # The no-op fast path still answers (out/a is not watched: there is none).
    monkeypatch.setattr(fastpath, "_RACY_NS", 0)  # only what the build itself changes may be racy
    started = time.time_ns()
    quiet = clone.build(remote_cache=url)
    assert quiet.targets["a"].remote_only and fetched == ["b.txt"]
    where = dict(project=str(clone.root), recipes=None, cache_dir=None, options={})
    fastpath.record_noop(quiet, started_ns=started, **where)
    assert fastpath.try_noop(**where) == "2 target(s) up to date (nothing changed since the last build)"
    # Its record is the remote's: a push from this clone has nothing to send.
    assert {s for s, _ in cache_push(["b"], project=clone.root, remote_cache=url).rows.values()} == {"already there"}

    # Editing the last step: its input comes down (verified), and only that step runs.
    clone.recipe(EDITED)
    edited = clone.build(remote_cache=url)
    assert clone.statuses(edited) == {"a": "cached", "b": "built"}
    assert edited.targets["a"].remote_hit and not edited.targets["a"].remote_only
    assert fetched == ["b.txt", "a.txt"] and (clone.out / "a" / "a.txt").read_text() == "data\nmade\n"
    assert (clone.out / "b" / "b.txt").read_text() == "DATA\nMADE\nedited\n"
    assert [e["remote_only"] for e in explain("b", project=clone.root).entries] == [False, False]
    # All local now: the next build needs no remote at all.
    again = clone.build()
    assert clone.statuses(again) == {"a": "cached", "b": "cached"} and not any(r.remote_hit for r in again.targets.values())
    # Neither the remote's address nor credentials are in what was shared.
    rc = RemoteCache(url, options={"endpoint_url": config.split('"')[1]} if config else None)
    fs, root = rc._filesystem()
    records = [fs.cat_file(p).decode() for p in fs.find(root + "/ac")]
    leaks = ("testing", "127.0.0.1", str(origin.root), str(tmp_path))
    assert len(records) == 2 and not [t for t in records if any(leak in t for leak in leaks)]


@pytest.mark.slow
def test_corrupt_remote_blob_of_a_needed_input_is_rejected_and_rebuilt(remote, origin, tmp_path, fetched):
    url, config = remote
    clone = _project(tmp_path / "clone", config)
    with Store(origin.cache) as store:  # where a's output is on the remote
        entry = store.get_action(origin.build("a").targets["a"].key).manifest.entries[0]
    rc = RemoteCache(url, options={"endpoint_url": config.split('"')[1]} if config else None)
    fs, _ = rc._filesystem()
    path = rc.blob_path(entry.digest, entry.executable)
    good = fs.cat_file(path)
    bad = good.replace(b"data", b"DATA")  # the same size: only the digest can tell
    assert len(bad) == len(good) and bad != good
    fs.pipe_file(path, bad)

    # Nothing here needs a's bytes: they are not even read.
    lazy = clone.build(remote_cache=url)
    assert clone.statuses(lazy) == {"a": "cached", "b": "cached"} and fetched == ["b.txt"]
    # Editing b makes a needed: its blob is fetched, found corrupt, and a rebuilt here.
    clone.recipe(EDITED)
    result = clone.build(remote_cache=url, remote_upload=True)
    a, b = result.targets["a"], result.targets["b"]
    assert fetched == ["b.txt", "a.txt"]
    assert a.status == "built" and not a.remote_hit and not a.remote_only
    assert a.reason.startswith("cache entry corrupt: a.txt: remote blob ") and "is corrupt" in a.reason
    assert [w for w in result.warnings if "rejected" in w], result.warnings
    assert b.status == "built" and (clone.out / "b" / "b.txt").read_text() == "DATA\nMADE\nedited\n"
    assert (clone.out / "a" / "a.txt").read_bytes() == good
    assert bad not in _blob_files(clone.cache).values()  # never stored, never used
    assert fs.cat_file(path) == good  # the upload replaced the corrupt blob


@pytest.mark.slow
def test_push_then_pull_round_trip(origin, tmp_path):
    url = (tmp_path / "remote").as_uri()
    origin.file("modelbuild.toml", "")
    first = cache_push(["b"], project=origin.root, remote_cache=url)
    assert [s for s, _ in first.rows.values()] == ["pushed", "pushed"] and first.blobs == 2
    again = cache_push(["b"], project=origin.root, remote_cache=url)  # idempotent
    assert [s for s, _ in again.rows.values()] == ["already there", "already there"] and again.blobs == 0
    assert not [p for p in (tmp_path / "remote").rglob(".tmp-*")]  # written under temporary names, renamed

    clone = _project(tmp_path / "clone", f'remote-cache = "{url}"\n')  # the URL from the project file
    pulled = cache_pull(["b"], project=clone.root)
    assert {n: s for n, (s, _) in pulled.rows.items()} == {"a": "pulled", "b": "pulled"} and pulled.ok
    assert pulled.bytes == sum(len(v) for v in _blob_files(clone.cache).values())
    assert [s for s, _ in cache_pull(["b"], project=clone.root).rows.values()] == ["already here"] * 2
    clone.file("modelbuild.toml", "")  # no remote at all now: everything is local
    result = clone.build()
    assert clone.statuses(result) == {"a": "cached", "b": "cached"}
    assert (clone.out / "b" / "b.txt").read_text() == "DATA\nMADE\n"


MAC = """
default = "after"
[targets.mac]
step = "maconly"
[targets.after]
step = "command"
inputs = { x = "mac" }
command = "cat $MODELBUILD_INPUT_X/x > $MODELBUILD_OUT/after.txt"
outs = ["after.txt"]
"""


@pytest.mark.slow
def test_a_result_this_host_cannot_build_comes_from_the_remote(tmp_path, monkeypatch):
    """A Mac built `mac` and uploaded it; on this (non-macOS) host it is a remote hit, not
    "unavailable". The Mac is a stand-in: MODELBUILD_HOST_PLATFORM=macos for the first build."""
    install_test_steps(tmp_path, monkeypatch)
    url = (tmp_path / "remote").as_uri()
    mac = Project(tmp_path / "mac")
    mac.recipe(MAC)
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "macos")
    built = mac.build(remote_cache=url, remote_upload=True)
    assert mac.statuses(built) == {"mac": "built", "after": "built"} and not built.warnings
    monkeypatch.setenv("MODELBUILD_HOST_PLATFORM", "linux")
    here = Project(tmp_path / "linux")
    here.recipe(MAC)
    assert here.statuses(here.build()) == {"mac": "unavailable", "after": "skipped"}  # without the remote
    result = here.build(remote_cache=url)
    assert here.statuses(result) == {"mac": "cached", "after": "cached"}
    assert result.targets["mac"].remote_hit and (here.out / "after" / "after.txt").read_text() == "mac"


def test_push_of_results_not_built_here_says_so(tmp_path):
    p = _project(tmp_path / "p")
    done = cache_push(["b"], project=p.root, remote_cache=str(tmp_path / "remote"))
    assert {s for s, _ in done.rows.values()} == {"not built here"} and done.ok


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("server", ["closed port", "500 errors"])
def test_unreachable_remote_degrades_to_a_miss_with_a_warning(server, tmp_path, aws):
    if server == "closed port":
        endpoint, srv = f"http://127.0.0.1:{_closed_port()}", None
    else:
        srv = Loopback(lambda seen: Reply(500, b"<Error><Code>InternalError</Code></Error>")).__enter__()
        endpoint = srv.url
    try:
        clone = _project(tmp_path / "clone", f'remote-options = {{ endpoint_url = "{endpoint}" }}\n')
        result = clone.build(remote_cache="s3://team/cache", remote_upload=True)
        assert clone.statuses(result) == {"a": "built", "b": "built"}
        assert len(result.warnings) == 1, result.warnings  # said once, not once per target or upload
        assert result.warnings[0].startswith("remote cache s3://team/cache unreachable while looking up a record: ")
        assert result.warnings[0].endswith("; building locally")
        with pytest.raises(RemoteUnavailable, match=r"^remote cache s3://team/cache unreachable while connecting"):
            build(["a"], project=clone.root, remote_cache="s3://team/cache", remote_required=True)
        if srv is not None:
            assert srv.requests  # it was asked, and answered with errors
    finally:
        if srv is not None:
            srv.__exit__(None, None, None)


def test_concurrent_uploaders_of_one_key(origin, tmp_path):
    url = (tmp_path / "remote").as_uri()
    with Store(origin.cache) as store:
        key = origin.build().targets["b"].key
        record = store.get_action(key)
        remotes = [RemoteCache(url) for _ in range(4)]
        errors: list[BaseException] = []

        def push(r):
            try:
                r.push(record, store)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=push, args=(r,)) for r in remotes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sum(r.stats.records_pushed for r in remotes) >= 1
        assert RemoteCache(url).find(key) == record
    assert not [p for p in (tmp_path / "remote").rglob(".tmp-*")]


def test_a_record_under_the_wrong_key_is_rejected(origin, tmp_path):
    url = (tmp_path / "remote").as_uri()
    keys = {n: r.key for n, r in origin.build().targets.items()}
    origin.file("modelbuild.toml", "")
    cache_push(["b"], project=origin.root, remote_cache=url)
    rc = RemoteCache(url)
    fs, _ = rc._filesystem()
    fs.pipe_file(rc.record_path(keys["b"]), fs.cat_file(rc.record_path(keys["a"])))
    assert rc.find(keys["b"]) is None
    assert rc.warnings == [f"remote record {keys['b'][:12]} rejected: its key record does not hash to the key it is stored under"]


@pytest.mark.slow
def test_cli_reports_remote_hits(origin, tmp_path):
    url = (tmp_path / "remote").as_uri()
    origin.file("modelbuild.toml", "")
    cache_push(["b"], project=origin.root, remote_cache=url)
    clone = _project(tmp_path / "clone")
    clone.file("pyproject.toml", f'[project]\nname = "clone"\n\n[tool.modelbuild]\nremote-cache = "{url}"\n')
    done = run_cli("build", "--json", cwd=clone.root)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["targets"]
    assert {n: (t["reason"], t["remote_hit"], t["remote_only"], t["out"] is None) for n, t in report.items()} == {
        "a": (f"remote hit: from {url} (not downloaded: no step here needs it)", True, True, True),
        "b": (f"remote hit: from {url}", True, False, False)}
    assert "2 target(s): 2 cached (2 from the remote cache, 1 of them not downloaded)" in done.stderr


def test_cache_push_and_pull_verbs(origin, tmp_path):
    from click.testing import CliRunner

    from modelbuild.commands import cli

    url = str(tmp_path / "remote")  # a plain path is a remote too
    origin.file("modelbuild.toml", "")
    pushed = CliRunner().invoke(cli, ["cache", "push", "b", "--project", str(origin.root), "--remote-cache", url])
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.split() == ["pushed", "a", "1", "blob(s),", "10", "bytes", "pushed", "b", "1", "blob(s),", "10", "bytes"]
    assert pushed.stderr.strip() == f"2 blob(s), 0.0 MB uploaded to {url}"
    clone = _project(tmp_path / "clone")
    pulled = CliRunner().invoke(cli, ["cache", "pull", "b", "--project", str(clone.root), "--remote-cache", url, "--json"])
    assert pulled.exit_code == 0, pulled.output
    report = json.loads(pulled.stdout)
    assert report["ok"] and {n: t["state"] for n, t in report["targets"].items()} == {"a": "pulled", "b": "pulled"}
    nowhere = CliRunner().invoke(cli, ["cache", "pull", "b", "--project", str(clone.root)])
    assert nowhere.exit_code == 1 and "no remote cache: pass --remote-cache URL" in str(nowhere.exception)


# -- configuration ------------------------------------------------------------


def test_config_file_precedence_and_flags(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    assert load_config(root).remote_cache is None
    (root / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_config(root).remote_cache is None and load_config(root).source is None
    (root / "pyproject.toml").write_text('[tool.modelbuild]\nremote-cache = "s3://py/x"\nremote-upload = true\n')
    cfg = load_config(root)
    assert (cfg.remote_cache, cfg.remote_upload, cfg.executor) == ("s3://py/x", True, "local")
    (root / "modelbuild.toml").write_text('remote-cache = "s3://own/x"\nexecutor = "dask"\nscheduler = "tcp://s:8786"\n')
    cfg = load_config(root)  # modelbuild.toml wins whole: pyproject's remote-upload no longer applies
    assert (cfg.remote_cache, cfg.remote_upload, cfg.executor, cfg.scheduler) == ("s3://own/x", False, "dask", "tcp://s:8786")
    assert cfg.source.endswith("modelbuild.toml")
    flags = cfg.override(remote_cache="file:///mnt/c", remote_upload=None, executor=None)
    assert (flags.remote_cache, flags.remote_upload, flags.executor) == ("file:///mnt/c", False, "dask")


@pytest.mark.parametrize("text, message", [
    ('remote-cahce = "s3://a"', "tool.modelbuild.remote-cahce: unknown key (did you mean 'remote-cache'?)"),
    ("remote-upload = 'yes'", "tool.modelbuild.remote-upload: expected true or false, got 'yes'"),
    ('executor = "ray"', "tool.modelbuild.executor: expected 'local' or 'dask', got 'ray'"),
    ('remote-options = { secret = "x" }', "tool.modelbuild.remote-options: 'secret' looks like a credential"),
    ("remote-cache = [", "not valid TOML"),
])
def test_a_bad_config_is_one_line_naming_the_file_and_key(tmp_path, monkeypatch, text, message):
    (tmp_path / "pyproject.toml").write_text(f"[tool.modelbuild]\n{text}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith("pyproject.toml: ") and message in str(info.value)
    assert "\n" not in str(info.value) and isinstance(info.value, ModelbuildError)


def test_credentials_never_shown():
    assert redact("https://user:pw@cache.example:8443/mb?sig=abc#x") == "https://cache.example:8443/mb"
    rc = RemoteCache("https://user:pw@127.0.0.1:1/mb")
    assert "pw" not in repr(rc) and "pw" not in rc.shown
    err = rc._unreachable("fetching x", OSError('cannot get "https://u:pw@h/b/k?X-Amz-Signature=s3cr3t" now'))
    assert str(err) == 'remote cache https://127.0.0.1:1/mb unreachable while fetching x: OSError: cannot get "https://h/b/k" now'


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_large_pull_is_verified_before_it_is_stored_and_leaves_nothing_behind(backend, tmp_path, request, monkeypatch):
    """remote_transfer.py: several blobs at once, a large one hashed while it is written back;
    a blob corrupt, short, long or cut off half-way stores nothing, and no part of the pull stays in tmp/."""
    import os as _os

    from modelbuild import remote_transfer
    from modelbuild.errors import CacheCorrupt

    monkeypatch.setattr(remote_transfer, "OVERLAP_BYTES", 1 << 16)  # the large-blob path, at a test's size

    if backend == "file":
        url, options = (tmp_path / "remote").as_uri(), None
    else:
        options = {"endpoint_url": request.getfixturevalue("moto_endpoint")}
        request.getfixturevalue("aws")
        url = "s3://team/large-pull"
    out = tmp_path / "step-out"
    out.mkdir()
    (out / "big.bin").write_bytes(_os.urandom(1 << 20))
    for i in range(3):
        (out / f"small{i}.txt").write_text(f"small {i}\n")
    with Store(tmp_path / "origin") as origin:
        manifest = origin.ingest(out)
        assert RemoteCache(url, options=options).push_blobs(manifest, origin) == 4
    big = next(e for e in manifest.entries if e.path == "big.bin")
    rc = RemoteCache(url, options=options)
    fs, _ = rc._filesystem()
    rpath = rc.blob_path(big.digest)
    good = fs.cat_file(rpath)
    mid = len(good) // 2

    def pull(name: str, match: str | None) -> dict[str, bytes]:
        with Store(tmp_path / name) as store:
            if match is None:
                assert RemoteCache(url, options=options).pull(manifest, store) == 4
            else:
                with pytest.raises(CacheCorrupt, match=match):
                    RemoteCache(url, options=options).pull(manifest, store)
            assert not [p for p in store.tmp.rglob("*") if p.is_file()]  # no partial download left
            return _blob_files(store.root)

    corrupt = good[:mid] + bytes([good[mid] ^ 1]) + good[mid + 1:]  # the same size: only the digest tells
    for bad, match in ((corrupt, r"big.bin: remote blob .* is corrupt \(content hashes to b3:"),
                       (good[:-1], rf"is corrupt \(size {len(good) - 1}, expected {len(good)}\)"),
                       (good + b"x", rf"is corrupt \(size {len(good) + 1}, expected {len(good)}\)")):
        fs.pipe_file(rpath, bad)
        assert pull("clone", match) == {}  # not even the three good small blobs are stored

    fs.pipe_file(rpath, good)
    real = fs.get_file  # (fsspec hands every RemoteCache of this URL the same instance)

    def cut_off(rpath_, lpath, **kw):  # the connection drops half-way through the big blob
        if rpath_.endswith(big.digest[5:]):
            Path(lpath).write_bytes(good[:mid])
            raise ConnectionResetError("connection reset by peer")
        return real(rpath_, lpath, **kw)

    monkeypatch.setattr(fs, "get_file", cut_off)
    assert pull("clone", r"unreachable while fetching big.bin: ConnectionResetError") == {}
    monkeypatch.setattr(fs, "get_file", real)
    got = pull("clone2", None)
    assert got[big.digest[5:]] == good and sorted(got.values()) == sorted(
        [good] + [f"small {i}\n".encode() for i in range(3)])
