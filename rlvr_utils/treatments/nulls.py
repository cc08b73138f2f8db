"""Random-direction nulls: SFT plus, in every tensor, a Gaussian direction scaled to the Frobenius norm of
RLVR's update of that tensor: the same size and the same allocation over tensors as RLVR's update, and no
structure. The yardstick "a random update of the same size"; each must read "no evidence".
`variants.nulls` of them, null_k with seed `seed + 1000 + k`.
"""
from __future__ import annotations

import torch

from rlvr_utils.treatments.registry import NO_EVIDENCE, Family, Treatment, register
from rlvr_utils.treatments.weights import build_from_checkpoints

PARAMS = ("variants",)
SEED_OFFSET = 1000


def random_update(sft: dict[str, torch.Tensor], rlvr: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """SFT plus, in every tensor, a Gaussian direction scaled to the norm of RLVR's update of that tensor."""
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


def build(cfg, name: str) -> str:
    seed = cfg.seed + SEED_OFFSET + int(name.split("_")[1])
    return build_from_checkpoints(cfg, name, lambda load: random_update(load("sft"), load("rlvr"), seed))


register(Family("nulls", lambda cfg: [
    Treatment(f"null_{k}", "null", NO_EVIDENCE, "nulls", "SFT plus a random direction with RLVR's norm per tensor")
    for k in range(cfg.variants.nulls)], build=build, order=40))
