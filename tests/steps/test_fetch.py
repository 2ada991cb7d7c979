"""The fetch step: every source kind, its checkpoint.json, and its parameter checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from modelbuild.errors import RecipeError, StepError
from modelbuild.step import StepContext
from modelbuild.ml.filetree import detect_format
from modelbuild.steps.fetch import FetchStep, source_kind
from modelbuild.testing import run_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import FileServer, HubServer  # noqa: E402

BODY = b"GGUF" + bytes(range(256)) * 16
DIGEST = hashlib.sha256(BODY).hexdigest()
TOKEN = "hf_StepTestTokenNeverInArtifacts987654"
HF_FILES = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
    "model.safetensors": b"\x01" * 2048,
    "tokenizer.json": b'{"version": "1.0"}',
    "README.md": b"# card\n",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def run_fetch(params, tmp_path, *, out="out", downloads="downloads", project=None):
    """Run the step like the engine does: check() first, then run() with a persistent downloads dir."""
    step = FetchStep()
    parsed = step.Params.model_validate(params)
    step.check(parsed, {})
    project = project or tmp_path
    out_dir = tmp_path / out
    out_dir.mkdir()
    work = tmp_path / f"work-{out}"
    work.mkdir()
    ctx = StepContext(
        target="ckpt",
        params=parsed,
        inputs={},
        sources={s: (project / s).resolve() for s in step.sources(parsed)},
        out=out_dir,
        work=work,
        jobs=2,
        project=project,
        downloads=tmp_path / downloads,
    )
    step.run(ctx)
    return out_dir, ctx


def record(out: Path) -> dict:
    return json.loads((out / "checkpoint.json").read_text())


# -- http(s) ------------------------------------------------------------------


def test_http_source_is_verified_and_recorded(tmp_path):
    with FileServer({"/models/tiny-q8.gguf": BODY}) as srv:
        url = srv.url + "/models/tiny-q8.gguf"
        out, _ = run_fetch({"source": url, "sha256": DIGEST}, tmp_path)
    assert (out / "tiny-q8.gguf").read_bytes() == BODY
    rec = record(out)
    assert rec["format"] == "gguf"
    assert rec["synthetic"] is False
    assert rec["source"] == url
    assert rec["sha256"] == DIGEST
    assert rec["files"] == {"tiny-q8.gguf": {"sha256": DIGEST, "size": len(BODY)}}
    assert sorted(os.listdir(out)) == ["checkpoint.json", "tiny-q8.gguf"]


def test_http_resume_through_the_step(tmp_path):
    with FileServer({"/m.gguf": BODY}, drop_first={"/m.gguf": 1000}) as srv:
        out, _ = run_fetch({"source": srv.url + "/m.gguf", "sha256": DIGEST}, tmp_path)
        ranges = [r.headers.get("range") for r in srv.requests if r.method == "GET"]
    assert (out / "m.gguf").read_bytes() == BODY
    assert ranges == [None, "bytes=1000-"]


def test_http_checksum_mismatch_leaves_nothing(tmp_path):
    wrong = "0" * 64
    with FileServer({"/m.gguf": BODY}) as srv:
        with pytest.raises(StepError, match=f"expected {wrong}, got {DIGEST}"):
            run_fetch({"source": srv.url + "/m.gguf", "sha256": wrong}, tmp_path)
    assert os.listdir(tmp_path / "out") == []
    left = [p for p in (tmp_path / "downloads").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []
    assert all(p.stat().st_size == 0 for p in (tmp_path / "downloads").rglob("*.lock"))


def test_http_404(tmp_path):
    with FileServer({}) as srv:
        url = srv.url + "/gone.gguf"
        with pytest.raises(StepError, match="HTTP 404") as info:
            run_fetch({"source": url, "sha256": DIGEST}, tmp_path)
    assert url in str(info.value)
    assert os.listdir(tmp_path / "out") == []


def test_http_output_is_deterministic(tmp_path):
    with FileServer({"/m.gguf": BODY}) as srv:
        a, _ = run_fetch({"source": srv.url + "/m.gguf", "sha256": DIGEST}, tmp_path, out="a", downloads="d1")
        b, _ = run_fetch({"source": srv.url + "/m.gguf", "sha256": DIGEST}, tmp_path, out="b", downloads="d2")
    assert (a / "checkpoint.json").read_bytes() == (b / "checkpoint.json").read_bytes()


# -- hf:// ----------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    with HubServer({"org/tiny-llama": HF_FILES, "org/gated": HF_FILES}, gated={"org/gated"}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def test_hf_source_records_revision_and_commit_and_never_the_token(tmp_path, hub, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out, ctx = run_fetch(
        {"source": "hf://org/tiny-llama", "files": ["*.json", "*.safetensors"]}, tmp_path
    )
    assert sorted(os.listdir(out)) == ["checkpoint.json", "config.json", "model.safetensors", "tokenizer.json"]
    rec = record(out)
    assert rec["format"] == "hf"
    assert rec["family"] == "llama3_2"  # inferred from config.json (model_type llama, no known vocabulary)
    assert rec["source"] == "hf://org/tiny-llama"
    assert rec["revision"] == "main"
    assert rec["resolved_commit"] == hub.commits["org/tiny-llama"]
    assert rec["files"]["model.safetensors"]["sha256"] == hashlib.sha256(HF_FILES["model.safetensors"]).hexdigest()
    # The token went to the server ...
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    # ... and nowhere else: not in the artifact, not in the step's output.
    for path in out.rglob("*"):
        assert TOKEN.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err
    assert hub.commits["org/tiny-llama"] in captured.out  # the log says what main resolved to
    assert TOKEN not in ctx.summary


def test_hf_subdir_fetches_the_meta_files_of_a_repo(tmp_path, hub, monkeypatch):
    hub.repos["org/llama"] = {
        "config.json": HF_FILES["config.json"],
        "model.safetensors": HF_FILES["model.safetensors"],
        "original/params.json": b'{"dim": 8}',
        "original/consolidated.00.pth": b"weights",
        "original/tokenizer.model": b"tok",
    }
    hub.commits["org/llama"] = "1" * 40
    out, _ = run_fetch({"source": "hf://org/llama", "subdir": "original"}, tmp_path)
    rec = record(out)
    assert rec["format"] == "meta"
    assert rec_files(out) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    assert not any(r.path.endswith("model.safetensors") for r in hub.requests)


def test_shipped_llama_1b_fetch_takes_the_meta_files_of_the_hub_repo(tmp_path, hub):
    """The fetch params of recipes/llama-1b-ios.toml, as shipped, against a repo laid out as the real one."""
    import tomllib

    recipe = tomllib.loads((Path(__file__).resolve().parents[2] / "recipes" / "llama-1b-ios.toml").read_text())
    params = {k: v for k, v in recipe["targets"]["llama-1b-ckpt"].items() if k not in ("step", "description")}
    repo = params["source"].removeprefix("hf://")
    hub.repos[repo] = {
        "config.json": HF_FILES["config.json"],
        "model.safetensors": HF_FILES["model.safetensors"],
        "original/params.json": b'{"dim": 8}',
        "original/consolidated.00.pth": b"weights",
        "original/tokenizer.model": b"tok",
        "original/README.md": b"not wanted",
    }
    hub.commits[repo] = "2" * 40
    out, _ = run_fetch(params, tmp_path)
    assert record(out)["format"] == "meta"
    assert rec_files(out) == ["consolidated.00.pth", "params.json", "tokenizer.model"]


def test_hf_gated_repo(tmp_path, hub, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(StepError, match="accept the licence") as info:
        run_fetch({"source": "hf://org/gated"}, tmp_path)
    assert TOKEN not in str(info.value)
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert os.listdir(tmp_path / "out") == []


def test_hf_missing_repo(tmp_path, hub):
    with pytest.raises(StepError, match="hf://org/missing not found"):
        run_fetch({"source": "hf://org/missing"}, tmp_path)


def test_hf_missing_revision(tmp_path, hub):
    with pytest.raises(StepError, match="no revision 'nope'"):
        run_fetch({"source": "hf://org/tiny-llama", "revision": "nope"}, tmp_path)


# -- local paths ------------------------------------------------------------------


def _meta_layout(root: Path) -> Path:
    ckpt = root / "ckpts" / "llama-meta"
    (ckpt / "original").mkdir(parents=True)
    (ckpt / "params.json").write_text('{"dim": 8}')
    (ckpt / "consolidated.00.pth").write_bytes(b"\x80\x02weights")
    (ckpt / "original" / "tokenizer.model").write_bytes(b"tok")
    # What `hf download --local-dir` and git leave behind: never part of a checkpoint.
    (ckpt / ".cache" / "huggingface").mkdir(parents=True)
    (ckpt / ".cache" / "huggingface" / "params.json.metadata").write_text("abc")
    (ckpt / ".git").mkdir()
    (ckpt / ".git" / "HEAD").write_text("ref: refs/heads/main")
    return ckpt


def test_local_directory_is_copied_and_declared_as_source(tmp_path):
    project = tmp_path / "project"
    ckpt = _meta_layout(project)
    params = {"source": "ckpts/llama-meta"}
    assert FetchStep().sources(FetchStep.Params(**params)) == ["ckpts/llama-meta"]
    out, _ = run_fetch(params, tmp_path, project=project)
    rec = record(out)
    assert rec["format"] == "meta"
    assert sorted(rec["files"]) == ["consolidated.00.pth", "original/tokenizer.model", "params.json"]
    assert (out / "original" / "tokenizer.model").read_bytes() == b"tok"
    # A copy: editing the project's file in place must not reach the stored artifact.
    assert (out / "params.json").stat().st_ino != (ckpt / "params.json").stat().st_ino


def test_declared_family_is_recorded_and_checked(tmp_path):
    project = tmp_path / "project"
    _meta_layout(project)
    out, _ = run_fetch({"source": "ckpts/llama-meta", "family": "llama3_2"}, tmp_path, project=project)
    assert record(out)["family"] == "llama3_2"
    step = FetchStep()
    with pytest.raises(RecipeError) as info:
        step.check(step.Params(source="ckpts/llama-meta", family="smollm"), {})
    assert info.value.key == "family" and info.value.suggestion == "smollm2"


def test_hub_recipe_switched_to_a_local_directory(tmp_path):
    """What `--set targets.x.source=ckpts/...` does to an hf:// target: revision ignored, files filter."""
    project = tmp_path / "project"
    _meta_layout(project)
    (project / "ckpts" / "llama-meta" / "notes.txt").write_text("not weights")
    out, _ = run_fetch(
        {"source": "ckpts/llama-meta", "revision": "0" * 40, "files": ["*.json", "*.pth", "original/"]},
        tmp_path, project=project,
    )
    assert rec_files(out) == ["consolidated.00.pth", "original/tokenizer.model", "params.json"]
    with pytest.raises(StepError, match="no file under 'ckpts/llama-meta' matches"):
        run_fetch({"source": "ckpts/llama-meta", "files": ["*.gguf"]}, tmp_path, project=project, out="o2")


