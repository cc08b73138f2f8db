"""Centered kernel alignment (CKA) between two sets of activations at the same tokens, with honest
statistics.

CKA(X, Y) = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)) for X [n, dx], Y [n, dy] with rows paired.
- The biased estimator (Kornblith et al. 2019) is inflated when n is not much larger than d: the
  diagonal of the Gram matrices (each sample paired with itself) dominates. Two independent random
  matrices with n = 64, d = 512 score ~0.9.
- The debiased estimator uses the unbiased HSIC of Song et al. (2012), recommended by Kornblith et al.
  (2019) and Murphy et al. (2024); it is near 0 for independent data at any n >= 4.
Linear CKA uses the feature-space form (d x d products, O(n d^2), no n x n matrix) when n > d and
the Gram form (n x n) otherwise; both give the same number.

Resampling: a bootstrap resample of problems is a weighting of rows (counts), so it needs no copy of
the data. For the debiased estimator a copy must not pair with itself: `linear_cka(weights=...)`
excludes pairs between copies of one row, and `bootstrap_cka` pairs between two copies of one
problem, exactly as the Gram diagonal is excluded, so a resample does not bring back the bias that
debiasing removed. Rows are centred at the unweighted mean of the rows given (with such exclusions
the debiased estimate is only approximately shift-invariant, so the centre is fixed this way).

Pure functions of arrays: no params, no files; the instruments (`instrument`, `same_input`) read the run.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from rlvr_utils.core.stats import bootstrap_indices
from rlvr_utils.instruments.cka.problems import per_problem_products, problem_gram

MIN_SAMPLES = {False: 2, True: 4}  # below these, (n-1) or n(n-3) normalisers vanish
GROUPED_BYTES = 2 << 30  # per-problem d x d statistics above this size: bootstrap loops instead
# the components whose change both comparisons (end to end, same input) measure, by their output sites
COMPONENT_SITES = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}


# --- input handling ---------------------------------------------------------------------------------
def as_matrix(X, name: str) -> torch.Tensor:
    if isinstance(X, torch.Tensor):
        t = X.detach().to(torch.float64)
    else:  # share float64 arrays (never written to); convert others, e.g. float32 memmaps
        arr = np.asarray(X, dtype=np.float64)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [n_samples, n_features], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _pair(X, Y, debiased: bool, weights=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows (paired samples), got {X.shape[0]} and {Y.shape[0]}")
    w = _weights(weights, X.shape[0], X.device)
    _check_n(float(w.sum()), debiased)
    return X, Y, w


def _weights(weights, n: int, device) -> torch.Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=device)
    if w.shape != (n,) or (w < 0).any():
        raise ValueError(f"weights must be {n} non-negative numbers (one per row), got shape {tuple(w.shape)}")
    return w


def _check_n(n: float, debiased: bool) -> None:
    need = MIN_SAMPLES[debiased]
    if n < need:
        kind = "debiased" if debiased else "biased"
        raise ValueError(f"the {kind} CKA estimator needs at least {need} samples, got n={n:g}")


def _ratio(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """xy / sqrt(xx yy), 0 where either self-similarity is not positive (constant data, tiny n)."""
    denom = torch.sqrt(torch.clamp(xx, min=0) * torch.clamp(yy, min=0))
    return torch.where(denom > 0, xy / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(xy))


# --- HSIC from sufficient statistics -------------------------------------------------------------------
# Every statistic the feature form needs is a (weighted) sum over rows, so one formula serves plain
# estimates (sums over rows), bootstrap resamples (per-problem sums times counts) and minibatches.
# For the debiased form, with K = X X^T and L = Y Y^T, the sums over *allowed* pairs (a row never pairs
# with itself or with a copy of itself) are written as a full sum minus a correction:
#   sum K~ L~  = |S|^2 - c1,   sum K~ = |sx|^2 - qx,   sum_j w_j (K~ w)_j (L~ w)_j = sx' S sy - sx.vx - sy.vy + c3
# with S = sum_i w_i x_i y_i^T and sx = sum_i w_i x_i.
def _weighted(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return X if bool((w == 1).all()) else X * w[:, None]  # no copy of the data for unit weights


def _self_sums(X: torch.Tensor, w: torch.Tensor) -> dict:
    r = (X * X).sum(1)
    w2 = w * w
    return {"N": w.sum(), "s": X.T @ w, "S": X.T @ _weighted(X, w), "q": w2 @ r, "c1": w2 @ (r * r),
            "c3": (w2 * w) @ (r * r), "v": X.T @ (w2 * r), "r": r}


def _cross_sums(X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor) -> dict:
    w2 = w * w
    return {"S": X.T @ _weighted(Y, w), "c1": w2 @ (rx * ry), "c3": (w2 * w) @ (rx * ry),
            "vx": X.T @ (w2 * ry), "vy": Y.T @ (w2 * rx)}


def _hsic(N, S, sx, sy, debiased: bool, c1=None, c3=None, vx=None, vy=None, qx=None, qy=None) -> torch.Tensor:
    """HSIC from sums (see above); leading batch dims allowed. Biased: |centred S|^2 / (N-1)^2.
    Debiased: Song et al. (2012), eq. 5, with n = N."""
    if not debiased:
        centred = S - sx[..., :, None] * sy[..., None, :] / N[..., None, None]
        return (centred * centred).sum((-2, -1)) / (N - 1) ** 2
    trace = (S * S).sum((-2, -1)) - c1
    k_sum = (sx * sx).sum(-1) - qx
    l_sum = (sy * sy).sum(-1) - qy
    quad = torch.einsum("...i,...ij,...j->...", sx, S, sy) - (sx * vx).sum(-1) - (sy * vy).sum(-1) + c3
    return (trace + k_sum * l_sum / ((N - 1) * (N - 2)) - 2 * quad / (N - 2)) / (N * (N - 3))


def _hsic_terms(N, square, quad, sx, sy, debiased: bool, c1, c3, vx, vy, qx, qy) -> torch.Tensor:
    """`_hsic` from |S|^2 (`square`) and sx' S sy (`quad`) instead of S itself (the same formula, expanded for
    the biased form: |S - sx sy' / N|^2 = |S|^2 - 2 sx' S sy / N + |sx|^2 |sy|^2 / N^2)."""
    xx, yy = (sx * sx).sum(-1), (sy * sy).sum(-1)
    if not debiased:
        return (square - 2 * quad / N + xx * yy / N ** 2) / (N - 1) ** 2
    inner = quad - (sx * vx).sum(-1) - (sy * vy).sum(-1) + c3
    return ((square - c1) + (xx - qx) * (yy - qy) / ((N - 1) * (N - 2)) - 2 * inner / (N - 2)) / (N * (N - 3))


def _self_hsic(a: dict, debiased: bool) -> torch.Tensor:
    return _hsic(a["N"], a["S"], a["s"], a["s"], debiased, a["c1"], a["c3"], a["v"], a["v"], a["q"], a["q"])


def _cross_hsic(a: dict, b: dict, c: dict, debiased: bool) -> torch.Tensor:
    return _hsic(a["N"], c["S"], a["s"], b["s"], debiased, c["c1"], c["c3"], c["vx"], c["vy"], a["q"], b["q"])


def _centre(X: torch.Tensor) -> torch.Tensor:
    """Subtract the column mean: CKA (both estimators) is shift-invariant; this only avoids cancellation."""
    return X - X.mean(0, keepdim=True)


# --- Gram form ---------------------------------------------------------------------------------------------
def _pair_weights(w: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Weight of each ordered pair of rows in a (resampled) sample, [..., n, n].

    w_i = how many copies of row i. Pairs of distinct problems count w_i w_j; rows of one problem
    (`index` gives each row's problem; None = every row its own problem) pair only within the same
    copy, so w_i times; a row never pairs with itself.
    """
    n = w.shape[-1]
    same = torch.eye(n, dtype=torch.bool, device=w.device) if index is None else index[:, None] == index[None, :]
    W = torch.where(same, w[..., :, None].expand(*w.shape, n), w[..., :, None] * w[..., None, :])
    return W * ~torch.eye(n, dtype=torch.bool, device=w.device)


