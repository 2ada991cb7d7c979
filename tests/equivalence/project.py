"""The on-disk side of the equivalence machine: files, the plugin install, the CLI.

A project lives in a temporary directory::

    base/proj/recipes/{a,b}.toml   the recipes (targets spread over two files)
    base/proj/src/s*.txt           source files named in ``deps``
    base/proj/{out,cache}/         what modelbuild makes
    base/plugins/                  on PYTHONPATH of every build: the step
        eqplug/{__init__,step,helper}.py        plugin package ``eqplug``
        eqplug-0.1.dist-info/entry_points.txt   ``[modelbuild.steps] eq = ...``
        eqtool-<version>.dist-info/METADATA     the step's declared toolchain
    base/runlog                    every step that ran appends its target name

Every command runs ``python -m modelbuild.cli`` in a subprocess (cwd = the
project), so plugin edits are picked up by a fresh interpreter and a kill is
a real SIGKILL of the process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from .model import Files, Model

TIMEOUT_S = 180
#: Seconds spent per CLI command ("build", "plan", "cache", ...), for the bench.
TIMES: dict[str, float] = {}
#: What the machine did (sequences, steps, rules, builds, kills, ...), for the bench.
STATS: Counter = Counter()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(type(v))


def recipe_texts(model: Model) -> dict[str, str]:
    texts = {"a.toml": "[vars]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in model.variables.items()), "b.toml": ""}
    for name, table in model.tables.items():
        body = "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
        texts[model.file_of[name]] += f"\n[targets.{name}]\n{body}"
    return texts


def read_tree(root: Path) -> Files:
    files: Files = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            files[rel] = (p.read_bytes() if stat.S_ISREG(st.st_mode) else b"<not a regular file>",
                          bool(st.st_mode & stat.S_IXUSR))
    return files


def _stack_of(pid: int) -> str:
    """What one process is doing: its command line, state and kernel wait channel, and its
    Python stack (py-spy, where installed)."""
    def read(name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
        except OSError:
            return ""
    state = next((line for line in read("status").splitlines() if line.startswith("State:")), "State: gone")
    head = f"--- pid {pid}: {read('cmdline').replace(chr(0), ' ').strip()[:300]}\n    {state}, wchan {read('wchan')}"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return head + "\n    (no py-spy: no Python stack)"
    done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    return head + "\n" + (done.stdout or done.stderr).strip()


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (steps of one build)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


class Project:
    def __init__(self, base: Path, repo_root: Path):
        self.base = base
        self.root = base / "proj"
        self.plugins = base / "plugins"
        self.runlog = base / "runlog"
        self.repo_root = repo_root
        self._recipes: dict[str, str] = {}
        (self.root / "recipes").mkdir(parents=True)
        (self.plugins / "eqplug").mkdir(parents=True)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    # -- files -------------------------------------------------------------

    def write_all(self, model: Model) -> None:
        for rel, content in model.sources.items():
            self.write_source(rel, content)
        (self.plugins / "eqplug" / "__init__.py").write_text('"""The equivalence test\'s step plugin package."""\n')
        dist = self.plugins / "eqplug-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eqplug\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[modelbuild.steps]\neq = eqplug.step:EqStep\n")
        self.write_plugin(model)
        self.write_tool(None, model.tool_version)
        self.write_recipes(model)

    def write_source(self, rel: str, content: "bytes | dict[str, bytes]", *, atomic: bool = False,
                     restore_mtime: bool = False) -> None:
        """Write a source file (in place, or by rename when ``atomic``, as editors
        save), or make a source directory hold exactly the given files. With
        ``restore_mtime`` each rewritten file gets its old mtime back."""
        path = self.root / rel
        if isinstance(content, dict):
            path.mkdir(parents=True, exist_ok=True)
            for old in path.iterdir():
                if old.name not in content:
                    old.unlink()
            for name, data in content.items():
                if not (path / name).exists() or (path / name).read_bytes() != data:
                    self.write_source(f"{rel}/{name}", data, atomic=atomic, restore_mtime=restore_mtime)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        before = path.stat() if path.exists() else None
        if atomic:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        else:
            path.write_bytes(content)
        if restore_mtime and before is not None:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    def write_recipes(self, model: Model) -> None:
        """Rewrite the recipe files whose text changed (an unchanged file keeps its stat)."""
        for name, text in recipe_texts(model).items():
            if self._recipes.get(name) != text:
                (self.root / "recipes" / name).write_text(text)
                self._recipes[name] = text

    def write_plugin(self, model: Model) -> None:
        for name, text in (("step.py", model.step_text()), ("helper.py", model.helper_text())):
            path = self.plugins / "eqplug" / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
        # A same-size edit within one second would let Python run the old bytecode.
        shutil.rmtree(self.plugins / "eqplug" / "__pycache__", ignore_errors=True)

    def write_tool(self, old: str | None, new: str) -> None:
        """Install eqtool ``new`` the way pip upgrades: a new dist-info, the old one removed."""
        dist = self.plugins / f"eqtool-{new}.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: eqtool\nVersion: {new}\n")
        if old is not None:
            shutil.rmtree(self.plugins / f"eqtool-{old}.dist-info")

    def blobs(self) -> list[Path]:
        root = self.cache / "blobs"
        if not root.is_dir():
            return []
        return sorted(p for p in root.glob("*/*") if p.is_file())

    # -- the CLI -----------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELBUILD_", "EQ_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(self.plugins), str(self.repo_root)])
        env["EQ_RUNLOG"] = str(self.runlog)
        env["EQ_RUN_ID"] = f"eqrun-{uuid.uuid4().hex}"
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "modelbuild.cli", *args]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run one CLI command to the end; ``.leftover`` lists processes that outlived it."""
        env = env or self.env()
        start = time.monotonic()
        try:
            popen = subprocess.Popen(self.argv(*args), cwd=self.root, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            out, err = self.communicate(popen, env, TIMEOUT_S)
        finally:
            left = self.reap(env["EQ_RUN_ID"], grace_s=1.0)
            TIMES[args[0]] = TIMES.get(args[0], 0.0) + time.monotonic() - start
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        proc.leftover = left  # type: ignore[attr-defined]
        return proc

    def communicate(self, proc: subprocess.Popen, env: dict[str, str], timeout: float) -> tuple[str, str]:
        """``proc.communicate`` with a limit; a command still running after it fails the sequence
        with the stacks of every process of that command (a hang is a finding, not noise)."""
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pids = [proc.pid] + [p for p in _processes_with(env["EQ_RUN_ID"]) if p != proc.pid]
            stacks = "\n".join(_stack_of(pid) for pid in pids)
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"hung: {' '.join(map(str, proc.args[3:]))} still ran after {timeout:.0f} s\n"
                                 f"stderr so far:\n{err[-4000:]}\nprocesses:\n{stacks}") from None

    def start(self, *args: str, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), cwd=self.root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                stdin=subprocess.DEVNULL)

    def reap(self, run_id: str, grace_s: float) -> list[int]:
        """Wait up to ``grace_s`` for every process of one build to end; kill and
        return the ones that outlived it (a build must not leave steps behind)."""
        deadline = time.monotonic() + grace_s
        while True:
            left = _processes_with(run_id)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def reset_runlog(self) -> None:
        self.runlog.write_text("")

    def ran(self) -> list[str]:
        return self.runlog.read_text().split() if self.runlog.exists() else []
