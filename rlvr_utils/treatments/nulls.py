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


def random_tensor(name: str, before: torch.Tensor, after: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`before` plus a Gaussian direction (drawn from `generator`) scaled to the norm of after - before."""
    if after.shape != before.shape:
        raise ValueError(f"tensor {name!r} is missing or has another shape in the RLVR checkpoint")
    delta_norm = (after.double() - before.double()).norm()
    direction = torch.randn(before.shape, generator=generator, dtype=torch.float64)
    update = direction * (delta_norm / direction.norm()) if delta_norm > 0 else torch.zeros_like(direction)
    return (before.double() + update).to(before.dtype)


def random_update(sft: dict[str, torch.Tensor], rlvr: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """SFT plus, in every tensor, a Gaussian direction scaled to the norm of RLVR's update of that tensor (the
    directions drawn in `sft`'s order from one generator)."""
    generator = torch.Generator().manual_seed(seed)
    missing = [name for name in sft if name not in rlvr]
    if missing:
        raise ValueError(f"tensor {missing[0]!r} is missing or has another shape in the RLVR checkpoint")
    return {name: random_tensor(name, before, rlvr[name], generator) for name, before in sft.items()}


def build(cfg, name: str) -> str:
    generator = torch.Generator().manual_seed(cfg.seed + SEED_OFFSET + int(name.split("_")[1]))
    return build_from_checkpoints(cfg, name, lambda tensor, get: random_tensor(tensor, get("sft"), get("rlvr"),
                                                                               generator))


register(Family("nulls", lambda cfg: [
    Treatment(f"null_{k}", "null", NO_EVIDENCE, "nulls", "SFT plus a random direction with RLVR's norm per tensor")
    for k in range(cfg.variants.nulls)], build=build, order=40))
