"""A fresh clone with a warm remote cache versus building: how long it takes to get an artifact.

An origin cache builds TARGET and pushes its chain (`cache push`) to a remote;
then a *fresh clone* (the same recipes, an empty cache and out dir) builds
TARGET with `--remote-cache`, which downloads and verifies the results instead
of running the steps. Only what ``out/TARGET`` needs is downloaded (lazy
materialization, docs/remote.md): the chain's intermediates stay on the
remote, and the table says how many bytes of the chain came down. Remotes: an S3-compatible server (moto, in its own
process on 127.0.0.1) through s3fs, and a directory (file://).

By default TARGET is a synthetic ~100 MB artifact made by a command step (so
the "build" column is only the cost of writing 100 MB from Python: the pull
is compared with the cheapest possible rebuild). With ``--project DIR
--target NAME`` it is a real recipe target (e.g. the repository's
``tiny-llama-pte``), built from scratch in a scratch cache. Run:

    .venv/bin/python bench/bench_remote.py [--size-mb 100]
    .venv/bin/python bench/bench_remote.py --project . --target tiny-llama-pte
    .venv/bin/python bench/bench_remote.py --project . --target tiny-llama-pte --origin-cache /tmp/o/cache

``--origin-cache DIR`` takes the origin from a cache that has built TARGET
already (``modelbuild build TARGET --cache-dir DIR``; it is only read and
pushed from): the "build from scratch" row is then the sum of the step times
recorded in its action records, and the run fits in a few minutes on a loaded machine.
``--idle-build-s S`` adds the ratio against a build time measured on a quieter
machine (recorded step times under load are inflated, which flatters the ratio).
``--remotes s3`` or ``file`` runs one remote only; ``--s3-one-stream`` adds a
fresh clone from S3 with s3fs's ranged parallel GETs turned off
(``FSSPEC_S3='{"max_concurrency": 1}'`` does the same for any command): moto
reads the whole object for every ranged request, so against it one stream wins.

Loopback figures: no network latency or bandwidth limit; the moto server is a
single Python process, so the S3 column measures s3fs + moto + verification,
not what a real bucket would give.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

RECIPE = """
default = "big"

