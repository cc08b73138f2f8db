"""Reading checkpoints tensor by tensor through safetensors (single-file or sharded), so that at most one tensor
per checkpoint is in memory at a time, whatever the model size; and what the files' headers and config say
(stored dtype, parameter count, model type) without loading a tensor.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open

from rlvr_utils.core import hub

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^(?:step|checkpoint)-(\d+)$")


def local_folder(ref: str | Path) -> Path:
    """A checkpoint folder on disk: `ref` itself, or a hub id's snapshot in the local cache (never downloaded)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    folder = hub.snapshot(str(ref))
    if folder is None:
        raise FileNotFoundError(hub.problem("checkpoint", str(ref)) or f"no checkpoint folder at {ref}")
    return folder


def model_type(folder: str | Path) -> str:
    """The checkpoint's `model_type` (its config.json), which names the model family that labels its tensors."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json: its model_type (and so which tensors are attention and "
                         "which MLP) is unknown")
    return json.loads(path.read_text())["model_type"]


def tensor_files(folder: str | Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor of a checkpoint folder (single file or sharded)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"folder={str(folder)!r} holds no *.safetensors file: expected a Hugging Face checkpoint")
    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            out.update({name: file for name in f.keys()})
    return out


def read_tensor(file: Path, name: str, device: str = "cpu", dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """One tensor as `dtype` (None: as stored, e.g. bf16). The file is closed again at once: safetensors hands out
    memory-mapped views, and a handle kept open would keep every page read so far mapped into this process."""
    with safe_open(file, framework="pt") as f:
        tensor = f.get_tensor(name)
    return tensor.to(device=device, dtype=dtype or tensor.dtype)


def tensor_shape(file: Path, name: str) -> list[int]:
    """A tensor's shape, from the header only."""
    with safe_open(file, framework="pt") as f:
        return f.get_slice(name).get_shape()


def tensor_dtype(file: Path, name: str) -> str:
    """The safetensors dtype a tensor is stored in ('BF16', 'F16', 'F32', ...), from the header only."""
    with safe_open(file, framework="pt") as f:
        return f.get_slice(name).get_dtype()


def iter_tensors(folders: Mapping[str, str | Path], device: str = "cpu") -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """(name, {label: tensor}) for every tensor the checkpoints share, one tensor per checkpoint at a time.

    Tensors present in only some checkpoints are skipped with a warning; a shape mismatch is an error.
    """
    if len(folders) < 2:
        raise ValueError(f"folders needs at least two checkpoints to compare, got {list(folders)}")
    files = {label: tensor_files(folder) for label, folder in folders.items()}
    shared = sorted(set.intersection(*(set(f) for f in files.values())))
    missing = sorted(set.union(*(set(f) for f in files.values())) - set(shared))
    if missing:
        log.warning("skipping %d tensors not present in every checkpoint, e.g. %s", len(missing), missing[:3])
    if not shared:
        raise ValueError(f"the checkpoints {dict(folders)} share no tensor names: are they the same architecture?")
    for name in shared:
        tensors = {label: read_tensor(files[label][name], name, device) for label in folders}
        shapes = {label: tuple(t.shape) for label, t in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"tensor {name!r} has different shapes across checkpoints: {shapes}")
        yield name, tensors
        del tensors  # before reading the next name, so that two names are never held at once


def parameter_count(folder: str | Path) -> int:
    """Number of parameters stored in a checkpoint, read from the safetensors headers only."""
    return sum(math.prod(tensor_shape(file, name)) for name, file in tensor_files(folder).items())


def find_checkpoints(folder: str | Path) -> dict[int, Path]:
    """Intermediate checkpoints `step-N` (or `checkpoint-N`) under `folder`, by step; {} when none."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and any(path.glob("*.safetensors")):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))