def _gram_hsic(K: torch.Tensor, L: torch.Tensor, w: torch.Tensor, debiased: bool,
               index: torch.Tensor | None = None) -> torch.Tensor:
    """HSIC from n x n kernel matrices and row weights w [..., n] (leading batch dims allowed)."""
    N = w.sum(-1)
    if not debiased:  # a V-statistic: copies count as ordinary rows
        kw, lw = w @ K, w @ L  # K symmetric
        Kc = K - kw[..., :, None] / N[..., None, None] - kw[..., None, :] / N[..., None, None] \
            + ((kw * w).sum(-1) / N ** 2)[..., None, None]
        Lc = L - lw[..., :, None] / N[..., None, None] - lw[..., None, :] / N[..., None, None] \
            + ((lw * w).sum(-1) / N ** 2)[..., None, None]
        return torch.einsum("...i,...ij,...j->...", w, Kc * Lc, w) / (N - 1) ** 2
    W = _pair_weights(w, index)
    trace = (W * K * L).sum((-2, -1))
    k_sum, l_sum = (W * K).sum((-2, -1)), (W * L).sum((-2, -1))
    kw, lw = (W * K).sum(-2), (W * L).sum(-2)  # for row j: sum over the rows it may pair with, times w_j
    quad = torch.where(w > 0, kw * lw / torch.where(w > 0, w, torch.ones_like(w)), torch.zeros_like(w)).sum(-1)
    return (trace + k_sum * l_sum / ((N - 1) * (N - 2)) - 2 * quad / (N - 2)) / (N * (N - 3))


