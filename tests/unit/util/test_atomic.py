"""Atomic files and directories: a failed write leaves the old version and no leftovers."""

from __future__ import annotations

import pytest

from todi.util import atomic


def test_atomic_dir_publishes_only_complete_directories(tmp_path):
    target = tmp_path / "epoch1"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
        assert not target.exists()
    assert (target / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "v1"  # the old one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1"]  # no leftovers

    with atomic.atomic_dir(target) as tmp:  # replacing works too
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1"]


def test_leftovers_of_a_killed_save_are_removed(tmp_path):
    (tmp_path / ".tmp-epoch3.1234").mkdir()
    (tmp_path / ".tmp-latest.json.ab").write_text("{")
    (tmp_path / "epoch2").mkdir()
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["epoch2"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.atomic_write_text(target, "old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_write_in_progress_is_a_stale_temporary_and_a_failed_one_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "plot.png"  # missing folders are made
    seen = []

    def write_then_fail(f):
        f.write(b"half")
        seen.extend(p.name for p in target.parent.iterdir())
        raise RuntimeError("savefig failed")

    with pytest.raises(RuntimeError):
        atomic.atomic_write_with(target, write_then_fail)
    assert len(seen) == 1 and seen[0].startswith(atomic.TMP_PREFIX + "plot.png.")  # what a crash would leave
    assert list(target.parent.iterdir()) == []
    atomic.atomic_write_with(target, lambda f: f.write(b"png"))
    assert target.read_bytes() == b"png" and atomic.remove_stale_temporaries(target.parent) == []
