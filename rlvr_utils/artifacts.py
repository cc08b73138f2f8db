"""Artifacts under runs/<name>/: atomic writes, and stamps that say which params and versions made them.

A stage calls `is_current(path, fingerprint)` to skip work that is up to date, writes its output into
a temporary sibling with `atomic_dir(path)` / `write_json(path, data)`, and records the stamp last, so
an interrupted stage never looks finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

STAMP = "_stamp.json"
_PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "scikit-learn", "rlvr-utils")


def versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _stamp_path(path: Path) -> Path:
    path = Path(path)
    return path / STAMP if path.suffix == "" else path.with_name(path.name + STAMP)


def is_current(path: str | Path, fingerprint: str) -> bool:
    """True when `path` exists and was made from params with this fingerprint."""
    stamp = _stamp_path(Path(path))
    if not (Path(path).exists() and stamp.exists()):
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    except json.JSONDecodeError:
        return False


def stamp(path: str | Path, fingerprint: str, **extra: Any) -> None:
    write_json(_stamp_path(Path(path)), {"fingerprint": fingerprint, "versions": versions(), **extra})


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    return json.loads(path.read_text())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