def _gram_cka(K, L, w, debiased, index=None) -> torch.Tensor:
    return _ratio(_gram_hsic(K, L, w, debiased, index), _gram_hsic(K, K, w, debiased, index),
                  _gram_hsic(L, L, w, debiased, index))


def _use_features(n: int, dx: int, dy: int) -> bool:
    return n > max(dx, dy)


# --- public estimators ---------------------------------------------------------------------------------
def linear_cka(X, Y, debiased: bool = False, weights=None) -> float:
    """Linear CKA of X [n, dx] and Y [n, dy] (numpy arrays or tensors, rows paired).

    Feature-space form when n > max(dx, dy), Gram form otherwise (same result). `debiased` uses the
    unbiased HSIC estimator (needs n >= 4). `weights` count repeats of each row. Returns a float; 0
    when either input has no variance.
    """
    X, Y, w = _pair(X, Y, debiased, weights)
    X, Y = _centre(X), _centre(Y)
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if _use_features(n, dx, dy):
        a, b = _self_sums(X, w), _self_sums(Y, w)
        c = _cross_sums(X, Y, w, a["r"], b["r"])
        return float(_ratio(_cross_hsic(a, b, c, debiased), _self_hsic(a, debiased), _self_hsic(b, debiased)))
    return float(_gram_cka(X @ X.T, Y @ Y.T, w, debiased))


def cka_from_grams(K, L, debiased: bool = False, weights=None) -> float:
    """CKA from two n x n kernel (Gram) matrices of the same samples."""
    K, L, w = _pair(K, L, debiased, weights)
    if K.shape[0] != K.shape[1] or L.shape != K.shape:
        raise ValueError(f"K and L must be square and of one shape, got {tuple(K.shape)} and {tuple(L.shape)}")
    return float(_gram_cka(K, L, w, debiased))


