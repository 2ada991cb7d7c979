"""Benchmark: the 4-variant matrix, modelbuild against ``export_llm`` at equal parallelism.

The variants are {XNNPACK, Core ML} x {fp32, 4-bit} on the SmolLM2-135M shape
(``llm_inputs.MATRIX``: XNNPACK 8da4w in groups of 32 with ``-X
--xnnpack-extended-ops``; Core ML ``b4w``, int4 blocks of 32 at conversion,
from an export with export_llm's Core ML source transforms). modelbuild builds
all of them in one build (fetch shared, one export per backend, independent
steps side by side); ``export_llm`` runs once per variant. Four rows, each a
cold run measured as ``bench_pairs.measure`` measures it (wall, CPU-seconds of
the whole process tree, the largest process peak and the sampled tree sum,
load average before and after):

- ``mb -jN``:   ``modelbuild build <variants> -j N`` (N = ``--jobs``, default the core count);
- ``et parN``:  the ``export_llm`` runs N at a time (a small launcher process runs
  them, in MATRIX order, starting the next as one ends), i.e. the same parallelism;
- ``mb -j1``:   ``modelbuild build <variants> -j 1``;
- ``et seq``:   the ``export_llm`` runs one after another.

``OMP_NUM_THREADS`` is set explicitly and equally: ``--threads // N`` for
every process of the two parallel rows (modelbuild's own per-step share is
then overridden, as a user's setting always is), ``--threads`` for the two
sequential rows. Rounds are interleaved: even rounds run the rows in the
order above, odd rounds in the reverse order, so each compared pair is
adjacent and alternates A B, B A. Per round the ratios ``mb -jN / et parN``
(the issue's target, at most 0.6), ``mb -jN / et seq`` and ``mb -j1 / et seq``;
over the rounds their median, min and max.

After the first round every variant's two ``.pte`` files are compared
structurally (``bench_pairs.compare_structures``: instructions, delegate calls,
operators, memory plan; for Core ML also what is inside the delegate: the
compile specs and the Core ML program's operations by type). A Core ML
variant whose two programs are not the same is left out: the series then
starts again on the variants that are (the first round is printed, not
counted). ``--variants`` picks fewer variants (the Core ML check still applies);
``--parallel-only`` runs only ``mb -jN`` and ``et parN`` in each round (the
target's comparison: re-measuring it after a change to modelbuild takes half
the time).

Usage::

    .venv/bin/python bench/bench_export.py --pairs 3 --workdir /tmp/matrix135 \
        --records bench/results/matrix --resume
    .venv/bin/python bench/bench_export.py --size tiny --pairs 1 --workdir /tmp/matrix-tiny   # smoke test

Every finished row is written to ``run-matrix-<size>-seq<N>-j<jobs>-omp<T>-<variants>-round<i>-<row>.json``
in ``--records`` (default: the work directory; ``bench/results/matrix`` is kept
in git): its figures, the commit it ran, and what each variant's ``.pte`` is
(structure, what a Core ML delegate holds, its sha256), read after the run
outside the timing. With ``--resume`` a recorded successful row is read back
instead of run again (its line says "(recorded)"), so a series of rounds that
each take hours can be finished in parts, on another machine, and compared
from the records alone.

A 135M round takes about an hour on 2 cores; run it on an idle machine (the
load averages printed with every run say whether it was).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_inputs  # noqa: E402
from bench_pairs import (  # noqa: E402
    Run,
    checkout_commit,
    compare_structures,
    measure,
    prepare,
    ratio_lines,
    read_structures,
    recorded,
    run_line,
    save_record,
    steps_of,
)
from llm_inputs import MATRIX, PY, ROOT  # noqa: E402

from modelbuild.ml.download import file_sha256  # noqa: E402  (streamed: a 135M fp32 .pte is 650 MB)

#: Runs ``spec["runs"]`` ([cmd, cwd, log] each) ``spec["jobs"]`` at a time; per-run wall and exit code to ``spec["result"]``.
LAUNCHER = """
import json, subprocess, sys, time
spec = json.loads(sys.argv[1])
pending, running, done = list(spec["runs"]), {}, {}
while pending or running:
    while pending and len(running) < spec["jobs"]:
        cmd, cwd, log = pending.pop(0)
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        running[proc] = (log, time.perf_counter())
    time.sleep(0.1)
    for proc in [p for p in running if p.poll() is not None]:
        log, start = running.pop(proc)
        done[log] = {"wall_s": time.perf_counter() - start, "exit": proc.returncode}
