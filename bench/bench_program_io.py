"""Benchmark: saving and loading the ``exported-program`` artifact (``modelbuild.ml.program``).

Exports a synthetic checkpoint once (the ``export`` step, as a build runs
it), then times, ``--runs`` times each: :func:`save_program` into a fresh
directory, split into its parts (``make_deterministic``, ``torch.export.save``
of the program, ``torch.save`` of the example inputs), and
:func:`load_program` of the result. Prints the median and min of each, the
artifact's size, and whether every save wrote the same bytes (the artifact
must be byte-stable for early cutoff).

Usage::

    .venv/bin/python bench/bench_program_io.py --size 135m --runs 3 --workdir /tmp/pio
    .venv/bin/python bench/bench_program_io.py --size tiny --runs 2 --workdir /tmp/pio   # smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="smollm2")
    parser.add_argument("--size", default="135m")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from modelbuild.ml import program as P
    from modelbuild.ml.llm.synthetic import write_synthetic_checkpoint
    from modelbuild.steps.export import ExportStep
    from modelbuild.testing import as_artifact, run_step

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    exported = work / f"export-{args.architecture}-{args.size}-{args.dtype}"
    if not (exported / P.PROGRAM_FILE).exists():
        ckpt = work / f"ckpt-{args.architecture}-{args.size}"
        shutil.rmtree(ckpt, ignore_errors=True)
        fields = write_synthetic_checkpoint(ckpt, args.architecture, args.size, 0)
        (ckpt / "checkpoint.json").write_text(json.dumps({**fields, "source": "synthetic"}, sort_keys=True))
        shutil.rmtree(exported, ignore_errors=True)
        params = {"dtype": args.dtype, "max_seq_len": 128, "use_kv_cache": True, "use_sdpa_with_kv_cache": True,
                  "enable_dynamic_shape": True}
        run_step(ExportStep, params, {"checkpoint": as_artifact(ckpt, "checkpoint")}, exported)
    size = sum(p.stat().st_size for p in exported.iterdir())

    times: dict[str, list[float]] = {k: [] for k in ("load_program", "make_deterministic", "torch.export.save",
                                                       "torch.save inputs", "save_program",
                                                       "run_decompositions({})", "decompose_once copy")}
    digests = set()
    ep, info, example = P.load_program(exported)
    for i in range(args.runs):
        t = time.perf_counter()
        ep, info, example = P.load_program(exported)
        times["load_program"].append(time.perf_counter() - t)
        out = work / f"saved-{i}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        t0 = time.perf_counter()
        P.make_deterministic(ep)
        t1 = time.perf_counter()
        torch.export.save(ep, out / P.PROGRAM_FILE)
        t2 = time.perf_counter()
        torch.save(tuple(example), out / P.INPUTS_FILE)
        t3 = time.perf_counter()
        times["make_deterministic"].append(t1 - t0)
        times["torch.export.save"].append(t2 - t1)
        times["torch.save inputs"].append(t3 - t2)
        shutil.rmtree(out)
        t = time.perf_counter()
        P.save_program(out, ep, info, example)
        times["save_program"].append(time.perf_counter() - t)
        digests.add(_digest(out))
        shutil.rmtree(out)
        # What lowering's first pass cost before (a re-trace of the already decomposed program)
        # and what decompose_once does instead (a copy of the graph).
        from modelbuild.ml.decompose import decompose_once
        from modelbuild.ml.program import no_stack_traces

        with torch.no_grad(), no_stack_traces():
            t = time.perf_counter()
            ep.run_decompositions({})
            times["run_decompositions({})"].append(time.perf_counter() - t)
            with decompose_once() as skipped:
                t = time.perf_counter()
                ep.run_decompositions({})
                times["decompose_once copy"].append(time.perf_counter() - t)
        assert skipped == ["functionalization"], skipped
        print(f"run {i}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    print(f"\nexported-program artifact: {args.architecture} {args.size} {args.dtype}, {size / 1e6:.1f} MB, "
          f"{args.runs} run(s)")
    print(f"{'phase':<22} {'median s':>9} {'min s':>8}")
    for name, values in times.items():
        print(f"{name:<22} {statistics.median(values):>9.2f} {min(values):>8.2f}")
    print(f"same bytes on every save: {'yes' if len(digests) == 1 else f'NO ({len(digests)} different)'}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
