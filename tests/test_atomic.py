"""Temporary files of killed runs: stale spill folders are removed by the next writer, live ones never.

The submission writer spills early rows to ``.NAME.spill-{pid}-{random}/`` beside its output. A
``kill -9`` leaves that folder; the next writer of the same output removes it (and only folders of that
exact form whose owner is gone), and nothing of it reaches the new submission. Also: whole-file writes
go through a temp file in the target's folder and :func:`os.replace`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellcls.submission import SubmissionWriter
from test_submission import label_map, scores_for, write_sample

pytestmark = pytest.mark.skipif(os.name != "posix", reason="locks and SIGKILL are POSIX")

# The child spills img_c (not next in sample order), then holds or dies, as told.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_submission import label_map, scores_for
    from cellcls.submission import SubmissionWriter
    writer = SubmissionWriter({out!r}, {sample!r})
    writer.add("img_c", label_map(7, 9, 3), scores_for(3, 9))
    if {die!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    sys.stdin.readline()
    writer.close()
    print("closed", flush=True)
""")


def _child(out: Path, sample: Path, *, die: bool) -> subprocess.Popen:
    code = _CHILD.format(tests=str(Path(__file__).parent), out=str(out), sample=str(sample), die=die)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _spills(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.spill-*"))


def _full_run(out: Path, sample: Path) -> str:
    with SubmissionWriter(out, sample) as writer:
        writer.add("img_b", label_map(5, 5, 1), scores_for(1, 2))  # spilled
        writer.add("img_a", label_map(6, 8, 2), scores_for(2, 1))
    return out.read_text()


def test_spill_folder_of_a_killed_writer_is_removed_by_the_next_writer(tmp_path):
    sample = write_sample(tmp_path / "sample.csv")
    out = tmp_path / "run" / "submission.csv"
    child = _child(out, sample, die=True)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    left = _spills(out.parent, out.name)
    assert len(left) == 1 and any(left[0].iterdir())  # the killed writer's spill folder, with its row

    text = _full_run(out, sample)
    assert _spills(out.parent, out.name) == []
    assert text == _full_run(tmp_path / "clean" / "submission.csv", sample)  # nothing of the killed run in it
    assert "img_c,9,7,0 1 " in text  # img_c was never added by this run: the placeholder, not the stale row


def test_spill_folder_of_a_live_writer_is_kept_and_its_run_completes(tmp_path):
    from cellcls.atomic import remove_stale_dirs

    sample = write_sample(tmp_path / "sample.csv")
    out = tmp_path / "submission.csv"
    child = _child(out, sample, die=False)
    try:
        assert child.stdout.readline().strip() == "ready"
        live = _spills(tmp_path, out.name)
        assert len(live) == 1
        assert remove_stale_dirs(tmp_path, f".{out.name}.spill-") == []  # another process's live folder
        assert live[0].is_dir()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "closed"
    finally:
        child.kill()
        child.wait()
    assert _spills(tmp_path, out.name) == []
    assert "img_c,9,7,0 1 " not in out.read_text()  # its spilled row made it into its own output


def test_only_folders_of_the_exact_form_without_a_live_owner_are_removed(tmp_path):
    from cellcls.atomic import make_owned_dir, remove_stale_dirs

    prefix = ".submission.csv.spill-"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    foreign = [f"{prefix}notours", f"{prefix}{dead_pid}", f".other.csv.spill-{dead_pid}-abc",
               f"submission.csv.spill-{dead_pid}-abc", f"{prefix}{dead_pid}-abc.d/x"]
    for name in foreign:
        (tmp_path / name).mkdir(parents=True)
    no_lock_dead = tmp_path / f"{prefix}{dead_pid}-abc"       # killed before it made its lock
    no_lock_dead.mkdir()
    no_lock_live = tmp_path / f"{prefix}{os.getpid()}-new"   # a live process about to make its lock
    no_lock_live.mkdir()
    held = make_owned_dir(tmp_path, prefix)                  # this process, lock held
    released = make_owned_dir(tmp_path, prefix)              # our PID, lock free: a PID reused after a kill
    os.close(released._lock_fd)
    released._lock_fd = None

    removed = remove_stale_dirs(tmp_path, prefix)
    assert sorted(removed) == sorted([no_lock_dead, released.path])
    assert held.path.is_dir() and no_lock_live.is_dir()
    assert all((tmp_path / name).is_dir() for name in foreign)
    held.remove()
    assert not held.path.exists()


def test_atomic_write_goes_through_a_temp_file_in_the_same_folder(tmp_path, monkeypatch):
    from cellcls.atomic import atomic_write_text

    target = tmp_path / "out" / "summary.json"
    atomic_write_text(target, "old")
    moves = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((Path(src), Path(dst))), real(src, dst)))
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert len(moves) == 1 and moves[0][1] == target and moves[0][0].parent == target.parent

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "half")
    assert target.read_text() == "new"  # the interrupted write left the old file
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_stale_temp_files_go_and_everything_else_stays(tmp_path):
    from cellcls.atomic import remove_stale_temp_files

    old = time.time() - 2 * 3600
    names = {".summary.json.ab12.tmp": old, ".submission.csv.cd34.tmp": time.time(),  # stale / being written
             "notes.tmp": old, ".hidden": old, "summary.json": old}  # not our temp names
    for name, mtime in names.items():
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / ".dir.ef56.tmp").mkdir()  # a folder, never a temp file
    removed = remove_stale_temp_files(tmp_path)
    assert removed == [tmp_path / ".summary.json.ab12.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {".summary.json.ab12.tmp"} | {".dir.ef56.tmp"})
    assert remove_stale_temp_files(tmp_path / "missing") == []
