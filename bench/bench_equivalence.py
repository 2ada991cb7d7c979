"""The long profile of the equivalence machine (issue 11): thousands of random sequences.

tests/test_equivalence.py runs a few sequences in CI; this script runs the
same state machine (tests/equivalence/machine.py) for as many sequences as
asked, larger graphs (3-12 targets), and *keeps going after a failure*: each
failure is recorded (its message and the steps that led to it) and the run
continues with fresh sequences, so one run reports every kind of hole it met.

    nice .venv/bin/python bench/bench_equivalence.py --sequences 2000
    nice .venv/bin/python bench/bench_equivalence.py --minutes 30 --shrink   # minimize each failure

It prints how many sequences, steps, builds, kills and concurrent edits ran,
where the time went, and one block per distinct failure. Exit status 1 if
any failure was found.

Every finished chunk of sequences is also appended to a ledger
(``--ledger``, default ``bench/results/equivalence-ledger.jsonl``, which is kept
in git so that a profile run in parts survives the machine it ran on: the date,
the commit and whether the work tree was clean, sequences, steps, failures),
and the run ends by printing the ledger's totals per version of ``modelbuild/``
(commits that changed only tests, docs or benchmarks count together);
``--totals`` only prints them. A long profile of
2,000 sequences (about 8 hours on 2 cores) can so be run in parts, each part
counted against the code it ran on; a run that is killed keeps the chunks it
finished. MODELBUILD_EQUIV_SKIP=rule,rule leaves rules out
(for triage of a known hole only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.reporting import with_reporter  # noqa: E402
from hypothesis.stateful import run_state_machine_as_test  # noqa: E402

from tests.equivalence import machine  # noqa: E402
from tests.equivalence.project import TIMES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=2000, help="random sequences to run (default 2000)")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long, whatever the count")
    ap.add_argument("--steps", type=int, default=12, help="rules per sequence (default 12)")
    ap.add_argument("--max-targets", type=int, default=12, help="graph size limit (default 12; starts with 3..this)")
    ap.add_argument("--chunk", type=int, default=20, help="sequences per hypothesis run (default 20)")
    ap.add_argument("--shrink", action="store_true", help="minimize each failure (slow: many extra builds)")
    ap.add_argument("--ledger", type=Path, default=ROOT / "bench" / "results" / "equivalence-ledger.jsonl",
                    help="append each finished chunk here and print the totals per commit")
    ap.add_argument("--totals", action="store_true", help="only print the ledger's totals per version of modelbuild/")
    args = ap.parse_args()
    if args.totals:
        print("\n".join(ledger_totals(args.ledger)))
        return 0

    machine.CONFIG.update(init_targets=(3, args.max_targets), max_targets=args.max_targets)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if args.shrink else [])
    start = time.monotonic()
    deadline = start + args.minutes * 60 if args.minutes else None
    failures: dict[str, list[str]] = {}
    runs = 0
    commit = _commit()
    while machine.STATS["sequences"] < args.sequences and (deadline is None or time.monotonic() < deadline):
        chunk = min(args.chunk, args.sequences - machine.STATS["sequences"])
        lines: list[str] = []
        runs += 1
        before = dict(machine.STATS)
        failed = None
        try:
            with with_reporter(lines.append):
                run_state_machine_as_test(machine.EquivalenceMachine, settings=settings(
                    max_examples=chunk, stateful_step_count=args.steps, deadline=None, database=None,
                    phases=phases, suppress_health_check=list(HealthCheck), print_blob=False))
        except Exception as exc:  # noqa: BLE001 - record and go on
            message = str(exc).strip()
            head = message.splitlines()[0][:200] if message else type(exc).__name__
            kind = head.split(":", 2)[1].strip() if head.count(":") >= 2 else head
            failures.setdefault(kind, []).append(f"{type(exc).__name__}: {message[:4000]}\n" + "\n".join(lines))
            print(f"[{machine.STATS['sequences']} sequences] failure: {head}", flush=True)
            # The whole failure now, not only in the summary: a long run may be stopped before its end.
            print(_details(exc, lines), flush=True)
            failed = head
        else:
            print(f"[{machine.STATS['sequences']} sequences, {machine.STATS['steps']} steps, "
                  f"{time.monotonic() - start:.0f} s] ok", flush=True)
        _append(args.ledger, {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "sequences": machine.STATS["sequences"] - before.get("sequences", 0),
            "steps": machine.STATS["steps"] - before.get("steps", 0), "failure": failed,
            "max_targets": args.max_targets, "steps_per_sequence": args.steps,
        })

    wall = time.monotonic() - start
    s = machine.STATS
    print()
    print("| sequences | steps | builds | plans | kills | concurrent edits | clean builds elsewhere | failures | wall |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {s['sequences']} | {s['steps']} | {s['builds']} | {s['plans']} | {s['kills']} | {s['concurrent_edits']} "
          f"| {s['reference_builds']} | {sum(len(v) for v in failures.values())} | {wall / 60:.1f} min |")
    print()
    print("rules: " + ", ".join(f"{k[5:]} {v}" for k, v in sorted(s.items()) if k.startswith("rule:")))
    print("time in CLI commands: " + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(TIMES.items())))
    for kind, found in failures.items():
        print(f"\n=== {len(found)} failure(s): {kind}\n")
        print(found[0])
    print()
    print("\n".join(ledger_totals(args.ledger)))
    return 1 if failures else 0


def _details(exc: BaseException, lines: list[str]) -> str:
    """The failure's message, the sub-exceptions of a group (Hypothesis's "flaky" error holds the
    first run's failure there), and the steps Hypothesis reported."""
    import traceback

    text = ["--- failure " + "-" * 60, "".join(traceback.format_exception(exc))[-20000:]]
    text += lines
    text.append("-" * 72)
    return "\n".join(text)


