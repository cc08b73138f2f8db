"""One run at a time: a lock per run folder, held by the process that runs it (and seen by its children), and
the temporaries an interrupted run left removed when the next one takes the lock."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LOCK_ENV = "RLVR_RUN_LOCKED"  # the run folder whose lock a parent process (the runner) already holds
LOCK = ".lock"


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
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLocked(f"run folder {run_dir} is in use by {holder}: two runs of one run name would overwrite "
                        "each other's files. Wait for it to finish, or give this run another `name`.") from None
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
    handle = _held.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        handle.close()  # closing releases the flock


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
    """Remove '.*.tmp' and '.*.old' files and folders (atomic writes an interrupted run left) under a run
    folder. Only safe while holding its lock."""
    removed = 0
    for path in sorted(Path(run_dir).rglob(".*"), key=lambda p: -len(p.parts)):
        if path.name.endswith((".tmp", ".old")) and path.exists():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed += 1
    return removed