def test_subdir_takes_the_checkpoint_from_a_directory_of_a_local_clone(tmp_path):
    project = tmp_path / "project"
    clone = project / "ckpts" / "Llama-3.2-1B-Instruct"
    (clone / "original").mkdir(parents=True)
    (clone / "config.json").write_text('{"model_type": "llama"}')
    (clone / "original" / "params.json").write_text('{"dim": 8}')
    (clone / "original" / "consolidated.00.pth").write_bytes(b"w")
    (clone / "original" / "tokenizer.model").write_bytes(b"t")
    with pytest.raises(StepError, match='a meta checkpoint is in original/: set subdir = "original"'):
        run_fetch({"source": "ckpts/Llama-3.2-1B-Instruct"}, tmp_path, project=project)
    params = {"source": "ckpts/Llama-3.2-1B-Instruct", "subdir": "original"}
    # Only the subdirectory's content enters the key.
    assert FetchStep().sources(FetchStep.Params(**params)) == ["ckpts/Llama-3.2-1B-Instruct/original"]
    out, _ = run_fetch(params, tmp_path, project=project, out="o2")
    rec = record(out)
    assert rec["format"] == "meta" and rec["subdir"] == "original"
    assert rec_files(out) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    with pytest.raises(StepError, match="'ckpts/Llama-3.2-1B-Instruct/meta' does not exist"):
        run_fetch({**params, "subdir": "meta"}, tmp_path, project=project, out="o3")


