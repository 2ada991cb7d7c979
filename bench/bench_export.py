"""Benchmark: modelbuild vs ExecuTorch's ``export_llm`` on the same synthetic checkpoint.

The like-for-like comparison (interleaved pairs, equal ``OMP_NUM_THREADS``,
CPU-seconds, peak memory measured the same way for both tools, a structural
comparison of the ``.pte`` files) is ``bench_pairs.py``; this script's
figures in docs/benchmarks.md are kept under "earlier sessions". Its
checkpoint writing and ``export_llm`` command lines are reused there.

Two comparisons, each the median of ``--runs`` runs, wall time and peak RSS
(the sum over the whole process tree, sampled every 50 ms; a vfork child
that has not exec'd yet is not counted again, its pages are its parent's: see
``tree_rss``; the plain sum is printed too, as "raw sum"):

1. single: one config (synthetic SmolLM2-135M shape, fp32, KV cache, custom
   SDPA, dynamic shape, XNNPACK) through ``modelbuild build`` on a temporary
   project with a cold cache, versus ``python -m
   executorch.extension.llm.export.export_llm`` with the equivalent config.
2. matrix: {xnnpack, coreml} x {fp32, 4-bit weights} (XNNPACK: 8da4w group
   32; Core ML: b4w, int4 blocks of 32 at conversion) as one modelbuild build
   of four targets (fetch and export shared, independent steps in parallel)
   versus four separate ``export_llm`` runs.

The checkpoint is written once, before any timing: an HF-layout synthetic
checkpoint for modelbuild (a project-local ``source``), and the same weights
in Meta layout (``consolidated.00.pth`` + ``params.json``) for export_llm,
which takes only that layout (users run a convert_weights script first; that
conversion is not timed, while modelbuild's conversion inside export is).

Usage::

    nice -n 5 .venv/bin/python bench/bench_export.py --runs 3
    .venv/bin/python bench/bench_export.py --only single --runs 1 --size tiny   # smoke test

It takes many minutes on 2 cores at the 135m size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

PAGE = os.sysconf("SC_PAGE_SIZE")

MATRIX = ("xnnpack-fp32", "xnnpack-8da4w", "coreml-fp32", "coreml-b4w")


@dataclass
class Run:
    wall_s: float
    peak_rss_mb: float
    ok: bool
    detail: str = ""
    #: The plain sum of RSS over the tree, counting un-exec'd forks again (see tree_rss).
    raw_peak_rss_mb: float = 0.0


def _stat(pid: int) -> tuple[int, int, int] | None:
    """``(ppid, vsize, rss bytes)`` of ``pid`` from one read of ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[20]), int(fields[21]) * PAGE


