"""Weight-difference norms and SVD spectra: what the SFT and RLVR updates look like in the weights.

For each pair of checkpoints (SFT - base, RLVR - SFT, RLVR - base) and each tensor, the update
delta = after - before is measured by its size (Frobenius norm, norm relative to the earlier weights,
squared norm per parameter so that attention and MLP compare fairly), its sparsity (fraction of entries
that moved by at most a tolerance, as in Mukherjee et al. 2025), its spectrum (singular values, stable
rank, effective rank, energy in the top k) and by what it did to the weight matrix's own top-k singular
subspaces and values (principal angles and spectrum change, as in Zhu et al. 2025).

Routing predicts small, low-rank, attention-heavy RLVR updates that leave the principal directions of
the weights in place; Representation learning predicts updates that reach the MLP matrices.

Checkpoints are read tensor by tensor through safetensors (single-file or sharded), so at most one
tensor per checkpoint is in memory at a time, whatever the model size.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from scipy.linalg import subspace_angles
from tqdm.auto import tqdm

from rlvr_utils.core import stats

log = logging.getLogger(__name__)

PAIRS: tuple[tuple[str, str], ...] = (("sft", "base"), ("rlvr", "sft"), ("rlvr", "base"))  # (after, before)
GROUPS = ("attention", "mlp")
MODULES = ("q", "k", "v", "o", "qkv", "gate", "up", "down")  # attention first, in the order data flows

# (pattern in the tensor name, module, group) per family. llama/qwen2/qwen3/mistral/olmo2 share the first
# block; gpt2 fuses q,k,v in c_attn and names both output projections c_proj (the parent tells them
# apart; its Conv1D stores weights transposed, which swaps left and right singular vectors only);
# gpt_neox fuses q,k,v in query_key_value.
_MODULE_PATTERNS = [
    (re.compile(p), module, group)
    for p, module, group in (
        (r"\.self_attn\.q_proj\.", "q", "attention"),
        (r"\.self_attn\.k_proj\.", "k", "attention"),
        (r"\.self_attn\.v_proj\.", "v", "attention"),
        (r"\.self_attn\.o_proj\.", "o", "attention"),
        (r"\.mlp\.gate_proj\.", "gate", "mlp"),
        (r"\.mlp\.up_proj\.", "up", "mlp"),
        (r"\.mlp\.down_proj\.", "down", "mlp"),
        (r"\.attn\.c_attn\.", "qkv", "attention"),
        (r"\.attn\.c_proj\.", "o", "attention"),
        (r"\.mlp\.c_fc\.", "up", "mlp"),
        (r"\.mlp\.c_proj\.", "down", "mlp"),
        (r"\.attention\.query_key_value\.", "qkv", "attention"),
        (r"\.attention\.dense\.", "o", "attention"),
        (r"\.mlp\.dense_h_to_4h\.", "up", "mlp"),
        (r"\.mlp\.dense_4h_to_h\.", "down", "mlp"),
    )
]
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")
_STEP_DIR = re.compile(r"^(?:step|checkpoint)-(\d+)$")


# --- names ---------------------------------------------------------------------------------------
def classify(name: str) -> tuple[int | None, str, str]:
    """(layer, module, group) of a tensor name: group is 'attention' (q, k, v, o, or fused qkv),
    'mlp' (gate, up, down) or 'other' (embeddings, norms, ...); layer is None outside the blocks."""
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    for pattern, module, group in _MODULE_PATTERNS:
        if pattern.search(name):
            return layer, module, group
    return layer, "other", "other"


# --- reading checkpoints -------------------------------------------------------------------------
def local_folder(ref: str | Path) -> Path:
    """A checkpoint folder on disk: `ref` itself, or the hub snapshot (safetensors and json only)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download  # only real-scale runs name hub ids

    return Path(snapshot_download(str(ref), allow_patterns=["*.safetensors", "*.json"]))


