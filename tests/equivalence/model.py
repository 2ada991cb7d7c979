"""An independent model of a correct build of the equivalence machine's projects.

It shares no code with modelbuild. From what the test itself wrote (recipe
tables, variables, ``--set`` overrides, source files, the plugin's source
text and the fake toolchain's version) it derives, for every target, the
exact bytes a clean build must put under ``out/<target>/`` and a *model key*:
a hash of everything that may change the step's output. A correct
incremental build runs a target iff its model key is not (intact) in the
cache, so the model also tracks what the cache holds: records written by
successful steps, blobs the test corrupted, what ``cache gc`` and ``cache
clear`` drop, and what a killed build may or may not have stored.

Recipe semantics are re-implemented here from docs/recipe-reference.md
(``--set`` before substitution, ``${var}``, shallow ``extends`` merge), not
imported, so a bug in modelbuild's loader shows up as a difference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .generated import command_text, plugin_helper_text, plugin_step_text

RESERVED = ("step", "inputs", "extends", "description")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.-]*)\}")

#: The command step's ``env.OP`` (a shell filter) and the plugin's ``mode``
#: name the same four transformations. Three of them drop information, which
#: is what gives early cutoff something to cut.
OPS = {"cat": "cat", "upper": "tr a-z A-Z", "nocomment": "sed /^#/d", "head": "head -n 2"}
OP_NAME = {v: k for k, v in OPS.items()}
#: The plugin's parameter defaults (what pydantic fills in when a recipe leaves them out).
EQ_DEFAULTS = {"mode": "cat", "deps": [], "stamp_tool": False}

Files = dict[str, tuple[bytes, bool]]  # relative path -> (content, executable)
#: A source: a file's bytes, or a directory's files (name -> bytes; read in name order).
Source = bytes | dict[str, bytes]


def source_bytes(value: Source) -> bytes:
    """What a step that reads the source gets: the file, or the directory's files in name order."""
    return b"".join(value[n] for n in sorted(value)) if isinstance(value, dict) else value


def source_digest(value: Source) -> str:
    if isinstance(value, dict):
        return _digest(sorted((n, hashlib.sha256(c).hexdigest()) for n, c in value.items()))
    return hashlib.sha256(value).hexdigest()


