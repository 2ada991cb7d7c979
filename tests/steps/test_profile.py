"""ExecuTorch developer tools on built programs: ETRecord, the profile step, the drift locator, bundled programs.

The tiny llama artifacts come from the shared session builders (llm_artifacts);
the drift and bundle tests use a four-layer MLP lowered by the real ``lower``
step (portable, so every layer is its own instruction), whose reference is the
real ``reference`` step's output.
"""

from __future__ import annotations

import json
import zipfile
from functools import lru_cache
from pathlib import Path

import pytest

import llm_artifacts as A
from modelbuild.devtools import ETRECORD_FILE
from modelbuild.testing import as_artifact, run_step

pytestmark = pytest.mark.ml

PROMPT = "Once upon a time"


# -- builders (once per session) -------------------------------------------------------------


@lru_cache(maxsize=None)
def llm_pte_with_etrecord() -> Path:
    return A.lowered(A.tiny_export(), "xnnpack", tag="etrecord", etrecord=True)


@lru_cache(maxsize=None)
def llm_reference() -> Path:
    from modelbuild.steps.reference import ReferenceStep

    return A._once("ref-profile", lambda out: run_step(
        ReferenceStep, {"prompts": [PROMPT], "max_new_tokens": 6, "eval_tokens": 16},
        {"model": as_artifact(A.tiny_checkpoint(), "checkpoint", "tiny-llama-ckpt")}, out))


