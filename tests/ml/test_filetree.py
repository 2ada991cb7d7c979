"""modelbuild.ml.filetree: the fetch step's file-tree helpers."""

from __future__ import annotations

import doctest

import modelbuild.ml.download
import modelbuild.ml.filetree as filetree
import modelbuild.ml.hub
import modelbuild.steps.fetch


def test_doctests_of_the_fetch_modules():
    for module in (filetree, modelbuild.ml.download, modelbuild.ml.hub, modelbuild.steps.fetch):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0, module.__name__


def test_matches_follows_the_hub_rules():
    assert filetree.matches("original/params.json", ["*.json"])  # "*" crosses "/"
    assert filetree.matches("original/x/y.bin", ["original/"])
    assert not filetree.matches("model.safetensors", ["*.json", "original/"])


def test_list_files_skips_hidden_directories_on_request(tmp_path):
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "x.metadata").write_text("m")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "w.bin").write_text("w")
    (tmp_path / ".gitattributes").write_text("*.bin lfs")
    (tmp_path / "checkpoint.json").write_text("{}")
    assert filetree.list_files(tmp_path, hidden_dirs=False, skip=("checkpoint.json",)) == [".gitattributes", "b/w.bin"]
    assert ".cache/huggingface/x.metadata" in filetree.list_files(tmp_path)


def test_place_links_or_copies(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    filetree.place(src, tmp_path / "linked" / "a.bin")
    filetree.place(src, tmp_path / "copied" / "a.bin", link=False)
    assert (tmp_path / "linked" / "a.bin").stat().st_ino == src.stat().st_ino
    assert (tmp_path / "copied" / "a.bin").stat().st_ino != src.stat().st_ino
    assert (tmp_path / "copied" / "a.bin").read_bytes() == b"abc"


def test_human_size():
    assert filetree.human_size(512) == "512 B"
    assert filetree.human_size(1536) == "1.5 KB"
    assert filetree.human_size(3 * 1024**3) == "3.0 GB"