def test_local_file(tmp_path):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "tiny.gguf").write_bytes(BODY)
    out, _ = run_fetch({"source": "models/tiny.gguf"}, tmp_path, project=project)
    assert rec_files(out) == ["tiny.gguf"]
    assert record(out)["source"] == "models/tiny.gguf"


def rec_files(out: Path) -> list[str]:
    return sorted(record(out)["files"])


def test_local_missing_path_names_it(tmp_path):
    with pytest.raises(StepError, match="'ckpts/nothing-here' does not exist"):
        run_fetch({"source": "ckpts/nothing-here"}, tmp_path)


def test_unknown_layout_needs_an_explicit_format(tmp_path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "weights.bin").write_bytes(b"x")
    with pytest.raises(StepError, match="cannot tell the checkpoint format"):
        run_fetch({"source": "weird"}, tmp_path)


def test_explicit_format_must_match_the_files(tmp_path):
    project = tmp_path / "project"
    _meta_layout(project)
    with pytest.raises(StepError, match='format = "hf" but .* has no config.json'):
        run_fetch({"source": "ckpts/llama-meta", "format": "hf"}, tmp_path, project=project)


def test_run_step_helper_works_for_local_sources(tmp_path):
    project = tmp_path / "project"
    _meta_layout(project)
    art = run_step(FetchStep, {"source": "ckpts/llama-meta"}, {}, tmp_path / "out", project=project)
    assert art.kind == "checkpoint"
    assert record(art.path)["format"] == "meta"