def tensor_files(folder: str | Path) -> dict[str, Path]:
    """Which safetensors file holds each tensor of a checkpoint folder (single file or sharded)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"folder={str(folder)!r} holds no *.safetensors file: expected a Hugging Face checkpoint")
    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            out.update({name: file for name in f.keys()})
    return out


def read_tensor(file: Path, name: str, device: str = "cpu") -> torch.Tensor:
    """One tensor as float32. The file is closed again at once: safetensors hands out memory-mapped
    views, and a handle kept open would keep every page read so far mapped into this process."""
    with safe_open(file, framework="pt") as f:
        tensor = f.get_tensor(name)
    return tensor.to(device=device, dtype=torch.float32)


def iter_tensors(folders: Mapping[str, str | Path], device: str = "cpu") -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """(name, {label: tensor}) for every tensor the checkpoints share, one tensor per checkpoint at a time.

    Tensors present in only some checkpoints are skipped with a warning; a shape mismatch is an error.
    """
    if len(folders) < 2:
        raise ValueError(f"folders needs at least two checkpoints to compare, got {list(folders)}")
    files = {label: tensor_files(folder) for label, folder in folders.items()}
    shared = sorted(set.intersection(*(set(f) for f in files.values())))
    missing = sorted(set.union(*(set(f) for f in files.values())) - set(shared))
    if missing:
        log.warning("skipping %d tensors not present in every checkpoint, e.g. %s", len(missing), missing[:3])
    if not shared:
        raise ValueError(f"the checkpoints {dict(folders)} share no tensor names: are they the same architecture?")
    for name in shared:
        tensors = {label: read_tensor(files[label][name], name, device) for label in folders}
        shapes = {label: tuple(t.shape) for label, t in tensors.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"tensor {name!r} has different shapes across checkpoints: {shapes}")
        yield name, tensors
        del tensors  # before reading the next name, so that two names are never held at once


def parameter_count(folder: str | Path) -> int:
    """Number of parameters stored in a checkpoint, read from the safetensors headers only."""
    total = 0
    for name, file in tensor_files(folder).items():
        with safe_open(file, framework="pt") as f:
            total += math.prod(f.get_slice(name).get_shape())
    return total


def find_checkpoints(folder: str | Path) -> dict[int, Path]:
    """Intermediate checkpoints `step-N` (or `checkpoint-N`) under `folder`, by step; {} when none."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and any(path.glob("*.safetensors")):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


# --- storage precision -----------------------------------------------------------------------------
# Unit round-off (half the spacing of representable numbers, relative) of the dtypes checkpoints are stored in.
UNIT_ROUNDOFF = {"BF16": 2.0**-8, "F16": 2.0**-11, "F32": 2.0**-24, "F64": 2.0**-53}


def tensor_dtype(file: Path, name: str) -> str:
    """The safetensors dtype a tensor is stored in ('BF16', 'F16', 'F32', ...), from the header only."""
    with safe_open(file, framework="pt") as f:
        return f.get_slice(name).get_dtype()


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


def _top_subspaces(weight: torch.Tensor, k: int):
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
    `before_svd` / `after_svd` reuse `_top_subspaces` results when a tensor takes part in several pairs.
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
    u0, v0, s0 = before_svd or _top_subspaces(before, k_top)
    u1, v1, s1 = after_svd or _top_subspaces(after, k_top)
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


