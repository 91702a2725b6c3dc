"""curator.io: the one atomic-write helper (files, directories, caches) and its text/JSON writers."""

from __future__ import annotations

import os

import pytest

from curator.io import atomic_path, atomic_write_bytes, atomic_write_json, read_json


def _siblings(d):
    return sorted(p.name for p in d.iterdir())


def test_atomic_path_renames_a_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same directory: the rename is atomic
        assert not tmp.exists()  # writers that refuse an existing path (sqlite, x-mode) work
        tmp.write_bytes(b"new")
        assert not target.exists()  # readers see nothing until the block ends
    assert target.read_bytes() == b"new"
    assert _siblings(target.parent) == ["table.bin"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk fault"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk fault")
    assert target.read_text() == "old"
    assert _siblings(tmp_path) == ["t.txt"]


def test_atomic_path_replaces_a_directory(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "old.arrow").write_text("old")
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "new.arrow").write_text("new")
    assert _siblings(target) == ["new.arrow"]
    assert _siblings(tmp_path) == ["ds"]  # the old copy moved aside is gone too


def test_a_directory_written_by_a_writer_replaces_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file from an earlier export")
    with atomic_path(target) as tmp:
        tmp.mkdir()  # datasets' save_to_disk makes its own directory
        (tmp / "state.json").write_text("{}")
    assert _siblings(target) == ["state.json"]


def test_keep_existing_keeps_the_copy_another_process_finished_first(tmp_path):
    cache = tmp_path / "model-1"
    with atomic_path(cache, directory=True, keep_existing=True) as tmp:
        (tmp / "config.json").write_text("ours")
        cache.mkdir()  # the other process renames its copy in while we write
        (cache / "config.json").write_text("theirs")
    assert (cache / "config.json").read_text() == "theirs"
    assert _siblings(tmp_path) == ["model-1"]


def test_atomic_writers_round_trip(tmp_path):
    atomic_write_bytes(tmp_path / "b", b"\x00\x01")
    atomic_write_json(tmp_path / "j.json", {"b": 2, "a": [1]})
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "j.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "b": 2\n}\n'
    assert read_json(tmp_path / "j.json") == {"a": [1], "b": 2}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
