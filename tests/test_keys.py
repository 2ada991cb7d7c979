"""Action keys: canonical, complete, and free of what does not change outputs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from modelbuild.keys import action_key, canonical_json, diff_records, key_record

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)
params_st = st.dictionaries(st.text(min_size=1, max_size=6), values, max_size=5)


def rec(params=None, inputs=None, toolchain=None, code="f", version=1, sources=None):
    return key_record(step="s", step_version=version, fingerprint=code, params=params or {},
                      inputs=inputs or {}, sources=sources or {}, toolchain=toolchain or {})


@given(params_st)
def test_key_ignores_table_order(params):
    shuffled = dict(reversed(list(params.items())))
    assert action_key(rec(shuffled)) == action_key(rec(params))


@given(st.integers(-1000, 1000))
def test_integral_floats_equal_ints(n):
    assert action_key(rec({"g": float(n)})) == action_key(rec({"g": n}))


@given(params_st, st.text(min_size=1, max_size=6), values)
def test_any_param_change_changes_key(params, name, value):
    changed = {**params, name: value}
    if canonical_json(changed) != canonical_json(params):
        assert action_key(rec(changed)) != action_key(rec(params))


@given(st.sampled_from(["inputs", "toolchain", "code", "version", "sources"]))
def test_every_keyed_field_changes_key(field):
    base = dict(inputs={"m": "b3:aa"}, toolchain={"torch": "2.13.0"}, code="f", version=1, sources={"d": "b3:1"})
    changed = dict(base)
    changed[field] = {"inputs": {"m": "b3:bb"}, "toolchain": {"torch": "2.14.0"}, "code": "g", "version": 2, "sources": {"d": "b3:2"}}[field]
    assert action_key(rec(**changed)) != action_key(rec(**base))


def test_typed_reasons():
    a = rec({"group_size": 32}, inputs={"checkpoint": "b3:" + "1" * 64}, toolchain={"executorch": "1.4.1"})
    b = rec({"group_size": 64}, inputs={"checkpoint": "b3:" + "2" * 64}, toolchain={"executorch": "1.5.1"}, code="g")
    reasons = diff_records(a, b)
    assert reasons[0] == "step code changed: s"
    assert "params changed: group_size 32 -> 64" in reasons
    assert "input changed: checkpoint (digest 111111111111 -> 222222222222)" in reasons
    assert "toolchain changed: executorch 1.4.1 -> 1.5.1" in reasons


def test_one_change_repeated_over_many_inputs_is_said_once():
    """l10..l19 all went a -> b: one phrase with the count, not ten copies (natural order: l9 before l10)."""
    digest = {"a": "b3:" + "a" * 64, "b": "b3:" + "b" * 64, "c": "b3:" + "c" * 64}
    old = {f"l{i}": digest["a"] for i in range(8, 20)}
    new = {**old, **{f"l{i}": digest["b"] for i in range(10, 20)}, "l8": digest["c"], "l9": digest["c"]}
    a = key_record(step="s", step_version=1, fingerprint="f", params={}, inputs=old, sources={}, toolchain={})
    b = key_record(step="s", step_version=1, fingerprint="f", params={}, inputs=new, sources={}, toolchain={})
    short = {k: v[3:15] for k, v in digest.items()}
    assert diff_records(a, b) == [
        f"input changed: l8 (digest {short['a']} -> {short['c']}), l9 (digest {short['a']} -> {short['c']}), "
        f"l10..l19 (10 inputs, digest {short['a']} -> {short['b']})"
    ]


def test_keys_doctests():
    import doctest

    import modelbuild.keys

    assert doctest.testmod(modelbuild.keys).failed == 0