# --- whole checkpoints ---------------------------------------------------------------------------
def compare(folders: Mapping[str, str | Path], pairs: Sequence[tuple[str, str]], tolerance: float = 1e-5,
            top_k: int = 8, spectra: bool = True, spectrum_values: int = 64, device: str = "cpu",
            progress: bool = True) -> list[dict]:
    """One row per (pair, tensor) for checkpoints `folders` = {label: folder}; a pair is (after, before).

    Spectral measures (`spectra`) are taken for attention and MLP matrices; each checkpoint's SVD of a
    matrix is computed once and shared by the pairs it takes part in. Round-off floors use the coarser of
    the two checkpoints' stored dtypes.
    """
    for after, before in pairs:
        if after not in folders or before not in folders:
            raise ValueError(f"pair ({after!r}, {before!r}) names a checkpoint not in folders={list(folders)}")
    used = {label for pair in pairs for label in pair}
    folders = {k: v for k, v in folders.items() if k in used}
    files = {label: tensor_files(folder) for label, folder in folders.items()}
    rows = []
    start = time.perf_counter()
    names = set(next(iter(files.values())))
    with _few_threads_for_small_matrices(files, device):
        for name, tensors in tqdm(iter_tensors(folders, device), total=len(names), desc="tensors", leave=False,
                                  disable=not progress):
            rows += _compare_tensor(name, tensors, files, pairs, tolerance, top_k, spectra, spectrum_values)
    log.info("compared %d tensors x %d pairs in %.1f s", len(rows) // max(len(pairs), 1), len(pairs),
             time.perf_counter() - start)
    return rows


@contextlib.contextmanager
def _few_threads_for_small_matrices(files: Mapping[str, Mapping[str, Path]], device: str):
    """One CPU thread for the SVDs of small matrices: on the organism's 128 x 512 matrices a threaded LAPACK
    call spent ~13x longer synchronising than computing (0.19 s vs 0.015 s each on 2 cores)."""
    names = next(iter(files.values()))
    largest = 0
    for name, file in names.items():
        with safe_open(file, framework="pt") as f:
            largest = max(largest, *f.get_slice(name).get_shape(), 0)
    threads = torch.get_num_threads()
    if device == "cpu" and largest <= 2048:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _compare_tensor(name, tensors, files, pairs, tolerance, top_k, spectra, spectrum_values) -> list[dict]:
    """The rows of one tensor name for every pair; each checkpoint's SVD is computed once."""
    rows = []
    layer, module, group = classify(name)
    dtypes = {label: tensor_dtype(files[label][name], name) for label in tensors}
    # spectra for attention and MLP matrices only: an embedding's SVD would cost the most and say the least
    with_spectra = spectra and group in GROUPS and next(iter(tensors.values())).ndim == 2
    svds = {}
    if with_spectra:
        k = min(top_k, *next(iter(tensors.values())).shape)
        svds = {label: _top_subspaces(t, k) for label, t in tensors.items()}
    for after, before in pairs:
        dtype = max((dtypes[before], dtypes[after]), key=lambda d: UNIT_ROUNDOFF.get(d, 0.0))
        stats = update_stats(tensors[before], tensors[after], tolerance, top_k, with_spectra, spectrum_values,
                             svds.get(before), svds.get(after), dtype)
        rows.append({"pair": f"{after}-{before}", "name": name, "layer": layer, "module": module,
                     "group": group, "shape": list(tensors[after].shape), **stats})
    return rows


