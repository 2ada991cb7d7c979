"""Benchmark: a cold chain of misses, fused (one worker process) against unfused (one per step).

The chain is fetch (a local synthetic checkpoint) -> export (fp32, KV cache,
custom SDPA) -> quantize (8da4w, group 32; ``--no-quantize`` leaves it out)
-> lower (XNNPACK) -> package, built by ``modelbuild build`` with a cold
cache, alternately with and without ``--no-fuse`` (interleaved pairs, so a
busy machine slows both alike). Printed per run: wall time, CPU seconds of the
whole process tree, peak RSS of the tree (the sampled sum, as ``bench_pairs.measure``
takes it), and each
step's duration and peak as the build report gives them; then the median of
the fused/unfused ratios. The stored artifacts of both are compared: they
must be byte-identical (same digests).

Usage::

    .venv/bin/python bench/bench_fused.py --size tiny --pairs 3
    nice -n 5 .venv/bin/python bench/bench_fused.py --size 135m --pairs 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pairs import measure  # noqa: E402
from llm_inputs import CHAIN_HEAD, PY, QUANTIZE_8DA4W, ROOT  # noqa: E402

RECIPE = CHAIN_HEAD + QUANTIZE_8DA4W + """
[targets.pte]
step = "lower"
inputs = {{ program = "{program}" }}
backend = "xnnpack"

[targets.pkg]
step = "package"
inputs = {{ pte = "pte" }}
model_name = "bench"
"""


def run_build(project: Path, work: Path, tag: str, fuse: bool) -> dict:
    cache, out, report = work / f"cache-{tag}", work / f"out-{tag}", work / f"report-{tag}.json"
    for path in (cache, out):
        shutil.rmtree(path, ignore_errors=True)
    cmd = [PY, "-m", "modelbuild.cli", "build", "pkg", "-q", "--project", str(project), "--cache-dir", str(cache),
           "--out-dir", str(out), "--report", str(report), *([] if fuse else ["--no-fuse"])]
    run = measure("fused" if fuse else "unfused", cmd, ROOT, work / f"log-{tag}.txt", dict(os.environ), None)
    if not run.ok:
        raise SystemExit(f"{tag}: build failed ({run.detail})")
    data = json.loads(report.read_text())["targets"]
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall": run.wall_s, "cpu": run.cpu_s, "peak_gb": run.tree_peak_mb * 2**20 / 1e9, "steps": data}


def describe(tag: str, run: dict) -> str:
    steps = ", ".join(
        f"{name} {t.get('duration_s') or 0:.1f}s/{(t.get('peak_rss_bytes') or 0) / 1e9:.2f}GB"
        for name, t in run["steps"].items()
    )
    return f"{tag:>10}: wall {run['wall']:7.1f} s  cpu {run['cpu']:7.1f} s  peak {run['peak_gb']:5.2f} GB  | {steps}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--architecture", default="smollm2")
    parser.add_argument("--size", default="tiny", help="synthetic size: tiny, or 135m (the real SmolLM2-135M shape)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--no-quantize", action="store_true", help="export -> lower only (fp32)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelbuild-bench-fused-"))
    project = work / "project"
    (project / "recipes").mkdir(parents=True, exist_ok=True)
    program = "export" if args.no_quantize else "q8da4w"
    (project / "recipes" / "bench.toml").write_text(textwrap.dedent(RECIPE.format(seq=args.max_seq_len, program=program)))
    sys.path.insert(0, str(ROOT))
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    ckpt = project / "ckpt"
    if not ckpt.exists():
        fields = write_synthetic_checkpoint(ckpt, args.architecture, args.size, 0)
        (ckpt / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
    print(f"work dir: {work}; chain: ckpt -> export -> {'' if args.no_quantize else 'q8da4w -> '}pte -> pkg, "
          f"{args.architecture} {args.size}", flush=True)

    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        runs = {fuse: run_build(project, work, f"{'fused' if fuse else 'unfused'}-{i}", fuse) for fuse in order}
        print(describe(f"fused {i}", runs[True]), flush=True)
        print(describe(f"unfused {i}", runs[False]), flush=True)
        same = {n: t["digest"] for n, t in runs[True]["steps"].items()} == {n: t["digest"] for n, t in runs[False]["steps"].items()}
        print(f"    artifacts byte-identical: {same}", flush=True)
        ratios.append((runs[True]["wall"] / runs[False]["wall"], runs[True]["cpu"] / runs[False]["cpu"],
                       runs[True]["peak_gb"] / runs[False]["peak_gb"]))
    wall, cpu, peak = (statistics.median(r[k] for r in ratios) for k in range(3))
    print(f"\nfused / unfused, median of {args.pairs} pair(s): wall {wall:.2f}x  cpu {cpu:.2f}x  peak RSS {peak:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
