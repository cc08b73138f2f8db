"""Bootstrap intervals over problems: every headline number in the book carries one.

Resampling is always over problems (rows), never over tokens, so that tokens of one problem never
count as independent evidence.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_indices(n: int, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, n) indices of problems drawn with replacement."""
    if n < 1:
        raise ValueError("bootstrap needs at least one problem")
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(np.asarray(samples, dtype=float), [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap(values, statistic: Callable = np.mean, n_bootstrap: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> dict:
    """Estimate and percentile interval of `statistic` over rows of `values` (one row per problem)."""
    values = np.asarray(values)
    idx = bootstrap_indices(len(values), n_bootstrap, seed)
    samples = np.array([statistic(values[i]) for i in idx])
    lo, hi = interval(samples, confidence)
    return {"value": float(statistic(values)), "ci": [lo, hi]}


def paired_difference(a, b, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """mean(a - b) with a paired bootstrap interval (the same problems resampled for both)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    return bootstrap(a - b, np.mean, n_bootstrap, confidence, seed)
