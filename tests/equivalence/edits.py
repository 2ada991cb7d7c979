"""The equivalence machine's edits and damage: what a user (or a disk) does to a project.

Each public method here is one kind of edit or damage, applied to the files on
disk (project.py) and to the model (model.py) alike; the machine's ``edit``
and ``damage`` rules draw which one runs. Edits of sources include same-size
edits that put the old mtime back and saves by rename; recipe edits include
ones that change nothing (key order, defaults spelled out, a target moved to
the other file), which must rerun nothing.
"""

from __future__ import annotations

import json
import os
import shutil

import blake3
from hypothesis import strategies as st

from .model import EQ_DEFAULTS, OPS
from .project import STATS

#: Sizes; the bench and the long profile raise them.
CONFIG = {"init_targets": (3, 6), "max_targets": 8, "reference_every_build": False}
#: Rules and edits left out, for triage of a known hole only (never in CI).
SKIP = {s.strip() for s in os.environ.get("MODELBUILD_EQUIV_SKIP", "").split(",") if s.strip()}

EDITS = ("edit_source", "edit_param", "respell", "move_target", "edit_var", "add_target", "remove_target",
         "change_set", "edit_plugin", "bump_toolchain")
DAMAGE = ("corrupt_blob", "damage_out", "clean", "cache_gc", "cache_clear", "cache_verify")
NAMES = [f"t{i}" for i in range(16)]
VARS = ("v0", "v1")
words = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=3).map(lambda s: "w" + s)
line = st.one_of(
    st.text("abcdefgxyzABCDEFGXYZ", min_size=1, max_size=6),
    st.text("abcxyz", max_size=4).map(lambda s: "#" + s),
)
contents = st.lists(line, max_size=5).map(lambda ls: "".join(x + "\n" for x in ls).encode())


def pick(data, items: list, label: str | None = None):
    """``items[i]`` for a drawn ``i``, or None if ``items`` is empty.

    For lists that depend on what is on disk or on timing (the blobs a killed
    build left, which outputs exist): the draw has the same shape whatever
    the list, so hypothesis can replay a sequence even if the list differs.
    """
    i = data.draw(st.integers(0, 63), label=label)
    return items[i % len(items)] if items else None


