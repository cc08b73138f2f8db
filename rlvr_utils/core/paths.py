"""Where things are: the project root, and paths in params resolved against it."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def looks_local(ref: str) -> bool:
    """A hub id is 'org/name'; anything starting with . / ~, existing on disk, or whose first part is a
    folder here (e.g. 'runs/sft', 'checkpoints/x') is a local path."""
    if ref.startswith((".", "/", "~")) or resolve(ref).exists() or ref.count("/") != 1:
        return True
    first = ref.split("/")[0]
    return first == "runs" or resolve(first).is_dir()  # runs/ may not exist yet on a fresh clone
