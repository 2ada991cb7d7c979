"""modelbuild.ml.hub against a loopback stand-in for the Hugging Face Hub."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from modelbuild.errors import StepError
from modelbuild.ml.hub import fetch_snapshot, parse_hf_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers import HubServer  # noqa: E402

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
FILES = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
    "model.safetensors": b"\x07" * 4096,
    "tokenizer.json": b'{"version": "1.0"}',
    "README.md": b"# tiny\n",
}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub stand-in with org/tiny (public), org/gated (licence not accepted)."""
    import huggingface_hub.constants as constants

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer({"org/tiny": FILES, "org/gated": FILES}, gated={"org/gated"}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def test_snapshot_with_patterns_resolves_the_commit(hub):
    progress = []
    snap = fetch_snapshot("org/tiny", patterns=["*.json", "*.safetensors"],
                          progress=lambda d, t, m: progress.append((d, t)))
    assert snap.commit == hub.commits["org/tiny"]
    assert sorted(snap.files) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert all(snap.files[n].read_bytes() == FILES[n] for n in snap.files)
    assert progress, "the byte progress reaches the callback"
    # The token is used (so gated repos work once the licence is accepted) ...
    downloads = [r for r in hub.requests if "/resolve/" in r.path]
    assert downloads and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in downloads)
    # ... and the README was not requested.
    assert not any(r.path.endswith("README.md") for r in hub.requests)


def test_pinned_commit_and_second_fetch_from_cache(hub):
    commit = hub.commits["org/tiny"]
    first = fetch_snapshot("org/tiny", revision=commit, patterns=["config.json"])
    assert first.commit == commit
    gets = len([r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path])
    again = fetch_snapshot("org/tiny", revision=commit, patterns=["config.json"])
    assert again.files["config.json"].read_bytes() == FILES["config.json"]
    assert len([r for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]) == gets


def test_gated_repo_says_what_to_do_without_the_token(hub):
    with pytest.raises(StepError) as info:
        fetch_snapshot("org/gated")
    message = str(info.value)
    assert "gated" in message and "accept the licence" in message
    assert "hf auth login" in message and "HF_TOKEN" in message
    assert f"{hub.url}/org/gated" in message
    assert TOKEN not in message


@pytest.mark.parametrize("status, code", [(403, "GatedRepo"), (403, None), (401, None)])
def test_access_denied_variants_say_what_to_do(tmp_path, monkeypatch, status, code):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer({"org/gated": FILES}, gated={"org/gated"}, gated_status=status, gated_code=code) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(StepError) as info:
            fetch_snapshot("org/gated")
    message = str(info.value)
    assert "accept the licence" in message and "hf auth login" in message, message
    assert TOKEN not in message


def test_missing_repo(hub):
    with pytest.raises(StepError, match=r"hf://org/nothing not found \(HTTP 404\)") as info:
        fetch_snapshot("org/nothing")
    assert TOKEN not in str(info.value)


def test_missing_revision(hub):
    with pytest.raises(StepError, match="no revision 'v2'"):
        fetch_snapshot("org/tiny", revision="v2")


def test_no_file_matches_patterns(hub):
    with pytest.raises(StepError, match=r"no file .* matches files = \[\*\.gguf\]"):
        fetch_snapshot("org/tiny", patterns=["*.gguf"])


def test_offline_uses_the_cache_and_makes_no_request(hub, monkeypatch):
    fetch_snapshot("org/tiny", patterns=["*.json"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    snap = fetch_snapshot("org/tiny", patterns=["*.json"])
    assert snap.commit == hub.commits["org/tiny"]
    assert sorted(snap.files) == ["config.json", "tokenizer.json"]
    assert len(hub.requests) == before


def test_offline_without_cache_is_a_clear_error(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StepError, match="HF_HUB_OFFLINE is set"):
        fetch_snapshot("org/tiny")
    assert hub.requests == []


@pytest.mark.parametrize("bad", ["hf://", "hf://org", "hf://org/repo/extra", "hf://org/ re"])
def test_parse_hf_source_rejects_malformed_ids(bad):
    with pytest.raises(ValueError):
        parse_hf_source(bad)


def test_unreachable_endpoint_without_cache(tmp_path, monkeypatch):
    import socket

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(StepError, match="cannot download hf://org/tiny@main and the Hub cache has no complete copy") as info:
        fetch_snapshot("org/tiny")
    assert TOKEN not in str(info.value)


def test_hub_unreachable_later_builds_from_the_cache(hub, monkeypatch):
    fetch_snapshot("org/tiny", patterns=["*.json"])
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    snap = fetch_snapshot("org/tiny", patterns=["*.json"])
    assert sorted(snap.files) == ["config.json", "tokenizer.json"]


class _DroppingHub(HubServer):
    """Every file body is cut after 10 bytes."""

    def _answer(self, seen):
        reply = super()._answer(seen)
        if seen.method == "GET" and "/resolve/" in seen.path and reply.status in (200, 206):
            reply.drop_after = 10
        return reply


@pytest.mark.slow
def test_transfer_that_keeps_breaking_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with _DroppingHub({"org/tiny": FILES}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        with pytest.raises(StepError, match=r"downloading hf://org/tiny@main failed: .*rerun to resume") as info:
            fetch_snapshot("org/tiny", patterns=["config.json"], progress=lambda *a: None)
    assert TOKEN not in str(info.value)