[targets.big]
step = "command"
command = ["python", "-c", "import random, os; r = random.Random(0); f = open(os.environ['MODELBUILD_OUT'] + '/model.bin', 'wb'); [f.write(r.randbytes(min(1 << 24, {size} - i))) for i in range(0, {size}, 1 << 24)]"]
outs = ["model.bin"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise SystemExit("moto server did not start")
    return proc, endpoint


def _blob_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=100.0, help="size of the synthetic artifact")
    ap.add_argument("--project", type=Path, help="a project with recipes/ (default: a synthetic one)")
    ap.add_argument("--target", help="the target to build (with --project)")
    ap.add_argument("-j", "--jobs", type=int, default=None)
    ap.add_argument("--origin-cache", type=Path, help="a cache that has built TARGET already (with --project)")
    ap.add_argument("--idle-build-s", type=float, help="a build time measured on a quieter machine, for a second ratio")
    ap.add_argument("--remotes", default="s3,file", help="which remotes: s3, file or both (default)")
    ap.add_argument("--s3-one-stream", action="store_true", help="also a fresh clone from S3 with one GET stream per blob")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` too stops the moto server and cleans up

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    from modelbuild.api import build, cache_push

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    baseline = time.perf_counter() - t0
    load0 = os.getloadavg()
    cpu0 = time.process_time()
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    proc, endpoint = start_moto()
    os.environ["AWS_ENDPOINT_URL"] = endpoint  # s3fs/botocore read it: no project file needed
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench")
        if args.project is None:
            project = work / "proj"
            (project / "recipes").mkdir(parents=True)
            (project / "recipes" / "main.toml").write_text(RECIPE.format(size=int(args.size_mb * 1e6)))
            target = "big"
        else:
            project, target = args.project.resolve(), args.target
            if not target:
                raise SystemExit("--project needs --target")

        def run(name: str, **kw):
            cache = args.origin_cache if name == "origin" and args.origin_cache else work / name / "cache"
            return build([target], project=project, cache_dir=cache, out_dir=work / name / "out", jobs=args.jobs, **kw)

        origin_cache = args.origin_cache.resolve() if args.origin_cache else work / "origin" / "cache"
        t_build, origin = timed(lambda: run("origin"))
        if not origin.ok:
            log = origin_cache / "logs" / f"{target}.log"
            raise SystemExit(f"build failed: {[r.reason for r in origin.targets.values()]}\n{log.read_text() if log.exists() else ''}")
        size = origin.targets[target].size or 0
        steps = len(origin.targets)
        if args.origin_cache:  # what each step took when it ran, from its action record
            from modelbuild.store import Store

            with Store(origin_cache) as store:
                t_build = sum(store.get_action(r.key).duration_s for r in origin.targets.values())
            rows = [("build from scratch (origin, steps' recorded times)", t_build, f"{steps} step(s)")]
        else:
            rows = [("build from scratch (origin)", t_build, f"{steps} step(s) run")]
        wanted = set(args.remotes.split(","))
        remotes = [(label, url) for label, url in (("loopback S3 (moto)", "s3://bench/cache"),
                                                   ("file://", (work / "remote").as_uri()))
                   if ("s3" if "s3" in url else "file") in wanted]

        def ratios(seconds: float) -> str:
            text = f"x{t_build / seconds:.1f} vs build"
            return text + (f", x{args.idle_build_s / seconds:.1f} vs {args.idle_build_s:.0f} s idle build"
                           if args.idle_build_s else "")

        for label, url in remotes:
            t_push, pushed = timed(lambda: cache_push([target], project=project, cache_dir=origin_cache,
                                                      remote_cache=url))
            assert pushed.ok, pushed.rows
            rows.append((f"cache push to {label}", t_push, f"{pushed.blobs} blob(s), {pushed.bytes / 1e6:.1f} MB"))
            clone = "clone-s3" if "s3" in url else "clone-file"
            t_pull, got = timed(lambda: run(clone, remote_cache=url))
            hits = sum(1 for r in got.targets.values() if r.remote_hit)
            left = sum(1 for r in got.targets.values() if r.remote_only)
            assert got.ok and hits == steps, {n: (r.status, r.reason) for n, r in got.targets.items()}
            chain_mb = sum(r.size or 0 for r in got.targets.values()) / 1e6
            got_mb = _blob_bytes(work / clone / "cache") / 1e6  # what came down (only pulls fill a fresh cache)
            rows.append((f"fresh clone build, {label}", t_pull,
                         f"{hits} remote hit(s), {left} left remote; {got_mb:.1f} of the chain's {chain_mb:.1f} MB "
                         f"downloaded ({got_mb / t_pull:.0f} MB/s); {ratios(t_pull)}"))
            if "s3" in url and args.s3_one_stream:
                import fsspec.config

                fsspec.config.conf.setdefault("s3", {})["max_concurrency"] = 1
                try:
                    t_one, got = timed(lambda: run("clone-s3-one", remote_cache=url))
                finally:
                    del fsspec.config.conf["s3"]["max_concurrency"]
                assert got.ok, {n: (r.status, r.reason) for n, r in got.targets.items()}
                got_mb = _blob_bytes(work / "clone-s3-one" / "cache") / 1e6
                rows.append((f"fresh clone build, {label}, one stream", t_one,
                             f"{got_mb:.1f} MB ({got_mb / t_one:.0f} MB/s); {ratios(t_one)}"))
        # With the remote still configured: the intermediates a lazy build left there are still its hits.
        last_label, last_url = remotes[-1]
        t_local, again = timed(lambda: run("clone-s3" if "s3" in last_url else "clone-file", remote_cache=last_url))
        rows.append(("same clone again (local hit + records)", t_local,
                     f"{sum(1 for r in again.targets.values() if r.status == 'cached')} cached, "
                     f"{sum(1 for r in again.targets.values() if r.remote_only)} still remote"))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ntarget {target}: {size / 1e6:.1f} MB final artifact, {steps} step(s) in its chain; "
          f"{os.cpu_count()} cores, load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"`python -c pass` {baseline:.2f} s; this process {time.process_time() - cpu0:.1f} CPU-s "
          f"(the moto server's not counted)\n")
    print(f"| {'what':<50} | {'seconds':>8} | note")
    print(f"|{'-' * 52}|{'-' * 10}|------")
    for what, seconds, note in rows:
        print(f"| {what:<50} | {seconds:8.2f} | {note}")


if __name__ == "__main__":
    main()
