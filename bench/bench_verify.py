"""`modelbuild verify TARGET --rebuild` on the tiny targets of every artifact kind.

For each target it prints the artifact kind, the steps in its chain, the wall
time of `verify --rebuild` (which builds the target in the bench's cache, then
rebuilds the whole chain in a scratch cache and compares every file), and the
verdict. The cache is built cold first (its time is printed too), so each
verify's time is the rebuild of its chain plus the comparison. Run:

    .venv/bin/python bench/bench_verify.py [--targets T ...] [--jobs 2] [--keep]

Targets of every kind the shipped recipes build on Linux: an XNNPACK .pte and
its package, an 8da4w-quantized XNNPACK .pte, a portable .pte, a Core ML
delegated .pte, a Core ML package, a palettized (compressed) Core ML package,
and a validation report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "verify"

TARGETS = {
    "tiny-llama": "package (XNNPACK .pte + tokenizer)",
    "tiny-llama-8da4w-pte": ".pte, 8da4w, XNNPACK",
    "tinyconv-portable-pte": ".pte, portable",
    "tinyconv-coreml-pte": ".pte, Core ML delegated",
    "tinyconv-mlpackage": ".mlpackage",
    "tinyconv-mlpackage-pal4": ".mlpackage, 4-bit palettized",
    "tiny-llama-pte-validate": "validation report",
}


def modelbuild(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelbuild.cli", *args], cwd=REPO, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="reuse the cache of an earlier run (skips the cold build)")
    args = ap.parse_args()

    cache = WORK / "cache"
    if not args.keep and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    common = ["--project", str(REPO), "--cache-dir", str(cache)]
    load0 = os.getloadavg()
    t0 = time.monotonic()
    proc = modelbuild("build", *args.targets, "-q", "-j", str(args.jobs), *common, "--out-dir", str(WORK / "out"))
    cold = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        return 1
    print(f"cold build of {len(args.targets)} targets (-j {args.jobs}): {cold:.1f} s")
    print(f"{'target':26} {'kind':40} {'chain':>5} {'verify --rebuild s':>18}  verdict")
    failed = False
    for target in args.targets:
        t0 = time.monotonic()
        proc = modelbuild("verify", target, "--rebuild", "--json", "-j", str(args.jobs), *common)
        took = time.monotonic() - t0
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            print(f"{target:26} {TARGETS.get(target, '?'):40} {'?':>5} {took:18.1f}  error: {proc.stderr.strip()[-200:]}")
            failed = True
            continue
        chain = len(report.get("targets", []))
        diffs = report.get("differences", [])
        verdict = "identical" if proc.returncode == 0 and not diffs else f"DIFFERS: {diffs[0] if diffs else proc.returncode}"
        failed |= verdict != "identical"
        skipped = sorted({f"{n['target']}/{n['file']}" for n in report.get("not_compared", [])})
        if skipped:  # measurement files (timings) the step declares: named, never silently dropped
            verdict += f" (not compared, measurements: {', '.join(skipped)})"
        print(f"{target:26} {TARGETS.get(target, '?'):40} {chain:>5} {took:18.1f}  {verdict}")
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} ({os.cpu_count()} cores)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
