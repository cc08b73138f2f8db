"""Treatments made by weight arithmetic on the SFT and RLVR checkpoints (nulls, the identical copy): written
as standard Hugging Face folders under runs/<name>/models/<treatment>, atomically, and skipped when up to date."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from rlvr_utils.core import artifacts

Tensors = dict[str, torch.Tensor]


def _tensor_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one .safetensors file to build variants from, found {len(files)} "
                         "(sharded checkpoints are not supported here)")
    return files[0]


def fingerprint(cfg, name: str) -> str:
    """A built treatment is a function of the SFT and RLVR checkpoints (content-checked as inputs) and its name,
    which carries its seed."""
    return cfg.fingerprint("seed", "model") + artifacts.checkpoint_fingerprint(cfg.model_ref("sft")) + \
        artifacts.checkpoint_fingerprint(cfg.model_ref("rlvr")) + name


def build_from_checkpoints(cfg, name: str, make: Callable[[Tensors, Callable[[], Tensors]], Tensors]) -> str:
    """Write models/<name> = make(SFT's tensors, a loader of RLVR's tensors) unless up to date."""
    target = cfg.model_dir(name)
    stamp = fingerprint(cfg, name)
    inputs = [cfg.model_ref("sft"), cfg.model_ref("rlvr")]  # content-checked by the stamp
    if artifacts.is_current(target, stamp, inputs):
        return f"{name}: up to date"
    sft_dir, rlvr_dir = Path(cfg.model_ref("sft")), Path(cfg.model_ref("rlvr"))
    started = time.perf_counter()
    with artifacts.atomic_dir(target) as tmp:
        for f in sft_dir.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("_"):
                shutil.copy2(f, tmp / f.name)
        sft_file = _tensor_file(sft_dir)
        tensors = make(load_file(sft_file), lambda: load_file(_tensor_file(rlvr_dir)))
        save_file(tensors, tmp / sft_file.name, metadata={"format": "pt"})
    artifacts.stamp(target, stamp, inputs)
    return f"{name}: built in {time.perf_counter() - started:.1f} s"
