"""Treatments made by weight arithmetic on other checkpoints (nulls, the identical copy, norm-matched placebos,
full-parameter hybrids, planted features): written as standard Hugging Face folders under
runs/<name>/models/<treatment>, atomically, and skipped when up to date (the source checkpoints are content-checked
inputs).

Built tensor by tensor: a source tensor is read from its safetensors file when it is needed and the new tensors
are written shard by shard in SFT's own layout (the same shard files and `model.safetensors.index.json`), so a
7B or 8B checkpoint never has to be in memory whole, and bf16 stays bf16.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from rlvr_utils.core import artifacts, deps
from rlvr_utils.instruments.weights.checkpoints import read_tensor, tensor_files

Tensors = dict[str, torch.Tensor]
# make(tensor name, get) -> the new tensor, where get(source) reads that tensor from a source checkpoint. It is
# called once per tensor, in SFT's order (its shards in file order, names sorted within each): a random null
# draws its directions in that order from one generator.
TensorMaker = Callable[[str, Callable[[str], torch.Tensor]], torch.Tensor]


def tensor_order(folder: Path) -> list[tuple[Path, list[str]]]:
    """(shard file, its tensor names sorted) for every shard of a checkpoint, shards sorted by file name; a
    single-file checkpoint is one shard whose order is safetensors' own (sorted names)."""
    shards: dict[Path, list[str]] = {}
    for name, file in tensor_files(folder).items():
        shards.setdefault(file, []).append(name)
    return [(file, sorted(names)) for file, names in sorted(shards.items())]


def build_from_checkpoints(cfg, name: str, make: TensorMaker, sources: tuple[str, ...] = ("sft", "rlvr")) -> str:
    """Write models/<name>, tensor by tensor, as `make` gives each of SFT's tensors, unless up to date. The
    folder's other files (config, tokenizer, the shard index) are SFT's."""
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
    files = {s: tensor_files(cfg.model_ref(s)) for s in sources}

    def get(source: str, tensor: str) -> torch.Tensor:
        if tensor not in files[source]:
            raise ValueError(f"tensor {tensor!r} of SFT is missing in the {source} checkpoint ({cfg.model_ref(source)})")
        return read_tensor(files[source][tensor], tensor, dtype=None)  # as stored: bf16 stays bf16

    with artifacts.atomic_dir(target) as tmp:
        for f in sft_dir.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("_"):
                shutil.copy2(f, tmp / f.name)
        for shard, names in tensor_order(sft_dir):
            out = {}
            for tensor in names:
                out[tensor] = make(tensor, lambda source, tensor=tensor: get(source, tensor)).contiguous()
            save_file(out, tmp / shard.name, metadata={"format": "pt"})
            del out  # one shard of the new model in memory at a time
    artifacts.stamp(target, stamp, inputs)
    return f"{name}: built in {time.perf_counter() - started:.1f} s"


def rescaled_tensor(before: torch.Tensor, treatment: torch.Tensor, norms_of: torch.Tensor) -> torch.Tensor:
    """before + (treatment - before) rescaled to the norm of (norms_of - before): the same direction, the size
    of another update (in float64, back in `before`'s dtype)."""
    delta = treatment.double() - before.double()
    target = (norms_of.double() - before.double()).norm()
    scale = target / delta.norm() if delta.norm() > 0 else 0.0
    return (before.double() + delta * scale).to(before.dtype)


def rescaled(reference: Tensors, treatment: Tensors, norms_of: Tensors) -> Tensors:
    """reference + (treatment - reference) rescaled, tensor by tensor, to the norm of (norms_of - reference):
    the same direction, the size of another update."""
    return {name: rescaled_tensor(before, treatment[name], norms_of[name]) for name, before in reference.items()}
