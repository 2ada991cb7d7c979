"""Inputs count as they were read (issue 11, hole 1).

A source edited while the build runs (after its target was keyed, or even
while its step runs) must make that target dirty for the next build: the
no-op fast path records the signatures the engine took *before* reading each
file, and takes its racy rule against the build's start; a step whose source
changed under it is not cached under the key of the old content.

The races are made deterministic by the steps themselves: one step edits
another target's source, ordered by an input edge or by marker files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from modelbuild import fastpath, hashing
from tests.conftest import run_cli

OPTIONS = {"targets": [], "overrides": [], "out_dir": None, "require_validation": False}


def _record(project, result, started_ns):
    fastpath.record_noop(result, project=str(project.root), recipes=None, cache_dir=None, options=OPTIONS,
                         started_ns=started_ns)


def _noop(project):
    return fastpath.try_noop(project=str(project.root), recipes=None, cache_dir=None, options=OPTIONS)


def test_signatures_agree_with_hashing(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert fastpath._signature(str(f)) == list(hashing.stat_signature(os.stat(f)))
    assert fastpath._RACY_NS == hashing.RACY_MARGIN_NS


EDIT_LATER = """
[targets.first]
step = "command"
deps = ["b.txt"]
command = "cat {project}/b.txt > $MODELBUILD_OUT/o"

