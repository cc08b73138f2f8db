"""Variants: named checkpoints beside base, SFT and RLVR that every measurement can be run on.

A measurement that decides the verdict compares a *treatment* with the reference model, SFT. The treatments:
  - 'rlvr': the study's RLVR model;
  - 'attn_only', 'mlp_only': positive controls, the same GRPO recipe with every MLP (resp. attention)
    weight frozen: a known Routing (resp. Representation learning) change;
  - 'identical': a copy of SFT, a negative control;
  - 'null_0', 'null_1', ...: SFT plus a random-direction update with RLVR's Frobenius norm in every
    tensor, the yardstick "a random update of the same size".
Each is a standard Hugging Face folder under runs/<name>/models/<variant>.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import artifacts

REFERENCE = "sft"
STUDY = "rlvr"


def null_names(cfg) -> list[str]:
    return [f"null_{k}" for k in range(cfg.variants.nulls)]


def control_names(cfg) -> list[str]:
    return list(cfg.variants.controls)


def treatments(cfg) -> list[str]:
    """Every model compared with SFT: RLVR, the positive controls, the identical model, the nulls."""
    return [STUDY, *control_names(cfg), *(["identical"] if cfg.variants.identical else []), *null_names(cfg)]


# --- building the nulls and the identical model -------------------------------------------------------
def _tensor_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one .safetensors file to build variants from, found {len(files)} "
                         "(sharded checkpoints are not supported here)")
    return files[0]


def random_update(sft: dict[str, torch.Tensor], rlvr: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """SFT plus, in every tensor, a Gaussian direction scaled to the Frobenius norm of RLVR's update of that
    tensor: same size and same allocation over tensors as RLVR's update, no structure."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, before in sft.items():
        if name not in rlvr or rlvr[name].shape != before.shape:
            raise ValueError(f"tensor {name!r} is missing or has another shape in the RLVR checkpoint")
        delta_norm = (rlvr[name].double() - before.double()).norm()
        direction = torch.randn(before.shape, generator=generator, dtype=torch.float64)
        update = direction * (delta_norm / direction.norm()) if delta_norm > 0 else torch.zeros_like(direction)
        out[name] = (before.double() + update).to(before.dtype)
    return out


def fingerprint(cfg, name: str) -> str:
    """Nulls and the identical model are functions of the SFT and RLVR checkpoints and of their seed."""
    from .activations import checkpoint_fingerprint
    from .train import fingerprint as stage_fingerprint

    return stage_fingerprint(cfg, "rlvr") + checkpoint_fingerprint(cfg.model_ref("sft")) + \
        checkpoint_fingerprint(cfg.model_ref("rlvr")) + name


def build(cfg, name: str) -> str:
    """Write null_k (seed cfg.seed + 1000 + k) or 'identical' under models/ unless up to date."""
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
        sft = load_file(sft_file)
        tensors = sft if name == "identical" else random_update(sft, load_file(_tensor_file(rlvr_dir)),
                                                                cfg.seed + 1000 + int(name.split("_")[1]))
        save_file(tensors, tmp / sft_file.name, metadata={"format": "pt"})
    artifacts.stamp(target, stamp, inputs)
    return f"{name}: built in {time.perf_counter() - started:.1f} s"