# -- synthetic ----------------------------------------------------------------------


def _synthetic_module():
    from modelbuild.ml.llm import synthetic  # light at import time; torch only inside its functions

    return synthetic


@pytest.mark.ml
def test_synthetic_checkpoint_says_it_is_synthetic(tmp_path):
    synthetic = _synthetic_module()
    arch = "llama3_2" if "llama3_2" in getattr(synthetic, "SIZES", {"llama3_2": 0}) else next(iter(synthetic.SIZES))
    sizes = getattr(synthetic, "SIZES", {}).get(arch, {"tiny": None})
    size = "tiny" if "tiny" in sizes else next(iter(sizes))
    out, _ = run_fetch({"source": "synthetic", "architecture": arch, "size": size, "seed": 3}, tmp_path, out="a")
    rec = record(out)
    assert rec["synthetic"] is True and rec["format"] == "hf" and rec["source"] == "synthetic"
    assert rec["seed"] == 3 and rec["architecture"] == arch and rec["size"] == size
    assert {"config.json", "model.safetensors"} <= set(rec["files"])
    again, _ = run_fetch({"source": "synthetic", "architecture": arch, "size": size, "seed": 3}, tmp_path, out="b")
    assert (out / "checkpoint.json").read_bytes() == (again / "checkpoint.json").read_bytes()


def test_synthetic_check_rejects_unknown_architecture_and_size():
    synthetic = _synthetic_module()
    assert isinstance(synthetic.SIZES, dict) and synthetic.SIZES
    step = FetchStep()
    arch = next(iter(synthetic.SIZES))
    with pytest.raises(RecipeError) as info:
        step.check(step.Params(source="synthetic", architecture="no-such-arch", size="tiny"), {})
    assert info.value.key == "architecture"
    with pytest.raises(RecipeError) as info:
        step.check(step.Params(source="synthetic", architecture=arch, size="no-such-size"), {})
    assert info.value.key == "size"