[targets.second]
step = "command"
deps = ["a.txt"]
inputs = { after = "first" }
command = "cat {project}/a.txt > $MODELBUILD_OUT/o; echo edited > {project}/b.txt"
"""


@pytest.mark.slow
def test_a_source_edited_after_it_was_read_is_not_up_to_date(project, monkeypatch):
    """``second`` edits ``first``'s source after ``first`` read it: the next
    build must not be a no-op, and must rebuild ``first`` with the new text."""
    # Only what this build itself changes may count as racy: no 2 s margin,
    # so the check cannot pass merely because the edit is recent.
    monkeypatch.setattr(fastpath, "_RACY_NS", 0)
    project.recipe(EDIT_LATER)
    project.file("a.txt", "a\n")
    b = project.file("b.txt", "old\n")
    before = hashing.stat_signature(os.stat(b))
    started = time.time_ns()
    result = project.build("second")
    assert project.statuses(result) == {"first": "built", "second": "built"}
    assert (project.out / "first" / "o").read_text() == "old\n" and b.read_text() == "edited\n"
    # What first's key was computed from, not what b.txt is now.
    assert result.watched[str(b)] == before
    _record(project, result, started)
    assert _noop(project) is None

    rebuilt = project.build("second")
    assert rebuilt.targets["first"].status == "built"
    assert (project.out / "first" / "o").read_text() == "edited\n"
    # second reran (its input changed) and rewrote b.txt with the same text:
    # first is keyed again from the same content and stays cached.
    settled = project.build("second")
    assert project.statuses(settled) == {"first": "cached", "second": "cached"}
    # The control: once nothing changes during a build, the fast path answers.
    started = time.time_ns()
    quiet = project.build("second")
    _record(project, quiet, started)
    assert _noop(project) == "2 target(s) up to date (nothing changed since the last build)"


def test_racy_rule_is_taken_against_the_build_start(project):
    """A file changed within the margin of the build's start (before or after
    it) is never trusted, however long ago the state was written."""
    f = project.file("data.txt", "x\n")
    result = SimpleNamespace(ok=True, targets={}, watched={str(f): None}, valid_until_ns=None)
    now = time.time_ns()
    _record(project, result, started_ns=now + 10 * 10**9)
    assert _noop(project) == "0 target(s) up to date (nothing changed since the last build)"
    _record(project, result, started_ns=now + 10**9)  # data.txt changed 1 s before that start
    assert _noop(project) is None


def test_a_time_bound_resolution_ends_the_no_op(project):
    f = project.file("data.txt", "x\n")
    now = time.time_ns()
    result = SimpleNamespace(ok=True, targets={}, watched={str(f): None}, valid_until_ns=now + 3600 * 10**9)
    _record(project, result, started_ns=now + 10 * 10**9)
    assert _noop(project) is not None
    result.valid_until_ns = now
    _record(project, result, started_ns=now + 10 * 10**9)
    assert _noop(project) is None


def _wait_for(path, condition: str = "-f") -> str:
    # Poll (at most 60 s, then fail the step instead of hanging the test).
    test = f"[ {condition} {path} ]" if condition == "-f" else condition
    return f"i=0; until {test}; do i=$((i+1)); [ $i -gt 6000 ] && exit 3; sleep 0.01; done"


@pytest.mark.slow
def test_a_step_whose_source_changes_while_it_runs_is_not_cached(project, tmp_path):
    """``reader`` was keyed with b.txt = "old", then ``writer`` changes b.txt
    before ``reader`` reads it: the result must not be stored under the key
    of "old" (else restoring b.txt to "old" would bring back "new")."""
    marks = tmp_path / "marks"
    marks.mkdir()
    project.recipe(f"""
        [targets.reader]
        step = "command"
        deps = ["b.txt"]
        command = "touch {marks}/keyed; {_wait_for(marks / 'go')}; cat {{project}}/b.txt > $MODELBUILD_OUT/o"

        [targets.writer]
        step = "command"
        deps = ["a.txt"]
        command = "{_wait_for(marks / 'keyed')}; echo new > {{project}}/b.txt; touch {marks}/go; echo w > $MODELBUILD_OUT/o"

        [targets.both]
        step = "command"
        inputs = {{ r = "reader", w = "writer" }}
        command = "true"
    """)
    project.file("a.txt", "a\n")
    b = project.file("b.txt", "old\n")
    first = project.build("both", jobs=2, keep_going=True)
    assert first.targets["writer"].status == "built"
    reader = first.targets["reader"]
    assert reader.status == "failed"
    assert "b.txt changed while the step ran" in reader.reason
    # Back to the content reader was keyed with: a clean build reads "old".
    b.write_text("old\n")
    again = project.build("both", jobs=2)
    assert again.targets["reader"].status == "built"
    assert (project.out / "reader" / "o").read_text() == "old\n"


def test_a_touch_or_same_bytes_while_the_step_runs_is_no_change(project):
    """Only content counts: a step during which its source was touched or
    rewritten with the same bytes read what its key says, and is cached."""
    project.recipe("""
        [targets.r]
        step = "command"
        deps = ["b.txt", "c.txt"]
        command = "touch {project}/b.txt; cat {project}/c.txt > {project}/c.tmp; mv {project}/c.tmp {project}/c.txt; cat {project}/b.txt {project}/c.txt > $MODELBUILD_OUT/o"
    """)
    project.file("b.txt", "b\n")
    project.file("c.txt", "c\n")
    first = project.build("r")
    assert first.targets["r"].status == "built", first.targets["r"].reason
    again = project.build("r")
    assert again.targets["r"].status == "cached"


def test_a_change_within_one_clock_tick_is_caught_by_content(project, monkeypatch):
    """A write within the same timestamp tick as the read can leave the stat
    signature as it was. For a source changed that recently (racy), the
    engine compares the content itself once the step has run."""
    from modelbuild import engine as engine_mod

    project.recipe("""
        [targets.r]
        step = "command"
        deps = ["b.txt"]
        command = "cat {project}/b.txt > $MODELBUILD_OUT/o; echo NEW > {project}/b.txt"
    """)
    b = project.file("b.txt", "old\n")  # written just now: racy when the build reads it
    inode, tick = b.stat().st_ino, time.time_ns()
    real = hashing.stat_signature

    def frozen_clock(st):  # b.txt's timestamps stay in one tick, whatever is written
        sig = real(st)
        return (*sig[:3], tick, tick) if st.st_ino == inode else sig

    monkeypatch.setattr(hashing, "stat_signature", frozen_clock)
    monkeypatch.setattr(engine_mod, "stat_signature", frozen_clock)
    result = project.build("r")
    assert result.targets["r"].status == "failed"
    assert "b.txt changed while the step ran" in result.targets["r"].reason


@pytest.mark.slow
def test_the_issue_reproduction_through_the_cli(project, tmp_path):
    """The issue's recipe: ``a`` is slow and (here, itself) edits b.txt after
    ``b`` has been built from it, then runs on for longer than the racy
    margin; the next ``modelbuild build`` must rebuild ``b``, not call it up
    to date."""
    marks = tmp_path / "marks"
    marks.mkdir()
    project.recipe(f"""
        [targets.a]
        step = "command"
        deps = ["a.txt"]
        command = "if [ -f {marks}/arm ]; then {_wait_for(None, f'grep -q old {project.out}/b/o 2>/dev/null')}; echo new > {{project}}/b.txt; sleep 3.5; fi; echo same > $MODELBUILD_OUT/o"

        [targets.b]
        step = "command"
        deps = ["b.txt"]
        command = "cat {{project}}/b.txt > $MODELBUILD_OUT/o"

        [targets.all]
        step = "command"
        inputs = {{ a = "a", b = "b" }}
        command = "true"
    """)
    project.file("a.txt", "1\n")
    project.file("b.txt", "zero\n")
    assert run_cli("build", "all", cwd=project.root).returncode == 0
    (marks / "arm").touch()
    project.file("a.txt", "2\n")  # a reruns (and its output stays "same")
    project.file("b.txt", "old\n")  # b reruns and reads "old"
    race = run_cli("build", "all", "-j", "2", cwd=project.root)
    assert race.returncode == 0, race.stderr
    assert (project.out / "b" / "o").read_text() == "old\n"
    assert (project.root / "b.txt").read_text() == "new\n"
    (marks / "arm").unlink()
    after = run_cli("build", "all", cwd=project.root)
    assert "nothing changed since the last build" not in after.stderr
    assert (project.out / "b" / "o").read_text() == "new\n"


@pytest.mark.slow
def test_fast_path_watches_the_step_code_closure(chain):
    """The code the fingerprint covers is what the fast path re-stats."""
    from modelbuild.plugins import Registry

    result = chain.build()
    code = Registry.discover().get("command").code()
    for f in code.files:
        assert result.watched[str(f.path)] == f.signature
    assert any(p.endswith("modelbuild/step.py") for p in result.watched)


def _plugin_site(tmp_path):
    """A step plugin ``fp-shout`` installed on a PYTHONPATH directory (not
    site-packages), declaring the toolchain ``fptool`` 1.0 that sits there too
    and writing its version into the output. Returns (site, package, env)."""
    site = tmp_path / "site"
    pkg = site / "fpcli"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "steps.py").write_text(
        "from importlib import metadata\n"
        "from modelbuild.step import Step\n\n"
        "class Shout(Step):\n    name = 'fp-shout'\n    output = 'files'\n    toolchain = ('fptool',)\n\n"
        "    def run(self, ctx):\n        from .helper import text\n"
        "        (ctx.out / 'o').write_text(text() + ' ' + metadata.version('fptool'))\n"
    )
    (pkg / "helper.py").write_text("def text():\n    return 'one'\n")
    dist = site / "fpcli-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fpcli\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modelbuild.steps]\nfp-shout = fpcli.steps:Shout\n")
    _install_tool(site, "1.0")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return site, pkg, env


def _install_tool(site, version, old=None):
    """Install fptool ``version`` the way pip upgrades: a new dist-info, the old one removed."""
    dist = site / f"fptool-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fptool\nVersion: {version}\n")
    if old is not None:
        for f in (site / f"fptool-{old}.dist-info").iterdir():
            f.unlink()
        (site / f"fptool-{old}.dist-info").rmdir()


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["helper", "step", "toolchain"])
def test_fast_path_notices_an_edit_of_the_plugin_code(project, tmp_path, edit):
    """A plugin whose helper module is imported inside run(): editing it, or
    upgrading the toolchain package it declares (on a PYTHONPATH directory, not
    in site-packages: the equivalence machine found that hole), makes the next
    CLI build rerun the step instead of the fast path's "nothing changed"."""
    site, pkg, env = _plugin_site(tmp_path)
    project.recipe('[targets.s]\nstep = "fp-shout"\n')
    assert run_cli("build", "s", cwd=project.root, env=env).returncode == 0
    time.sleep(2.1)  # outside the racy window of what this build wrote
    assert run_cli("build", "s", cwd=project.root, env=env).returncode == 0
    quick = run_cli("build", "s", cwd=project.root, env=env)
    assert "nothing changed since the last build" in quick.stderr, quick.stderr
    if edit == "toolchain":
        _install_tool(site, "1.1", old="1.0")
    else:
        target = pkg / "helper.py" if edit == "helper" else pkg / "__init__.py"
        target.write_text(target.read_text() + "# edited\n")
    again = run_cli("build", "s", "-v", cwd=project.root, env=env)
    assert "nothing changed since the last build" not in again.stderr
    why = "toolchain changed: fptool 1.0 -> 1.1" if edit == "toolchain" else "step code changed"
    assert why in again.stderr, again.stderr
    if edit == "toolchain":
        assert (project.root / "out" / "s" / "o").read_text() == "one 1.1"