json.dump(done, open(spec["result"], "w"))
sys.exit(1 if any(r["exit"] for r in done.values()) else 0)
"""

#: What is inside each Core ML delegate of a .pte: compile specs and the Core ML program's operations by type.
COREML_INSIDE = """
import json, sys, tempfile
from collections import Counter
from pathlib import Path
import coremltools as ct
from executorch.backends.apple.coreml import executorchcoreml
from executorch.exir._serialize._program import _get_extended_header
from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program
from executorch.exir.schema import DataLocation

def count(block, ops):
    for op in block.operations:
        ops[op.type] += 1
        for inner in op.blocks:
            count(inner, ops)

def inside(path):
    data = Path(path).read_bytes()
    header = _get_extended_header(data[:64])
    program = _flatbuffer_to_program(data[:header.program_size] if header else data)
    found = []
    for plan in program.execution_plan:
        for d in plan.delegates:
            if d.id != "CoreMLBackend":
                continue
            p = d.processed
            if p.location == DataLocation.INLINE:
                payload = bytes(program.backend_delegate_data[p.index].data)
            else:
                seg = program.segments[p.index]
                payload = data[header.segment_base_offset + seg.offset:][:seg.size]
            with tempfile.TemporaryDirectory() as tmp:
                executorchcoreml.unflatten_directory_contents(payload, tmp)
                spec = ct.utils.load_spec(str(next(Path(tmp).rglob("model.mlpackage"))))
            ops = Counter()
            for fn in spec.mlProgram.functions.values():
                for block in fn.block_specializations.values():
                    count(block, ops)
            found.append({"compile_specs": {c.key: bytes(c.value).decode("utf-8", "replace") for c in d.compile_specs},
                          "spec_version": spec.specificationVersion,
                          "inputs": [i.name for i in spec.description.input],
                          "outputs": [o.name for o in spec.description.output],
                          "ops": dict(sorted(ops.items())), "payload_bytes": len(payload)})
    return found