def _stack():
    import torch

    class Block(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = torch.nn.Linear(dim, dim)

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Stack(torch.nn.Module):
        def __init__(self, layers=4, dim=64):
            super().__init__()
            self.layers = torch.nn.ModuleList(Block(dim) for _ in range(layers))
            self.out = torch.nn.Linear(dim, 8)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.out(x)

    torch.manual_seed(0)
    return Stack().eval()


@lru_cache(maxsize=None)
def stack_program() -> Path:
    import torch

    from modelbuild.ml.program import ProgramInfo, save_program

    def build(out: Path) -> None:
        example = (torch.randn(16, 64),)  # big enough that kernels, not dispatch, take the time
        ep = torch.export.export(_stack(), example)
        save_program(out, ep, ProgramInfo(kind="module", input_names=["x"], output_names=["y"]), example)

    return A._once("stack-export", build)


@lru_cache(maxsize=None)
def stack_reference() -> Path:
    from modelbuild.steps.reference import ReferenceStep

    return A._once("stack-ref", lambda out: run_step(
        ReferenceStep, {"samples": 2}, {"model": A.program_artifact(stack_program(), "stack-export")}, out))


@lru_cache(maxsize=None)
def stack_pte(backend: str = "portable", corrupt: str | None = None) -> Path:
    """The MLP lowered with its ETRecord; ``corrupt`` names a layer whose weights are then broken in the .pte."""
    import shutil

    base = A.lowered(stack_program(), backend, tag="etrecord", etrecord=True)
    if corrupt is None:
        return base
    def build(out: Path) -> None:
        shutil.copytree(base, out)
        weight = dict(_stack().named_parameters())[f"{corrupt}.weight"].detach()
        data = bytearray((out / "model.pte").read_bytes())
        raw = weight.numpy().tobytes()
        at = data.find(raw)
        assert at > 0 and data.find(raw, at + 1) == -1, "the layer's weights are stored once, verbatim"
        data[at:at + len(raw)] = (-weight * 3.0).numpy().tobytes()  # flipped and scaled: a broken layer
        (out / "model.pte").write_bytes(bytes(data))

    return A._once(f"stack-{backend}-corrupt-{corrupt}", build)


def _profile(pte: Path, ref: Path, name: str, **params) -> Path:
    from modelbuild.steps.profile import ProfileStep

    # Built once per run (the llm profile serves two tests); the name carries the inputs and parameters.
    key = f"profile-{name}-{pte.name}-{ref.name}" + "".join(f"-{k}={params[k]}" for k in sorted(params))
    return A._once(key, lambda out: run_step(ProfileStep, params, {"pte": as_artifact(pte, "pte", pte.name),
                                                                    "reference": as_artifact(ref, "reference", ref.name)}, out))


# -- ETRecord --------------------------------------------------------------------------------


def test_etrecord_is_written_readable_and_leaves_the_pte_bytes_alone(tmp_path):
    from modelbuild.ml.profile.etrecord import load_etrecord, save_etrecord

    plain, with_record = A.lowered(A.tiny_export(), "xnnpack"), llm_pte_with_etrecord()
    assert (with_record / "model.pte").read_bytes() == (plain / "model.pte").read_bytes()
    assert not (plain / ETRECORD_FILE).exists()
    for name in ("partition.json", "program.json"):
        assert (with_record / name).read_bytes() == (plain / name).read_bytes()
    record = load_etrecord(with_record / ETRECORD_FILE)
    assert record.exported_program is not None and record.edge_dialect_program is not None
    assert record._debug_handle_map and record._delegate_map  # what the Inspector names events with
    # No wall-clock dates in the file: the lower artifact stays reproducible.
    assert {i.date_time for i in zipfile.ZipFile(with_record / ETRECORD_FILE).infolist()} == {(1980, 1, 1, 0, 0, 0)}
    save_etrecord(record, tmp_path / "a.bin")
    save_etrecord(record, tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


# -- profile -------------------------------------------------------------------------------


def test_profile_rows_add_up_to_the_forward_time():
    out = _profile(stack_pte(), stack_reference(), "stack", runs=6)
    p = json.loads((out / "profile.json").read_text())
    rows = p["instructions"]
    assert p["runs"] == 6 and p["warmup"] == 1 and all(r["calls"] == 6 for r in rows)
    # One row per operator call; together they account for the forward time (ETDump's Method::execute).
    total = sum(r["mean_ms"] for r in rows)
    assert total == pytest.approx(p["forward_ms"]["mean"], rel=0.10)
    assert p["coverage"] == pytest.approx(total / p["forward_ms"]["mean"])
    assert [(r["name"], r["module"]) for r in rows if r["name"] == "aten::linear.out"] == [
        ("aten::linear.out", f"layers.{i}.fc") for i in range(4)] + [("aten::linear.out", "out")]


def test_profile_of_the_tiny_llama_names_xnnpack_partitions_and_the_memory_plan():
    out = _profile(llm_pte_with_etrecord(), llm_reference(), "llm", runs=6)
    p = json.loads((out / "profile.json").read_text())
    rows = p["instructions"]
    # Tiny kernels: the runtime's own step between instructions shows, but the rows never exceed the forward.
    # The share they cover drops when the process is descheduled between instructions (0.17 was seen
    # with two other test processes on the 2 cores; above 0.5 otherwise): the lower bound only says the rows
    # are the program's instructions; the 10 % claim is tested on the MLP above.
    assert 0.1 < p["coverage"] <= 1.05
    kinds = {r["kind"] for r in rows}
    assert kinds == {"operator", "delegate"}
    delegates = [r for r in rows if r["kind"] == "delegate"]
    # XNNPACK partitions named by the ops they hold (from the ETRecord), with XNNPACK's own events inside.
    assert all(r["name"].startswith("XnnpackBackend partition (") for r in delegates)
    assert sum(r["ops"].get("aten.linear.default", 0) for r in delegates) == 15
    assert any(r["inner"] for r in delegates)
    ops = {r["name"] for r in rows if r["kind"] == "operator"}
    assert any("custom_sdpa" in n for n in ops) and any("update_cache" in n for n in ops), ops
    assert any(r["module"].startswith("layers.") for r in rows)
    assert len(p["top"]) == min(20, len(rows)) and p["top"][0]["total_ms"] == max(r["total_ms"] for r in rows)
    assert p["planned_memory_bytes"] > 0 and p["memory_plan"]["forward"]["arenas"][0] == 0
    assert p["load"]["load_time_s"] > 0 and p["load"]["Method::init"] > 0
    md = (out / "profile.md").read_text()
    assert "## Top" in md and "XnnpackBackend partition" in md and "planned memory" in md
    svg = (out / "profile.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<rect") == len(p["top"])
    assert (out / "etdump.etdp").stat().st_size > 0


def test_report_shows_profiles_side_by_side():
    from modelbuild.compare import compare_reports

    a = _profile(llm_pte_with_etrecord(), llm_reference(), "llm", runs=6)
    b = _profile(stack_pte(), stack_reference(), "stack", runs=6)
    cmp = compare_reports({"llm-profile": a / "report.json", "stack-profile": b / "report.json"})
    assert [r["status"] for r in cmp.rows] == ["measured", "measured"]
    assert cmp.rows[0]["latency_ms"] == json.loads((a / "profile.json").read_text())["forward_ms"]["mean"]
    md = cmp.markdown()
    assert "| operator | llm-profile | stack-profile |" in md
    assert "XnnpackBackend partition" in md and "`aten::linear.out`" in md
    assert "stack-profile: top" in cmp.html()


# -- drift ------------------------------------------------------------------------------------


def test_drift_locator_names_the_corrupted_layer():
    from modelbuild.ml.profile.drift import locate_in_artifact
    from modelbuild.ml.profile.report import describe_drift, first_drift

    clean = locate_in_artifact(stack_pte(), stack_reference(), A._ROOT / "drift-clean")
    assert len(clean["ops"]) == 9 and first_drift(clean["ops"], 0.9999) is None
    broken = locate_in_artifact(stack_pte("portable", "layers.2.fc"), stack_reference(), A._ROOT / "drift-broken")
    row = first_drift(broken["ops"], 0.9999)
    assert (row["op"], row["module"]) == ("aten.linear", "layers.2.fc")
    assert describe_drift(row).startswith("aten.linear in layers.2.fc, cosine ")
    before = [r for r in broken["ops"] if r["index"] < row["index"]]
    assert before and all(r["cosine"] > 0.9999 for r in before)


def test_validate_names_the_first_drift_when_the_verdict_fails():
    from modelbuild.steps.validate import ValidateStep

    out = A._ROOT / "validate-broken"
    pte = stack_pte("portable", "layers.1.fc")
    run_step(ValidateStep, {}, {"artifact": as_artifact(pte, "pte", "stack-pte"),
                                "reference": as_artifact(stack_reference(), "reference", "stack-ref")}, out)
    step = ValidateStep()
    verdict = step.judge(step.Params(min_cosine=0.999), as_artifact(out, "measurements"))
    assert not verdict.ok
    assert "; first drift: aten.linear in layers.1.fc, cosine " in verdict.reason
    assert verdict.figures["first_drift"]["module"] == "layers.1.fc"


def test_drift_inside_an_xnnpack_partition_names_the_delegate_call():
    from modelbuild.ml.profile.drift import locate_in_artifact
    from modelbuild.ml.profile.report import describe_drift, first_drift

    broken = locate_in_artifact(stack_pte("xnnpack", "layers.2.fc"), stack_reference(), A._ROOT / "drift-xnn")
    row = first_drift(broken["ops"], 0.9999)
    assert row["delegate"] and row["ops"] == {"aten.linear": 5, "aten.relu": 4}
    assert describe_drift(row).startswith("delegate call (aten.linear ×5, aten.relu ×4) in layers.0.fc … out")


def _llm_rope_broken() -> Path:
    """The tiny llama .pte with its rotary cos table broken for every position but 0 (its ETRecord keeps it right)."""

    def build(out: Path) -> None:
        import shutil

        from modelbuild.ml.profile.etrecord import load_etrecord

        base = llm_pte_with_etrecord()
        shutil.copytree(base, out)
        ep = load_etrecord(base / ETRECORD_FILE).exported_program
        table = next(v for k, v in {**ep.constants, **ep.state_dict}.items() if k.endswith("freqs_cos"))
        data, raw = bytearray((out / "model.pte").read_bytes()), table.numpy().tobytes()
        at = data.find(raw)
        assert at > 0 and data.find(raw, at + 1) == -1, "the rope table is stored once, verbatim"
        broken = table.clone()
        broken[1:] *= -3.0  # row 0 (all ones) stays: position 0 cannot tell
        data[at:at + len(raw)] = broken.numpy().tobytes()
        (out / "model.pte").write_bytes(bytes(data))

    return A._once("pte-llm-rope-broken", build)


def test_drift_locator_looks_past_position_0_of_an_llm():
    """At position 0 rope is the identity: a table broken for later positions shows only at the later call."""
    from modelbuild.ml.profile.drift import locate_in_artifact
    from modelbuild.ml.profile.report import drift_note, first_drift

    drift = locate_in_artifact(_llm_rope_broken(), llm_reference(), A._ROOT / "drift-rope")
    assert (drift["input"], drift["later"]["input"]) == ("prompt 0, position 0", "prompt 0, position 7")
    assert drift["ops"] and first_drift(drift["ops"], 0.9999) is None
    note, row = drift_note(drift, 0.9999)
    assert note.startswith("first drift: ") and note.endswith("(at prompt 0, position 7, none at prompt 0, position 0)")
    # The culprit is the slice of the table at input_pos (on the CPU, before any layer); all before it agrees.
    assert row["op"] == "aten.slice_copy" and not row["delegate"], row
    assert all(r["cosine"] > 0.9999 for r in drift["later"]["ops"] if r["index"] < row["index"])


# -- bundled programs -------------------------------------------------------------------------


def _package(pte: Path, ref: Path, name: str, **params) -> Path:
    from modelbuild.steps.package import PackageStep

    out = A._ROOT / f"package-{name}"
    run_step(PackageStep, {"bundle_io": True, **params},
             {"pte": as_artifact(pte, "pte", pte.name), "reference": as_artifact(ref, "reference", ref.name)}, out)
    return out


def test_bundled_program_loads_and_verifies_on_the_runtime():
    from modelbuild.ml.profile.bundled import verify_bundled_program

    pkg = _package(stack_pte(), stack_reference(), "stack", bundle_cases=2, etrecord=True)
    meta = json.loads((pkg / "metadata.json").read_text())
    assert meta["bundled_program"]["test_cases"] == 2 and meta["bundled_program"]["reference"] == "stack-ref"
    assert {"model.pte", "model.bpte", ETRECORD_FILE} <= set(meta["files"])
    assert verify_bundled_program(pkg / "model.bpte", 2, rtol=1e-4, atol=1e-5) == 2
    # The expected outputs are the reference's: a broken program fails the check on the runtime.
    bad = _package(stack_pte("portable", "layers.2.fc"), stack_reference(), "stack-bad", bundle_cases=1)
    with pytest.raises(Exception):
        verify_bundled_program(bad / "model.bpte", 1, rtol=1e-4, atol=1e-5)


def test_llm_bundle_holds_the_decode_steps_in_order():
    from modelbuild.ml.profile.bundled import verify_bundled_program

    pkg = _package(llm_pte_with_etrecord(), llm_reference(), "llm", bundle_cases=3)
    meta = json.loads((pkg / "metadata.json").read_text())
    assert meta["bundled_program"]["cases"] == [f"prompt 0, position {p}" for p in range(3)]
    assert ETRECORD_FILE not in meta["files"] and not (pkg / ETRECORD_FILE).exists()  # only when asked
    assert verify_bundled_program(pkg / "model.bpte", 3, rtol=1e-3, atol=1e-3) == 3
