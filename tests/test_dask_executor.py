"""The Dask executor against a real scheduler and real worker processes on 127.0.0.1.

One cluster serves the module (tests/dask_cluster.py: a Linux worker and a Linux
worker standing in for a Mac); the graphs are command steps and tiny plugin
steps, no ML.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from modelbuild.api import explain
from modelbuild.dask_executor import ClusterError
from modelbuild.outcome import Status
from modelbuild.progress import format_result_line
from tests.conftest import CHAIN, Project
from tests.dask_cluster import CONFIG, install_steps, install_xcrun, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import dask

    saved_path = list(sys.path)
    plugins = install_steps(tmp_path_factory.mktemp("dask-plugin"))
    with dask.config.set(CONFIG):
        mac_cache = tmp_path_factory.mktemp("mac-cache")
        # A stand-in for Xcode (xcrun) on the Mac stand-in's PATH only: not on this process's.
        mac_bin = install_xcrun(tmp_path_factory.mktemp("mac-bin"))
        cluster = start_cluster(plugins, mac_cache, mac_bin)
        cluster.plugins, cluster.mac_cache, cluster.mac_bin = plugins, mac_cache, mac_bin
        try:
            yield cluster
        finally:
            cluster.close()
            sys.path[:] = saved_path


@pytest.fixture
def client(cluster):
    from distributed import Client

    with Client(cluster.scheduler_address, set_as_default=False) as c:
        yield c


def dask_build(project: Project, cluster, *targets: str, **kw):
    return project.build(*targets, executor="dask", scheduler=cluster.scheduler_address, **kw)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_graph_built_on_dask_equals_the_local_build(tmp_path, cluster):
    here, there = Project(tmp_path / "here"), Project(tmp_path / "there")
    for p in (here, there):
        p.recipe(CHAIN)
        p.file("data.txt", "data\n")
    local = here.build("c")
    remote = dask_build(there, cluster, "c")
    assert remote.ok, {n: r.reason for n, r in remote.targets.items()}
    assert here.statuses(local) == there.statuses(remote) == {"a": "built", "b": "built", "c": "built"}
    assert {n: r.key for n, r in local.targets.items()} == {n: r.key for n, r in remote.targets.items()}
    assert {n: r.digest for n, r in local.targets.items()} == {n: r.digest for n, r in remote.targets.items()}
    assert tree(here.out) == tree(there.out)
    assert {r.worker for r in remote.targets.values()} <= {"linux-1", "mac-standin"}
    assert all(r.worker is None for r in local.targets.values())
    # The workers logged into the engine's logs, and the results are ordinary cache entries here.
    assert "== modelbuild: c (command)" in remote.targets["c"].log.read_text()
    again = there.build("c")
    assert there.statuses(again) == {"a": "cached", "b": "cached", "c": "cached"}


ROUTED = """
[targets.a]
step = "command"
command = "echo from-linux > $MODELBUILD_OUT/a.txt"
outs = ["a.txt"]

[targets.m]
step = "whereami"
inputs = { src = "a" }
"""


@pytest.mark.slow
def test_a_step_needing_macos_runs_on_the_worker_advertising_macos(project, cluster):
    project.recipe(ROUTED)
    here = project.build("m")  # this Linux host cannot run it ...
    assert here.targets["m"].status == Status.UNAVAILABLE
    result = dask_build(project, cluster, "m")  # ... the cluster's Mac (stand-in) can
    assert result.ok and result.targets["m"].status == Status.BUILT, result.targets["m"].reason
    assert (project.out / "m" / "where.txt").read_text() == "mac-standin"
    assert result.targets["m"].worker == "mac-standin"
    # The progress line, the JSON report and explain say where it ran.
    assert format_result_line(result.targets["m"]).endswith("[on mac-standin]")
    assert result.to_json()["targets"]["m"]["worker"] == "mac-standin"
    assert [e.get("worker") for e in explain("m", project=project.root).entries if e["target"] == "m"] == ["mac-standin"]


@pytest.mark.slow
def test_a_worker_with_its_own_cache_exchanges_artifacts_through_the_remote_cache(tmp_path, project, cluster):
    from modelbuild.store import Store

    project.recipe(ROUTED)
    # The executor from the project configuration this time, the remote from the arguments.
    project.file("modelbuild.toml", f'executor = "dask"\nscheduler = "{cluster.scheduler_address}"\n')
    result = project.build("m", remote_cache=(tmp_path / "remote").as_uri(), remote_upload=True)
    m = result.targets["m"]
    assert m.status == Status.BUILT and m.worker == "mac-standin", m.reason
    assert (project.out / "m" / "where.txt").read_text() == "mac-standin"
    with Store(project.cache) as here, Store(cluster.mac_cache) as mac:
        a_out, m_out = (here.get_action(result.targets[t].key).manifest for t in ("a", "m"))
        assert not mac.missing_or_corrupt(a_out)  # the input came to the Mac through the remote ...
        assert not mac.missing_or_corrupt(m_out)  # ... its output was made there ...
        assert not here.missing_or_corrupt(m_out)  # ... and came back here, verified
    assert any((tmp_path / "remote").rglob("*"))


MLMODELC = """
[targets.pkg]
step = "standinpkg"