class Edits:
    """Mixin of :class:`~tests.equivalence.machine.EquivalenceMachine` (``self.model``, ``self.project``)."""

    # -- drawing -----------------------------------------------------------

    def _free_name(self) -> str | None:
        free = [n for n in NAMES if n not in self.model.tables]
        return free[0] if free else None

    def _draw_inputs(self, data, exclude: set[str]) -> dict[str, str]:
        pool = sorted(set(self.model.tables) - exclude)
        chosen = data.draw(st.lists(st.sampled_from(pool), max_size=3, unique=True)) if pool else []
        return {f"i{i}": p for i, p in enumerate(chosen)}

    def _draw_deps(self, data) -> list[str]:
        return data.draw(st.lists(st.sampled_from(sorted(self.model.sources)), max_size=2, unique=True))

    def _draw_tag(self, data, name: str) -> str:
        word = data.draw(words)
        return data.draw(st.sampled_from([word, "${v0}", f"{word}-${{v1}}"]))

    def _add_target(self, data, kind: str | None = None) -> str:
        m = self.model
        name = self._free_name()
        assert name is not None
        kinds = ["command", "eq"] + (["child"] if m.tables else [])
        kind = kind or data.draw(st.sampled_from(kinds), label="kind")
        if kind == "child":
            base = data.draw(st.sampled_from(sorted(m.tables)), label="extends")
            table: dict = {"extends": base}
            if m.resolve()[base].step == "command":
                table["env"] = {"NAME": name, "TAG": f"{name}-{data.draw(words)}", "OP": OPS[data.draw(st.sampled_from(sorted(OPS)))]}
            else:
                table["name"] = name
                table["tag"] = self._draw_tag(data, name)
                if data.draw(st.booleans()):
                    table["mode"] = data.draw(st.sampled_from(sorted(OPS)))
            if data.draw(st.booleans(), label="child adds an input"):
                extra = self._draw_inputs(data, exclude=set())
                if extra:
                    table["inputs"] = {"x0": next(iter(extra.values()))}
        elif kind == "command":
            table = {"step": "command"}
            inputs = self._draw_inputs(data, exclude=set())
            if inputs:
                table["inputs"] = inputs
            table["command"] = ""
            table["deps"] = self._draw_deps(data)
            table["outs"] = []
            table["env"] = {"NAME": name, "TAG": f"{name}-{data.draw(words)}", "OP": OPS[data.draw(st.sampled_from(sorted(OPS)))]}
            extra = data.draw(st.booleans())
            m.meta[name] = {"var": data.draw(st.sampled_from([None, *VARS])), "extra": extra,
                            "exe": extra and data.draw(st.booleans())}
        else:
            table = {"step": "eq"}
            inputs = self._draw_inputs(data, exclude=set())
            if inputs:
                table["inputs"] = inputs
            table.update(name=name, tag=self._draw_tag(data, name), mode=data.draw(st.sampled_from(sorted(OPS))),
                         deps=self._draw_deps(data), stamp_tool=data.draw(st.booleans()))
        m.tables[name] = table
        m.file_of[name] = data.draw(st.sampled_from(["a.toml", "b.toml"]))
        if kind == "command":
            m.regenerate(name)
        return name

    # -- edits -----------------------------------------------------------------

    def _edit_source_value(self, data, old):
        """A new value for a source file or directory, and whether to put the old mtime back."""
        if not isinstance(old, dict):
            return self._edit_content(data, old)
        new = dict(old)
        action = data.draw(st.sampled_from(["add a file", "remove a file", "edit a file"] if len(old) > 1
                                           else ["add a file", "edit a file"]), label="directory edit")
        if action == "add a file":
            name = data.draw(st.sampled_from([f"{c}.txt" for c in "abcdef" if f"{c}.txt" not in old] or ["z.txt"]))
            new[name] = data.draw(contents)
            return new, False
        name = data.draw(st.sampled_from(sorted(old)), label="file")
        if action == "remove a file":
            del new[name]
            return new, False
        new[name], restore = self._edit_content(data, old[name])
        return new, restore

    def _edit_content(self, data, old: bytes) -> tuple[bytes, bool]:
        """A new content for a source file, and whether to put the old mtime back."""
        kind = data.draw(st.sampled_from(["append", "comment", "flipcase", "samesize", "rewrite", "same"]), label="edit")
        if kind == "append":
            return old + data.draw(line).encode() + b"\n", False
        if kind == "comment":
            return old + b"#" + data.draw(words).encode() + b"\n", False
        if kind in ("flipcase", "samesize"):
            letters = [i for i, c in enumerate(old) if chr(c).isalpha()]
            if not letters:
                return old + b"z\n", False
            i = data.draw(st.sampled_from(letters))
            c = chr(old[i])
            new = c.swapcase() if kind == "flipcase" else data.draw(st.sampled_from([x for x in "abcxyzABC" if x != c]))
            return old[:i] + new.encode() + old[i + 1:], data.draw(st.booleans(), label="restore mtime")
        if kind == "rewrite":
            return data.draw(contents), False
        return old, data.draw(st.booleans(), label="restore mtime")  # rewritten with the same bytes

    def _write_source(self, data, rel: str, content, restore_mtime: bool) -> None:
        atomic = data.draw(st.booleans(), label="save by rename")
        self.project.write_source(rel, content, atomic=atomic, restore_mtime=restore_mtime)

    def edit_source(self, data) -> None:
        rel = data.draw(st.sampled_from(sorted(self.model.sources)))
        content, restore = self._edit_source_value(data, self.model.sources[rel])
        self._write_source(data, rel, content, restore)
        self.model.sources[rel] = content

    def edit_param(self, data) -> None:
        m = self.model
        name = data.draw(st.sampled_from(sorted(m.tables)), label="target")
        before = json.dumps([m.tables, m.meta], sort_keys=True)
        table = m.tables[name]
        is_base_command = name in m.meta
        step = m.resolve()[name].step
        choices = ["tag", "op"] + (["deps", "inputs"] if "extends" not in table else [])
        choices += ["var", "extra"] if is_base_command else []
        choices += ["stamp"] if "step" in table and step == "eq" else []
        what = data.draw(st.sampled_from(choices), label="param")
        if what == "tag":
            if step == "command":
                table["env"] = {**table["env"], "TAG": f"{name}-{data.draw(words)}"}
            else:
                table["tag"] = self._draw_tag(data, name)
        elif what == "op":
            if step == "command":
                table["env"] = {**table["env"], "OP": OPS[data.draw(st.sampled_from(sorted(OPS)))]}
            else:
                table["mode"] = data.draw(st.sampled_from(sorted(OPS)))
        elif what == "deps":
            table["deps"] = self._draw_deps(data)
        elif what == "inputs":
            candidate = self._draw_inputs(data, exclude={name})
            old = table.pop("inputs", None)
            if candidate:
                table["inputs"] = candidate
            if not m.acyclic():
                table.pop("inputs", None)
                if old:
                    table["inputs"] = old
        elif what == "var":
            m.meta[name]["var"] = data.draw(st.sampled_from([None, *VARS]))
        elif what == "extra":
            extra = data.draw(st.booleans())
            m.meta[name].update(extra=extra, exe=extra and data.draw(st.booleans()))
        elif what == "stamp":
            table["stamp_tool"] = not table.get("stamp_tool", False)
        if is_base_command:
            m.regenerate(name)
        STATS["param_noop"] += before == json.dumps([m.tables, m.meta], sort_keys=True)
        self.project.write_recipes(m)

    def respell(self, data) -> None:
        """Write a table differently with the same meaning: key order, defaults spelled out or not."""
        m = self.model
        name = data.draw(st.sampled_from(sorted(m.tables)), label="target")
        table = dict(reversed(list(m.tables[name].items())))
        if "env" in table:
            table["env"] = dict(reversed(list(table["env"].items())))
        if table.get("step") == "eq":
            for key, default in EQ_DEFAULTS.items():
                if key not in table:
                    table[key] = default
                elif table[key] == default and data.draw(st.booleans(), label=f"omit {key}"):
                    del table[key]
        m.tables[name] = table
        self.project.write_recipes(m)

    def move_target(self, data) -> None:
        """Move a target to the other recipe file (one namespace: nothing changes)."""
        m = self.model
        name = data.draw(st.sampled_from(sorted(m.tables)), label="target")
        m.file_of[name] = "b.toml" if m.file_of[name] == "a.toml" else "a.toml"
        self.project.write_recipes(m)

    def edit_var(self, data) -> None:
        m = self.model
        var = data.draw(st.sampled_from(VARS), label="variable")
        m.variables[var] = data.draw(words)
        self.project.write_recipes(m)

    def add_target(self, data) -> None:
        self._add_target(data)
        self.project.write_recipes(self.model)

    def remove_target(self, data) -> None:
        m = self.model
        sinks = sorted(n for n in m.tables if not m.consumers_of(n))
        name = data.draw(st.sampled_from(sinks), label="remove")
        del m.tables[name]
        m.meta.pop(name, None)
        m.overrides = [(k, v) for k, v in m.overrides if not k.startswith(f"targets.{name}.")]
        self.project.write_recipes(m)

    def change_set(self, data) -> None:
        m = self.model
        if m.overrides and data.draw(st.booleans(), label="drop an override"):
            m.overrides.pop(data.draw(st.integers(0, len(m.overrides) - 1)))
            return
        name = data.draw(st.sampled_from(sorted(m.tables)))
        step = m.resolve()[name].step
        options = [f"vars.{v}" for v in VARS]
        options += [f"targets.{name}.env.TAG", f"targets.{name}.env.OP"] if step == "command" else [f"targets.{name}.tag"]
        key = data.draw(st.sampled_from(options), label="--set key")
        value = OPS[data.draw(st.sampled_from(sorted(OPS)))] if key.endswith(".OP") else data.draw(words)
        m.overrides = [*m.overrides, (key, value)][-3:]

    def edit_plugin(self, data) -> None:
        p = self.model.plugin
        what = data.draw(st.sampled_from(["step comment", "step format", "helper comment", "helper salt"]))
        if what == "step comment":
            p["step_rev"] += 1
        elif what == "step format":
            p["fmt"] = data.draw(st.sampled_from([f for f in ("f0", "f1", "f2") if f != p["fmt"]]))
        elif what == "helper comment":
            p["helper_rev"] += 1
        else:
            p["salt"] = data.draw(st.sampled_from([s for s in ("s0", "s1", "s2") if s != p["salt"]]))
        self.project.write_plugin(self.model)

    def bump_toolchain(self, data) -> None:
        new = data.draw(st.sampled_from([v for v in ("1.0", "1.1", "2.0") if v != self.model.tool_version]))
        self.project.write_tool(self.model.tool_version, new)
        self.model.tool_version = new

    # -- damage ----------------------------------------------------------------

    def corrupt_blob(self, data) -> None:
        intact = [b for b in self.project.blobs()
                  if blake3.blake3(b.read_bytes()).hexdigest() == b.parent.name + b.name.removesuffix("-x")]
        blob = pick(data, intact, label="blob")
        how = data.draw(st.sampled_from(["flip", "truncate", "append", "delete"]), label="damage")
        restore = data.draw(st.booleans(), label="restore mtime")
        if blob is None:
            return
        content, exe = blob.read_bytes(), blob.name.endswith("-x")
        st0 = blob.stat()
        if how == "delete":
            blob.unlink()
        else:
            if how == "flip" and content:
                new = bytes([content[0] ^ 1]) + content[1:]  # same size
            elif how == "truncate" and content:
                new = content[:-1]
            else:
                new = content + b"x"
            os.chmod(blob, 0o644)
            blob.write_bytes(new)
            os.chmod(blob, st0.st_mode & 0o777)
            if restore:
                os.utime(blob, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        self.model.bad_blobs[(content, exe)] = "deleted" if how == "delete" else "corrupt"

    def damage_out(self, data) -> None:
        out = self.project.out
        present = sorted(n for n in self.model.tables if (out / n / "out.txt").is_file())
        name = pick(data, present, label="target")
        how = data.draw(st.sampled_from(["file", "dir", "all", "replace", "add"]), label="damage")
        if name is None:
            return
        if how == "file":
            (out / name / "out.txt").unlink()
        elif how == "dir":
            shutil.rmtree(out / name)
        elif how == "all":
            shutil.rmtree(out)
        elif how == "replace":
            (out / name / "out.txt").unlink()
            (out / name / "out.txt").write_bytes(b"edited by hand\n")
        else:
            (out / name / "stray.txt").write_bytes(b"not part of the artifact\n")

    def clean(self, data) -> None:
        proc = self.project.run("clean")
        assert proc.returncode == 0, proc.stderr
        names = [n for n in os.listdir(self.project.out)] if self.project.out.is_dir() else []
        assert not names, f"clean left {names}"

    def cache_gc(self, data) -> None:
        proc = self.project.run("cache", "gc")
        assert proc.returncode == 0, proc.stderr
        self.model.gc()

    def cache_clear(self, data) -> None:
        proc = self.project.run("cache", "clear")
        assert proc.returncode == 0, proc.stderr
        self.model.clear()

    def cache_verify(self, data) -> None:
        proc = self.project.run("cache", "verify")
        want = self.model.verify_problems()
        assert proc.returncode in (0, 1), proc.stderr
        if want is not None:
            assert (proc.returncode == 1) == want, (
                f"cache verify exit {proc.returncode}, model expects {'problems' if want else 'none'}:\n"
                f"{proc.stdout}{proc.stderr}")
