"""Treatments made by weight arithmetic on other checkpoints (nulls, the identical copy, norm-matched placebos,
full-parameter hybrids): written as standard Hugging Face folders under runs/<name>/models/<treatment>,
atomically, and skipped when up to date (the source checkpoints are content-checked inputs)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from rlvr_utils.core import artifacts, deps

Tensors = dict[str, torch.Tensor]


def _tensor_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one .safetensors file to build variants from, found {len(files)} "
                         "(sharded checkpoints are not supported here)")
    return files[0]


def build_from_checkpoints(cfg, name: str, make: Callable[[Callable[[str], Tensors]], Tensors],
                           sources: tuple[str, ...] = ("sft", "rlvr")) -> str:
    """Write models/<name> = make(load), where load(source) gives a source checkpoint's tensors, unless up to
    date. The folder's other files (config, tokenizer) are SFT's."""
    target = cfg.model_dir(name)
    # params and code of this module and of the family that defines `make`; the name carries the seed; the
    # sources are content-checked inputs
    stamp = deps.fingerprint(cfg, __name__, make.__module__) + name
    inputs = [cfg.model_ref(s) for s in sources]  # content-checked by the stamp
    if artifacts.is_current(target, stamp, inputs):
        return f"{name}: up to date"
    missing = [s for s in sources if not Path(cfg.model_ref(s)).is_dir()]
    if missing:
        raise FileNotFoundError(f"{name} is built from {', '.join(missing)}, which has no checkpoint yet")
    started = time.perf_counter()
    sft_dir = Path(cfg.model_ref("sft"))
    with artifacts.atomic_dir(target) as tmp:
        for f in sft_dir.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("_"):
                shutil.copy2(f, tmp / f.name)
        tensors = make(lambda source: load_file(_tensor_file(Path(cfg.model_ref(source)))))
        save_file(tensors, tmp / _tensor_file(sft_dir).name, metadata={"format": "pt"})
    artifacts.stamp(target, stamp, inputs)
    return f"{name}: built in {time.perf_counter() - started:.1f} s"


def rescaled(reference: Tensors, treatment: Tensors, norms_of: Tensors) -> Tensors:
    """reference + (treatment - reference) rescaled, tensor by tensor, to the norm of (norms_of - reference):
    the same direction, the size of another update."""
    out = {}
    for name, before in reference.items():
        delta = treatment[name].double() - before.double()
        target = (norms_of[name].double() - before.double()).norm()
        scale = target / delta.norm() if delta.norm() > 0 else 0.0
        out[name] = (before.double() + delta * scale).to(before.dtype)
    return out
