"""The measures of one tensor's update `after - before`: size, sparsity, spectrum (stable and effective rank,
top-k energy, structured energy) and what it did to the weight's own top singular subspaces and values.

Pure functions of tensors (no files, no params). Round-off matters: checkpoints stored in bfloat16 keep 8
significant bits, so an update's singular values and entries below what storage rounds away are not counted
as rank or as change.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.linalg import subspace_angles

# --- storage precision -----------------------------------------------------------------------------
# Unit round-off (half the spacing of representable numbers, relative) of the dtypes checkpoints are stored in.
UNIT_ROUNDOFF = {"BF16": 2.0**-8, "F16": 2.0**-11, "F32": 2.0**-24, "F64": 2.0**-53}


def unit_roundoff(dtype: str) -> float:
    """Relative precision of a stored dtype (bfloat16 2^-8, float16 2^-11, float32 2^-24)."""
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype={dtype!r}: no known precision for it; known: {sorted(UNIT_ROUNDOFF)}")
    return UNIT_ROUNDOFF[dtype]


def roundoff_floor(weight: torch.Tensor, roundoff: float) -> float:
    """Largest singular value that storage round-off alone can give an update of `weight`.

    Storing before and after rounds every entry by up to `roundoff` x its size: the difference carries an
    error matrix with entries of size ~ roundoff x rms(W), whose largest singular value is at most about
    that times sqrt(m) + sqrt(n) (a random matrix's edge). Singular values of an update below this are
    indistinguishable from round-off, whatever the update's own size.
    """
    if weight.ndim != 2:
        return 0.0
    rms = float(torch.linalg.vector_norm(weight.double()) / math.sqrt(weight.numel()))
    return roundoff * rms * (math.sqrt(weight.shape[0]) + math.sqrt(weight.shape[1]))


# --- spectral measures ---------------------------------------------------------------------------
def _numerical_support(singular_values: torch.Tensor, shape: Sequence[int], floor: float = 0.0) -> torch.Tensor:
    """Singular values above round-off: above `floor` (the storage precision's, `roundoff_floor`) and above
    the float32 arithmetic cut-off of numpy.linalg.matrix_rank."""
    s = singular_values.double()
    if s.numel() == 0 or s.max() == 0:
        return s[:0]
    cutoff = max(float(s.max()) * max(shape) * torch.finfo(torch.float32).eps, floor)
    return s[s > cutoff]


def stable_rank(singular_values: torch.Tensor) -> float:
    """||A||_F^2 / ||A||_2^2: equals r for r equal singular values, less when they are unequal; 0 for A = 0."""
    s = singular_values.double()
    if s.numel() == 0 or s.max() == 0:
        return 0.0
    return float((s**2).sum() / s.max() ** 2)


def effective_rank(singular_values: torch.Tensor, shape: Sequence[int] | None = None, floor: float = 0.0) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the singular values normalised to sum 1; 0 for A = 0.

    Singular values at or below round-off do not count: `floor` (storage precision, `roundoff_floor`) and the
    float32 cut-off for a matrix of `shape`.
    """
    s = singular_values.double()
    s = _numerical_support(s, shape or (s.numel(),), floor)
    if s.numel() == 0:
        return 0.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def top_k_energy(singular_values: torch.Tensor, k: int) -> float:
    """Fraction of ||A||_F^2 in the k largest singular values (NaN for A = 0, where it is undefined)."""
    s2 = singular_values.double() ** 2
    total = s2.sum()
    if total == 0:
        return float("nan")
    return float(torch.sort(s2, descending=True).values[:k].sum() / total)


def gap_k(singular_values: torch.Tensor, k_max: int) -> int:
    """The k in 1..k_max with the largest gap sigma_k - sigma_k+1: where the top-k subspace is best defined.

    By Wedin's theorem an update E turns that subspace by at most arcsin(||E||_2 / gap); at a k where
    sigma_k ~ sigma_k+1 any update, however small, can turn it by up to 90 degrees.
    """
    s = singular_values.double()
    k_max = min(k_max, s.numel() - 1)
    if k_max < 1:
        return max(min(1, s.numel()), 0)
    return int(torch.argmax(s[:k_max] - s[1:k_max + 1])) + 1


def largest_principal_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle in degrees between the column spans of `a` and `b` (0 = same subspace)."""
    angles = subspace_angles(a.double().cpu().numpy(), b.double().cpu().numpy())
    return float(np.degrees(angles.max()))


def top_subspaces(weight: torch.Tensor, k: int):
    """Top-k left and right singular vectors and all singular values of a weight matrix."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    return u[:, :k].clone(), vh[:k].T.clone(), s


def _count_unchanged(before: torch.Tensor, delta: torch.Tensor, tolerance: float, roundoff: float) -> int:
    """Entries that moved by at most max(tolerance, roundoff x |before|): within the absolute tolerance, or
    within what storing the weight in its dtype rounds away. Row blocks: no full-size temporaries."""
    flat_b, flat_d = before.reshape(before.shape[0], -1) if before.ndim else before.reshape(1, 1), \
        delta.reshape(delta.shape[0], -1) if delta.ndim else delta.reshape(1, 1)
    step = max(1, (1 << 20) // max(flat_d.shape[1], 1))
    n = 0
    for b, d in zip(flat_b.split(step), flat_d.split(step)):
        n += int(torch.count_nonzero(d.abs() <= torch.clamp(b.abs() * roundoff, min=tolerance)))
    return n


# --- one tensor, one pair ------------------------------------------------------------------------
def update_stats(before: torch.Tensor, after: torch.Tensor, tolerance: float, top_k: int, spectra: bool = True,
                 spectrum_values: int = 64, before_svd=None, after_svd=None, dtype: str = "F32") -> dict:
    """Measures of the update `after - before` of one tensor, stored in `dtype` (safetensors name).

    Always: n_params, delta_norm, before_norm, relative_norm, energy_per_param (squared update per
    parameter), n_unchanged and sparsity (|delta| <= max(tolerance, unit round-off of `dtype` x |before|)).
    With `spectra` and a matrix: the update's singular values (the largest `spectrum_values`), stable_rank,
    effective_rank (singular values below the storage round-off floor do not count) and its ratio to the
    largest possible rank, top_k_energy, structured_energy (energy of the update's top `top_k` singular
    directions relative to ||before||_F^2), and the weight's own subspace change at its spectral gap:
    gap_k (the k <= top_k with the largest sigma_k - sigma_k+1 of `before`), top_k_gap (sigma_k / sigma_k+1
    there), the largest principal angle between the top-gap_k left and right singular subspaces (degrees;
    0 when the matrix did not change), and the relative change of the top-`top_k` singular values.
    `before_svd` / `after_svd` reuse `top_subspaces` results when a tensor takes part in several pairs.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} must be >= 0")
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1")
    roundoff = UNIT_ROUNDOFF.get(dtype, 0.0)  # integer buffers are stored exactly
    delta = after - before
    n = delta.numel()
    delta_norm = float(torch.linalg.vector_norm(delta))
    before_norm = float(torch.linalg.vector_norm(before))
    out = {
        "n_params": n,
        "delta_norm": delta_norm,
        "before_norm": before_norm,
        "relative_norm": delta_norm / before_norm if before_norm > 0 else float("nan"),
        "energy_per_param": delta_norm**2 / n,
        "dtype": dtype,
    }
    with_spectra = spectra and delta.ndim == 2
    s = torch.linalg.svdvals(delta) if with_spectra else None
    n_unchanged = _count_unchanged(before, delta, tolerance, roundoff)
    del delta
    out.update(n_unchanged=n_unchanged, sparsity=n_unchanged / n)
    if not with_spectra:
        return out
    k_top = min(top_k, *before.shape)
    u0, v0, s0 = before_svd or top_subspaces(before, k_top)
    u1, v1, s1 = after_svd or top_subspaces(after, k_top)
    k = gap_k(s0, k_top)
    floor = roundoff_floor(before, roundoff)
    top_before = torch.linalg.vector_norm(s0[:k_top])
    moved = delta_norm > 0
    out.update(
        max_rank=min(before.shape),
        stable_rank=stable_rank(s),
        effective_rank=effective_rank(s, before.shape, floor),
        roundoff_floor=floor,
        top_k_energy=top_k_energy(s, k_top),
        structured_energy=float((s.double()[:k_top] ** 2).sum() / before_norm**2) if before_norm > 0 else float("nan"),
        gap_k=k,
        top_k_gap=float(s0[k - 1] / s0[k]) if k < len(s0) and s0[k] > 0 else float("nan"),
        subspace_angle_left=largest_principal_angle(u0[:, :k], u1[:, :k]) if moved else 0.0,
        subspace_angle_right=largest_principal_angle(v0[:, :k], v1[:, :k]) if moved else 0.0,
        spectrum_change=float(torch.linalg.vector_norm(s1[:k_top] - s0[:k_top]) / top_before) if top_before > 0 else float("nan"),
        singular_values=s[:spectrum_values].tolist(),
    )
    out["effective_rank_ratio"] = out["effective_rank"] / out["max_rank"]
    return out
