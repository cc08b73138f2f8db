"""Artifacts under runs/<name>/: atomic writes, content-checked stamps (the run lock is rlvr_utils.core.lock).

A stage calls `is_current(path, fingerprint, inputs=[...])` to skip work that is up to date, writes its
output into a temporary sibling with `atomic_dir(path)` / `write_json(path, data)`, and records
`stamp(path, fingerprint, inputs=[...])` last, so an interrupted stage never looks finished.

A stamp records the params fingerprint, the package versions, a content digest (sha256) of the artifact
and of every input artifact it was computed from. "Up to date" means all of these still match: an
edited, truncated or corrupted artifact, or a changed input, is recomputed (and, through their own
inputs, everything downstream of it). Hashing stays cheap: a file's digest is cached under its
(size, mtime_ns, ctime_ns, inode), so only files written since their last hashing are read again;
ctime cannot be set back by a user, so an in-place edit that restores the mtime is still caught.
Set RLVR_DIGEST_CACHE=off to hash every file in full every time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

STAMP = "_stamp.json"
# Suffixes of the temporaries atomic writes make: a run cleans up only names it makes itself (rlvr_utils.core.lock)
TMP, OLD = ".rlvr-tmp", ".rlvr-old"
FORCE_ENV = "RLVR_FORCE"  # set (by `run --force`) for the notebooks it names: every is_current() is False
_PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "scikit-learn", "rlvr-utils")


def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- content digests ------------------------------------------------------------------------------
_cache: sqlite3.Connection | None | bool = None  # False: no cache (disabled or unusable)


def _cache_db() -> sqlite3.Connection | None:
    global _cache
    if _cache is None:
        where = os.environ.get("RLVR_DIGEST_CACHE", str(Path.home() / ".cache" / "rlvr_utils" / "digests.sqlite"))
        if where.strip().lower() in ("", "off", "0", "no", "false", "none", "disabled", "disable"):
            _cache = False
        else:
            try:
                Path(where).parent.mkdir(parents=True, exist_ok=True)
                _cache = sqlite3.connect(where, timeout=30, isolation_level=None)
                _cache.execute("CREATE TABLE IF NOT EXISTS digest (path TEXT PRIMARY KEY, size INT, mtime INT, "
                               "ctime INT, inode INT, sha TEXT)")
            except sqlite3.Error as err:  # a read-only home: hash in full, every time
                log.debug("digest cache %s unusable (%s): hashing in full", where, err)
                _cache = False
    return _cache or None


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read again only when its size, mtime, ctime or inode changed."""
    path = Path(path).resolve()
    key = _stat_key(path.stat())
    db = _cache_db()
    if db is not None:
        try:
            row = db.execute("SELECT size, mtime, ctime, inode, sha FROM digest WHERE path = ?", (str(path),)).fetchone()
        except sqlite3.Error:
            row = None
        if row is not None and tuple(row[:4]) == key:
            return row[4]
    with open(path, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    if db is not None and _stat_key(path.stat()) == key:  # not cached if the file changed while it was read
        with contextlib.suppress(sqlite3.Error):
            db.execute("INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?, ?, ?)", (str(path), *key, sha))
    return sha


def checkpoint_fingerprint(ref: str | Path) -> str:
    """Identity of a checkpoint: names, sizes and modification times of its weight and config files
    (a hub id stands for itself). Cheap at any scale; a re-saved checkpoint counts as new."""
    path = Path(ref)
    if not path.is_dir():
        return hashlib.sha256(str(ref).encode()).hexdigest()[:16]
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json", ".bin"))
    data = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _tracked(rel: Path) -> bool:
    """Files a folder's digest covers: not stamps, not hidden files (temporaries of atomic writes, '.lock')."""
    return not any(part.startswith(".") or part == "__pycache__" for part in rel.parts) and not rel.name.endswith(STAMP)


def folder_digests(path: str | Path) -> dict[str, str]:
    """{relative name: digest} of every tracked file in a folder."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and _tracked(p.relative_to(path)))
    return {f.relative_to(path).as_posix(): file_digest(f) for f in files}


def digest(path: str | Path) -> str | None:
    """Content digest of a file, or of a folder (every tracked file's relative name and digest); None
    when nothing is there (a hub id, or a missing input)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        return None
    h = hashlib.sha256()
    for name, sha in folder_digests(path).items():
        h.update(f"{name}\0{sha}\n".encode())
    return h.hexdigest()


def _what_changed(path: Path, recorded_files: dict[str, str] | None) -> Path:
    """The file of a folder artifact that differs from its stamp (the folder when unknown)."""
    if not recorded_files or not path.is_dir():
        return path
    now = folder_digests(path)
    for name in sorted(set(now) | set(recorded_files)):
        if now.get(name) != recorded_files.get(name):
            return path / name
    return path


# --- stamps -----------------------------------------------------------------------------------------
def _stamp_path(path: Path) -> Path:
    path = Path(path)
    return path / STAMP if path.suffix == "" else path.with_name(path.name + STAMP)


def _input_digests(path: Path, inputs: Iterable[str | Path]) -> dict[str, str | None]:
    """{input as named relative to the artifact's folder (a hub id as it is): its digest}."""
    base = path.parent.resolve()
    out = {}
    for ref in inputs:
        local = Path(ref).is_absolute() or Path(ref).exists()
        name = os.path.relpath(Path(ref).resolve(), base) if local else str(ref)
        out[name] = digest(ref) if local else None
    return out


def is_current(path: str | Path, fingerprint: str, inputs: Iterable[str | Path] = ()) -> bool:
    """True when `path` was made from params with this fingerprint, its content (and that of the outputs
    stamped with it) is what was stamped, and every input's content is what it was computed from. A
    changed artifact or input is logged by name, and the caller recomputes it."""
    path = Path(path)
    stamp_file = _stamp_path(path)
    if os.environ.get(FORCE_ENV):
        return False
    if not (path.exists() and stamp_file.exists()):
        return False
    try:
        record = json.loads(stamp_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s is unreadable (%s): recomputing %s", stamp_file, err, path)
        return False
    if record.get("fingerprint") != fingerprint:
        return False
    if "digest" not in record:
        log.info("%s was stamped before content checks: recomputing it", path)
        return False
    made = {path: record["digest"],
            **{(path.parent / name).resolve(): d for name, d in record.get("outputs", {}).items()}}
    for target, want in made.items():
        if digest(target) != want:
            changed = _what_changed(target, record.get("files") if target == path else None)
            log.warning("%s changed since it was made (edited, truncated, corrupted or deleted): recomputing %s",
                        changed, target)
            return False
    recorded, now = record.get("inputs", {}), _input_digests(path, inputs)
    if set(now) != set(recorded):
        return False
    changed = [name for name in recorded if now[name] != recorded[name]]
    if changed:
        log.warning("%s: its input %s changed since it was computed: recomputing it",
                    path, (path.parent / changed[0]).resolve())
        return False
    return True


def stamp(path: str | Path, fingerprint: str, inputs: Iterable[str | Path] = (),
          outputs: Iterable[str | Path] = (), **extra: Any) -> None:
    """Record that `path` (and the `outputs` written with it) is finished, made from this fingerprint
    and these inputs, with content digests of all of them."""
    path = Path(path)
    base = path.parent.resolve()
    files = folder_digests(path) if path.is_dir() else None  # to name the file that changed, later
    record = {"fingerprint": fingerprint, "versions": versions(), "digest": digest(path), "files": files,
              "inputs": _input_digests(path, inputs),
              "outputs": {os.path.relpath(Path(o).resolve(), base): digest(o) for o in outputs}, **extra}
    write_json(_stamp_path(path), record)


def invalidate(path: str | Path) -> None:
    """Forget that `path` is finished: the next is_current() is False."""
    _stamp_path(Path(path)).unlink(missing_ok=True)


# --- atomic writes ------------------------------------------------------------------------------------
def write_json(path: str | Path, data: Any) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the notebook that makes it first.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is truncated or corrupted. Delete it (or run with "
                         "--force) and the run recomputes it.") from None


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}{OLD}")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers: the metrics files are strict JSON."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