def rbf_gram(X, sigma: float = 0.8) -> torch.Tensor:
    """RBF kernel exp(-|x_i - x_j|^2 / (2 (sigma * median distance)^2)), as in Kornblith et al. 2019."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0 (a fraction of the median distance)")
    X = as_matrix(X, "X")
    sq = torch.cdist(X, X).pow(2)
    median = torch.median(sq[~torch.eye(len(X), dtype=torch.bool, device=X.device)]) if len(X) > 1 else sq.new_tensor(1.0)
    median = median if median > 0 else sq.new_tensor(1.0)
    return torch.exp(-sq / (2 * sigma ** 2 * median))


def rbf_cka(X, Y, sigma: float = 0.8, debiased: bool = False) -> float:
    """CKA with RBF kernels whose bandwidth is `sigma` times the median pairwise distance."""
    X, Y, _ = _pair(X, Y, debiased)
    return cka_from_grams(rbf_gram(X, sigma), rbf_gram(Y, sigma), debiased)


def cka_matrix(Xs: Sequence, Ys: Sequence, debiased: bool = False) -> np.ndarray:
    """[len(Xs), len(Ys)] linear CKA of every pair (e.g. layer i of one model vs layer j of another).

    Self-similarities are computed once per matrix, so the cost is one cross product per pair. Elements may be
    zero-argument functions that return the matrix (e.g. read a layer from the activation store): then only two
    matrices are held at a time, each loaded again per pair (the cross-layer matrix of a real-scale run would
    otherwise hold every layer of two models in float64); this needs the feature form (rows > features).
    """
    def get(M, name):
        return _centre(as_matrix(M() if callable(M) else M, name))

    lazy = any(callable(M) for M in [*Xs, *Ys])
    if not lazy:
        Xs = [get(X, f"Xs[{i}]") for i, X in enumerate(Xs)]
        Ys = [get(Y, f"Ys[{j}]") for j, Y in enumerate(Ys)]
        n = {M.shape[0] for M in Xs + Ys}
        if len(n) != 1:
            raise ValueError(f"every matrix must have the same number of rows, got {sorted(n)}")
        n = n.pop()
        _check_n(n, debiased)
        d = max(M.shape[1] for M in Xs + Ys)
        if not _use_features(n, d, d):
            return _gram_matrix(Xs, Ys, debiased)

    def x(i):
        return get(Xs[i], f"Xs[{i}]") if lazy else Xs[i]

    def y(j):
        return get(Ys[j], f"Ys[{j}]") if lazy else Ys[j]

    sums, rows = {}, set()
    for side, count, load in (("x", len(Xs), x), ("y", len(Ys), y)):
        for k in range(count):
            M = load(k)
            rows.add(M.shape[0])
            if len(rows) != 1:
                raise ValueError(f"every matrix must have the same number of rows, got {sorted(rows)}")
            _check_n(M.shape[0], debiased)
            if not _use_features(M.shape[0], M.shape[1], M.shape[1]):
                raise ValueError(f"matrices given as functions need more rows than features, got {tuple(M.shape)}")
            sums[side, k] = _self_sums(M, torch.ones(M.shape[0], dtype=torch.float64, device=M.device))
    out = np.zeros((len(Xs), len(Ys)))
    for i in range(len(Xs)):
        X, a = x(i), sums["x", i]
        w = torch.ones(X.shape[0], dtype=torch.float64, device=X.device)
        for j in range(len(Ys)):
            b = sums["y", j]
            c = _cross_sums(X, y(j), w, a["r"], b["r"])
            out[i, j] = float(_ratio(_cross_hsic(a, b, c, debiased), _self_hsic(a, debiased), _self_hsic(b, debiased)))
    return out


def _gram_matrix(Xs, Ys, debiased) -> np.ndarray:
    w = torch.ones(Xs[0].shape[0], dtype=torch.float64, device=Xs[0].device)
    Ks, Ls = [X @ X.T for X in Xs], [Y @ Y.T for Y in Ys]
    hx = [_gram_hsic(K, K, w, debiased) for K in Ks]
    hy = [_gram_hsic(L, L, w, debiased) for L in Ls]
    out = np.zeros((len(Xs), len(Ys)))
    for i, K in enumerate(Ks):
        for j, L in enumerate(Ls):
            out[i, j] = float(_ratio(_gram_hsic(K, L, w, debiased), hx[i], hy[j]))
    return out


def minibatch_cka(batches: Iterable[tuple], debiased: bool = True) -> float:
    """Minibatch CKA (Nguyen et al. 2021) for data that does not fit in memory.

    `batches` yields (X_b, Y_b) pairs of rows; HSIC(X,Y), HSIC(X,X), HSIC(Y,Y) are averaged over batches
    (unbiased per batch when `debiased`, so the average is unbiased whatever the batch size) and CKA is
    formed from the averages. Each batch needs at least 4 rows (2 when biased).
    """
    totals = torch.zeros(3, dtype=torch.float64)
    count = 0
    for X, Y in batches:
        X, Y, w = _pair(X, Y, debiased)
        X, Y = _centre(X), _centre(Y)
        a, b = _self_sums(X, w), _self_sums(Y, w)
        c = _cross_sums(X, Y, w, a["r"], b["r"])
        totals += torch.stack([_cross_hsic(a, b, c, debiased), _self_hsic(a, debiased), _self_hsic(b, debiased)]).cpu()
        count += 1
    if count == 0:
        raise ValueError("minibatch_cka got no batches")
    return float(_ratio(*(totals / count)))


# --- statistics over problems ----------------------------------------------------------------------------
def problem_counts(groups, n_bootstrap: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(counts [n_bootstrap, n_problems], problem index of each row [n]) for a bootstrap over problems.

    `groups` gives each row's problem (e.g. the cache row from ActivationStore.read). The same groups,
    n_bootstrap and seed give the same resamples, so results for several layers or sites can be
    combined replicate by replicate (e.g. the mean over layers keeps its joint uncertainty).
    """
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    n_problems = int(index.max()) + 1 if len(index) else 0
    draws = bootstrap_indices(n_problems, n_bootstrap, seed)
    counts = np.stack([np.bincount(d, minlength=n_problems) for d in draws]).astype(np.float64)
    return counts, index