def transform(data: bytes, op: str) -> bytes:
    """What ``cat`` / ``tr a-z A-Z`` / ``sed /^#/d`` / ``head -n 2`` do to ``data``."""
    if op == "cat":
        return data
    if op == "upper":
        return data.upper()  # ASCII only, as tr a-z A-Z
    lines = data.splitlines(keepends=True)
    if op == "nocomment":
        return b"".join(line for line in lines if not line.startswith(b"#"))
    if op == "head":
        return b"".join(lines[:2])
    raise ValueError(op)


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return variables[whole.group(1)]
        return _VAR.sub(lambda m: str(variables[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    return value


@dataclass
class Resolved:
    name: str
    step: str
    inputs: dict[str, str]
    params: dict[str, Any]
    root: str  # the target at the top of its extends chain (whose meta made the command)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()


def files_digest(files: Files) -> str:
    return _digest(sorted((p, hashlib.sha256(c).hexdigest(), x) for p, (c, x) in files.items()))


@dataclass
class Expectation:
    """What a correct build of the current state does."""

    order: list[str]
    keys: dict[str, str]
    outputs: dict[str, Files]
    built: set[str]  # must run
    either: set[str]  # may run or hit (after a killed build left the cache uncertain)

    @property
    def cached(self) -> set[str]:
        return set(self.order) - self.built - self.either


@dataclass
class Model:
    """The project as the test wrote it, and the cache as a correct tool leaves it."""

    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # base command targets: var, extra, exe
    file_of: dict[str, str] = field(default_factory=dict)  # target -> recipe file name
    variables: dict[str, str] = field(default_factory=dict)
    overrides: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)
    plugin: dict[str, Any] = field(default_factory=lambda: {"fmt": "f0", "step_rev": 0, "salt": "s0", "helper_rev": 0})
    tool_version: str = "1.0"
    # The cache.
    records: dict[str, Files] = field(default_factory=dict)  # surely stored
    maybe: dict[str, Files] = field(default_factory=dict)  # perhaps stored (killed build)
    bad_blobs: dict[tuple[bytes, bool], str] = field(default_factory=dict)  # blob -> "corrupt" | "deleted"
    maybe_bad: dict[tuple[bytes, bool], str] = field(default_factory=dict)  # perhaps repaired by a killed build
    history: dict[str, set[str]] = field(default_factory=dict)  # target -> possible last keys

    # -- the project ---------------------------------------------------------

    def step_text(self) -> str:
        return plugin_step_text(self.plugin["fmt"], self.plugin["step_rev"])

    def helper_text(self) -> str:
        return plugin_helper_text(self.plugin["salt"], self.plugin["helper_rev"])

    def regenerate(self, name: str) -> None:
        """Rewrite a base command target's command after its inputs or deps changed."""
        t, m = self.tables[name], self.meta[name]
        t["command"] = command_text(list(t.get("inputs", {})), list(t.get("deps", [])), m["var"], m["extra"], m["exe"])
        t["outs"] = ["out.txt", "sub/n.txt"] if m["extra"] else ["out.txt"]

    def set_args(self) -> list[str]:
        return [arg for key, value in self.overrides for arg in ("--set", f"{key}={value}")]

    def resolve(self) -> dict[str, Resolved]:
        raw = copy.deepcopy(self.tables)
        variables = dict(self.variables)
        for key, value in self.overrides:
            parts = key.split(".")
            if parts[0] == "vars":
                variables[parts[1]] = value
                continue
            node = raw[parts[1]]
            for part in parts[2:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        tables = {n: _substitute(t, variables) for n, t in raw.items()}
        done: dict[str, Resolved] = {}

        def res(name: str) -> Resolved:
            if name in done:
                return done[name]
            t = tables[name]
            own = {k: v for k, v in t.items() if k not in RESERVED}
            if "extends" in t:
                base = res(t["extends"])
                step, inputs, params, root = t.get("step") or base.step, dict(base.inputs), {**base.params, **own}, base.root
            else:
                step, inputs, params, root = t["step"], {}, own, name
            inputs.update(t.get("inputs", {}))
            done[name] = Resolved(name, step, inputs, params, root)
            return done[name]

        for name in tables:
            res(name)
        for r in done.values():
            if r.step == "eq":
                r.params = {**EQ_DEFAULTS, **r.params}
        return done

    def producers(self, resolved: dict[str, Resolved], name: str) -> list[str]:
        return list(resolved[name].inputs.values())

    def order(self, resolved: dict[str, Resolved]) -> list[str]:
        seen: list[str] = []

        def visit(n: str) -> None:
            if n in seen:
                return
            for p in sorted(self.producers(resolved, n)):
                visit(p)
            seen.append(n)

        for n in sorted(resolved):
            visit(n)
        return seen

    def acyclic(self) -> bool:
        resolved = self.resolve()
        state: dict[str, int] = {}

        def visit(n: str) -> bool:
            if state.get(n) == 1:
                return False
            if state.get(n) == 2:
                return True
            state[n] = 1
            ok = all(visit(p) for p in resolved[n].inputs.values())
            state[n] = 2
            return ok

        return all(visit(n) for n in resolved)

    def ancestors(self, name: str) -> set[str]:
        resolved = self.resolve()
        found: set[str] = set()
        todo = [name]
        while todo:
            for p in self.producers(resolved, todo.pop()):
                if p not in found:
                    found.add(p)
                    todo.append(p)
        return found

    def descendants(self, name: str) -> set[str]:
        resolved = self.resolve()
        found: set[str] = set()
        todo = [name]
        while todo:
            here = todo.pop()
            for n, r in resolved.items():
                if here in r.inputs.values() and n not in found:
                    found.add(n)
                    todo.append(n)
        return found

    def consumers_of(self, name: str) -> set[str]:
        """Targets whose own table names ``name`` as an input or as the base they extend."""
        return {n for n, t in self.tables.items() if name in t.get("inputs", {}).values() or t.get("extends") == name}

    def readers(self, source: str) -> set[str]:
        """Targets whose resolved deps include ``source``."""
        return {n for n, r in self.resolve().items() if source in r.params.get("deps", [])}

    def variables_resolved(self) -> dict[str, str]:
        v = dict(self.variables)
        v.update({k.split(".", 1)[1]: val for k, val in self.overrides if k.startswith("vars.")})
        return v

    # -- outputs and keys ----------------------------------------------------

    def _output(self, r: Resolved, outputs: dict[str, Files]) -> Files:
        p = r.params
        if r.step == "command":
            env = p["env"]
            # The command (inherited from the root of the extends chain) reads the
            # slots and deps its root had; an input a variant adds is keyed but unread.
            m, root = self.meta[r.root], self.tables[r.root]
            data = b"".join(outputs[r.inputs[slot]]["out.txt"][0] for slot in root.get("inputs", {}))
            data += b"".join(source_bytes(self.sources[d]) for d in root.get("deps", []))
            head = f"{env['NAME']} {env['TAG']}" + (f" {self.variables_resolved()[m['var']]}" if m["var"] else "")
            out = (head + "\n").encode() + transform(data, OP_NAME[env["OP"]])
            files: Files = {"out.txt": (out, False)}
            if m["extra"]:
                lines = out.count(b"\n")
                files["sub/n.txt"] = (f"{env['NAME']} {lines}\n".encode(), m["exe"])
            return files
        data = b"".join(outputs[r.inputs[slot]]["out.txt"][0] for slot in sorted(r.inputs))
        data += b"".join(source_bytes(self.sources[d]) for d in p["deps"])
        head = f"{p['name']} {p['tag']} {self.plugin['fmt']}" + (f" tool={self.tool_version}" if p["stamp_tool"] else "")
        body = transform(data, p["mode"]) + self.plugin["salt"].encode() + b"\n"
        return {"out.txt": (head.encode() + b"\n" + body, False)}

    def _key(self, r: Resolved, outputs: dict[str, Files]) -> str:
        code: Any = None
        if r.step == "eq":
            code = [self.step_text(), self.helper_text(), self.tool_version]
        return _digest([
            r.step, r.params,
            {slot: files_digest(outputs[prod]) for slot, prod in r.inputs.items()},
            {d: source_digest(self.sources[d]) for d in r.params.get("deps", [])},
            code,
        ])

    def _presence(self, key: str) -> str:
        """"yes" / "maybe" / "no": is ``key`` usable in the cache?"""
        if key in self.records:
            files, level = self.records[key], "yes"
        elif key in self.maybe:
            files, level = self.maybe[key], "maybe"
        else:
            return "no"
        blobs = set(files.values())
        if blobs & self.bad_blobs.keys():
            return "no"
        if blobs & self.maybe_bad.keys():
            return "maybe"
        return level

    def expect(self) -> Expectation:
        resolved = self.resolve()
        order = self.order(resolved)
        outputs: dict[str, Files] = {}
        keys: dict[str, str] = {}
        built, either = set(), set()
        for name in order:
            r = resolved[name]
            outputs[name] = self._output(r, outputs)
            keys[name] = self._key(r, outputs)
            presence = self._presence(keys[name])
            if presence == "no":
                built.add(name)
            elif presence == "maybe":
                either.add(name)
        return Expectation(order, keys, outputs, built, either)

    # -- what builds and cache commands do to the cache ------------------------

    def commit(self, exp: Expectation, ran: set[str], skip: frozenset[str] = frozenset()) -> None:
        """A build of every target finished: ``ran`` are the targets whose step ran
        (``skip``: targets the caller accounts for itself)."""
        for name in exp.order:
            if name in skip:
                continue
            key, files = exp.keys[name], exp.outputs[name]
            self.records[key] = files
            self.maybe.pop(key, None)
            blobs = set(files.values())
            for blob in blobs:
                if name in ran:
                    self.bad_blobs.pop(blob, None)  # a fresh ingest replaces a corrupt blob
                self.maybe_bad.pop(blob, None)  # built: repaired; cached: it was intact
            self.history[name] = {key}

    def killed(self, exp: Expectation, only: frozenset[str] | None = None) -> None:
        """A build of ``exp`` was killed at an unknown point (it may have stored any of
        the keys of ``only``, default all)."""
        for name in exp.order:
            if only is not None and name not in only:
                continue
            key, files = exp.keys[name], exp.outputs[name]
            if key not in self.records:
                self.maybe[key] = files
            for blob in set(files.values()) & set(self.bad_blobs):
                self.maybe_bad[blob] = self.bad_blobs.pop(blob)
            self.history.setdefault(name, set()).add(key)

    def gc(self) -> None:
        sure = {next(iter(keys)) for keys in self.history.values() if len(keys) == 1}
        possible = set().union(*self.history.values()) if self.history else set()
        for key in list(self.records):
            if key not in sure:
                files = self.records.pop(key)
                if key in possible:
                    self.maybe[key] = files
        for key in list(self.maybe):
            if key not in possible:
                del self.maybe[key]

    def clear(self) -> None:
        self.records.clear()
        self.maybe.clear()
        self.bad_blobs.clear()
        self.maybe_bad.clear()
        self.history.clear()

    def verify_problems(self) -> bool | None:
        """Must ``cache verify`` report a problem (None: cannot say after a kill)?

        It re-hashes every blob (a corrupt one is a problem whoever uses it) and
        reports a missing blob only when a record still names it.
        """
        if self.maybe or self.maybe_bad:
            return None
        referenced = {blob for files in self.records.values() for blob in files.values()}
        return any(kind == "corrupt" or blob in referenced for blob, kind in self.bad_blobs.items())
