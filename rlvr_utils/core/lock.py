"""One run at a time: a lock per run folder, held by the process that runs it (and seen by its children), and
the temporaries an interrupted run left removed when the next one takes the lock.

The lock is an flock on runs/<name>/.lock, whose text names the holder. The holder removes the file when it lets
go (or exits), so a `.lock` on disk means a run holds it or was killed; a killed holder's flock is released by the
system, and the next run takes it without asking anyone to delete anything."""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from rlvr_utils.core.artifacts import OLD, TMP
from rlvr_utils.core.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

LOCK_ENV = "RLVR_RUN_LOCKED"  # the run folder whose lock a parent process (the runner) already holds
LOCK = ".lock"
MARKER = ".rlvr-run"  # says "this folder is a run folder that rlvr_utils made": nothing else is ever touched
_LEGACY = ("executed_notebooks.json", "models/base/_stamp.json", "metrics")  # run folders made before the marker


class NotARunFolder(RuntimeError):
    """A folder that rlvr_utils did not make: it never locks, cleans or writes in it."""


def run_folder_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be a run folder (None when it is one, or is new or empty): it is a file, it lies in
    the project's own files, or it exists with content that rlvr_utils did not make."""
    run_dir = Path(run_dir).resolve()
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        return f"run folder {run_dir}: {existing} is a file, not a folder; choose another runs_dir or name"
    own = [PROJECT_ROOT, *(PROJECT_ROOT / d for d in ("rlvr_utils", "notebooks", "tests", "params", "book",
                                                      "benchmarks", ".git", ".venv"))]
    if any(run_dir == d or d in run_dir.parents for d in own[1:]) or run_dir == own[0]:
        return f"run folder {run_dir} lies in the project's own files: runs go under runs/ or a folder of their own"
    if (run_dir / MARKER).is_file() or not run_dir.exists():
        return None
    content = sorted(p.name for p in run_dir.iterdir())
    if content and content != [LOCK] and not any((run_dir / p).exists() for p in _LEGACY):
        return (f"{run_dir} exists and was not made by rlvr_utils (no {MARKER} marker; it holds "
                f"{', '.join(content[:5])}{', ...' if len(content) > 5 else ''}): nothing in it is written, locked "
                "or cleaned. Choose another `name` or `runs_dir` (a run creates its own folder)")
    return None


def claim(run_dir: Path) -> None:
    """Make `run_dir` a run folder (the marker), or refuse it (NotARunFolder) without touching anything in it."""
    problem = run_folder_problem(run_dir)
    if problem:
        raise NotARunFolder(problem)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).is_file():
        (run_dir / MARKER).write_text("a run folder made by rlvr_utils: its own temporaries are cleaned at each start\n")


class RunLocked(RuntimeError):
    """Another process is running the same run folder."""


_held: dict[str, Any] = {}  # run folders this process holds, kept open for the process's life


def acquire_run_lock(run_dir: str | Path) -> bool:
    """Take runs/<name>/.lock for this process (kept until it exits or `release_run_lock`), then remove
    the temporaries an interrupted run left. False when this process, or the parent that started it
    (LOCK_ENV), already holds it. Raises RunLocked naming the holder when another process runs it."""
    run_dir = Path(run_dir).resolve()
    if str(run_dir) in _held or os.environ.get(LOCK_ENV) == str(run_dir):
        return False
    claim(run_dir)
    while True:
        handle = open(run_dir / LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLocked(f"run folder {run_dir} is in use by {holder}: two runs of one run name would overwrite "
                            "each other's files. Wait for it to finish, or give this run another `name`.") from None
        # A holder that let go removed the file after this process opened it: the flock is then on a file no
        # one else can see, so take the lock again on the path's current file.
        try:
            if os.stat(run_dir / LOCK).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held[str(run_dir)] = handle
    removed = clean_temporaries(run_dir)
    if removed:
        log.info("removed %d temporary files left by an interrupted run in %s", removed, run_dir)
    return True


def release_run_lock(run_dir: str | Path) -> None:
    """Let go of the run's lock and remove its file (removed while still held: no other process can have
    taken it in between), so that no `.lock` naming a finished process is left behind."""
    run_dir = Path(run_dir).resolve()
    handle = _held.pop(str(run_dir), None)
    if handle is not None:
        (run_dir / LOCK).unlink(missing_ok=True)
        handle.close()  # closing releases the flock


@atexit.register
def _release_all() -> None:
    """A process that took a lock for its whole life (a notebook kernel, `train` under accelerate) lets go of it
    when it exits normally."""
    for run_dir in list(_held):
        release_run_lock(run_dir)


# A forked child (a data-loader worker) holds nothing of its own: the lock and its file stay its parent's.
os.register_at_fork(after_in_child=_held.clear)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run's lock for the block; child processes see LOCK_ENV and do not take it again."""
    run_dir = Path(run_dir).resolve()
    taken = acquire_run_lock(run_dir)
    previous = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous
        if taken:
            release_run_lock(run_dir)


def clean_temporaries(run_dir: str | Path) -> int:
    """Remove the temporaries of atomic writes that an interrupted run left under its run folder ('.<name>.*'
    ending in artifacts.TMP or artifacts.OLD: names only this package makes), in a folder it made (the marker).
    Only safe while holding its lock."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER).is_file():
        return 0
    removed = 0
    for path in sorted(run_dir.rglob(".*"), key=lambda p: -len(p.parts)):
        if path.name.endswith((TMP, OLD)) and path.exists():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed += 1
    return removed
