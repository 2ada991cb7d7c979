"""Action keys: what a step's output depends on, canonicalized and hashed.

The key record holds exactly what can change a step's output: the key-schema
version, the step's name, version and source fingerprint, its parameters with
defaults filled in (judging thresholds excluded), the *content digests* of
its inputs and declared source files, and the versions of its declared
toolchain. No paths, timestamps, thread counts or credentials.

Because inputs enter by content digest, a rebuilt step whose output is
byte-identical leaves its dependents' keys unchanged: early cutoff.

Example::

    >>> rec = key_record(step="s", step_version=1, fingerprint="f", params={"b": 1, "a": 2},
    ...                  inputs={}, sources={}, toolchain={})
    >>> canonical_json(rec)[:40]
    '{"inputs":{},"params":{"a":2,"b":1},"sch'
    >>> len(action_key(rec))
    64
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import blake3

__all__ = ["KEY_SCHEMA", "key_record", "canonical_json", "action_key", "diff_records"]

#: Bump when the record's layout or meaning changes: every key changes with it.
KEY_SCHEMA = 1


def _normalize(value: Any) -> Any:
    """Make semantically equal values serialize identically."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        # 64.0 and 64 are the same parameter value.
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    raise TypeError(f"cannot put a {type(value).__name__} into an action key")


def canonical_json(record: dict[str, Any]) -> str:
    """Sorted keys, no whitespace, normalized numbers."""
    return json.dumps(_normalize(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_record(
    *,
    step: str,
    step_version: int,
    fingerprint: str,
    params: dict[str, Any],
    inputs: dict[str, str | list[str]],
    sources: dict[str, str],
    toolchain: dict[str, str],
) -> dict[str, Any]:
    return {
        "schema": KEY_SCHEMA,
        "step": step,
        "step_version": step_version,
        "step_code": fingerprint,
        "params": params,
        "inputs": inputs,
        "sources": sources,
        "toolchain": toolchain,
    }


def action_key(record: dict[str, Any]) -> str:
    return blake3.blake3(canonical_json(record).encode()).hexdigest()


def _short(value: Any) -> str:
    if isinstance(value, str) and ":" in value and len(value) > 20:
        return value.split(":", 1)[1][:12]
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return json.dumps(value) if not isinstance(value, str) else value


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def diff_records(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Typed reasons why ``new`` differs from ``old``, most fundamental first.

    >>> a = key_record(step="q", step_version=1, fingerprint="f", params={"group_size": 32},
    ...                inputs={}, sources={}, toolchain={"executorch": "1.4.1"})
    >>> b = key_record(step="q", step_version=1, fingerprint="f", params={"group_size": 64},
    ...                inputs={}, sources={}, toolchain={"executorch": "1.5.1"})
    >>> diff_records(a, b)
    ['params changed: group_size 32 -> 64', 'toolchain changed: executorch 1.4.1 -> 1.5.1']
    """
    old, new = _normalize(old), _normalize(new)
    reasons: list[str] = []
    if old.get("schema") != new.get("schema"):
        return [f"key schema changed: {old.get('schema')} -> {new.get('schema')}"]
    if old.get("step") != new.get("step"):
        return [f"step changed: {old.get('step')} -> {new.get('step')}"]
    if old.get("step_version") != new.get("step_version"):
        reasons.append(f"step version changed: {new['step']} {old.get('step_version')} -> {new.get('step_version')}")
    if old.get("step_code") != new.get("step_code"):
        reasons.append(f"step code changed: {new['step']}")
    for section, label in (("params", "params changed"), ("inputs", "input changed"), ("sources", "source changed"), ("toolchain", "toolchain changed")):
        a: dict[str, Any] = {}
        b: dict[str, Any] = {}
        _flat("", old.get(section, {}), a)
        _flat("", new.get(section, {}), b)
        changed = []
        for name in sorted(set(a) | set(b), key=_natural):
            if a.get(name, "<unset>") == b.get(name, "<unset>"):
                continue
            before = _short(a[name]) if name in a else "(none)"
            after = _short(b[name]) if name in b else "(none)"
            changed.append((name, f"digest {before} -> {after}" if section in ("inputs", "sources") else f"{before} -> {after}"))
        if changed:
            reasons.append(f"{label}: " + ", ".join(_grouped(changed, section)))
    return reasons


def _natural(name: str) -> list:
    """Sort key putting l2 before l10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


_NOUNS = {"toolchain": "packages"}


def _grouped(changed: list[tuple[str, str]], section: str) -> list[str]:
    """One phrase per run of consecutive names that changed the same way.

    >>> _grouped([(f"l{i}", "digest a -> b") for i in range(10, 20)], "inputs")
    ['l10..l19 (10 inputs, digest a -> b)']
    >>> _grouped([("x", "digest a -> b"), ("y", "digest c -> d")], "inputs")
    ['x (digest a -> b)', 'y (digest c -> d)']
    >>> _grouped([("group_size", "32 -> 64")], "params")
    ['group_size 32 -> 64']
    """
    runs: list[list[tuple[str, str]]] = []
    for item in changed:
        if runs and runs[-1][-1][1] == item[1]:
            runs[-1].append(item)
        else:
            runs.append([item])
    phrases = []
    for run in runs:
        first, change = run[0]
        if len(run) == 1:
            phrases.append(f"{first} ({change})" if section in ("inputs", "sources") else f"{first} {change}")
        elif len(run) == 2:
            phrases.extend(_grouped(run[:1], section) + _grouped(run[1:], section))
        else:
            phrases.append(f"{first}..{run[-1][0]} ({len(run)} {_NOUNS.get(section, section)}, {change})")
    return phrases
