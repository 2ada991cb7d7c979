"""The equivalence state machine: random graphs, random edits, incremental builds.

Each example (a *sequence*) starts a project of 3+ targets (``command``
steps and the test's own ``eq`` plugin step; bases, ``extends`` variants,
``${var}``s, shared inputs), builds it from scratch, then applies random
rules: edits of sources, recipes, ``--set``, the plugin's code and its
toolchain; damage to the cache and to ``out/``; ``clean``, ``cache gc``,
``cache clear``, ``cache verify``; and builds (plain, which may take the
no-op fast path, or ``--full-check --json``), some killed with SIGKILL at a
random point, some with a source edited while they run.

After every build that completes, the machine checks against the model
(model.py): the steps that ran (each appends its name to a run log that no
key sees) are exactly those whose model key the cache cannot serve, ``out/``
holds byte for byte (and executable bit) what a clean build makes, the
``--json`` statuses agree with the run log, and ``plan`` run just before
predicted the build (every "hit" cached, every "miss" built). The
``reference_build`` rule compares the model itself with a real clean build
in a fresh cache and out directory.

``MODELBUILD_EQUIV_SKIP=rule,rule`` disables rules (for triage only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from .edits import CONFIG, DAMAGE, EDITS, SKIP, VARS, Edits, contents, pick, words
from .model import Expectation, Model
from .project import STATS, Project, read_tree, recipe_texts

REPO_ROOT = Path(__file__).resolve().parents[2]


def enabled(name: str, when=lambda self: True):
    """Run the rule unless MODELBUILD_EQUIV_SKIP names it, and only ``when``."""
    return precondition(lambda self: name not in SKIP and when(self))


class EquivalenceMachine(Edits, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="mb-equiv-"))
        self.project = Project(self.base, REPO_ROOT)
        self.model = Model()
        self.counter = 0
        STATS["sequences"] += 1

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def _count(self, rule_name: str) -> None:
        STATS["steps"] += 1
        STATS[f"rule:{rule_name}"] += 1

    # -- building and checking -----------------------------------------------

    def _targets(self) -> list[str]:
        return sorted(self.model.tables)

    def _build_args(self, mode: str, jobs: int | None) -> list[str]:
        args = ["build", *self._targets(), *self.model.set_args()]
        if jobs is not None:
            args += ["-j", str(jobs)]
        if mode == "full":
            args += ["--full-check", "--json"]
        return args

    def _context(self, exp: Expectation) -> str:
        m = self.model
        lines = ["--- state ---"]
        for fname, text in recipe_texts(m).items():
            lines.append(f"# recipes/{fname}\n{text}")
        lines.append(f"--set: {m.set_args()}")
        lines.append(f"sources: {m.sources}")
        lines.append(f"plugin: {m.plugin}, eqtool {m.tool_version}")
        lines.append(f"expected: built={sorted(exp.built)} either={sorted(exp.either)} cached={sorted(exp.cached)}")
        return "\n".join(lines)

    def _plan(self) -> dict[str, str]:
        proc = self.project.run("plan", *self._targets(), *self.model.set_args(), "--json")
        assert proc.returncode == 0, f"plan failed ({proc.returncode}): {proc.stderr[-2000:]}"
        return {row["target"]: row["decision"] for row in json.loads(proc.stdout)["rows"]}

    def _build(self, data, mode: str | None = None, label: str = "build") -> None:
        exp = self.model.expect()
        mode = mode or data.draw(st.sampled_from(["plain", "full"]), label="mode")
        jobs = data.draw(st.sampled_from([None, 1, 3]), label="jobs")
        plan = self._plan() if data.draw(st.booleans(), label="plan first") else None
        self.project.reset_runlog()
        proc = self.project.run(*self._build_args(mode, jobs))
        if "nothing changed since the last build" in proc.stderr:
            STATS["fast_path_noops"] += 1
        self._check_build(exp, proc, mode, plan, label)
        if mode == "plain" and data.draw(st.integers(0, 2), label="then 2 s quiet and a no-op build") == 2:
            # The fast path trusts no file changed within 2 s before a build's
            # start. A no-op build after a pause records a state it can trust,
            # so the next plain build (after the next edits) is really answered
            # by the fast path: any edit it cannot see is then a stale output.
            time.sleep(2.1)
            self.project.reset_runlog()
            exp = self.model.expect()
            proc = self.project.run(*self._build_args("plain", jobs))
            self._check_build(exp, proc, "plain", None, "no-op build after a pause")
            STATS["settled_noops"] += 1
            # Now exactly one change, and a plain build: the fast path must see it.
            change = data.draw(st.sampled_from([n for n in (*EDITS, "damage_out", "corrupt_blob") if self._possible(n)]),
                               label="one change the fast path must see")
            self._count(change)
            getattr(self, change)(data)
            self.project.reset_runlog()
            exp = self.model.expect()
            proc = self.project.run(*self._build_args("plain", jobs))
            self._check_build(exp, proc, "plain", None, f"plain build after only {change}")

    def _check_build(self, exp: Expectation, proc, mode: str, plan: dict[str, str] | None, label: str,
                     *, skip: frozenset[str] = frozenset(), exit_code: int = 0) -> dict[str, str]:
        """Check a finished build against ``exp``; ``skip`` are targets the caller checks itself.

        Returns the statuses of the --json report (empty for a plain build).
        """
        STATS["builds"] += 1
        ctx = self._context(exp)
        assert proc.returncode == exit_code, f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}\n{ctx}"
        assert not proc.leftover, f"{label}: processes outlived the build: {proc.leftover}"
        log = self.project.ran()
        ran = set(log)
        twice = sorted(n for n, c in Counter(log).items() if c > 1)
        assert not twice, f"{label}: steps ran twice in one build: {twice}\n{ctx}"
        stale = exp.built - ran - skip
        needless = ran - exp.built - exp.either - skip
        reasons = ""
        statuses: dict[str, str] = {}
        if mode == "full":
            report = json.loads(proc.stdout)
            statuses = {n: r["status"] for n, r in report["targets"].items()}
            reasons = "\n".join(f"  {n}: {r['status']}: {r.get('reason')}" for n, r in report["targets"].items())
        assert not stale, (f"{label}: STALE: these targets did not run although their inputs changed: "
                           f"{sorted(stale)}\nran: {sorted(ran)}\n{reasons}\n{proc.stderr[-1500:]}\n{ctx}")
        assert not needless, (f"{label}: NEEDLESS RERUN: these ran although nothing they depend on changed: "
                              f"{sorted(needless)}\n{reasons}\n{ctx}")
        if statuses:
            assert set(statuses) == set(exp.order), f"{label}: report names {sorted(statuses)}\n{ctx}"
            wrong = {n: s for n, s in statuses.items() if n not in skip and s != ("built" if n in ran else "cached")}
            assert not wrong, f"{label}: statuses disagree with what ran: {wrong}\n{reasons}\n{ctx}"
        if plan is not None:
            STATS["plans"] += 1
            assert set(plan) == set(exp.order), f"{label}: plan names {sorted(plan)}\n{ctx}"
            odd = {n: d for n, d in plan.items() if d not in ("hit", "miss", "pending")}
            resolved = self.model.resolve()
            broken = {n: d for n, d in plan.items() if (d == "hit" and n in ran) or (d == "miss" and n not in ran)
                      or (d == "pending" and not any(plan[p] in ("miss", "pending") for p in resolved[n].inputs.values()))}
            assert not odd and not broken, (f"{label}: plan did not predict the build: {odd or broken} "
                                            f"(ran: {sorted(ran)})\n{reasons}\n{ctx}")
        self._check_out(exp, self.project.out, label, ctx, skip)
        self.model.commit(exp, ran, skip)
        return statuses

    def _check_out(self, exp: Expectation, out: Path, label: str, ctx: str, skip: frozenset[str] = frozenset()) -> None:
        problems = []
        for name in exp.order:
            if name in skip:
                continue
            got = read_tree(out / name) if (out / name).is_dir() else None
            want = exp.outputs[name]
            if got != want:
                problems.append(f"out/{name}: expected {want!r}\n    found {got!r}")
        leftovers = sorted(e for e in os.listdir(out) if e.startswith(".")) if out.is_dir() else []
        if leftovers:
            problems.append(f"leftover entries under out/: {leftovers}")
        assert not problems, f"{label}: out/ differs from a clean build:\n" + "\n".join(problems) + "\n" + ctx

    def _reference(self, exp: Expectation) -> None:
        """Build the current state from scratch elsewhere: the model must match it."""
        self.counter += 1
        ref = self.base / f"ref{self.counter}"
        self.project.reset_runlog()
        proc = self.project.run(*self._build_args("full", None), "--cache-dir", str(ref / "cache"),
                                "--out-dir", str(ref / "out"))
        ctx = self._context(exp)
        assert proc.returncode == 0, f"clean build failed: {proc.stderr[-3000:]}\n{ctx}"
        report = json.loads(proc.stdout)
        assert {n: r["status"] for n, r in report["targets"].items()} == {n: "built" for n in exp.order}, ctx
        assert sorted(self.project.ran()) == sorted(exp.order), ctx
        self._check_out(exp, ref / "out", "clean build in a fresh cache", ctx)
        shutil.rmtree(ref, ignore_errors=True)
        STATS["reference_builds"] += 1

    # -- start ---------------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data) -> None:
        m = self.model
        for i in range(data.draw(st.integers(2, 4), label="sources")):
            m.sources[f"src/s{i}.txt"] = data.draw(contents)
        if data.draw(st.booleans(), label="a source directory"):
            m.sources["src/d0"] = {f"{c}.txt": data.draw(contents) for c in "ab"[:data.draw(st.integers(1, 2))]}
        m.variables = {v: data.draw(words) for v in VARS}
        m.plugin.update(fmt=data.draw(st.sampled_from(["f0", "f1"])), salt=data.draw(st.sampled_from(["s0", "s1"])))
        lo, hi = CONFIG["init_targets"]
        self._add_target(data, "command")
        self._add_target(data, "eq")
        for _ in range(data.draw(st.integers(lo, hi), label="targets") - 2):
            self._add_target(data)
        self.project.write_all(m)
        # Sources a day old: the first build's stat records are trusted at once
        # (not racy), so an edit that keeps size and mtime meets a trusted record.
        day_ago = time.time_ns() - 86_400 * 10**9
        for path in (self.project.root / "src").rglob("*"):
            os.utime(path, ns=(day_ago, day_ago))
        self._build(data, mode="full", label="first build")

    # -- the rules -------------------------------------------------------------
    # Edits and damage are grouped in two rules (the draw labelled "edit" or
    # "damage" names the method) so that about half the steps are builds, where
    # the checks are; each build is preceded by however many edits hypothesis chose.

    def _possible(self, name: str) -> bool:
        if name in SKIP:
            return False
        if name == "add_target":
            return len(self.model.tables) < CONFIG["max_targets"]
        if name == "remove_target":
            return len(self.model.tables) > 2
        return True

    @rule(data=st.data())
    @precondition(lambda self: any(self._possible(n) for n in EDITS))
    def edit(self, data) -> None:
        name = data.draw(st.sampled_from([n for n in EDITS if self._possible(n)]), label="edit")
        self._count(name)
        getattr(self, name)(data)

    def _some_edits(self, data) -> None:
        """Zero to three edits right before a build (most builds should have something to do)."""
        if not any(self._possible(n) for n in EDITS):
            return
        for _ in range(data.draw(st.integers(0, 3), label="edits before the build")):
            self.edit(data)

    @rule(data=st.data())
    @precondition(lambda self: any(self._possible(n) for n in DAMAGE))
    def damage(self, data) -> None:
        name = data.draw(st.sampled_from([n for n in DAMAGE if self._possible(n)]), label="damage")
        self._count(name)
        getattr(self, name)(data)

    @rule(data=st.data())
    @enabled("build")
    def build(self, data) -> None:
        """A build (plain or --full-check --json), perhaps after a plan, perhaps
        followed by a clean build of the same state in a fresh cache."""
        self._count("build")
        self._some_edits(data)
        self._build(data)
        if CONFIG["reference_every_build"] or data.draw(st.integers(0, 3), label="then a clean build elsewhere") == 3:
            self._reference(self.model.expect())

    @rule(data=st.data())
    @enabled("build_killed")
    def build_killed(self, data) -> None:
        self._count("build_killed")
        self._some_edits(data)
        exp = self.model.expect()
        mode = data.draw(st.sampled_from(["plain", "full"]), label="mode")
        wait_steps = min(len(exp.built), data.draw(st.integers(0, 12), label="kill after steps started"))
        delay = data.draw(st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.6]), label="then wait")
        env = self.project.env()
        self.project.reset_runlog()
        proc = self.project.start(*self._build_args(mode, None), env=env)
        deadline = time.monotonic() + 120
        while len(self.project.ran()) < wait_steps and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = self.project.communicate(proc, env, 60)
        left = self.project.reap(env["EQ_RUN_ID"], grace_s=10.0)
        assert not left, f"step processes outlived a killed build by 10 s: {left}"
        if proc.returncode == -signal.SIGKILL:
            STATS["kills"] += 1
            self.model.killed(exp)
            return
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        done.leftover = []  # type: ignore[attr-defined]
        self._check_build(exp, done, mode, None, "build that finished before the kill")

    def _gate_pairs(self) -> list[tuple[str, str]]:
        """(step that will run, source read only by it or by targets it waits for)."""
        m = self.model
        pairs = []
        for w in sorted(m.expect().built):
            around = m.ancestors(w) | {w}
            pairs += [(w, s) for s in sorted(m.sources) if m.readers(s) and m.readers(s) <= around]
        return pairs

    @rule(data=st.data())
    @enabled("build_with_concurrent_edit")
    def build_with_concurrent_edit(self, data) -> None:
        """Edit a source while a build runs: after the steps that read it, or while one does.

        A step ``gated`` waits (for a file the test creates) until the source has
        been edited. The build is checked against the state it started from;
        the next build must see the edit. If ``gated`` itself reads the source,
        it has hashed the old content but may read the new one: it must fail
        ("changed while the step ran") or have built the new content, and must
        never record the new content under the old key.
        """
        self._count("build_with_concurrent_edit")
        m = self.model
        pairs = self._gate_pairs()
        # (Drawn whether needed or not, so that a sequence replays the same draws.)
        bases = sorted(n for n, t in m.tables.items()
                       if "extends" not in t and not any(u.get("extends") == n for u in m.tables.values()))
        base = pick(data, bases, label="target given a new source, if needed")
        new_source = data.draw(contents)
        if not pairs:
            # No source is read only along one chain, or nothing will run: give a
            # target without variants a new source of its own (it must then run).
            if base is not None:
                self.counter += 1
                rel = f"src/g{self.counter}.txt"
                m.sources[rel] = new_source
                self.project.write_source(rel, m.sources[rel])
                m.tables[base]["deps"] = [*m.tables[base].get("deps", []), rel]
                if base in m.meta:
                    m.regenerate(base)
                self.project.write_recipes(m)
            pairs = self._gate_pairs()
        if not pairs:
            self._build(data, label="build (no source to edit during it)")
            return
        exp = m.expect()
        gated, rel = pick(data, pairs, label="(step that waits, source edited)")
        content, restore = self._edit_source_value(data, m.sources[rel])
        settle = data.draw(st.sampled_from([0.0, 2.2]), label="seconds between edit and build end")
        reads_it = gated in m.readers(rel)
        if reads_it and content == m.sources[rel] and "touch_during_step" in SKIP:
            content, restore = self._edit_source_value(data, content)  # triage: no unchanged rewrites under a reader
            if content == m.sources[rel]:
                content = {**content, "z.txt": b"z\n"} if isinstance(content, dict) else content + b"z\n"
        mode = data.draw(st.sampled_from(["plain", "full"]), label="mode")
        if reads_it:
            mode = "full"  # its status tells a refused result from a built one
        gate = self.base / "gate"
        env = self.project.env(EQ_GATE=str(gate), EQ_GATE_NAME=gated)
        self.project.reset_runlog()
        proc = self.project.start(*self._build_args(mode, None), *(["-k"] if reads_it else []), env=env)
        deadline = time.monotonic() + 120
        while not Path(f"{gate}.started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"the build ended before step {gated} started: {proc.communicate()}\n{self._context(exp)}")
            time.sleep(0.01)
        self._write_source(data, rel, content, restore)
        time.sleep(settle)
        Path(f"{gate}.go").touch()
        out, err = self.project.communicate(proc, env, 180)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        done.leftover = self.project.reap(env["EQ_RUN_ID"], grace_s=1.0)  # type: ignore[attr-defined]
        for suffix in (".started", ".go"):
            Path(f"{gate}{suffix}").unlink(missing_ok=True)
        STATS["concurrent_edits"] += 1
        what = "rewritten with the same bytes" if content == m.sources[rel] else "edited"
        label = f"build during which {rel} was {what} (while {gated}, which {'reads' if reads_it else 'follows'} it, waited)"
        if not reads_it or content == m.sources[rel]:
            # Every reader hashed and read the old content: the build is the old state's.
            self._check_build(exp, done, mode, None, label)
            m.sources[rel] = content
            return
        STATS["edits_under_a_running_reader"] += 1
        below = m.descendants(gated)
        status = json.loads(out)["targets"][gated]["status"] if out.strip() else None
        skip = frozenset({gated} | below)
        statuses = self._check_build(exp, done, mode, None, label, skip=skip, exit_code=1 if status == "failed" else 0)
        m.sources[rel] = content
        new = m.expect()
        if status == "failed":
            bad = {n: statuses[n] for n in below if statuses[n] != "skipped"}
            assert not bad, f"{label}: downstream of the failed {gated}: {bad}\n{self._context(exp)}"
            m.history.setdefault(gated, set()).add(exp.keys[gated])
        else:
            assert status == "built", f"{label}: {gated} is {status}\n{self._context(exp)}"
            got = read_tree(self.project.out / gated)
            assert got == new.outputs[gated], (f"{label}: {gated} built, but out/{gated} is {got!r}, "
                                               f"not the new content's {new.outputs[gated]!r}\n{self._context(new)}")
            m.killed(new, only=skip)