def test_planning_a_fetch_never_imports_heavy_packages():
    """Loading the step and checking every kind of source stays free of torch/huggingface_hub."""
    code = (
        "import sys\n"
        "from modelbuild.steps.fetch import FetchStep\n"
        "s = FetchStep()\n"
        "for p in [dict(source='hf://a/b'), dict(source='https://x/y.gguf', sha256='0'*64),\n"
        "          dict(source='ckpt'), dict(source='synthetic', architecture='llama3_2', size='tiny')]:\n"
        "    try:\n"
        "        s.check(s.Params(**p), {})\n"
        "    except Exception as e:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'huggingface_hub', 'numpy', 'transformers'))\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


# -- parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, key",
    [
        ({"source": "https://example.org/m.gguf"}, "sha256"),
        ({"source": "https://example.org/m.gguf", "sha256": "abc"}, "sha256"),
        ({"source": "hf://org/repo", "sha256": "0" * 64}, "sha256"),
        ({"source": "synthetic", "architecture": "llama3_2", "size": "tiny", "revision": "v1"}, "revision"),
        ({"source": "https://example.org/m.gguf", "sha256": "0" * 64, "revision": "v1"}, "revision"),
        ({"source": "https://example.org/m.gguf", "sha256": "0" * 64, "files": ["*.gguf"]}, "files"),
        ({"source": "s3://bucket/key"}, "source"),
        ({"source": "hf://just-a-name"}, "source"),
        ({"source": ""}, "source"),
        ({"source": "synthetic", "size": "tiny"}, "architecture"),
        ({"source": "synthetic", "architecture": "llama3_2"}, "size"),
        ({"source": "synthetic", "architecture": "llama3_2", "size": "tiny", "format": "gguf"}, "format"),
        ({"source": "hf://org/repo", "architecture": "llama3_2"}, "architecture"),
        ({"source": "ckpt", "seed": 4}, "seed"),
        ({"source": "https://example.org/m.gguf", "sha256": "0" * 64, "subdir": "x"}, "subdir"),
        ({"source": "hf://org/repo", "subdir": "../up"}, "subdir"),
        ({"source": "ckpt", "subdir": "/abs"}, "subdir"),
        ({"source": "synthetic", "architecture": "llama3_2", "size": "tiny", "family": "smollm2"}, "family"),
    ],
)
def test_check_rejects_bad_combinations(params, key):
    step = FetchStep()
    with pytest.raises(RecipeError) as info:
        step.check(step.Params(**params), {})
    assert info.value.key == key


@pytest.mark.parametrize(
    "params",
    [
        {"source": "hf://org/repo", "grup_size": 3},
        {"source": "hf://org/repo", "format": "onnx"},
        {"source": "hf://org/repo", "seed": "many"},
        {},
    ],
)
def test_params_model_rejects_unknown_and_mistyped_keys(params):
    with pytest.raises(ValidationError):
        FetchStep.Params(**params)


def test_valid_params_pass_check():
    step = FetchStep()
    for params in (
        {"source": "hf://org/repo", "revision": "0123456789abcdef0123456789abcdef01234567", "files": ["*.json"]},
        {"source": "https://example.org/m.gguf", "sha256": "A" * 64},
        {"source": "ckpts/local", "format": "meta"},
    ):
        step.check(step.Params(**params), {})


def test_run_repeats_the_checks_as_step_errors(tmp_path):
    ctx_params = FetchStep.Params(source="https://example.org/m.gguf")
    ctx = StepContext(target="t", params=ctx_params, inputs={}, sources={}, out=tmp_path, work=tmp_path,
                      jobs=1, project=tmp_path)
    with pytest.raises(StepError, match="sha256"):
        FetchStep().run(ctx)


