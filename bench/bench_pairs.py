"""Benchmark: modelbuild against ``export_llm`` in interleaved pairs, measured the same way for both.

For each config, ``--pairs`` pairs of cold runs: modelbuild then export_llm,
then export_llm then modelbuild, and so on (A B, B A, ...), so that a machine
that speeds up or slows down during the series favours neither tool. Both
tools get the same ``OMP_NUM_THREADS`` (``--threads``, default the core count)
and read the same synthetic weights (written once, before any timing).

Per run, for the whole process tree of the tool:

- wall time, and CPU-seconds (user + system, from ``wait4``: the tool's
  process and every descendant it waited for);
- peak memory, three ways: the largest peak RSS of any one process in the
  tree (the larger of ``wait4``'s ``ru_maxrss`` and the ``VmHWM`` values
  sampled from ``/proc`` every 100 ms), the largest sampled sum of RSS over
  the tree (``proc_tree.tree_rss``: an un-exec'd vfork child is not
  counted twice), and a cgroup's peak (``memory.peak``, v1
  ``memory.max_usage_in_bytes``) when ``--cgroup DIR`` names a writable
  cgroup directory to make one child cgroup per run in (it counts page cache
  too);
- the 1-minute load average before and after.

Per pair: modelbuild / export_llm ratios of wall, CPU and both peaks; per
config the median, min and max of those ratios. Then the two ``.pte`` files of
the last pair are compared structurally (instructions by kind, delegate calls
by backend, operator sets, memory-plan buffer sizes), and modelbuild's steps
of its median run (from the build report) say where its time went.

Configs:

- ``llama-1b-ios``: the shipped ``recipes/llama-1b-ios.toml`` target
  ``llama-1b-ios`` (bf16, KV cache, custom SDPA, portable ops, the guide's
  metadata, packaged) against the ExecuTorch iOS guide's ``export_llm``
  command, on the Llama 3.2 1B shape (Meta layout, bf16);
- ``smollm2-fp32``: SmolLM2-135M shape, fp32, KV cache + SDPA, dynamic
  shape, XNNPACK (``-X --xnnpack-extended-ops``);
- ``smollm2-8da4w``: the same with 8da4w, group 32.

Usage::

    .venv/bin/python bench/bench_pairs.py --config llama-1b-ios --pairs 3 --workdir /tmp/pairs
    .venv/bin/python bench/bench_pairs.py --config smollm2-fp32 smollm2-8da4w --pairs 5 --workdir /tmp/pairs
    .venv/bin/python bench/bench_pairs.py --config smollm2-fp32 --size tiny --pairs 1 --workdir /tmp/p   # smoke test
    .venv/bin/python bench/bench_pairs.py --config smollm2-8da4w --pairs 5 --workdir /tmp/pairs \
        --records bench/results/pairs --resume

Every finished run's figures, with the structure of the ``.pte`` it wrote
(read right after the run, outside the timing) and the commit it ran, are
written to ``run-<config>-<size>-seq<N>-omp<T>-<pair>-<tool>.json`` in
``--records`` (default: the work directory; ``bench/results/pairs`` is kept
in git, so a series run in parts survives the machine it ran on). With ``--resume``, a run whose record
is there and says it succeeded is read back instead of run again, so a long
series stopped part way (a 135M 8da4w pair takes about an hour on 2 cores) is
finished later without repeating what was measured; the printed line says
"(recorded)". The pair order (A B, B A, ...) is the same either way, and the
structural comparison needs only the records, not the ``.pte`` files.

The 1B config needs up to ~9 GB of RAM per run; a 135M pair takes about 30
(fp32) to 55 (8da4w) minutes on 2 cores. Run it on an otherwise idle machine: the load averages
printed with every run say whether it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_inputs  # noqa: E402
from llm_inputs import PY, ROOT  # noqa: E402
from proc_tree import tree_rss  # noqa: E402

CONFIGS = ("llama-1b-ios", "smollm2-fp32", "smollm2-8da4w")
MB = 2**20


@dataclass
class Run:
    tool: str
    ok: bool
    wall_s: float
    cpu_s: float
    #: Largest peak RSS of any one process in the tree (wait4 ru_maxrss or sampled VmHWM).
    proc_peak_mb: float
    #: Largest sampled sum of RSS over the tree (un-exec'd vfork children not counted twice).
    tree_peak_mb: float
    raw_tree_peak_mb: float
    cgroup_peak_mb: float | None
    load_before: float
    load_after: float
    pte: str = ""
    detail: str = ""
    steps: list = field(default_factory=list)
    #: The written program's structure (``read_structures``), read once the run was measured.
    structure: dict | None = None
    #: The commit of this checkout when the run was made ("+dirty" when its tracked files differed).
    commit: str = ""


# -- measuring one process tree ------------------------------------------------------


def _vm_hwm(pid: int) -> int:
    """``VmHWM`` of ``pid`` in bytes (0 if gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Sampler(threading.Thread):
    """Samples the tree every ``period`` s: the largest RSS sum and the largest VmHWM seen."""

    def __init__(self, pid: int, period: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        try:
            self.root = psutil.Process(pid)
        except psutil.NoSuchProcess:  # gone already: wait4's figures stand alone
            self.root = None
        self.period = period
        self.stop = threading.Event()
        self.sum = self.raw = self.hwm = 0

    def run(self) -> None:
        import psutil

        while self.root is not None and not self.stop.is_set():
            try:
                pids = [self.root.pid, *(p.pid for p in self.root.children(recursive=True))]
            except psutil.NoSuchProcess:
                pids = []
            rss, raw = tree_rss(self.root)
            self.sum, self.raw = max(self.sum, rss), max(self.raw, raw)
            for pid in pids:
                self.hwm = max(self.hwm, _vm_hwm(pid))
            self.stop.wait(self.period)


def _cgroup_peak(path: Path) -> int | None:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int((path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def measure(tool: str, cmd: list[str], cwd: Path, log: Path, env: dict[str, str], cgroup: Path | None) -> Run:
    """Run ``cmd`` to completion and measure its whole process tree."""
    group = None
    preexec = None
    if cgroup is not None:
        group = cgroup / f"mb-bench-{os.getpid()}-{time.monotonic_ns()}"
        group.mkdir()
        procs = str(group / "cgroup.procs")

        def preexec() -> None:  # in the child, before exec: it and all its descendants are in the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)
        sampler = _Sampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    load_after = os.getloadavg()[0]
    cg = None
    if group is not None:
        peak = _cgroup_peak(group)
        cg = None if peak is None else peak / MB
        try:
            group.rmdir()
        except OSError:
            pass
    ok = proc.returncode == 0
    return Run(
        tool=tool,
        ok=ok,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        proc_peak_mb=max(usage.ru_maxrss * 1024, sampler.hwm) / MB,  # ru_maxrss is in KiB on Linux
        tree_peak_mb=sampler.sum / MB,
        raw_tree_peak_mb=sampler.raw / MB,
        cgroup_peak_mb=cg,
        load_before=load_before,
        load_after=load_after,
        detail="" if ok else f"exit {proc.returncode}, see {log}",
    )


# -- the two tools, per config -------------------------------------------------------------


def prepare(config: str, size: str, work: Path) -> dict:
    """Write the synthetic weights once (in a child process, so this one stays small); return paths."""
    done = work / f"prepared-{config}-{size}.json"
    if done.exists():
        return json.loads(done.read_text())
    code = f"""
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from llm_inputs import prepare_checkpoints
work = Path({str(work)!r}); config = {config!r}; size = {size!r}
if config == "llama-1b-ios":
    _, meta, _ = prepare_checkpoints(work / "ckpt-1b", "llama3_2", size, dtype="bf16")
    repo = work / "repo-1b"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    meta = meta.rename(repo / "original")
    shutil.rmtree(work / "ckpt-1b", ignore_errors=True)
    out = {{"meta": str(meta), "repo": str(repo), "metadata": {{}}}}
else:
    shutil.rmtree(work / "smollm2", ignore_errors=True)
    hf, meta, metadata = prepare_checkpoints(work / "smollm2", "smollm2", size)
    out = {{"meta": str(meta), "project": str(work / "smollm2" / "project"), "metadata": metadata}}
print(json.dumps(out))
"""
    # smollm2-fp32 and smollm2-8da4w share one checkpoint
    shared = work / f"prepared-smollm2-{size}.json"
    if config.startswith("smollm2") and shared.exists():
        return json.loads(shared.read_text())
    text = subprocess.run([PY, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    paths = json.loads(text.strip().splitlines()[-1])
    (shared if config.startswith("smollm2") else done).write_text(json.dumps(paths))
    return paths


def modelbuild_cmd(config: str, paths: dict, work: Path, tag: str, seq: int) -> tuple[list[str], Path, Path]:
    """The modelbuild command, its project and the .pte it writes."""
    cache, out = work / f"cache-{tag}", work / f"out-{tag}"
    for d in (cache, out):
        shutil.rmtree(d, ignore_errors=True)
    report = work / f"report-{tag}.json"
    if config == "llama-1b-ios":
        project = work / "project-1b"
        if not (project / "recipes" / "llama-1b-ios.toml").exists():
            (project / "recipes").mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "recipes" / "llama-1b-ios.toml", project / "recipes")
        target = "llama-1b-ios"
        sets = {"targets.llama-1b-ckpt.source": paths["repo"], "targets.llama-1b-ckpt.files": '["*"]',
                "vars.llama1b_max_seq_len": str(seq)}
        pte = out / target / "model.pte"
    else:
        project = Path(paths["project"])
        llm_inputs.write_recipe(project, seq)
        target = "xnnpack-fp32" if config == "smollm2-fp32" else "xnnpack-8da4w"
        sets = {}
        pte = out / target / "model.pte"
    cmd = [PY, "-m", "modelbuild.cli", "build", target, "--project", str(project), "--cache-dir", str(cache),
           "--out-dir", str(out), "-j", "1", "--report", str(report)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd, report, pte


def export_llm_cmd(config: str, paths: dict, work: Path, tag: str, seq: int) -> tuple[list[str], Path, Path]:
    """The export_llm command, its working directory (hydra writes outputs/ there) and the .pte."""
    out = work / f"et-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    meta = Path(paths["meta"])
    if config == "llama-1b-ios":
        cmd = llm_inputs.llama1b_export_llm_cmd("bf16", meta, out, 32, seq)
        pte = out / "bf16.pte"
    else:
        variant = "xnnpack-fp32" if config == "smollm2-fp32" else "xnnpack-8da4w"
        cmd = llm_inputs.export_llm_cmd(variant, meta, out, paths["metadata"], seq, "smollm2")
        pte = out / f"{variant}.pte"
    return cmd, out, pte


def steps_of(report: Path) -> list[tuple[str, str, float, float]]:
    """(target, status, seconds, step peak RSS MB) from a modelbuild build report."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return []
    return [(n, t["status"], t["duration_s"], (t.get("peak_rss_bytes") or 0) / MB) for n, t in data["targets"].items()]


def recorded(records: Path, tag: str) -> Run | None:
    """The figures of an earlier successful run ``tag`` whose program structure was read, or None."""
    try:
        run = Run(**json.loads((records / f"run-{tag}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return run if run.ok and run.structure else None


def checkout_commit() -> str:
    """HEAD's commit, with "+dirty" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_tool(tool: str, config: str, paths: dict, work: Path, records: Path, tag: str, seq: int, env: dict,
             cgroup: Path | None) -> Run:
    (records / f"run-{tag}.json").unlink(missing_ok=True)
    if tool == "modelbuild":
        cmd, report, pte = modelbuild_cmd(config, paths, work, tag, seq)
        run = measure(tool, cmd, ROOT, work / f"log-{tag}.txt", env, cgroup)
        run.steps = steps_of(report)
        shutil.rmtree(work / f"cache-{tag}", ignore_errors=True)  # the .pte stays in out-<tag>
    else:
        cmd, cwd, pte = export_llm_cmd(config, paths, work, tag, seq)
        run = measure(tool, cmd, cwd, work / f"log-{tag}.txt", env, cgroup)
    run.pte = str(pte) if pte.exists() else ""
    run.commit = checkout_commit()
    if run.ok and not pte.exists():
        run.ok, run.detail = False, f"no .pte at {pte}"
    if run.ok:
        try:
            run.structure = read_structures(run.pte)[0]
        except RuntimeError as err:
            run.detail = f"structure: {err}"
    save_record(records, tag, run)
    return run


def save_record(records: Path, tag: str, run: Run) -> None:
    """Write ``run`` as the record ``tag`` (what :func:`recorded` reads back)."""
    records.mkdir(parents=True, exist_ok=True)
    (records / f"run-{tag}.json").write_text(json.dumps(asdict(run), indent=1))


# -- structural comparison of two .pte files ---------------------------------------------------


STRUCTURE = """
import json, sys
from collections import Counter
from executorch.exir._serialize._program import _get_extended_header
from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
from executorch.exir.schema import DelegateCall, KernelCall

def structure(path):
    with open(path, "rb") as f:
        head = f.read(64)
        header = _get_extended_header(head)
        f.seek(0)
        data = f.read(header.program_size if header else -1)  # the flatbuffer only, not the segments
    program = _flatbuffer_to_program(data)
    plans = {}
    for plan in program.execution_plan:
        kinds, ops, delegates = Counter(), Counter(), Counter()
        names = [f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators]
        for chain in plan.chains:
            for ins in chain.instructions:
                arg = ins.instr_args
                kinds[type(arg).__name__] += 1
                if isinstance(arg, KernelCall):
                    ops[names[arg.op_index]] += 1
                elif isinstance(arg, DelegateCall):
                    delegates[plan.delegates[arg.delegate_index].id] += 1
        plans[plan.name] = {"instructions": dict(sorted(kinds.items())), "kernel_calls": dict(sorted(ops.items())),
                            "delegate_calls": dict(sorted(delegates.items())), "operators": sorted(set(names)),
                            "values": len(plan.values), "non_const_buffer_sizes": list(plan.non_const_buffer_sizes)}
    return {"bytes": __import__("os").path.getsize(path), "plans": plans}

print(json.dumps([structure(p) for p in sys.argv[1:]]))
"""


def read_structures(*paths: str) -> list[dict]:
    """Each ``.pte``'s structure (STRUCTURE, in a child process); RuntimeError if one cannot be read."""
    done = subprocess.run([PY, "-c", STRUCTURE, *paths], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not read the programs ({done.stderr.strip().splitlines()[-1:]})")
    return json.loads(done.stdout)


def compare_runs(a: Run, b: Run) -> list[str]:
    """Lines comparing the programs two runs wrote: per method, what is the same and what differs."""
    if not (a.structure and b.structure):
        return [f"  structure: not read ({a.detail or b.detail or 'no program'})"]
    return compare_structures(a.structure, b.structure)[1]


def compare_structures(sa: dict, sb: dict) -> tuple[bool, list[str]]:
    """(every count the same, lines saying per method what is the same and what differs); bytes aside."""
    same_all = True
    delta = sa["bytes"] - sb["bytes"]
    lines = [f"  bytes: modelbuild {sa['bytes']:,}, export_llm {sb['bytes']:,} "
             f"({'same size' if delta == 0 else format(delta, '+,')})"]
    for method in sorted(set(sa["plans"]) | set(sb["plans"])):
        pa, pb = sa["plans"].get(method), sb["plans"].get(method)
        if pa is None or pb is None:
            lines.append(f"  method {method}: only in {'export_llm' if pa is None else 'modelbuild'}")
            same_all = False
            continue
        if not pa["instructions"] and not pb["instructions"]:
            continue  # a constant method (get_bos_id, ...)
        lines.append(f"  method {method}:")
        for key in ("instructions", "delegate_calls", "values", "non_const_buffer_sizes"):
            same = "same" if pa[key] == pb[key] else "DIFFERENT"
            same_all = same_all and pa[key] == pb[key]
            lines.append(f"    {key:<24} {same:<9} modelbuild {pa[key]}  export_llm {pb[key]}")
        ops_a, ops_b = set(pa["operators"]), set(pb["operators"])
        same_ops = "same" if ops_a == ops_b else "DIFFERENT"
        lines.append(f"    {'operators':<24} {same_ops:<9} {len(ops_a)} vs {len(ops_b)}"
                     + (f"; only modelbuild: {sorted(ops_a - ops_b)}" if ops_a - ops_b else "")
                     + (f"; only export_llm: {sorted(ops_b - ops_a)}" if ops_b - ops_a else ""))
        calls = "same" if pa["kernel_calls"] == pb["kernel_calls"] else "DIFFERENT"
        same_all = same_all and ops_a == ops_b and pa["kernel_calls"] == pb["kernel_calls"]
        lines.append(f"    {'kernel calls per op':<24} {calls:<9} {sum(pa['kernel_calls'].values())} vs "
                     f"{sum(pb['kernel_calls'].values())}")
        if calls != "same":
            diff = {op: (pa["kernel_calls"].get(op, 0), pb["kernel_calls"].get(op, 0))
                    for op in sorted(set(pa["kernel_calls"]) | set(pb["kernel_calls"]))
                    if pa["kernel_calls"].get(op) != pb["kernel_calls"].get(op)}
            lines.append(f"      differing (modelbuild, export_llm): {diff}")
    return same_all, lines


# -- reporting ------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def run_line(pair: int, run: Run) -> str:
    return (f"  pair {pair} {run.tool:<10} {run.wall_s:8.1f} {run.cpu_s:8.1f} {run.proc_peak_mb:9.0f} "
            f"{run.tree_peak_mb:9.0f} {run.raw_tree_peak_mb:9.0f} {_fmt(run.cgroup_peak_mb):>9} "
            f"{run.load_before:6.2f} {run.load_after:6.2f}  {'ok' if run.ok else 'FAILED ' + run.detail}")


def ratio_lines(good: list[tuple[Run, Run]], name: str = "modelbuild / export_llm") -> list[str]:
    """Per-pair ratios a / b of wall, CPU and the peaks, with their median, min and max."""
    ratios = {
        "wall": [mb.wall_s / et.wall_s for mb, et in good],
        "cpu": [mb.cpu_s / et.cpu_s for mb, et in good],
        "largest process peak": [mb.proc_peak_mb / et.proc_peak_mb for mb, et in good],
        "tree sum peak": [mb.tree_peak_mb / et.tree_peak_mb for mb, et in good],
    }
    if all(mb.cgroup_peak_mb and et.cgroup_peak_mb for mb, et in good):
        ratios["cgroup peak"] = [mb.cgroup_peak_mb / et.cgroup_peak_mb for mb, et in good]
    lines = [f"  ratio {name} over {len(good)} pair(s):   median    min    max   per pair"]
    for kind, values in ratios.items():
        lines.append(f"    {kind:<22} {statistics.median(values):13.2f} {min(values):6.2f} {max(values):6.2f}   "
                     + " ".join(f"{v:.2f}" for v in values))
    return lines


def summary(config: str, pairs: list[tuple[Run, Run]], threads: int) -> list[str]:
    lines = [f"\n== {config}: {len(pairs)} interleaved pair(s), OMP_NUM_THREADS={threads} ==",
             f"  {'':6} {'tool':<10} {'wall s':>8} {'cpu s':>8} {'proc pk':>9} {'tree pk':>9} {'raw sum':>9} "
             f"{'cgroup':>9} {'load<':>6} {'load>':>6}   (memory in MB)"]
    for i, (mb, et) in enumerate(pairs):
        for run in sorted((mb, et), key=lambda r: r.tool != ("modelbuild" if i % 2 == 0 else "export_llm")):
            lines.append(run_line(i, run))
    good = [(mb, et) for mb, et in pairs if mb.ok and et.ok]
    if not good:
        return lines + ["  no pair where both tools succeeded: no ratios"]
    lines += ratio_lines(good)
    for tool, idx in (("modelbuild", 0), ("export_llm", 1)):
        runs = [p[idx] for p in good]
        lines.append(f"  {tool} median: wall {statistics.median(r.wall_s for r in runs):.1f} s, "
                     f"cpu {statistics.median(r.cpu_s for r in runs):.1f} s, "
                     f"largest process {statistics.median(r.proc_peak_mb for r in runs):.0f} MB, "
                     f"tree sum {statistics.median(r.tree_peak_mb for r in runs):.0f} MB")
    median_mb = sorted((mb for mb, _ in good), key=lambda r: r.wall_s)[(len(good) - 1) // 2]
    if median_mb.steps:
        lines.append("  modelbuild's steps in its median run (seconds, step peak RSS):")
        lines += [f"    {t:<22} {st:<8} {s:8.1f} s {rss:8.0f} MB" for t, st, s, rss in median_mb.steps]
    mb, et = good[-1]
    lines.append("  the two .pte files of the last pair, structurally:")
    lines += compare_runs(mb, et)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--size", help="synthetic size for every config (default: 1b / 135m; tiny for a smoke test)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="OMP_NUM_THREADS for both tools")
    parser.add_argument("--cgroup", type=Path, help="a writable cgroup directory: one child cgroup per run, its peak printed")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--records", type=Path, help="where each run's record is written (default: --workdir)")
    parser.add_argument("--resume", action="store_true",
                        help="read back the runs already recorded in --records instead of running them again")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    records = (args.records or work).resolve()
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    print(f"work dir {work}; OMP_NUM_THREADS={args.threads} for both tools; {os.cpu_count()} cores", flush=True)
    report, everything = [], {}
    for config in args.config:
        size = args.size or ("1b" if config == "llama-1b-ios" else "135m")
        paths = prepare(config, size, work)
        pairs: list[tuple[Run, Run]] = []
        for i in range(args.pairs):
            order = ("modelbuild", "export_llm") if i % 2 == 0 else ("export_llm", "modelbuild")
            runs = {}
            for tool in order:
                tag = f"{config}-{size}-seq{args.max_seq_len}-omp{args.threads}-{i}-{tool}"
                earlier = recorded(records, tag) if args.resume else None
                runs[tool] = earlier or run_tool(tool, config, paths, work, records, tag, args.max_seq_len, env,
                                                 args.cgroup)
                print(run_line(i, runs[tool]) + ("  (recorded)" if earlier else ""), flush=True)
            pairs.append((runs["modelbuild"], runs["export_llm"]))
            lines = summary(f"{config} ({size})", pairs, args.threads)
            print("\n".join(lines), flush=True)  # after every pair: a series cut short still has its summary
        report += lines
        everything[config] = [[asdict(mb), asdict(et)] for mb, et in pairs]
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))
    print("\n".join(report))
    return 0 if all(r["ok"] for runs in everything.values() for pair in runs for r in pair) else 1


if __name__ == "__main__":
    sys.exit(main())