def _commit() -> str:
    """HEAD's commit, with "+dirty" when the work tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _append(ledger: Path, entry: dict) -> None:
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with ledger.open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")


def ledger_totals(ledger: Path) -> list[str]:
    """The ledger's sequences and failed chunks per version of ``modelbuild/`` (the git tree of that
    directory at the chunk's commit; a dirty work tree is its own version), oldest first, and in all."""
    try:
        entries = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return [f"ledger {ledger}: unreadable or empty"]
    trees: dict[str, str] = {}

    def version(commit: str) -> str:
        if commit.endswith("+dirty"):
            return f"uncommitted changes on {commit.removesuffix('+dirty')}"
        if commit not in trees:
            done = subprocess.run(["git", "rev-parse", "--short=12", f"{commit}:modelbuild"], cwd=ROOT,
                                  capture_output=True, text=True)
            trees[commit] = done.stdout.strip() if done.returncode == 0 else f"unknown (commit {commit})"
        return trees[commit]

    per: dict[str, dict] = {}
    for e in entries:
        row = per.setdefault(version(e["commit"]), {"commits": [], "n": 0, "steps": 0, "failed": 0,
                                                    "from": e["date"], "to": e["date"]})
        if e["commit"] not in row["commits"]:
            row["commits"].append(e["commit"])
        row["n"] += e["sequences"]
        row["steps"] += e["steps"]
        row["failed"] += e["failure"] is not None
        row["to"] = e["date"]
    lines = [f"ledger {ledger}:", "| modelbuild/ tree | commits | sequences | steps | failed chunks | from | to |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    lines += [f"| {tree} | {' '.join(c[:7] for c in r['commits'])} | {r['n']} | {r['steps']} | {r['failed']} "
              f"| {r['from']} | {r['to']} |" for tree, r in per.items()]
    lines.append(f"| all | | {sum(r['n'] for r in per.values())} | {sum(r['steps'] for r in per.values())} "
                 f"| {sum(r['failed'] for r in per.values())} | | |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