def test_source_kind_and_detect_format():
    assert source_kind("http://127.0.0.1/x") == "http"
    assert source_kind("./synthetic") == "local"
    assert detect_format(["config.json", "model-00001-of-00002.safetensors"]) == "hf"
    # Only the top level counts: that is where the checkpoint loader looks.
    assert detect_format(["sub/config.json", "sub/model.safetensors"]) is None
    assert detect_format(["config.json", "pytorch_model.bin"]) is None
    assert detect_format(["params.json", "consolidated.00.pth"]) == "meta"


def test_every_parameter_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "fetch.md").read_text()
    missing = [name for name in FetchStep.Params.model_fields if f"| `{name}` |" not in doc]
    assert missing == []


def test_fingerprint_covers_the_code_that_writes_the_artifact():
    from modelbuild.plugins import source_files

    names = {p.name for p in source_files(FetchStep)}
    assert {"fetch.py", "download.py", "hub.py", "synthetic.py"} <= names


def test_registered_under_its_name():
    from modelbuild.plugins import Registry

    registry = Registry.discover()
    assert "fetch" in registry, "modelbuild is not installed (pip install -e .): no entry points"
    assert registry.get("fetch").cls is FetchStep
    assert FetchStep.output == "checkpoint"


# -- through the engine -------------------------------------------------------------


def _engine_build():
    from modelbuild.api import build

    return build


@pytest.mark.slow
def test_engine_build_keeps_the_token_out_of_every_file(tmp_path, hub, monkeypatch):
    """Logs, records, keys, reports and the artifact: the token is in none of them."""
    build = _engine_build()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "recipes" / "ckpt.toml").write_text(
        '[targets.hub-ckpt]\nstep = "fetch"\nsource = "hf://org/tiny-llama"\nfiles = ["*.json", "*.safetensors"]\n'
        '[targets.gated-ckpt]\nstep = "fetch"\nsource = "hf://org/gated"\n'
    )
    cache = tmp_path / "cache"
    result = build(["hub-ckpt"], project=project, cache_dir=cache, jobs=1)
    assert result.ok, result.targets["hub-ckpt"].reason
    rec = record(result.targets["hub-ckpt"].out)
    assert rec["resolved_commit"] == hub.commits["org/tiny-llama"]
    failed = build(["gated-ckpt"], project=project, cache_dir=cache, jobs=1)
    assert not failed.ok and failed.targets["gated-ckpt"].status == "failed"
    assert "accept the licence" in failed.targets["gated-ckpt"].reason
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    scanned = 0
    for root in (project, cache):
        for path in root.rglob("*"):
            if path.is_file():
                scanned += 1
                assert TOKEN.encode() not in path.read_bytes(), path
    assert scanned > 5
    assert build(["hub-ckpt"], project=project, cache_dir=cache, jobs=1).targets["hub-ckpt"].status == "cached"


@pytest.mark.slow
def test_engine_http_fetch_resumes_and_caches(tmp_path):
    build = _engine_build()
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    with FileServer({"/m.gguf": BODY}, drop_first={"/m.gguf": 500}) as srv:
        (project / "recipes" / "ckpt.toml").write_text(
            f'[targets.gguf-ckpt]\nstep = "fetch"\nsource = "{srv.url}/m.gguf"\nsha256 = "{DIGEST}"\n'
        )
        first = build(["gguf-ckpt"], project=project, cache_dir=tmp_path / "cache", jobs=1)
        assert first.ok, first.targets["gguf-ckpt"].reason
        assert (first.targets["gguf-ckpt"].out / "m.gguf").read_bytes() == BODY
        assert [r.headers.get("range") for r in srv.requests] == [None, "bytes=500-"]
        again = build(["gguf-ckpt"], project=project, cache_dir=tmp_path / "cache", jobs=1)
        assert again.targets["gguf-ckpt"].status == "cached"
        assert len(srv.requests) == 2
