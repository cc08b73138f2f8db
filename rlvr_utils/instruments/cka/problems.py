"""Per-problem statistics of CKA's bootstrap over problems, computed once per cell: a resample of problems is a
weighting of them, so every sum it needs is counts @ (per-problem sums) or counts' G counts for a problem x problem
matrix G (`maths.bootstrap_cka`).

The d x d products of one problem's rows (A_p = X_p^T Y_p) are what costs: n d^2 in all, linear in tokens. A
resample's |sum_p c_p A_p|^2 is c' G c with G[p, q] = <A_p, A_q>, so `problem_gram` makes the resamples need
no d x d product at all (the older way, one n x d^2 product per resample and matrix, took 4.2 s per resample at
n = 8000, d = 1536 on one thread).
"""
from __future__ import annotations

import torch


def per_problem_products(X, Y, index, P, mx, my, keep_matrices: bool, budget: int = 256 << 20) -> dict:
    """What the bootstrap needs of the per-problem products A_p = X_p^T Y_p (and X_p^T X_p, Y_p^T Y_p):
    |A_p|^2, A_p m_p, A_p^T m_p, m_p^T A_p m_p, and A_p itself when `keep_matrices`. Problems are
    zero-padded to one length and multiplied in batches (many tiny products cost more in overhead
    than in arithmetic)."""
    dx, dy = X.shape[1], Y.shape[1]
    order = torch.argsort(index, stable=True)
    sizes = torch.bincount(index, minlength=P)
    starts = torch.cumsum(sizes, 0) - sizes
    sorted_problem = index[order]
    within = torch.arange(len(index), device=index.device) - starts[sorted_problem]
    longest = int(sizes.max())
    per_problem_bytes = 8 * (longest * (dx + dy) + dx * dx + dy * dy + dx * dy)
    step = max(1, budget // per_problem_bytes)
    parts: dict[str, list] = {}
    for first in range(0, P, step):
        last = min(P, first + step)
        mine = (sorted_problem >= first) & (sorted_problem < last)
        Xp = X.new_zeros((last - first, longest, dx))
        Yp = Y.new_zeros((last - first, longest, dy))
        Xp[sorted_problem[mine] - first, within[mine]] = X[order[mine]]
        Yp[sorted_problem[mine] - first, within[mine]] = Y[order[mine]]
        m_x, m_y = mx[first:last, :, None], my[first:last, :, None]
        for name, left, right, m_left, m_right in (("xx", Xp, Xp, m_x, m_x), ("yy", Yp, Yp, m_y, m_y),
                                                   ("xy", Xp, Yp, m_x, m_y)):
            A = torch.bmm(left.mT, right)
            beta = torch.bmm(A, m_right)[..., 0]
            found = {f"A2_{name}": (A * A).sum((1, 2)), f"beta_{name}": beta,
                     f"alpha_{name}": torch.bmm(A.mT, m_left)[..., 0], f"gamma_{name}": (m_left[..., 0] * beta).sum(1)}
            if keep_matrices:
                found[f"A_{name}"] = A
            for key, value in found.items():
                parts.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in parts.items()}


def problem_gram(left: torch.Tensor, right: torch.Tensor, index: torch.Tensor, P: int,
                 budget: int = 256 << 20) -> torch.Tensor:
    """G [P, P] with G[p, q] = <A_p, A_q>_F, A_p = left_p^T right_p (the rows of problem p; `index` gives each
    row's problem 0..P-1). Each entry of every A_p is computed once, a slice of A's rows for all problems at a
    time (at most `budget` bytes), and folded into G: n d^2 + P^2 d^2 work, never a [P, d, d] array."""
    order = torch.argsort(index, stable=True)  # each problem's rows, in their order
    rows = torch.split(order, torch.bincount(index, minlength=P).tolist())
    d_left, d_right = left.shape[1], right.shape[1]
    width = max(1, budget // (left.element_size() * P * d_right))
    G = left.new_zeros((P, P))
    for k0 in range(0, d_left, width):
        k1 = min(d_left, k0 + width)
        F = torch.stack([left[r, k0:k1].T @ right[r] for r in rows]).reshape(P, -1)
        G += F @ F.T
    return G