def group_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Per pair and group (attention, mlp, other, all): parameters, update energy per parameter, relative
    norm, sparsity, and the MLP share of per-parameter energy (mlp / (mlp + attention))."""
    df = pd.DataFrame(rows)
    df = pd.concat([df, df.assign(group="all")])
    df["delta_sq"] = df["delta_norm"] ** 2
    df["before_sq"] = df["before_norm"] ** 2
    g = df.groupby(["pair", "group"])[["n_params", "delta_sq", "before_sq", "n_unchanged"]].sum().reset_index()
    g["energy_per_param"] = g["delta_sq"] / g["n_params"]
    g["relative_norm"] = np.sqrt(g["delta_sq"] / g["before_sq"])
    g["sparsity"] = g["n_unchanged"] / g["n_params"]
    epp = g.pivot(index="pair", columns="group", values="energy_per_param")
    share = epp["mlp"] / (epp["mlp"] + epp["attention"])
    g["mlp_share"] = g["pair"].map(share)
    return g.drop(columns=["delta_sq", "before_sq"])


def _matrices(rows: Sequence[dict], pair: str, group: str | None = None) -> list[dict]:
    """Attention and MLP matrix rows (with spectra) of one pair, of one group or both."""
    return [r for r in rows if r["pair"] == pair and r["group"] in GROUPS and (group is None or r["group"] == group)
            and r.get("effective_rank") is not None]


def _estimate(values, statistic, n_bootstrap: int, confidence: float, seed: int) -> dict:
    """{value, ci}: `statistic` of the rows of `values` with a bootstrap over those rows (None when empty or
    undefined)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": None, "ci": None}
    with np.errstate(invalid="ignore", divide="ignore"):
        value = statistic(values)
        if not math.isfinite(value):
            return {"value": None, "ci": None}
        samples = np.array([statistic(values[i]) for i in stats.bootstrap_indices(len(values), n_bootstrap, seed)])
    if not np.isfinite(samples).any():
        return {"value": float(value), "ci": None}
    return {"value": float(value), "ci": list(stats.interval(samples, confidence))}


def _mean(v):
    return float(np.mean(v))


def _relative_norm(v):  # rows (||dW||^2, ||W||^2)
    return float(np.sqrt(v[:, 0].sum() / v[:, 1].sum())) if v[:, 1].sum() > 0 else float("nan")


def _share(v):  # rows per layer (attention energy, attention params, MLP energy, MLP params)
    attn, mlp = v[:, 0].sum() / v[:, 1].sum(), v[:, 2].sum() / v[:, 3].sum()
    return float(mlp / (mlp + attn)) if mlp + attn > 0 else float("nan")


