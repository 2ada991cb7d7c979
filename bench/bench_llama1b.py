"""Benchmark: the shipped ``llama-1b-ios`` graph vs ``export_llm`` on the real Llama 3.2 1B shape.

The like-for-like comparison (interleaved pairs, equal ``OMP_NUM_THREADS``,
CPU-seconds, peak memory measured the same way for both tools, a structural
comparison of the ``.pte`` files) is ``bench_pairs.py``; this script's
figures in docs/benchmarks.md are kept under "earlier sessions". Its
checkpoint writing and ``export_llm`` command lines are reused there.

The weights are a synthetic checkpoint of the Llama 3.2 1B shape (seeded
random bf16 weights), written once in Meta layout before any timing. Both
tools read the same files: modelbuild through the shipped
``recipes/llama-1b-ios.toml`` with its fetch pointed at the local copy (the
documented no-hub path), export_llm through ``base.checkpoint`` /
``base.params``.

Two configs, as in ExecuTorch's iOS guide:

- bf16: ``-kv --use_sdpa_with_kv_cache -d bf16 --metadata ...`` (no
  delegate): modelbuild target ``llama-1b-ios``;
- 8da4w: the same plus ``-qmode 8da4w -G <group> -E 4,32 -X``: modelbuild
  target ``llama-1b-8da4w-ios`` with the quantize step set to match.

Measured, one run each (the issue asks for one at this size):

1. modelbuild, cold cache: both targets in one build (fetch and export
   shared), wall time and peak RSS of the whole process tree (counted as
   ``proc_tree.tree_rss`` counts it; the plain sum is printed as "raw sum");
2. export_llm, once per config, one after the other; the sum of wall times
   and the larger peak;
3. modelbuild again after a quantization tweak (group size), same cache: the
   steps it reran and its wall time.

Usage::

    .venv/bin/python bench/bench_llama1b.py --workdir /tmp/bench1b
    .venv/bin/python bench/bench_llama1b.py --size tiny --group 32 --workdir /tmp/b   # smoke test (tiny dim 64: group 128 leaves no linear to quantize)

Takes tens of minutes and up to ~10 GB of RAM on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pairs import Run, measure  # noqa: E402
from llm_inputs import PY, ROOT, prepare_checkpoints  # noqa: E402
from llm_inputs import llama1b_export_llm_cmd as export_llm_cmd  # noqa: E402

TARGETS = ["llama-1b-ios", "llama-1b-8da4w-ios"]


def modelbuild_cmd(project: Path, work: Path, group: int, seq: int, repo: Path) -> list[str]:
    sets = {
        "targets.llama-1b-ckpt.source": str(repo),
        "targets.llama-1b-ckpt.files": '["*"]',  # the synthetic tokenizer is tokenizer.json
        "targets.llama-1b-8da4w.group_size": str(group),
        "targets.llama-1b-8da4w.embedding_bits": "4",
        "targets.llama-1b-8da4w.embedding_group_size": "32",
        "vars.llama1b_max_seq_len": str(seq),
    }
    cmd = [PY, "-m", "modelbuild.cli", "build", *TARGETS, "--project", str(project),
           "--cache-dir", str(work / "cache"), "--out-dir", str(work / "out"), "-j", "1",
           "--report", str(work / f"report-g{group}.json")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def steps_of(report: Path) -> list[tuple[str, str, float, float | None]]:
    """(target, status, seconds, peak RSS in MB of its step process) per target of a build report."""
    data = json.loads(report.read_text())
    return [(name, t["status"], t["duration_s"], (t.get("peak_rss_bytes") or 0) / 2**20 or None)
            for name, t in data["targets"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1b", help="synthetic llama3_2 size (1b = the real Llama 3.2 1B shape)")
    parser.add_argument("--group", type=int, default=128, help="8da4w group size of the first build")
    parser.add_argument("--tweak-group", type=int, default=64, help="group size of the rebuild")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--skip-export-llm", action="store_true")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "recipes").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "llama-1b-ios.toml", project / "recipes")
    # A local copy laid out as the hub repo: original/{consolidated.00.pth, params.json, tokenizer}.
    _, meta, _ = prepare_checkpoints(work / "ckpt", "llama3_2", args.size, dtype="bf16")
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    meta = meta.rename(repo / "original")
    shutil.rmtree(work / "ckpt", ignore_errors=True)  # the HF-layout copy is not used here
    print(f"work dir: {work}; checkpoint {sum(f.stat().st_size for f in meta.iterdir()) / 1e9:.2f} GB", flush=True)

    shutil.rmtree(work / "cache", ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    env = dict(os.environ)
    cold = measure("modelbuild", modelbuild_cmd(project, work, args.group, args.max_seq_len, repo), ROOT,
                   work / "log-cold.txt", env, None)
    print(f"modelbuild cold: {cold}", flush=True)
    tweak = measure("modelbuild", modelbuild_cmd(project, work, args.tweak_group, args.max_seq_len, repo), ROOT,
                    work / "log-tweak.txt", env, None)
    print(f"modelbuild after group_size {args.group} -> {args.tweak_group}: {tweak}", flush=True)

    et: dict[str, Run] = {}
    if not args.skip_export_llm:
        out = work / "et"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for config in ("bf16", "8da4w"):
            # cwd=out: export_llm (hydra) writes an outputs/<date>/ folder into its cwd.
            et[config] = measure("export_llm", export_llm_cmd(config, meta, out, args.group, args.max_seq_len), out,
                                 work / f"log-et-{config}.txt", env, None)
            pte = out / f"{config}.pte"
            if pte.exists():
                et[config].detail = f"{pte.stat().st_size / 1e9:.2f} GB .pte"
            print(f"export_llm {config}: {et[config]}", flush=True)

    lines = [f"\nllama-1b-ios graph, synthetic llama3_2 {args.size}, bf16, kv+sdpa, max_seq_len {args.max_seq_len}"]
    for name, report in (("cold build", work / f"report-g{args.group}.json"),
                         (f"rebuild, group {args.group} -> {args.tweak_group}", work / f"report-g{args.tweak_group}.json")):
        if report.exists():
            lines.append(f"  modelbuild {name}:")
            for target, status, seconds, rss in steps_of(report):
                peak = f"{rss:8.0f} MB" if rss else ""
                lines.append(f"    {target:<24} {status:<8} {seconds:8.1f} s {peak}")
    sizes = {t: (work / "out" / t / "model.pte") for t in TARGETS}
    lines.append("  .pte sizes: " + ", ".join(f"{t} {p.stat().st_size / 1e9:.2f} GB" for t, p in sizes.items() if p.exists()))
    def row(name: str, run: Run) -> str:
        return (f"{name:<36} {run.wall_s:>9.1f} {run.tree_peak_mb:>12.0f} {run.raw_tree_peak_mb:>11.0f}"
                f"  {'y' if run.ok else 'n'}  {run.detail}").rstrip()

    lines.append(f"{'':<36} {'wall s':>9} {'peak RSS MB':>12} {'raw sum MB':>11}  ok")
    lines.append(row("modelbuild, both targets, cold", cold))
    lines.append(row("modelbuild, rebuild after tweak", tweak))
    lines.extend(row(f"export_llm {config}", run) for config, run in et.items())
    if len(et) == 2 and all(r.ok for r in et.values()) and cold.ok:
        total = sum(r.wall_s for r in et.values())
        peak = max(r.tree_peak_mb for r in et.values())
        lines.append(f"{'export_llm, both (sum, max)':<36} {total:>9.1f} {peak:>12.0f}")
        lines.append(f"{'ratio modelbuild / export_llm':<36} {cold.wall_s / total:>9.2f} {cold.tree_peak_mb / peak:>12.2f}")
    print("\n".join(lines))
    return 0 if cold.ok and tweak.ok and all(r.ok for r in et.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
