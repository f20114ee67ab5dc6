"""Files that appear whole, and temporary folders that a killed run does not leave behind for good.

Two small tools for the writers of the stages (summaries, submissions):

* :func:`atomic_write_text` / :func:`atomic_write_bytes`: the payload goes to a temporary file in the
  SAME folder as the target (so the rename never crosses a file system), is flushed and fsynced, then
  renamed over the target with :func:`os.replace`. A reader, or a run killed at any instant, sees the
  old file or the new one, never a part.
* :func:`make_owned_dir` / :func:`remove_stale_dirs`: a scratch folder named
  ``{prefix}{pid}-{random}`` holding a ``.lock`` file that its process keeps locked (``flock``) while
  it is in use. A ``kill -9`` ends the process and so releases the lock; the next writer of the same
  output removes such stale folders, and only those: a folder whose name does not have exactly this
  form, or whose lock is held (a live writer, in this process or another), is never touched.

Staleness of a folder ``{prefix}{pid}-{random}``:

* its ``.lock`` exists and can be locked: nobody holds it (the owner ended; a PID reused by another
  process does not make it live, the lock decides);
* it has no ``.lock`` (killed between creating the folder and the lock) and no process has ``pid``.

Where ``fcntl`` is missing (Windows) there is no lock and no cheap PID check: nothing is removed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_file", "atomic_write_bytes", "TEMP_SUFFIX", "STALE_TEMP_AGE_S", "atomic_write_text",
           "remove_stale_temp_files", "OwnedDir", "make_owned_dir", "remove_stale_dirs", "LOCK_NAME"]

log = logging.getLogger(__name__)

#: The lock file inside an owned folder.
LOCK_NAME = ".lock"


# ----------------------------------------------------------------------------- whole files
#: suffix of the temp files (``.{name}.XXXX.tmp`` beside the target); cleaners look for it
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` whole when the block ends without error.

    The handle writes a temp file in the folder of ``path`` (created if needed); on leaving the block
    it is flushed, fsynced and renamed over ``path`` (:func:`os.replace`). On any error (also
    KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


#: a temp file untouched this long (seconds) is a killed writer's: a live one writes, so its mtime moves
STALE_TEMP_AGE_S = 3600.0


def remove_stale_temp_files(folder: str | os.PathLike, *, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temp files of :func:`atomic_file` in ``folder`` not modified for ``min_age_s`` seconds.

    Only names of that form (``.{name}.XXXX.tmp``, plain files) are looked at; a missing folder is no
    error. Returns the files removed (each also logged).
    """
    import time

    cutoff = time.time() - float(min_age_s)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file()):
            continue
        try:
            if entry.stat().st_mtime >= cutoff:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # another cleaner (or the writer's rename) was first
            continue
        removed.append(Path(entry.path))
        log.info("removed %s, left by an interrupted writer", entry.path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`atomic_file`); returns ``path``."""
    with atomic_file(path) as handle:
        handle.write(payload)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------- owned scratch folders
class OwnedDir:
    """A scratch folder made by :func:`make_owned_dir`; holds its lock until :meth:`remove`.

    Attributes
    ----------
    path : Path
        The folder.
    """

    def __init__(self, path: Path, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd

    def remove(self) -> None:
        """Delete the folder, then release its lock (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+")


def make_owned_dir(parent: str | os.PathLike, prefix: str) -> OwnedDir:
    """Make ``parent/{prefix}{pid}-{random}`` and lock its ``.lock`` for the life of the returned object.

    The lock is taken on a file under another name and then renamed to ``.lock``, so a cleaner never
    sees an unlocked ``.lock`` of a live folder.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    if fcntl is None:  # pragma: no cover - Windows
        return OwnedDir(path, None)
    fd = os.open(path / (LOCK_NAME + ".new"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(path / (LOCK_NAME + ".new"), path / LOCK_NAME)
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return OwnedDir(path, fd)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # pragma: no cover - no cheap check: keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _stale(folder: Path, pid: int) -> tuple[bool, int | None]:
    """(stale?, lock fd held by us while removing it, or None)."""
    lock = folder / LOCK_NAME
    if fcntl is not None and lock.exists():
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:  # removed meanwhile by its owner or another cleaner
            return False, None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live writer
            os.close(fd)
            return False, None
        return True, fd
    return not _pid_alive(pid), None


def remove_stale_dirs(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the folders ``parent/{prefix}{pid}-{random}`` that no live writer owns; return them.

    Names of any other form, and folders whose lock is held, are left alone.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    pattern = _pattern(prefix)
    removed = []
    for folder in sorted(parent.iterdir()):
        match = pattern.fullmatch(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        stale, fd = _stale(folder, int(match.group(1)))
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        if fd is not None:
            os.close(fd)
    if removed:
        log.warning("removed %d stale temporary folder(s) of an interrupted run: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed
