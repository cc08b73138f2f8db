"""Whole checkpoints compared: one row of update measures per (pair of checkpoints, tensor), per-group totals,
and the update's size along training.

A row's `group` is 'attention' (q, k, v, o, or fused qkv, with their biases), 'mlp' (gate, up, down) or 'other'
(embeddings, norms): the model family (rlvr_utils.models.families) tells which tensor is which, from the
checkpoint's config.json; the metrics keep the words 'attention' and 'mlp' of the files written before.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rlvr_utils.instruments.weights import checkpoints, maths
from rlvr_utils.models.families import Family, family_of

log = logging.getLogger(__name__)

GROUPS = ("attention", "mlp")
GROUP_OF = {"attn": "attention", "mlp": "mlp"}  # a family's component -> the metrics' group


def tensor_label(family: Family, name: str) -> tuple[int | None, str, str]:
    """(layer, module, group) of a tensor name: module is the matrix's short name (q, k, v, o, qkv, gate, up,
    down) or 'other', and group 'attention', 'mlp' or 'other'; layer is None outside the blocks."""
    short, component = family.matrix_of(name) or ("other", None)
    return family.layer_of(name), short, GROUP_OF.get(component, "other")


def compare(folders: Mapping[str, str | Path], pairs: Sequence[tuple[str, str]], tolerance: float = 1e-5,
            top_k: int = 8, spectra: bool = True, spectrum_values: int = 64, device: str = "cpu",
            progress: bool = True) -> list[dict]:
    """One row per (pair, tensor) for checkpoints `folders` = {label: folder}; a pair is (after, before).

    Spectral measures (`spectra`) are taken for attention and MLP matrices; each checkpoint's SVD of a
    matrix is computed once and shared by the pairs it takes part in. Round-off floors use the coarser of
    the two checkpoints' stored dtypes. The model family is the first checkpoint's.
    """
    for after, before in pairs:
        if after not in folders or before not in folders:
            raise ValueError(f"pair ({after!r}, {before!r}) names a checkpoint not in folders={list(folders)}")
    used = {label for pair in pairs for label in pair}
    folders = {k: v for k, v in folders.items() if k in used}
    family = family_of(checkpoints.model_type(next(iter(folders.values()))))
    files = {label: checkpoints.tensor_files(folder) for label, folder in folders.items()}
    rows = []
    start = time.perf_counter()
    names = set(next(iter(files.values())))
    with _few_threads_for_small_matrices(files, device):
        for name, tensors in tqdm(checkpoints.iter_tensors(folders, device), total=len(names), desc="tensors",
                                  leave=False, disable=not progress):
            rows += _compare_tensor(family, name, tensors, files, pairs, tolerance, top_k, spectra, spectrum_values)
    log.info("compared %d tensors x %d pairs in %.1f s", len(rows) // max(len(pairs), 1), len(pairs),
             time.perf_counter() - start)
    return rows


@contextlib.contextmanager
def _few_threads_for_small_matrices(files: Mapping[str, Mapping[str, Path]], device: str):
    """One CPU thread for the SVDs of small matrices: on the organism's 128 x 512 matrices a threaded LAPACK
    call spent ~13x longer synchronising than computing (0.19 s vs 0.015 s each on 2 cores)."""
    names = next(iter(files.values()))
    largest = max((max(checkpoints.tensor_shape(file, name), default=0) for name, file in names.items()), default=0)
    threads = torch.get_num_threads()
    if device == "cpu" and largest <= 2048:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _compare_tensor(family, name, tensors, files, pairs, tolerance, top_k, spectra, spectrum_values) -> list[dict]:
    """The rows of one tensor name for every pair; each checkpoint's SVD is computed once."""
    rows = []
    layer, module, group = tensor_label(family, name)
    dtypes = {label: checkpoints.tensor_dtype(files[label][name], name) for label in tensors}
    # spectra for attention and MLP matrices only: an embedding's SVD would cost the most and say the least
    with_spectra = spectra and group in GROUPS and next(iter(tensors.values())).ndim == 2
    svds = {}
    if with_spectra:
        k = min(top_k, *next(iter(tensors.values())).shape)
        svds = {label: maths.top_subspaces(t, k) for label, t in tensors.items()}
    for after, before in pairs:
        dtype = max((dtypes[before], dtypes[after]), key=lambda d: maths.UNIT_ROUNDOFF.get(d, 0.0))
        stats = maths.update_stats(tensors[before], tensors[after], tolerance, top_k, with_spectra, spectrum_values,
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


def dynamics(start: str | Path, steps: Mapping[int, str | Path], tolerance: float = 1e-5,
             device: str = "cpu") -> list[dict]:
    """Update size along training: per step and group, the relative norm and energy per parameter of
    (checkpoint at step - start). Norms only, no SVD, so it stays cheap for many checkpoints."""
    out = []
    for step, folder in tqdm(sorted(steps.items()), desc="checkpoints", leave=False):
        rows = compare({"start": start, "step": folder}, [("step", "start")], tolerance, spectra=False, device=device,
                       progress=False)
        for row in group_table(rows).to_dict("records"):
            out.append({"step": step, "group": row["group"], "relative_norm": row["relative_norm"],
                        "energy_per_param": row["energy_per_param"], "sparsity": row["sparsity"]})
    return out