print(json.dumps([inside(p) for p in sys.argv[1:]]))
"""


def read_coreml(*paths: str) -> list[list[dict]]:
    """What the Core ML delegates of each .pte hold (COREML_INSIDE, in a child process); RuntimeError if unreadable."""
    done = subprocess.run([PY, "-c", COREML_INSIDE, *paths], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not read the Core ML delegates ({done.stderr.strip().splitlines()[-1:]})")
    return json.loads(done.stdout)


def compare_coreml(da: list[dict], db: list[dict]) -> tuple[bool, list[str]]:
    """Compare what the Core ML delegates of two .pte files hold: (the same, lines)."""
    if len(da) != len(db):
        return False, [f"    Core ML delegates: {len(da)} vs {len(db)}"]
    same_all, lines = True, []
    for i, (x, y) in enumerate(zip(da, db)):
        for key in ("compile_specs", "spec_version", "inputs", "outputs", "ops"):
            same = x[key] == y[key]
            same_all = same_all and same
            shown = (f"{sum(x['ops'].values())} vs {sum(y['ops'].values())} operations"
                     if key == "ops" else f"modelbuild {x[key]}  export_llm {y[key]}")
            lines.append(f"    Core ML delegate {i} {key:<14} {'same' if same else 'DIFFERENT':<9} {shown}")
        if x["ops"] != y["ops"]:
            diff = {op: (x["ops"].get(op, 0), y["ops"].get(op, 0)) for op in sorted(set(x["ops"]) | set(y["ops"]))
                    if x["ops"].get(op) != y["ops"].get(op)}
            lines.append(f"      differing (modelbuild, export_llm): {diff}")
        lines.append(f"    Core ML delegate {i} payload bytes: modelbuild {x['payload_bytes']:,}, "
                     f"export_llm {y['payload_bytes']:,}")
    return same_all, lines


def read_programs(run: Run, files: dict[str, Path]) -> None:
    """Record in ``run.structure`` what each variant's .pte is ({variant: structure, Core ML inside, sha256}).

    Read after the run was measured, so that a resumed series compares programs from the records alone.
    """
    try:
        structures = read_structures(*(str(f) for f in files.values()))
        coreml_files = {v: str(f) for v, f in files.items() if v.startswith("coreml")}
        coreml = dict(zip(coreml_files, read_coreml(*coreml_files.values()))) if coreml_files else {}
    except RuntimeError as err:
        run.ok, run.detail = False, f"structure: {err}"
        return
    run.structure = {v: {"structure": st, "coreml": coreml.get(v), "sha256": file_sha256(files[v])}
                     for v, st in zip(files, structures)}


def compare_variants(mb: Run, et: Run, mb_j1: Run | None, variants: list[str]) -> tuple[dict, list[str]]:
    """Per variant: are the programs of modelbuild's and export_llm's rows the same? ({variant: bool}, lines)."""
    verdict, lines = {}, []
    for v in variants:
        a, b = (mb.structure or {}).get(v), (et.structure or {}).get(v)
        lines.append(f"  {v}:")
        if a is None or b is None:
            verdict[v] = False
            lines.append(f"    not read: {mb.detail if a is None else et.detail}")
            continue
        same, more = compare_structures(a["structure"], b["structure"])
        lines += ["  " + line for line in more]
        if v.startswith("coreml"):
            inner_same, inner = compare_coreml(a["coreml"], b["coreml"])
            same = same and inner_same
            lines += inner
        j1 = (mb_j1.structure or {}).get(v) if mb_j1 is not None else None
        if j1 is not None:
            lines.append(f"    modelbuild -j 1 and -j N .pte byte-identical: "
                         f"{'yes' if j1['sha256'] == a['sha256'] else 'NO'}")
        verdict[v] = same
        lines.append(f"    => {'the same program' if same else 'NOT the same program'}")
    return verdict, lines


# -- the four rows --------------------------------------------------------------------------


def modelbuild_row(label: str, project: Path, variants: list[str], work: Path, tag: str, jobs: int,
                   env: dict, cgroup: Path | None) -> Run:
    cache, out, report = work / f"cache-{tag}", work / f"out-{tag}", work / f"report-{tag}.json"
    for d in (cache, out):
        shutil.rmtree(d, ignore_errors=True)
    cmd = [PY, "-m", "modelbuild.cli", "build", *variants, "--project", str(project), "--cache-dir", str(cache),
           "--out-dir", str(out), "-j", str(jobs), "--report", str(report)]
    run = measure(label, cmd, ROOT, work / f"log-{tag}.txt", env, cgroup)
    run.steps = steps_of(report)
    shutil.rmtree(cache, ignore_errors=True)  # the .pte files stay in out-<tag>
    return finish(run, {v: out / v / "model.pte" for v in variants})


def export_llm_row(label: str, paths: dict, variants: list[str], work: Path, tag: str, jobs: int, seq: int,
                   env: dict, cgroup: Path | None) -> Run:
    out = work / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    meta = Path(paths["meta"])
    runs = [[llm_inputs.export_llm_cmd(v, meta, out, paths["metadata"], seq, "smollm2"), str(out),
             str(work / f"log-{tag}-{v}.txt")] for v in variants]  # cwd=out: hydra writes outputs/ there
    result = work / f"result-{tag}.json"
    spec = json.dumps({"runs": runs, "jobs": jobs, "result": str(result)})
    run = measure(label, [PY, "-c", LAUNCHER, spec], out, work / f"log-{tag}.txt", env, cgroup)
    try:
        walls = json.loads(result.read_text())
        run.steps = [(v, "exit 0" if walls[log]["exit"] == 0 else f"exit {walls[log]['exit']}", walls[log]["wall_s"], 0.0)
                     for v, (_, _, log) in zip(variants, runs)]
    except (OSError, ValueError, KeyError):
        pass
    return finish(run, {v: out / f"{v}.pte" for v in variants})


def finish(run: Run, files: dict[str, Path]) -> Run:
    """A row's run once measured: its commit, and the structure of every program it should have written."""
    run.commit = checkout_commit()
    missing = [v for v, f in files.items() if not f.exists()]
    if run.ok and missing:
        run.ok, run.detail = False, f"no .pte for {missing}"
    if run.ok:
        read_programs(run, files)
    return run