@pytest.mark.slow
def test_no_op_never_parses_or_imports_plugins(chain):
    """The fast path stays light: no pydantic, no step plugins, no source parsed.

    (The ast module itself is loaded by click, through inspect; what must not
    happen is a call to ast.parse.)"""
    assert run_cli("build", cwd=chain.root).returncode == 0
    time.sleep(2.1)
    assert run_cli("build", cwd=chain.root).returncode == 0
    probe = (
        "import sys, runpy, ast; parsed = []; _parse = ast.parse\n"
        "ast.parse = lambda *a, **k: parsed.append(1) or _parse(*a, **k)\n"
        "sys.argv=['modelbuild','build']\n"
        "try:\n    runpy.run_module('modelbuild.cli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('LOADED=' + ','.join(m for m in ('pydantic', 'modelbuild.steps.command', 'modelbuild.fingerprint') if m in sys.modules))\n"
        "print('PARSED=%d' % len(parsed))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=chain.root, capture_output=True, text=True)
    assert "up to date (nothing changed" in out.stderr, out.stderr
    assert "LOADED=\n" in out.stdout and "PARSED=0\n" in out.stdout, out.stdout


def test_the_default_start_is_no_later_than_the_process_start():
    """record_noop's default "build start" must not depend on when the CLI
    happens to import the fast path: it is the process's own start."""
    probe = ("import time; t = time.time_ns(); import modelbuild.fastpath as f; "
             "print(t - f.process_start_ns())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before = int(out.stdout)
    assert 0 <= before < 10 * 10**9


def test_the_process_start_is_exact_to_a_clock_tick():
    """The start is not rounded down by up to a second (as adding the start
    tick to /proc/stat's whole-second btime would be): a file written just
    before the previous build started would then count as racy, and a no-op
    after a 2 s pause would take the full path (CI saw exactly that)."""
    probe = "import time; t = time.time_ns(); import modelbuild.fastpath as f; print(f.process_start_ns(), t)"
    spawned = time.time_ns()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    start, child_now = map(int, out.stdout.split())
    tick = 10**9 // os.sysconf("SC_CLK_TCK")
    assert spawned - 2 * tick <= start <= child_now


@pytest.mark.parametrize("how", ["after cache clear", "copied outputs"])
def test_the_fast_path_sees_a_blob_removed_from_under_an_output_that_is_not_its_link(project, how):
    """The fast path watches out/ and counts on outputs being hard links to their blobs, so
    that damage to a blob shows in the output's ctime. An output that is not a link to its
    blob (kept in place after ``cache clear`` because it already held the right bytes, or
    placed by copy) must have its blob watched too: a removed blob is a cache that cannot
    serve the target, not "nothing changed" (found by the equivalence long profile)."""
    env = {"MODELBUILD_MATERIALIZE": "copy"} if how == "copied outputs" else {}
    project.recipe("""
        [targets.t]
        step = "command"
        command = "echo t > $MODELBUILD_OUT/o.txt"
        outs = ["o.txt"]
    """)
    assert run_cli("build", "t", cwd=project.root, env=env).returncode == 0
    if how == "after cache clear":
        assert run_cli("cache", "clear", cwd=project.root).returncode == 0
        assert run_cli("build", "t", cwd=project.root, env=env).returncode == 0  # out/t held the bytes: kept
    [blob] = [p for p in (project.cache / "blobs").rglob("*") if p.is_file()]
    assert os.stat(blob).st_ino != os.stat(project.out / "t" / "o.txt").st_ino
    time.sleep(2.1)  # past the racy window: the next no-op records a state the fast path trusts
    assert run_cli("build", "t", cwd=project.root, env=env).returncode == 0
    settled = run_cli("build", "t", cwd=project.root, env=env)
    assert "nothing changed" in settled.stderr, settled.stderr  # the fast path answers now
    os.chmod(blob.parent, 0o755)
    blob.unlink()
    after = run_cli("build", "t", cwd=project.root, env=env)  # the same options: the same no-op state
    assert after.returncode == 0, after.stderr
    assert "nothing changed" not in after.stderr and "1 built" in after.stderr, after.stderr
    assert blob.exists()
