"""End-to-end CKA: each model's own attention and MLP outputs, compared with the reference's at the same tokens
(metrics/cka.json).

Two kinds of comparison, both from the activation store:
  - every treatment against the reference (SFT): 1 - debiased CKA per layer and component, the mean over layers
    with its joint bootstrap interval over problems (`variants`, read by the verdict). End to end, so a change
    upstream of a component counts as its change (see `same_input` for the component's own change);
  - the training stages against each other (base vs SFT, base vs RLVR, SFT vs RLVR): per cell the estimate, its
    bootstrap interval, the biased estimate and a permutation baseline; cross-layer matrices; the biased
    estimator's inflation at small n on this run's data. These put the treatments' changes on a scale.

`run_dynamics` compares SFT with each of GRPO's intermediate checkpoints the same way.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from rlvr_utils.activations.extraction import extract
from rlvr_utils.activations.store import ActivationStore
from rlvr_utils.core import deps
from rlvr_utils.core.artifacts import checkpoint_fingerprint
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.core.stats import interval
from rlvr_utils.instruments.base import Instrument, Measures
from rlvr_utils.instruments.cka.maths import (COMPONENT_SITES, as_matrix, bootstrap_cka, cka_matrix,
                                              inflation_curve, linear_cka, permutation_cka)
from rlvr_utils.models.families import site_name
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PARAMS = ("cka", "extract")  # extract: run_dynamics extracts GRPO's checkpoints as the main store was

# The context pairs (how far each training stage moved the model); the treatments are compared with the reference.
PAIRS = (("base", REFERENCE), ("base", STUDY), (REFERENCE, STUDY))
END_TO_END = "end-to-end (mixes upstream changes)"
SUMMARY_SITES = ("hook_attn_out", "hook_mlp_out", "hook_resid_post")


def short(site: str) -> str:
    return site.removeprefix("hook_")


def shared_layers(store, stages) -> list[int]:
    """Layers stored for every stage; the stages must have been extracted from one token cache (same rows)."""
    metas = [store.meta(s) for s in stages]
    layers = sorted(set.intersection(*(set(m["layers"]) for m in metas)))
    caches = {m["token_cache"] for m in metas}
    if len(caches) != 1:
        raise ValueError(f"stages {list(stages)} were extracted from different token caches {sorted(caches)}: "
                         "re-run the extraction so every model sees the same tokens")
    if not layers:
        raise ValueError(f"stages {list(stages)} share no extracted layer")
    return layers


def _paired(store, a: str, b: str, site: str, layer: int, selection: str, device: str = "cpu"):
    """(X, Y, problem of each row) of two stages at one site, after checking they stored the same rows; X and Y
    on `device`, where every product of the estimators then runs."""
    X, rows = store.read(a, site_name(layer, site), selection)
    Y, rows_b = store.read(b, site_name(layer, site), selection)
    if not np.array_equal(rows, rows_b):
        raise ValueError(f"{a} and {b} stored different rows for {site} at {selection!r}")
    return (as_matrix(X, f"{a} {site_name(layer, site)}").to(device),
            as_matrix(Y, f"{b} {site_name(layer, site)}").to(device), rows)


def _layer(store, stage: str, site: str, layer: int, selection: str, device: str = "cpu"):
    name = site_name(layer, site)
    return as_matrix(store.read(stage, name, selection)[0], f"{stage} {name}").to(device)


# --- every treatment against the reference ------------------------------------------------------------------
def compare_variant(store, selection: str, reference: str, name: str, layers: Sequence[int], debiased: bool = True,
                    n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0,
                    device: str = "cpu") -> tuple[Measures, list[dict]]:
    """({attn_change_end_to_end, mlp_change_end_to_end: Estimate}, [per-layer cells]) of one treatment: 1 - CKA
    of its stored outputs and the reference's, the mean over layers with its joint bootstrap interval (the same
    problem resamples for every layer)."""
    measures, cells = {}, []
    for component, site in COMPONENT_SITES.items():
        values, samples = [], []
        for layer in layers:
            X, Y, rows = _paired(store, reference, name, site, layer, selection, device)
            value, boot = linear_cka(X, Y, debiased), bootstrap_cka(X, Y, rows, n_bootstrap, debiased, seed)
            values.append(value)
            samples.append(boot)
            cells.append({"variant": name, "component": component, "site": site, "layer": layer, "n": int(X.shape[0]),
                          "cka": value, "ci": list(interval(boot, confidence)), "change": 1.0 - value,
                          "change_ci": list(interval(1.0 - boot, confidence))})
        measures[f"{component}_change_end_to_end"] = Estimate(
            1.0 - np.mean(values), interval(1.0 - np.mean(samples, 0), confidence), "bootstrap",
            int(len(np.unique(rows))))
    return measures, cells


def compare_variants(store, selection: str, reference: str, variants: Sequence[str], debiased: bool = True,
                     n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> tuple[dict, list[dict]]:
    """({variant: measures}, [cells]) of `compare_variant` for several treatments, on the layers they share."""
    if not variants:
        return {}, []
    layers = shared_layers(store, [reference, *variants])
    summary, cells = {}, []
    for name in variants:
        summary[name], mine = compare_variant(store, selection, reference, name, layers, debiased, n_bootstrap,
                                              confidence, seed)
        cells += mine
    return summary, cells


# --- the training stages against each other ------------------------------------------------------------------
def compare_stages(store, selection: str, sites: Sequence[str] = SUMMARY_SITES, pairs=PAIRS,
                   debiased: bool = True, n_bootstrap: int = 200, n_permutations: int = 20,
                   confidence: float = 0.95, seed: int = 0, device: str = "cpu") -> dict:
    """Linear CKA per model pair, component and layer at one position selection of an ActivationStore.

    Returns {"cells": [...], "cross_layer": [...], "inflation": [...], "summary": {...}, ...}. Every cell
    carries the estimate, a bootstrap interval over problems, the biased estimate for comparison, and a
    permutation baseline; the summary averages over layers with the joint bootstrap (same resamples for
    every layer, component and pair).
    """
    stages = sorted({s for p in pairs for s in p})
    layers = shared_layers(store, stages)

    cells, cross, boot, perms = [], [], {}, []
    for a, b in pairs:
        for site in sites:
            Xs, Ys = [], []
            for layer in layers:
                X, Y, rows = _paired(store, a, b, site, layer, selection, device)
                samples = bootstrap_cka(X, Y, rows, n_bootstrap, debiased, seed)
                perm = permutation_cka(X, Y, n_permutations, debiased, seed + layer)
                boot[(a, b, site, layer)] = samples
                perms.append(perm)
                cells.append({"pair": f"{a}_{b}", "site": site, "layer": layer, "n": int(X.shape[0]),
                              "value": linear_cka(X, Y, debiased), "ci": list(interval(samples, confidence)),
                              "biased": linear_cka(X, Y, False), "permutation_mean": float(perm.mean()),
                              "permutation_hi": float(np.quantile(perm, confidence))})
                # the cross-layer matrix reads each layer again when it needs it: never every layer at once
                Xs.append(functools.partial(_layer, store, a, site, layer, selection, device))
                Ys.append(functools.partial(_layer, store, b, site, layer, selection, device))
            cross.append({"pair": f"{a}_{b}", "site": site, "layers": layers,
                          "matrix": cka_matrix(Xs, Ys, debiased).tolist()})

    summary = {}
    for a, b in pairs:
        for site in sites:
            value = float(np.mean([c["value"] for c in cells if c["pair"] == f"{a}_{b}" and c["site"] == site]))
            joint = np.mean([boot[(a, b, site, l)] for l in layers], axis=0)
            summary[f"cka_{a}_{b}_{short(site)}"] = {
                "value": value, "ci": list(interval(joint, confidence)),
                "description": f"{'debiased' if debiased else 'biased'} linear CKA of {a} vs {b} "
                               f"{short(site)}, mean over layers"}
        if {"hook_attn_out", "hook_mlp_out"} <= set(sites):
            samples = np.mean([boot[(a, b, "hook_mlp_out", l)] - boot[(a, b, "hook_attn_out", l)] for l in layers], 0)
            value = (summary[f"cka_{a}_{b}_mlp_out"]["value"] - summary[f"cka_{a}_{b}_attn_out"]["value"])
            summary[f"cka_{a}_{b}_mlp_minus_attn"] = {
                "value": value, "ci": list(interval(samples, confidence)),
                "description": f"MLP-output minus attention-output CKA of {a} vs {b}, mean over layers "
                               "(> 0: MLP outputs changed less than attention outputs)"}
    pooled = np.concatenate(perms)
    summary["cka_permutation_baseline"] = {
        "value": float(pooled.mean()), "ci": list(interval(pooled, confidence)),
        "description": "CKA with one model's rows shuffled (chance level), pooled over pairs, components, layers"}

    # the estimator check uses base vs RLVR where available: the pair with the most to show
    first, second = ("base", STUDY) if ("base", STUDY) in pairs else pairs[-1]
    last = layers[-1]
    X, Y, rows = _paired(store, first, second, sites[-1], last, selection, device)
    return {"selection": selection, "debiased": debiased, "layers": layers, "sites": list(sites),
            "pairs": [f"{a}_{b}" for a, b in pairs], "confidence": confidence, "n_bootstrap": n_bootstrap,
            "n_permutations": n_permutations, "cells": cells, "cross_layer": cross,
            "inflation": {"pair": f"{first}_{second}", "site": sites[-1], "layer": last,
                          "d": int(X.shape[1]), "points": inflation_curve(X, Y, rows, seed=seed)},
            "summary": summary}


# --- the instrument -------------------------------------------------------------------------------------------------
class CKA(Instrument):
    """metrics/cka.json from the run's activation store: the stage pairs whose activations exist, and every
    treatment whose activations (and checkpoint) exist against the reference."""

    name = "cka"
    reads = ("activations",)

    def treatments(self, cfg) -> list[str]:
        have = ActivationStore(cfg.path("activations")).models()
        return registry.available(cfg, have) if REFERENCE in have else []

    def prepare(self, cfg, treatments: list[str]) -> dict:
        store = ActivationStore(cfg.path("activations"))
        have = set(store.models())
        pairs = [p for p in PAIRS if set(p) <= have]
        if not pairs:
            raise FileNotFoundError(f"no pair of {sorted({s for p in PAIRS for s in p})} has activations in "
                                    f"{store.folder} (found {sorted(have)}): run 04_extract first")
        layers = shared_layers(store, [REFERENCE, *treatments]) if treatments else []
        return {"store": store, "pairs": pairs, "layers": layers, "cells": []}

    def measure(self, cfg, treatment: str, shared: dict) -> Measures:
        c = cfg.cka
        measures, cells = compare_variant(shared["store"], c.position, REFERENCE, treatment, shared["layers"],
                                          c.debiased, c.n_bootstrap, c.confidence, cfg.seed, run_device(cfg))
        shared["cells"] += cells
        return measures

    def report(self, cfg, shared: dict, variants: dict[str, Measures]) -> dict:
        c = cfg.cka
        result = compare_stages(shared["store"], c.position, c.sites, shared["pairs"], c.debiased, c.n_bootstrap,
                                c.n_permutations, c.confidence, cfg.seed, run_device(cfg))
        return {**result, "variant_cells": shared["cells"], "variants_reference": REFERENCE,
                "variants_label": END_TO_END}


# --- training dynamics --------------------------------------------------------------------------------------
def run_dynamics(cfg, cache) -> list[dict]:
    """Debiased CKA between SFT and each of GRPO's intermediate checkpoints, per layer and component, on the
    same tokens and positions as the main comparison: how the change grows with training steps. The
    checkpoints' activations go to runs/<name>/activations_dynamics/ with the same extraction (resumable,
    skipped when this module's params and code and the checkpoint are unchanged). Rows: step, layer, site, cka.
    Empty when the run kept no checkpoints."""
    from rlvr_utils.models.loading import load  # transformers: only when there are checkpoints to load

    folders = sorted(cfg.path("models", "rlvr_checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    main, out_dir = ActivationStore(cfg.path("activations")), cfg.path("activations_dynamics")
    e, c = cfg.extract, cfg.cka
    made_by = deps.fingerprint(cfg, __name__)
    rows = []
    for folder in folders:
        model, _ = load(str(folder), cfg, run_device(cfg))
        extract(model, cache, out_dir, folder.name, sites=c.sites, layers=e.layers, positions=[c.position],
                batch_size=e.batch_size, shard_size=e.shard_size, fingerprint=made_by + checkpoint_fingerprint(folder),
                dtype=e.dtype, inputs=[folder])
        store = ActivationStore(out_dir)
        for name in store.meta(folder.name)["site_names"]:
            X, _ = main.read(REFERENCE, name, c.position)
            Y, _ = store.read(folder.name, name, c.position)
            rows.append({"step": int(folder.name.split("-")[1]), "layer": int(name.split(".")[1]),
                         "site": short(name.split(".")[2]),
                         "cka": linear_cka(np.asarray(X), np.asarray(Y), debiased=c.debiased)})
    return rows