[targets.pkg-mlmodelc]
step = "mlmodelc"
inputs = { model = "pkg" }
"""


@pytest.mark.slow
def test_mlmodelc_is_keyed_with_the_toolchain_of_the_mac_worker_that_compiles_it(project, cluster):
    """Issue 14's headline: a Linux client and a Mac build one graph. This host has no xcrun,
    so it cannot say which Xcode will compile the package; the Mac (a stand-in, with a stand-in
    for Xcode's xcrun on its own PATH) is asked, its compiler version keys the step, and its own
    check of the key against its toolchain (dask_task.py) passes."""
    import json
    import shutil

    from modelbuild.api import plan
    from modelbuild.store import Store

    assert shutil.which("xcrun") is None  # the stand-in Xcode is on the Mac stand-in's PATH only
    project.recipe(MLMODELC)
    first = dask_build(project, cluster, "pkg-mlmodelc")
    built = first.targets["pkg-mlmodelc"]
    assert built.status == Status.BUILT, built.reason
    assert first.to_json()["targets"]["pkg-mlmodelc"]["worker"] == "mac-standin"
    assert (project.out / "pkg-mlmodelc" / "model.mlmodelc" / "coremldata.bin").read_bytes().startswith(b"compiled:")
    compiler = json.loads((project.out / "pkg-mlmodelc" / "mlmodelc.json").read_text())["compiler"]
    assert compiler == {"coremlcompiler": "3404.4.1", "macos_sdk": "15.0"}
    with Store(project.cache) as store:
        assert store.get_action(built.key).key_record["toolchain"] == compiler  # the Mac's, not "not available"
    assert "keyed with the toolchain of worker mac-standin" in built.reasons
    assert first.valid_until_ns == 0  # the no-op fast path cannot watch a worker's Xcode: it must not vouch
    # Again: a hit; plan (through the cluster) says so and whose toolchain keyed it.
    again = dask_build(project, cluster, "pkg-mlmodelc").targets["pkg-mlmodelc"]
    assert (again.status, again.key) == (Status.CACHED, built.key), again.reason
    assert again.reason == "up to date; keyed with the toolchain of worker mac-standin"
    row = plan(["pkg-mlmodelc"], project=project.root, executor="dask", scheduler=cluster.scheduler_address).rows[-1]
    assert (row.decision, row.key, row.reasons) == ("hit", built.key, (again.reason,))
    # Xcode upgraded on the Mac: rebuilt there, and the reason says why.
    version = cluster.mac_bin / "coremlcompiler-version"
    version.write_text("3500.14.1\n")
    try:
        third = dask_build(project, cluster, "pkg-mlmodelc").targets["pkg-mlmodelc"]
    finally:
        version.write_text("3404.4.1\n")
    assert (third.status, third.worker) == (Status.BUILT, "mac-standin"), third.reason
    assert third.reasons == ["toolchain changed: coremlcompiler 3404.4.1 -> 3500.14.1",
                             "keyed with the toolchain of worker mac-standin"]
    [entry] = [e for e in explain("pkg-mlmodelc", project=project.root).entries if e["target"] == "pkg-mlmodelc"]
    assert entry["reasons"] == third.reasons and entry["worker"] == "mac-standin"
    # A local build is unchanged: this host cannot compile, and says so.
    assert project.build("pkg-mlmodelc").targets["pkg-mlmodelc"].status == Status.UNAVAILABLE


NO_GPU = ROUTED + """
[targets.compiled]
step = "needsgpu"
"""


@pytest.mark.slow
def test_a_requirement_no_worker_has_is_an_error_listing_the_cluster(project, cluster):
    project.recipe(NO_GPU)
    with pytest.raises(ClusterError) as err:
        dask_build(project, cluster, "m", "compiled")
    text = str(err.value)
    assert "compiled (no worker with nvidia-smi)" in text
    assert "linux-1 (cpu=1, linux=1); mac-standin (macos=1, xcode=1)" in text
    assert not project.out.exists()  # refused before anything ran
    # With -k the rest builds, and that target says what is missing.
    result = dask_build(project, cluster, "m", "compiled", keep_going=True)
    assert result.targets["m"].status == Status.BUILT
    assert result.targets["compiled"].status == Status.UNAVAILABLE
    assert result.targets["compiled"].reason == "needs a worker with nvidia-smi"


@pytest.mark.slow
def test_an_unreachable_scheduler_is_a_one_line_error(tmp_path):
    from modelbuild.dask_executor import DaskExecutor
    from modelbuild.store import Store

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Store(tmp_path / "cache") as store, pytest.raises(ClusterError) as err:
        DaskExecutor(f"tcp://127.0.0.1:{port}", store, connect_timeout_s=1)
    assert str(err.value).startswith(f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}: ")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_failure_without_k_cancels_the_steps_no_worker_has_started(tmp_path, project, cluster):
    release = tmp_path / "release"
    project.recipe("[targets.bad]\nstep = 'linuxfail'\n" + "".join(
        f"[targets.w{i}]\nstep = 'macwait'\nrelease = '{release}'\ntag = '{i}'\n" for i in range(3)))
    finished: list[str] = []
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", dask_build(
        project, cluster, "bad", "w0", "w1", "w2", jobs=4,
        on_event=lambda e: finished.append(e.target) if e.kind == "finish" else None)))
    thread.start()
    # The Mac (stand-in) runs one macwait at a time; the other two wait for it. When `bad`
    # fails they are cancelled and finish, while the running one waits for the release file.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ("bad" in finished and len(finished) >= 3):
        time.sleep(0.05)
    assert "bad" in finished and len(finished) == 3, finished
    release.write_text("go")
    thread.join(60)
    assert not thread.is_alive()
    result = box["r"]
    assert result.targets["bad"].status == Status.FAILED
    waits = [result.targets[f"w{i}"] for i in range(3)]
    assert sorted(r.status for r in waits) == [Status.BUILT, Status.FAILED, Status.FAILED] or \
        sorted(r.status for r in waits) == [Status.BUILT, Status.FAILED, Status.SKIPPED]
    cancelled = [r for r in waits if r.status != Status.BUILT]
    assert all("cancelled" in r.reason or "not started" in r.reason for r in cancelled), [r.reason for r in cancelled]
    assert sum((project.out / f"w{i}" / "ran").exists() for i in range(3)) == 1


@pytest.mark.slow
def test_ctrl_c_stops_the_steps_running_on_workers(tmp_path, project, cluster):
    import subprocess

    from modelbuild.cli import EXIT_INTERRUPTED

    pidfile = tmp_path / "pid"
    project.recipe(f"[targets.w]\nstep = 'macwait'\nrelease = '{tmp_path / 'never'}'\npidfile = '{pidfile}'\n")
    env = {k: v for k, v in os.environ.items() if k != "MODELBUILD_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cluster.plugins), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "modelbuild.cli", "build", "w", "--executor", "dask",
                             "--scheduler", cluster.scheduler_address], cwd=project.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not pidfile.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert pidfile.exists(), "the step never started"
        step_pid = int(pidfile.read_text())
        proc.send_signal(signal.SIGINT)
        # A hang guard, not a time limit: the build's client shuts down through the scheduler, which
        # took over a minute once in the full suite at load ~9 on 2 cores (the test passes alone, and
        # with two CPU burners beside it, in under 30 s).
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the interrupted build did not exit within 240 s; its stderr:\n" + proc.communicate()[1])
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in err
    # The step's process on the Mac (stand-in) was killed, not left running with nobody waiting.
    deadline = time.monotonic() + 30
    while _alive(step_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(step_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_worker_killed_mid_step_fails_that_target(tmp_path, project, cluster, client):
    started = tmp_path / "started"
    project.recipe(f"""
        [targets.slow]
        step = "command"
        command = "echo $MODELBUILD_WORKER > {started}.tmp; mv {started}.tmp {started}; sleep 120"
        outs = ["never"]
        """)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", dask_build(project, cluster, "slow")))
    thread.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the step never started"
    victim = started.read_text().strip()
    pids = client.run(os.getpid)
    names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
    os.kill(next(pid for addr, pid in pids.items() if names[addr] == victim), signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the build hung after its worker died"
    slow = box["result"].targets["slow"]
    assert slow.status == Status.FAILED
    assert "the Dask worker running it died" in slow.reason
    # Last in the module: the nanny restarts the worker, nobody waits for it.