def bootstrap_cka(X, Y, groups, n_bootstrap: int = 200, debiased: bool = True, seed: int = 0) -> np.ndarray:
    """Linear CKA on `n_bootstrap` resamples of problems (rows of a problem move together).

    `groups` gives each row's problem. For the debiased estimator a problem drawn twice counts as two
    new problems: rows pair across copies of *different* problems and within one copy, never across two
    copies of the same problem (such pairs would be a row, or its problem-mates, paired with itself and
    bring back the inflation debiasing removes). The biased estimator simply repeats rows.
    Returns the replicate values [n_bootstrap]; `stats.interval` turns them into a confidence interval.
    """
    X, Y, _ = _pair(X, Y, debiased)
    if len(groups) != X.shape[0]:
        raise ValueError(f"groups must give one problem per row: {len(groups)} groups for {X.shape[0]} rows")
    X, Y = _centre(X), _centre(Y)
    counts, index = problem_counts(groups, n_bootstrap, seed)
    counts = torch.as_tensor(counts, device=X.device)
    index = torch.as_tensor(index, device=X.device)
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if not _use_features(n, dx, dy):
        return _gram_cka(X @ X.T, Y @ Y.T, counts[:, index], debiased, index).cpu().numpy()
    keep = counts.shape[1] * (dx * dx + dy * dy + dx * dy) * 8 <= GROUPED_BYTES
    return _feature_bootstrap(X, Y, index, counts, debiased, keep)