def measures(rows: Sequence[dict], pair: str, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """What the verdict reads for one pair (after vs before), each {value, ci}; 'attn' = q, k, v, o and 'mlp' =
    gate, up, down (embeddings and norms are left out):

      - {attn,mlp}_structured_update: energy of the update's top-k singular directions relative to the
        weight's, sum_{i<=k} sigma_i(dW)^2 / ||W||_F^2, mean over the component's matrices (0 for no update; a
        same-norm low-rank update scores higher than a Gaussian one, whose energy is spread over all directions);
      - {attn,mlp}_rotation: largest principal angle (degrees, mean of left and right) of the weights' top
        singular subspace at its spectral gap, mean over the component's matrices;
      - mlp_share: MLP share of the update's energy per parameter (0.5 = equal per parameter), CI over layers;
      - effective_rank_ratio: the update's effective rank (round-off floor from the stored dtype) / full rank,
        mean over the matrices it changed beyond round-off;
      - {attn,mlp}_relative_norm: ||dW||_F / ||W||_F over the component (context).
    Intervals: bootstrap over matrices (over layers for mlp_share).
    """
    est = lambda values, statistic: _estimate(values, statistic, n_bootstrap, confidence, seed)  # noqa: E731
    out = {}
    for short, group in (("attn", "attention"), ("mlp", "mlp")):
        ms = _matrices(rows, pair, group)
        out[f"{short}_structured_update"] = est([m["structured_energy"] for m in ms], _mean)
        out[f"{short}_rotation"] = est([(m["subspace_angle_left"] + m["subspace_angle_right"]) / 2 for m in ms], _mean)
        out[f"{short}_relative_norm"] = est([(m["delta_norm"] ** 2, m["before_norm"] ** 2) for m in ms], _relative_norm)
    changed = [m["effective_rank_ratio"] for m in _matrices(rows, pair) if m["effective_rank"] > 0]
    out["effective_rank_ratio"] = est(changed, _mean)
    per_layer = {}
    for r in rows:
        if r["pair"] == pair and r["group"] in GROUPS and r["layer"] is not None:
            acc = per_layer.setdefault(r["layer"], np.zeros(4))
            j = 0 if r["group"] == "attention" else 2
            acc[j] += r["delta_norm"] ** 2
            acc[j + 1] += r["n_params"]
    layers = [v for v in per_layer.values() if v[1] > 0 and v[3] > 0]
    out["mlp_share"] = est(layers, _share)
    return out


def variant_measures(rows: Sequence[dict], treatments: Sequence[str], reference: str = "sft",
                     nulls: Sequence[str] = (), **kwargs) -> dict:
    """{T: measures(T vs reference)} for every treatment with rows, plus, when `nulls` are given, the
    per-matrix measures relative to the nulls (`null_relative`)."""
    pairs = {r["pair"] for r in rows}
    out = {t: measures(rows, f"{t}-{reference}", **kwargs) for t in treatments if f"{t}-{reference}" in pairs}
    for t, relative in null_relative(rows, list(out), [n for n in nulls if n in out], reference, **kwargs).items():
        out[t].update(relative)
    return out


NULL_RELATIVE = {"structured_update": "structured_energy", "rotation": "rotation"}


def null_relative(rows: Sequence[dict], treatments: Sequence[str], nulls: Sequence[str], reference: str = "sft",
                  n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{T: {attn,mlp}_{structured_update,rotation}_vs_null}: per matrix, T's value divided by the mean of the
    nulls' values for the same matrix (a null against the other nulls), then the mean over the component's
    matrices with a bootstrap interval over matrices. Pairing by matrix removes what matrices differ in (size,
    spectrum), so a random update of the same size reads about 1 and no change reads 0. Matrices that no null
    changed are left out."""
    def value(m, key):
        if key == "rotation":
            return (m.get("subspace_angle_left", np.nan) + m.get("subspace_angle_right", np.nan)) / 2
        return m.get(key, np.nan)

    by_pair = {}
    for r in rows:
        if r["group"] in GROUPS:
            by_pair.setdefault(r["pair"], {})[r["name"]] = r
    out = {}
    if len(nulls) < 2:
        return out
    for t in treatments:
        mine, others = by_pair.get(f"{t}-{reference}", {}), [by_pair[f"{n}-{reference}"] for n in nulls if n != t]
        out[t] = {}
        for short, group in (("attn", "attention"), ("mlp", "mlp")):
            for measure, key in NULL_RELATIVE.items():
                ratios = []
                for name, m in mine.items():
                    if m["group"] != group:
                        continue
                    floor = np.mean([value(o[name], key) for o in others if name in o] or [np.nan])
                    if floor > 0 and np.isfinite(value(m, key)):
                        ratios.append(value(m, key) / floor)
                out[t][f"{short}_{measure}_vs_null"] = _estimate(ratios, _mean, n_bootstrap, confidence, seed)
    return out


def summarize(rows: Sequence[dict], n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The summary: {key: {"value", "ci", "description"}} for RLVR's and SFT's updates (context for the verdict,
    which reads the per-treatment `variants`). Intervals bootstrap over matrices (layers for MLP shares); the
    whole-model norm and sparsity are single totals (ci None)."""
    g = group_table(rows).set_index(["pair", "group"])

    def pick(pair, group, column):
        value = float(g.loc[(pair, group), column]) if (pair, group) in g.index else float("nan")
        return {"value": value, "ci": None}

    by_pair = {p: measures(rows, p, n_bootstrap, confidence, seed) for p in ("rlvr-sft", "sft-base")}

    def angle(pair):  # both components' matrices together
        ms = _matrices(rows, pair)
        return _estimate([(m["subspace_angle_left"] + m["subspace_angle_right"]) / 2 for m in ms], _mean,
                         n_bootstrap, confidence, seed)

    entries = {
        "rlvr_update_mlp_share": (by_pair["rlvr-sft"]["mlp_share"],
                                  "MLP share of the RLVR update's energy per parameter: mlp / (mlp + attention), "
                                  "0.5 = equal per parameter; interval over layers"),
        "sft_update_mlp_share": (by_pair["sft-base"]["mlp_share"],
                                 "MLP share of the SFT update's energy per parameter (the same measure for SFT)"),
        "rlvr_update_effective_rank_ratio": (by_pair["rlvr-sft"]["effective_rank_ratio"],
                                             "mean over the attention and MLP matrices RLVR changed beyond round-off "
                                             "of its update's effective rank / largest possible rank (singular values "
                                             "below the stored dtype's round-off floor do not count)"),
        "sft_update_effective_rank_ratio": (by_pair["sft-base"]["effective_rank_ratio"],
                                            "the same ratio for the SFT update"),
        "rlvr_update_sparsity": (pick("rlvr-sft", "all", "sparsity"),
                                 "fraction of all parameters the RLVR update moved by at most the tolerance (or the "
                                 "stored dtype's round-off of the weight, when larger)"),
        "rlvr_relative_update_norm": (pick("rlvr-sft", "all", "relative_norm"),
                                      "||RLVR - SFT|| / ||SFT|| over all parameters"),
        "sft_relative_update_norm": (pick("sft-base", "all", "relative_norm"),
                                     "||SFT - base|| / ||base|| over all parameters"),
        "rlvr_top_subspace_angle": (angle("rlvr-sft"),
                                    "mean over attention and MLP matrices of the largest principal angle (degrees) "
                                    "between SFT's and RLVR's top singular subspaces (left and right), k at the spectral "
                                    "gap of SFT's singular values"),
        "sft_top_subspace_angle": (angle("sft-base"), "the same angle between base and SFT weights"),
    }
    return {key: {"value": _finite_or_none(e["value"]), "ci": e["ci"], "description": text}
            for key, (e, text) in entries.items()}


def dynamics(start: str | Path, checkpoints: Mapping[int, str | Path], tolerance: float = 1e-5,
             device: str = "cpu") -> list[dict]:
    """Update size along training: per step and group, the relative norm and energy per parameter of
    (checkpoint at step - start). Norms only, no SVD, so it stays cheap for many checkpoints."""
    out = []
    for step, folder in tqdm(sorted(checkpoints.items()), desc="checkpoints", leave=False):
        rows = compare({"start": start, "step": folder}, [("step", "start")], tolerance, spectra=False, device=device,
                       progress=False)
        for row in group_table(rows).to_dict("records"):
            out.append({"step": step, "group": row["group"], "relative_norm": row["relative_norm"],
                        "energy_per_param": row["energy_per_param"], "sparsity": row["sparsity"]})
    return out


def _treatment_folders(cfg) -> dict[str, Path]:
    """{T: folder} for the treatments (variants.treatments) other than RLVR whose checkpoint exists."""
    from rlvr_utils.treatments.registry import STUDY, names

    out = {}
    for t in names(cfg):
        folder = Path(cfg.model_ref(t))
        if t != STUDY and folder.is_dir() and any(folder.glob("*.safetensors")):
            out[t] = folder
    return out


def fingerprint(cfg) -> str:
    """What weights.json depends on: the `weights` params and the checkpoint files themselves (name, size,
    modification time), so that retrained checkpoints are analysed again even when no param changed."""
    parts = [cfg.fingerprint("weights", "variants")]
    folders = [Path(cfg.model_ref(stage)) for stage in ("base", "sft", "rlvr")]
    folders += list(_treatment_folders(cfg).values())
    folders += list(find_checkpoints(cfg.path("models", "rlvr_checkpoints")).values())
    for folder in folders:
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        parts += [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files] or [str(folder)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def analyze(cfg) -> dict:
    """Everything notebook 09 writes to metrics/weights.json for a run: per-matrix rows of the three
    pairs, per-group totals, the training dynamics of intermediate GRPO checkpoints, the summary, and
    `variants`: the verdict's measures for every treatment whose checkpoint exists, each against SFT."""
    from rlvr_utils.treatments.registry import STUDY, names

    w, confidence = cfg.weights, cfg.evaluation.confidence
    folders = {stage: local_folder(cfg.model_ref(stage)) for stage in ("base", "sft", "rlvr")}
    extra = _treatment_folders(cfg)
    skipped = [t for t in names(cfg) if t != STUDY and t not in extra]
    if skipped:
        log.warning("weights: no checkpoint for treatments %s: skipped", skipped)
    variant_pairs = [(t, "sft") for t in extra]
    start = time.perf_counter()
    rows = compare({**folders, **extra}, list(PAIRS) + variant_pairs, w.sparsity_tolerance, w.top_k, True,
                   w.spectrum_values, w.device)
    steps = find_checkpoints(cfg.path("models", "rlvr_checkpoints"))
    if steps:
        steps.setdefault(cfg.grpo.steps, folders["rlvr"])
        steps.setdefault(0, folders["sft"])
    log.info("weights: %d rows and %d checkpoints in %.1f s", len(rows), len(steps), time.perf_counter() - start)
    main_pairs = {f"{a}-{b}" for a, b in PAIRS}
    main_rows = [r for r in rows if r["pair"] in main_pairs]
    kwargs = dict(n_bootstrap=w.n_bootstrap, confidence=confidence, seed=cfg.seed)
    return {
        "summary": summarize(rows, **kwargs),
        "variants": variant_measures(rows, [STUDY, *extra], "sft", names(cfg, "null"), **kwargs),
        "pairs": [f"{a}-{b}" for a, b in PAIRS],
        "tolerance": w.sparsity_tolerance,
        "top_k": w.top_k,
        "parameters": parameter_count(folders["base"]),
        "groups": _records(group_table(main_rows)),
        "matrices": _records(main_rows),
        "dynamics": dynamics(folders["sft"], steps, w.sparsity_tolerance, w.device) if steps else [],
    }


def matrix_frame(result: dict) -> pd.DataFrame:
    """Attention and MLP weight matrices of a weights.json result, one row per (pair, matrix), with
    'subspace_angle' (mean of the left and right largest principal angles) and 'stable_rank_ratio'."""
    df = pd.DataFrame(result["matrices"])
    if "effective_rank" not in df:
        return df.iloc[:0]
    df = df[df["group"].isin(GROUPS) & df["effective_rank"].notna()].copy()
    df["layer"] = df["layer"].astype(int)
    df["module"] = pd.Categorical(df["module"], [m for m in MODULES if m in set(df["module"])], ordered=True)
    df["subspace_angle"] = (df["subspace_angle_left"] + df["subspace_angle_right"]) / 2
    df["stable_rank_ratio"] = df["stable_rank"] / df["max_rank"]
    return df.reset_index(drop=True)


def spectra_frame(result: dict) -> pd.DataFrame:
    """Long table of the updates' singular values: pair, layer, module, group, index (1 = largest),
    singular_value and normalised (divided by the largest), for spectrum plots."""
    rows = []
    for m in matrix_frame(result).itertuples():
        top = m.singular_values[0] if m.singular_values else 0
        rows += [{"pair": m.pair, "layer": m.layer, "module": m.module, "group": m.group, "index": i + 1,
                  "singular_value": s, "normalised": s / top}
                 for i, s in enumerate(m.singular_values) if top > 0]
    out = pd.DataFrame(rows, columns=["pair", "layer", "module", "group", "index", "singular_value", "normalised"])
    out["module"] = pd.Categorical(out["module"], [m for m in MODULES if m in set(out["module"])], ordered=True)
    return out


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _records(records) -> list[dict]:
    """Rows (a DataFrame or dicts) as JSON-safe dicts: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(records, pd.DataFrame):
        records = records.to_dict("records")
    out = []
    for rec in records:
        clean = {}
        for key, value in rec.items():
            value = value.item() if isinstance(value, np.generic) else value
            clean[key] = _finite_or_none(value) if isinstance(value, float) else value
        out.append(clean)
    return out