def rows_of(jobs: int) -> list[str]:
    return [f"mb -j{jobs}", f"et par{jobs}", "mb -j1", "et seq"]


def summary(title: str, rounds: list[dict[str, Run]], jobs: int, threads: int) -> list[str]:
    par, seq = max(1, threads // jobs), threads
    mbp, etp, mb1, ets = rows_of(jobs)
    lines = [f"\n== {title}: {len(rounds)} interleaved round(s); OMP_NUM_THREADS={par} per process in "
             f"{mbp} and {etp}, {seq} in {mb1} and {ets} ==",
             f"  {'':6} {'tool':<10} {'wall s':>8} {'cpu s':>8} {'proc pk':>9} {'tree pk':>9} {'raw sum':>9} "
             f"{'cgroup':>9} {'load<':>6} {'load>':>6}   (memory in MB)"]
    for i, runs in enumerate(rounds):
        for run in runs.values():
            lines.append(run_line(i, run))
    for a, b, note in ((mbp, etp, "equal parallelism: the target"), (mbp, ets, "the earlier comparison"),
                       (mb1, ets, "both one at a time")):
        if not any(a in r and b in r for r in rounds):
            continue  # --parallel-only
        good = [(r[a], r[b]) for r in rounds if a in r and b in r and r[a].ok and r[b].ok]
        if good:
            lines += ratio_lines(good, f"{a} / {b} ({note})")
        else:
            lines.append(f"  {a} / {b}: no round where both succeeded")
    for label in (mbp, etp, mb1, ets):
        ok = [r[label] for r in rounds if label in r and r[label].ok]
        if not ok:
            continue
        median = sorted(ok, key=lambda r: r.wall_s)[(len(ok) - 1) // 2]
        lines.append(f"  {label} median: wall {median.wall_s:.1f} s, cpu {statistics.median(r.cpu_s for r in ok):.1f} s;"
                     " its " + ("steps" if label.startswith("mb") else "runs") + " (seconds): "
                     + ", ".join(f"{t} {s:.1f}" for t, _, s, _ in median.steps))
    return lines


def run_round(i: int, variants: list[str], project: Path, paths: dict, work: Path, args, cgroup: Path | None
              ) -> dict[str, Run]:
    jobs, threads = args.jobs, args.threads
    envs = {n: {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "PYTHONUNBUFFERED": "1"}
            for n in {max(1, threads // jobs), threads}}
    par, seq = envs[max(1, threads // jobs)], envs[threads]
    mbp, etp, mb1, ets = rows_of(jobs)
    plan = {
        mbp: ("mb-par", lambda: modelbuild_row(mbp, project, variants, work, "mb-par", jobs, par, cgroup)),
        etp: ("et-par", lambda: export_llm_row(etp, paths, variants, work, "et-par", jobs, args.max_seq_len, par,
                                               cgroup)),
        mb1: ("mb-seq", lambda: modelbuild_row(mb1, project, variants, work, "mb-seq", 1, seq, cgroup)),
        ets: ("et-seq", lambda: export_llm_row(ets, paths, variants, work, "et-seq", 1, args.max_seq_len, seq,
                                               cgroup)),
    }
    if args.parallel_only:
        del plan[mb1], plan[ets]
    order = list(plan) if i % 2 == 0 else list(reversed(plan))
    runs = {}
    for label in order:
        slug, row = plan[label]
        tag = (f"matrix-{args.size}-seq{args.max_seq_len}-j{jobs}-omp{threads}-{'+'.join(variants)}"
               f"-round{i}-{slug}")
        earlier = recorded(args.records, tag) if args.resume else None
        if earlier is None:
            (args.records / f"run-{tag}.json").unlink(missing_ok=True)
            run = row()
            save_record(args.records, tag, run)
        runs[label] = earlier or run
        print(run_line(i, runs[label]) + ("  (recorded)" if earlier else ""), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds (each runs the four rows)")
    parser.add_argument("--size", default="135m", help="synthetic SmolLM2 size (135m = the real shape; tiny: a smoke test)")
    parser.add_argument("--variants", nargs="+", choices=MATRIX,
                        help="default: all four (Core ML stays only if both tools make the same program)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallelism of the parallel rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores shared by each row's processes")
    parser.add_argument("--cgroup", type=Path, help="a writable cgroup directory: one child cgroup per run, its peak printed")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--records", type=Path, help="where each row's record is written (default: --workdir)")
    parser.add_argument("--resume", action="store_true",
                        help="read back the rows already recorded in --records instead of running them again")
    parser.add_argument("--parallel-only", action="store_true",
                        help="run only the two rows of the target's comparison (mb -jN, et parN), e.g. after a change "
                        "to modelbuild; use another --records directory for such a series")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.records = (args.records or work).resolve()
    paths = prepare("smollm2-fp32", args.size, work)  # the SmolLM2 weights in both layouts, written once
    project = Path(paths["project"])
    llm_inputs.write_recipe(project, args.max_seq_len)
    print(f"work dir {work}; {os.cpu_count()} cores; --jobs {args.jobs}, --threads {args.threads}", flush=True)

    variants = list(args.variants or MATRIX)
    decided = not any(v.startswith("coreml") for v in variants)  # Core ML counts only if the same program
    rounds: list[dict[str, Run]] = []
    structure: list[str] = []
    i = 0
    while len(rounds) < args.pairs:
        runs = run_round(i, variants, project, paths, work, args, args.cgroup)
        mbp, etp, mb1, _ = rows_of(args.jobs)
        verdict, structure = compare_variants(runs[mbp], runs[etp], runs.get(mb1), variants)
        print(f"\nround {i}: the .pte files of {mbp} and {etp}, per variant:", *structure, sep="\n", flush=True)
        i += 1
        if not decided:
            decided = True
            differ = [v for v in variants if v.startswith("coreml") and not verdict[v]]
            if differ:
                print(f"\nCore ML left out of the ratios: {', '.join(differ)} are not the same program in both "
                      f"tools (above). Round {i - 1} is not counted; the series starts again without them.", flush=True)
                variants = [v for v in variants if v not in differ]
                continue
            if any(v.startswith("coreml") for v in variants):
                print("\nCore ML kept in the ratios: both tools made the same Core ML programs (above).", flush=True)
        rounds.append(runs)
        print("\n".join(summary(f"matrix {', '.join(variants)} ({args.size})", rounds, args.jobs, args.threads)),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"variants": variants, "rounds": [
            {k: asdict(r) for k, r in runs.items()} for runs in rounds]}, indent=2, default=str))
    print("\nthe .pte files of the last round, per variant:", *structure, sep="\n")
    print("\n".join(summary(f"matrix {', '.join(variants)} ({args.size})", rounds, args.jobs, args.threads)))
    return 0 if all(r.ok for runs in rounds for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