def tree_rss(root) -> tuple[int, int]:
    """``(rss, raw)`` of ``root``'s process tree, in bytes.

    ``raw`` sums every process's RSS. ``rss`` leaves out a child whose virtual
    size and RSS both equal its parent's: a vfork child that has not exec'd
    yet. Python's subprocess starts programs with vfork, so until exec the
    child shares its parent's address space and reports the parent's whole
    RSS; counting it would count the same pages twice. ExecuTorch starts
    ``flatc`` this way once per XNNPACK partition, from a process holding
    gigabytes. A plain ``fork`` child (copied page tables) differs by a few
    pages and is still counted, so the figure errs high, never low.
    """
    import psutil

    try:
        pids = [root.pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return 0, 0
    stats = {pid: st for pid in pids if (st := _stat(pid)) is not None}
    rss = raw = 0
    for ppid, vsize, size in stats.values():
        raw += size
        parent = stats.get(ppid)
        if parent is None or (parent[1], parent[2]) != (vsize, size):
            rss += size
    return rss, raw


def measure(cmd: list[str], cwd: Path, log: Path) -> Run:
    """Run ``cmd``; wall time and peak RSS over its process tree (sampled every 50 ms)."""
    import psutil

    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = peak_raw = 0
        while proc.poll() is None:
            rss, raw = tree_rss(root)
            peak, peak_raw = max(peak, rss), max(peak_raw, raw)
            time.sleep(0.05)
    wall = time.perf_counter() - start
    ok = proc.returncode == 0
    detail = "" if ok else f"exit {proc.returncode}, see {log}"
    return Run(wall, peak / 2**20, ok, detail, raw_peak_rss_mb=peak_raw / 2**20)


# -- inputs -------------------------------------------------------------------


def prepare_checkpoints(work: Path, architecture: str, size: str, dtype: str = "fp32") -> tuple[Path, Path, dict]:
    """HF-layout dir (for modelbuild) and Meta-layout dir (for export_llm) of the same weights.

    The Meta-layout weights are stored in ``dtype`` (Meta's own checkpoints are bf16).
    """
    import torch

    from modelbuild.ml.llm.checkpoint import load_checkpoint
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint

    hf = work / "project" / "ckpt"
    fields = write_synthetic_checkpoint(hf, architecture, size, 0)
    (hf / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
    loaded = load_checkpoint(hf, dtype=dtype)
    meta = work / "meta"
    meta.mkdir(parents=True)
    torch.save(loaded.state_dict, meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps(loaded.model_args, sort_keys=True))
    shutil.copy(hf / "tokenizer.json", meta / "tokenizer.json")
    return hf, meta, dict(loaded.metadata)


RECIPE = """
[targets.ckpt]
step = "fetch"
source = "ckpt"

[targets.export]
step = "export"
inputs = {{ checkpoint = "ckpt" }}
dtype = "fp32"
max_seq_len = {seq}
use_kv_cache = true
use_sdpa_with_kv_cache = true
enable_dynamic_shape = true

[targets.xnnpack-fp32]
step = "lower"
inputs = {{ program = "export" }}
backend = "xnnpack"

[targets.q8da4w]
step = "quantize"
inputs = {{ program = "export" }}
linear = "8da4w"
group_size = 32

[targets.xnnpack-8da4w]
step = "lower"
inputs = {{ program = "q8da4w" }}
backend = "xnnpack"

[targets.export-static]
extends = "export"
use_sdpa_with_kv_cache = false
enable_dynamic_shape = false

[targets.coreml-fp32]
step = "lower"
inputs = {{ program = "export-static" }}
backend = "coreml"
minimum_deployment_target = "iOS18"

[targets.coreml-b4w]
extends = "coreml-fp32"
coreml_quantize = "b4w"
"""


def export_llm_cmd(variant: str, meta: Path, out: Path, metadata: dict, seq: int, model_class: str) -> list[str]:
    args = [
        PY, "-m", "executorch.extension.llm.export.export_llm",
        f"base.model_class={model_class}",
        f"base.checkpoint={meta / 'consolidated.00.pth'}",
        f"base.params={meta / 'params.json'}",
        f"base.metadata='{json.dumps(metadata, separators=(',', ':'))}'",
        "model.use_kv_cache=True",
        "model.dtype_override=fp32",
        f"export.max_seq_length={seq}",
        f"export.output_dir={out}",
        f"export.output_name={out / (variant + '.pte')}",
    ]
    if variant.startswith("xnnpack"):
        args += [
            "model.use_sdpa_with_kv_cache=True",
            "model.enable_dynamic_shape=True",
            "backend.xnnpack.enabled=True",
            "backend.xnnpack.extended_ops=True",
        ]
        if variant.endswith("8da4w"):
            args += ["quantization.qmode=8da4w", "quantization.group_size=32"]
    else:
        args += [
            "model.use_sdpa_with_kv_cache=False",
            "model.enable_dynamic_shape=False",
            "backend.coreml.enabled=True",
            "backend.coreml.ios=18",
            "backend.coreml.compute_units=cpu_only",
        ]
        if variant.endswith("b4w"):
            args += ["backend.coreml.quantize=b4w"]
    return args


# -- runs ---------------------------------------------------------------------


def modelbuild_run(project: Path, targets: list[str], work: Path, tag: str, jobs: int) -> Run:
    cache = work / f"cache-{tag}"
    out = work / f"out-{tag}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PY, "-m", "modelbuild.cli", "build", *targets, "--project", str(project),
           "--cache-dir", str(cache), "--out-dir", str(out), "-j", str(jobs), "--report", str(work / f"report-{tag}.json")]
    run = measure(cmd, ROOT, work / f"log-{tag}.txt")
    if run.ok:
        sizes = {t: (out / t / "model.pte").stat().st_size for t in targets if (out / t / "model.pte").exists()}
        run.detail = ", ".join(f"{t}: {s / 1e6:.1f} MB" for t, s in sizes.items())
    shutil.rmtree(cache, ignore_errors=True)
    return run


def export_llm_runs(variants: list[str], meta: Path, work: Path, tag: str, metadata: dict, seq: int,
                    model_class: str) -> Run:
    """Run export_llm once per variant, one after another (as a user would)."""
    out = work / f"et-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    total, peak, raw, ok, details = 0.0, 0.0, 0.0, True, []
    for variant in variants:
        # cwd=out: export_llm (hydra) writes an outputs/<date>/ folder into its cwd.
        run = measure(export_llm_cmd(variant, meta, out, metadata, seq, model_class), out,
                      work / f"log-{tag}-{variant}.txt")
        total += run.wall_s
        peak = max(peak, run.peak_rss_mb)
        raw = max(raw, run.raw_peak_rss_mb)
        ok = ok and run.ok
        pte = out / f"{variant}.pte"
        details.append(f"{variant}: {pte.stat().st_size / 1e6:.1f} MB" if pte.exists() else f"{variant}: {run.detail}")
    return Run(total, peak, ok, ", ".join(details), raw_peak_rss_mb=raw)


def median_run(runs: list[Run]) -> Run:
    good = [r for r in runs if r.ok]
    if not good:
        return runs[-1]
    return Run(statistics.median(r.wall_s for r in good), statistics.median(r.peak_rss_mb for r in good),
               True, good[-1].detail, raw_peak_rss_mb=statistics.median(r.raw_peak_rss_mb for r in good))


def table(title: str, rows: list[tuple[str, Run]], n: int) -> str:
    lines = [f"\n{title} (median of {n})",
             f"{'tool':<34} {'wall s':>9} {'peak RSS MB':>12} {'raw sum MB':>11}  ok  detail"]
    for name, run in rows:
        lines.append(f"{name:<34} {run.wall_s:>9.1f} {run.peak_rss_mb:>12.0f} {run.raw_peak_rss_mb:>11.0f}"
                     f"  {'y' if run.ok else 'n':>2}  {run.detail}")
    if len(rows) == 2 and all(r.ok for _, r in rows):
        a, b = rows[0][1], rows[1][1]
        lines.append(f"{'ratio modelbuild / export_llm':<34} {a.wall_s / b.wall_s:>9.2f} {a.peak_rss_mb / b.peak_rss_mb:>12.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("single", "matrix"))
    parser.add_argument("--architecture", default="smollm2")
    parser.add_argument("--size", default="135m", help="synthetic size (135m = the real SmolLM2-135M shape)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--workdir", type=Path, help="keep inputs, logs and outputs here (default: a temp dir)")
    parser.add_argument("--tool", choices=("both", "modelbuild", "export_llm"), default="both",
                        help="run one side only (no ratio is printed then)")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="modelbuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir: {work}", flush=True)
    project = work / "project"
    (project / "recipes").mkdir(parents=True, exist_ok=True)
    (project / "recipes" / "bench.toml").write_text(textwrap.dedent(RECIPE.format(seq=args.max_seq_len)))
    _, meta, metadata = prepare_checkpoints(work, args.architecture, args.size)
    model_class = {"smollm2": "smollm2", "llama3_2": "llama3_2"}.get(args.architecture, args.architecture)
    skipped = Run(0.0, 0.0, False, "not run (--tool)")
    use_mb, use_et = args.tool in ("both", "modelbuild"), args.tool in ("both", "export_llm")

    report = []
    if args.only in (None, "single"):
        mb, et = [], []
        for i in range(args.runs):
            mb.append(modelbuild_run(project, ["xnnpack-fp32"], work, f"single-{i}", args.jobs) if use_mb else skipped)
            et.append(export_llm_runs(["xnnpack-fp32"], meta, work, f"single-{i}", metadata, args.max_seq_len, model_class)
                      if use_et else skipped)
            print(f"single run {i}: modelbuild {mb[-1]}, export_llm {et[-1]}", flush=True)
        report.append(table(f"single config: {args.architecture} {args.size}, fp32, kv+sdpa, XNNPACK",
                            [("modelbuild build (cold cache)", median_run(mb)), ("export_llm", median_run(et))], args.runs))
    if args.only in (None, "matrix"):
        mb, et = [], []
        for i in range(args.runs):
            mb.append(modelbuild_run(project, list(MATRIX), work, f"matrix-{i}", args.jobs) if use_mb else skipped)
            et.append(export_llm_runs(list(MATRIX), meta, work, f"matrix-{i}", metadata, args.max_seq_len, model_class)
                      if use_et else skipped)
            print(f"matrix run {i}: modelbuild {mb[-1]}, export_llm {et[-1]}", flush=True)
        report.append(table("matrix: {xnnpack, coreml} x {fp32, 4-bit}",
                            [(f"modelbuild build (4 targets, -j {args.jobs})", median_run(mb)),
                             ("export_llm x 4 (sequential)", median_run(et))], args.runs))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