def _feature_bootstrap(X, Y, index, counts, debiased, keep_matrices: bool) -> np.ndarray:
    """Feature-form bootstrap. A resample's sums are counts @ per-problem sums; the d x d products S
    come from per-problem products when they fit in memory (`keep_matrices`, the organism's path). Else S is never
    formed: HSIC needs only |S|^2 = c' G c (G the problem x problem Gram of the per-problem products, made once
    by `problems.problem_gram`) and s_x' S s_y, a weighted sum over rows, so a resample costs O(n d) instead of
    three n x d^2 products (4.4 s each at n = 8000, d = 1536 on one thread); same numbers up to rounding."""
    P = counts.shape[1]
    rx, ry = (X * X).sum(1), (Y * Y).sum(1)

    def per_problem(values):  # sum rows of each problem: [n, ...] -> [P, ...]
        return values.new_zeros((P,) + values.shape[1:]).index_add_(0, index, values)

    g = {"n": per_problem(torch.ones_like(rx)), "mx": per_problem(X), "my": per_problem(Y),
         "rx": per_problem(rx), "ry": per_problem(ry), "Dxx": per_problem(rx * rx), "Dyy": per_problem(ry * ry),
         "Dxy": per_problem(rx * ry), "uxx": per_problem(X * rx[:, None]), "uyy": per_problem(Y * ry[:, None]),
         "uxy": per_problem(X * ry[:, None]), "uyx": per_problem(Y * rx[:, None])}
    g["mm_x"], g["mm_y"] = (g["mx"] ** 2).sum(1), (g["my"] ** 2).sum(1)
    g["mu_xx"], g["mu_yy"] = (g["mx"] * g["uxx"]).sum(1), (g["my"] * g["uyy"]).sum(1)
    g["mu_xy"] = (g["mx"] * g["uxy"]).sum(1) + (g["my"] * g["uyx"]).sum(1)
    g.update(per_problem_products(X, Y, index, P, g["mx"], g["my"], keep_matrices))
    names = ("xx", "yy", "xy")
    if not keep_matrices:  # computed once: what the resamples need of the d x d products (maths.problems)
        g.update({f"G_{name}": problem_gram(left, right, index, P)
                  for name, left, right in (("xx", X, X), ("yy", Y, Y), ("xy", X, Y))})

    dx, dy = X.shape[1], Y.shape[1]
    if keep_matrices:
        chunk = max(1, (256 << 20) // (8 * (dx * dx + dy * dy + dx * dy)))  # resamples whose S fit in 256 MB
    else:
        chunk = max(1, (256 << 20) // (8 * 3 * X.shape[0]))  # resamples whose row weights and projections fit
    out = []
    for start in range(0, counts.shape[0], chunk):
        c = counts[start:start + chunk]
        ce, ce2 = c * (c - 1), c * (c - 1) ** 2

        def mix(key, weights=c):
            return torch.tensordot(weights, g[key], dims=1)

        a = {"N": mix("n"), "s": mix("mx"), "q": mix("mm_x", ce) + mix("rx"),
             "c1": mix("A2_xx", ce) + mix("Dxx"), "v": mix("beta_xx", ce) + mix("uxx"),
             "c3": mix("gamma_xx", ce2) + 2 * mix("mu_xx", ce) + mix("Dxx")}
        b = {"N": a["N"], "s": mix("my"), "q": mix("mm_y", ce) + mix("ry"),
             "c1": mix("A2_yy", ce) + mix("Dyy"), "v": mix("beta_yy", ce) + mix("uyy"),
             "c3": mix("gamma_yy", ce2) + 2 * mix("mu_yy", ce) + mix("Dyy")}
        xy = {"c1": mix("A2_xy", ce) + mix("Dxy"), "vx": mix("beta_xy", ce) + mix("uxy"),
              "vy": mix("alpha_xy", ce) + mix("uyx"), "c3": mix("gamma_xy", ce2) + mix("mu_xy", ce) + mix("Dxy")}
        if keep_matrices:
            a["S"], b["S"], xy["S"] = (mix(f"A_{name}") for name in names)
            out.append(_ratio(_cross_hsic(a, b, xy, debiased), _self_hsic(a, debiased), _self_hsic(b, debiased)))
            continue
        # |S|^2 = c' G c; s_x' S s_y = sum_i w_i (x_i . s_x)(y_i . s_y): O(n d) per resample, no d x d product
        square = {name: ((c @ g[f"G_{name}"]) * c).sum(1) for name in names}
        w, px, py = c[:, index], a["s"] @ X.T, b["s"] @ Y.T  # [resamples, n] each
        quad = {"xx": (w * px * px).sum(1), "yy": (w * py * py).sum(1), "xy": (w * px * py).sum(1)}
        hx = _hsic_terms(a["N"], square["xx"], quad["xx"], a["s"], a["s"], debiased, a["c1"], a["c3"], a["v"],
                         a["v"], a["q"], a["q"])
        hy = _hsic_terms(a["N"], square["yy"], quad["yy"], b["s"], b["s"], debiased, b["c1"], b["c3"], b["v"],
                         b["v"], b["q"], b["q"])
        hxy = _hsic_terms(a["N"], square["xy"], quad["xy"], a["s"], b["s"], debiased, xy["c1"], xy["c3"], xy["vx"],
                          xy["vy"], a["q"], b["q"])
        out.append(_ratio(hxy, hx, hy))
    return torch.cat(out).cpu().numpy()


def permutation_cka(X, Y, n_permutations: int = 100, debiased: bool = True, seed: int = 0) -> np.ndarray:
    """Chance baseline: linear CKA with the rows of Y shuffled (pairing destroyed), [n_permutations]."""
    X, Y, w = _pair(X, Y, debiased)
    X, Y = _centre(X), _centre(Y)
    rng = np.random.default_rng(seed)
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    out = np.empty(n_permutations)
    if _use_features(n, dx, dy):
        a, b = _self_sums(X, w), _self_sums(Y, w)  # unchanged by shuffling Y's rows
        hx, hy = _self_hsic(a, debiased), _self_hsic(b, debiased)
        for k in range(n_permutations):
            perm = torch.as_tensor(rng.permutation(n), device=X.device)
            c = _cross_sums(X, Y[perm], w, a["r"], b["r"][perm])
            out[k] = float(_ratio(_cross_hsic(a, b, c, debiased), hx, hy))
    else:
        K, L = X @ X.T, Y @ Y.T
        hx, hy = _gram_hsic(K, K, w, debiased), _gram_hsic(L, L, w, debiased)
        for k in range(n_permutations):
            perm = torch.as_tensor(rng.permutation(n), device=X.device)
            out[k] = float(_ratio(_gram_hsic(K, L[perm][:, perm], w, debiased), hx, hy))
    return out


# --- the estimator check -------------------------------------------------------------------------------------
def inflation_curve(X, Y, groups, sizes: Sequence[int] | None = None, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Biased vs debiased CKA on random subsets of n rows, for the true pairing and a shuffled one.

    One row per problem is drawn where there are enough problems, so that small-n points are not just a
    few problems' tokens. `sizes` default to powers of two from 8 to 8 d (capped by the rows available):
    the biased estimator's inflation shows below n ~ d, most plainly on the shuffled pairing whose true
    CKA is 0.
    """
    X, Y, _ = _pair(X, Y, True)
    n, d = X.shape[0], max(X.shape[1], Y.shape[1])
    if sizes is None:
        sizes = [s for s in (2 ** k for k in range(3, 30)) if s <= min(n, 8 * d)]
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    out = []
    for size in sizes:
        if not MIN_SAMPLES[True] <= size <= n:
            raise ValueError(f"sizes must be in {MIN_SAMPLES[True]}..{n} (the rows available), got {size}")
        for r in range(repeats):
            idx = _spread_sample(groups, size, rng)
            shuffled = rng.permutation(idx)
            for pairing, rows_y in (("matched", idx), ("shuffled", shuffled)):
                for debiased in (False, True):
                    out.append({"n": int(size), "repeat": r, "pairing": pairing,
                                "estimator": "debiased" if debiased else "biased",
                                "cka": linear_cka(X[idx], Y[rows_y], debiased)})
    return out


def _spread_sample(groups: np.ndarray, size: int, rng) -> np.ndarray:
    """`size` distinct rows, drawn from as many different problems as possible."""
    order = rng.permutation(len(groups))
    _, first = np.unique(groups[order], return_index=True)  # one random row per problem
    one_each = order[np.sort(first)]
    if size <= len(one_each):
        return rng.choice(one_each, size, replace=False)
    rest = np.setdiff1d(order, one_each)
    return np.concatenate([one_each, rng.choice(rest, size - len(one_each), replace=False)])
