"""A real Dask cluster on 127.0.0.1 for the executor tests, and the step plugins they route.

The scheduler runs in the test process (a real ``distributed.Scheduler`` on
TCP); each worker is its own process under a ``Nanny``:

- ``linux-1``: advertises ``linux=1, cpu=1``;
- ``mac-standin``: advertises ``macos=1, xcode=1``. It is a Linux process
  standing in for a Mac (no Mac in CI): ``MODELBUILD_HOST_PLATFORM=macos`` in
  its environment makes its host check say macOS, and a stand-in for Xcode's
  ``xcrun`` (:data:`XCRUN`) is on *its* PATH only, not on this process's nor
  the other worker's: the built-in ``mlmodelc`` step runs there, keyed with
  the compiler version that stand-in reports. Routing and keying are what is
  tested, not Core ML.

``allowed-failures`` is 0, so a worker that dies while running a step fails
that step at once (the default lets the scheduler try 3 more workers).

Steps of the plugin (no ML): ``whereami`` needs macOS and writes the name of
the worker it ran on (``$MODELBUILD_WORKER``); ``needsgpu`` needs ``nvidia-smi``
(a resource no worker here has); ``standinpkg`` writes a stand-in
``model.mlpackage`` (kind ``mlpackage``) for ``mlmodelc``; ``macwait`` needs
macOS and runs until a file appears (writing its process id first, if asked);
``linuxfail`` needs Linux and fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["start_cluster", "install_steps", "install_xcrun", "WORKERS", "CONFIG", "XCRUN"]

WORKERS = {
    "linux-1": {"linux": 1, "cpu": 1},
    "mac-standin": {"macos": 1, "xcode": 1},
}

#: A stand-in for Xcode's ``xcrun`` (CI has no Mac): answers the version probes of
#: steps/mlmodelc.py (the compiler's version is read from ``coremlcompiler-version``
#: beside it, so a test can "upgrade Xcode" on the worker) and "compiles" a package.
XCRUN = """#!{python}
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
args = sys.argv[1:]
if args == ["--show-sdk-version"]:
    print("15.0")
elif args == ["coremlcompiler", "version"]:
    print((here / "coremlcompiler-version").read_text().strip())
elif args[:2] == ["coremlcompiler", "compile"] and len(args) == 4:
    src, dest = Path(args[2]), Path(args[3])
    out = dest / (src.stem + ".mlmodelc")
    out.mkdir(parents=True)
    (out / "coremldata.bin").write_bytes(b"compiled:" + (src / "Manifest.json").read_bytes())
    print(out)
else:
    print("xcrun: error: unknown invocation", file=sys.stderr)
    sys.exit(72)
"""


def install_xcrun(folder: Path, version: str = "3404.4.1") -> Path:
    """Write the stand-in ``xcrun`` into ``folder`` (put on the Mac stand-in's PATH) and its compiler version."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "xcrun"
    script.write_text(XCRUN.format(python=sys.executable))
    script.chmod(0o755)
    (folder / "coremlcompiler-version").write_text(version + "\n")
    return folder

SOURCE = '''
import os
import time

from modelbuild.step import Input, Params, Requirements, Step, StepError


class WhereAmI(Step):
    name = "whereami"
    inputs = {"src": Input(kinds=("any",), optional=True)}
    output = "files"
    requires = Requirements(platforms=("macos",))

    def run(self, ctx):
        (ctx.out / "where.txt").write_text(os.environ.get("MODELBUILD_WORKER", "here"))


class WaitParams(Params):
    release: str
    tag: str = ""
    pidfile: str = ""


class MacWait(Step):
    """Needs macOS; waits until the file ``release`` exists (the test decides when it ends)."""

    name = "macwait"
    output = "files"
    requires = Requirements(platforms=("macos",))
    Params = WaitParams

    def run(self, ctx):
        if ctx.params.pidfile:
            with open(ctx.params.pidfile + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(ctx.params.pidfile + ".tmp", ctx.params.pidfile)
        deadline = time.monotonic() + 60
        while not os.path.exists(ctx.params.release) and time.monotonic() < deadline:
            time.sleep(0.05)
        (ctx.out / "ran").write_text(ctx.params.tag)


class LinuxFail(Step):
    name = "linuxfail"
    output = "files"
    requires = Requirements(platforms=("linux",))

    def run(self, ctx):
        raise StepError("failed on purpose")


class NeedsGpu(Step):
    name = "needsgpu"
    output = "files"
    requires = Requirements(tools=("nvidia-smi",))

    def run(self, ctx):
        (ctx.out / "x").write_text("ran")


class StandinPackage(Step):
    """A stand-in Core ML package (no coremltools): what the mlmodelc step compiles."""

    name = "standinpkg"
    output = "mlpackage"

    def run(self, ctx):
        pkg = ctx.out / "model.mlpackage"
        (pkg / "Data" / "com.apple.CoreML").mkdir(parents=True)
        (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\\n')
        (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"spec")
'''


def install_steps(folder: Path) -> Path:
    """Write the plugin (module + dist-info) under ``folder`` and put it on sys.path.

    Subprocesses get it through their environment (``PYTHONPATH``): the ML
    import guard (tests/ml_guard.py) resets os.environ's after each test.
    """
    dist = folder / "mb_dask_steps-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (folder / "mb_dask_steps.py").write_text(SOURCE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mb-dask-steps\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[modelbuild.steps]\nwhereami = mb_dask_steps:WhereAmI\nneedsgpu = mb_dask_steps:NeedsGpu\n"
        "standinpkg = mb_dask_steps:StandinPackage\n"
        "macwait = mb_dask_steps:MacWait\nlinuxfail = mb_dask_steps:LinuxFail\n")
    sys.path.insert(0, str(folder))
    return folder


#: allowed-failures 0: a worker dying mid-step fails the step at once. No pre-spawn-environ:
#: Dask's Nanny writes it (OMP_NUM_THREADS=1, ...) into the *calling* process's environment,
#: which the other tests in this process must not inherit.
CONFIG = {"distributed.scheduler.allowed-failures": 0, "distributed.nanny.pre-spawn-environ": {}}


def start_cluster(plugins: Path, mac_cache: Path, mac_bin: Path):
    """A SpecCluster with the workers above, ``plugins`` on their path (call it under
    ``dask.config.set(CONFIG)``; the caller closes it).

    The Mac stand-in keeps its own cache (``mac_cache``): with a remote cache
    tier it takes inputs from and gives outputs to the remote, as a Mac that
    does not mount the build's cache would; without one it uses the build's.
    ``mac_bin`` (:func:`install_xcrun`) goes first on its PATH, and only on its.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    env = {"PYTHONPATH": str(plugins), "MODELBUILD_HOST_PLATFORM": ""}
    workers = {}
    for name, resources in WORKERS.items():
        worker_env = dict(env, MODELBUILD_HOST_PLATFORM="macos", MODELBUILD_WORKER_CACHE=str(mac_cache),
                          PATH=f"{mac_bin}{os.pathsep}{os.environ.get('PATH', '')}") if "macos" in resources else env
        workers[name] = {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "resources": resources,
                                                   "env": worker_env, "memory_limit": 0}}
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}},
        workers=workers, silence_logs=50)
