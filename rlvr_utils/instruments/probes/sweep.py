"""Probing sweeps: every model x target x layer x site, the noise floor, and the headline numbers read off
them by select-then-score.

Every probe of a target shares one split and one set of resamples (`maths.prepare`), so differences between
layers and models are paired. The layer and site a headline number is read at are chosen on validation, and
the choice is made again in every bootstrap resample of validation and test problems, so intervals include it.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rlvr_utils.core import stats
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.instruments.probes.maths import Prepared, ProbeOutcome, control_labels, prepare, probe
from rlvr_utils.instruments.probes.targets import ProbeTarget
from rlvr_utils.models.families import site_name
from rlvr_utils.treatments.registry import REFERENCE, STUDY

log = logging.getLogger(__name__)

SUMMARY_SITE = "hook_resid_post"  # the residual stream: what a layer has made available downstream


# --- one run over models x targets x layers x sites ---------------------------------------------
class StoreReader:
    """Activations at (cache row, position) pairs from an `activations.ActivationStore`; each pair must
    lie in one of the extracted `selections`. Position lookups are built once per model and selection."""

    def __init__(self, store, selections=("completion", "last_prompt")):
        self.store, self.selections, self._lookups = store, selections, {}

    def _lookup(self, model_name: str, selection: str) -> dict[tuple[int, int], int]:
        key = (model_name, selection)
        if key not in self._lookups:
            index = np.asarray(self.store.index(model_name, selection)).tolist()
            self._lookups[key] = {(r, p): i for i, (r, p) in enumerate(index)}
        return self._lookups[key]

    def __call__(self, model_name: str, site: str, rows, positions) -> np.ndarray:
        """Activations [n, d] of `site` (e.g. 'blocks.2.hook_resid_post') at the given pairs."""
        wanted = list(zip(np.asarray(rows).tolist(), np.asarray(positions).tolist()))
        extracted = [s for s in self.selections if s in self.store.meta(model_name)["positions"]]
        source, where = np.full(len(wanted), -1), np.zeros(len(wanted), dtype=int)
        for k, selection in enumerate(extracted):
            lookup = self._lookup(model_name, selection)
            for j, pair in enumerate(wanted):
                if source[j] < 0 and pair in lookup:
                    source[j], where[j] = k, lookup[pair]
        if (source < 0).any():
            missing = [wanted[j] for j in np.flatnonzero(source < 0)[:5]]
            raise ValueError(f"{model_name} {site}: no stored activation at (row, position) {missing} "
                             f"({(source < 0).sum()} missing) in the extracted selections {extracted}")
        out = None
        for k, selection in enumerate(extracted):
            mine = source == k
            if mine.any():
                data, _ = self.store.read(model_name, site, selection)
                out = np.empty((len(wanted), data.shape[1]), dtype=np.float32) if out is None else out
                out[mine] = data[where[mine]]
        return out


_COLUMNS = ["model", "target", "layer", "site", "metric", "value", "ci_low", "ci_high", "C", "n_train",
            "n_validation", "n_test", "n_test_problems", "n_test_seen"]


def _records(model, prep: Prepared, layer, site, outcome: ProbeOutcome, per_resample, confidence) -> list[dict]:
    split, groups = prep.split, prep.target.groups
    common = {"model": model, "target": prep.target.name, "layer": layer, "site": site, "C": outcome.C,
              "n_train": len(split.train), "n_validation": len(split.validation), "n_test": len(split.test),
              "n_test_problems": len(np.unique(groups[split.test])), "n_test_seen": int(split.seen[split.test].sum())}
    out = []
    for metric, value in outcome.point().items():
        lo, hi = stats.interval(per_resample[metric], confidence) if np.isfinite(per_resample[metric]).any() \
            else (float("nan"), float("nan"))
        out.append({**common, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi})
    return out


def run(read: Callable[[str, str, np.ndarray, np.ndarray], np.ndarray], targets: dict[str, list[ProbeTarget]],
        layers: list[int], sites: list[str], Cs=(0.01, 0.1, 1.0), max_iter: int = 200, tol: float = 1e-3,
        test_fraction: float = 0.3, validation_fraction: float = 0.2, n_bootstrap: int = 200,
        confidence: float = 0.95, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Probe every model's activations for its targets at every layer and site.

    `read(model, site_name, rows, positions)` returns activations [n, d]; `targets` maps a model name
    to its targets (any names). Targets with the same name must have the same examples for every model
    (only the labels may differ, as for 'correct'), so that all share one split and one set of resamples.
    Returns a tidy table (one row per model x target x layer x site x metric, with value, ci_low,
    ci_high) and the bootstrap samples {(model, target, layer, site): {metric: array}} for summaries.
    """
    shared: dict[str, Prepared] = {}
    for model, model_targets in targets.items():
        for t in model_targets:
            if t.name not in shared:
                shared[t.name] = prepare(t, test_fraction, validation_fraction, n_bootstrap, seed)
            elif not (np.array_equal(shared[t.name].target.rows, t.rows)
                      and np.array_equal(shared[t.name].target.positions, t.positions)):
                raise ValueError(f"target {t.name!r} of model {model!r} has other examples than the same target of "
                                 "another model; a paired comparison needs the same ones")
    records, samples = [], {}
    jobs = [(m, t, l, s) for m, ts in targets.items() for t in ts for l in layers for s in sites]
    started = time.perf_counter()
    for model, target, layer, site in tqdm(jobs, desc="probes"):
        prep = shared[target.name]
        prep = Prepared(target, prep.split, prep.validation_weights, prep.test_weights)  # this model's labels
        X = read(model, site_name(layer, site), target.rows, target.positions)
        outcome = probe(X, target, prep.split, control_labels(target.types, target.labels, seed), Cs, max_iter, tol)
        per_resample = outcome.samples(prep.validation_weights, prep.test_weights)
        samples[(model, target.name, layer, site)] = per_resample
        records += _records(model, prep, layer, site, outcome, per_resample, confidence)
    log.info("%d probes (each with its control) in %.1f s", len(jobs), time.perf_counter() - started)
    return pd.DataFrame.from_records(records, columns=_COLUMNS), samples


def noise_floor(read, model: str, target: ProbeTarget, layers: list[int], sites: list[str], Cs=(0.01, 0.1, 1.0),
                max_iter: int = 200, tol: float = 1e-3, test_fraction: float = 0.3, validation_fraction: float = 0.2,
                n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0, n_shuffles: int = 5) -> dict:
    """The selectivity a representation with no information reaches through the same pipeline.

    `model`'s activations at every layer and site, with their rows shuffled over examples (the features keep
    their distribution but lose every link to the labels and types), go through the same split, probes,
    control task and validation choice of layer (among `layers` x `sites`) as the real ones. Pooled over
    `n_shuffles` shuffles, so that the interval holds the spread of the fits as well as that of the problems:
    {"value": mean selectivity, "ci": interval of the pooled resamples, "samples": array}.
    """
    prep = prepare(target, test_fraction, validation_fraction, n_bootstrap, seed)
    control = control_labels(target.types, target.labels, seed)
    values, pooled = [], []
    for k in range(n_shuffles):
        order = np.random.default_rng([seed, 7919, k]).permutation(len(target))
        points, per_place = {}, {}
        for layer, site in itertools.product(layers, sites):
            X = np.asarray(read(model, site_name(layer, site), target.rows, target.positions))[order]
            outcome = probe(X, target, prep.split, control, Cs, max_iter, tol)
            points[(layer, site)] = outcome.point()
            per_place[(layer, site)] = outcome.samples(prep.validation_weights, prep.test_weights)
        value, s, _ = choose(points, per_place, "validation_selectivity", "selectivity")
        values.append(value)
        pooled.append(s)
    pooled = np.concatenate(pooled)
    return {"value": float(np.nanmean(values)), "ci": list(stats.interval(pooled, confidence)), "samples": pooled}


# --- headline numbers ------------------------------------------------------------------------
def estimate(value: float, samples: np.ndarray, confidence: float, n: int | None = None) -> Estimate:
    """A headline number with the percentile interval of its bootstrap samples (none when no resample has one)."""
    if not np.isfinite(value):
        return Estimate.undefined(n)
    if not np.isfinite(samples).any():
        return Estimate(value, (None, None), "bootstrap", n)
    return Estimate(value, stats.interval(samples, confidence), "bootstrap", n)


def entry(est: Estimate, description: str) -> dict:
    """A summary entry {value, ci (None without an interval), description} for the chapter's tables."""
    return {"value": est.value, "ci": list(est.ci) if est.defined else None, "description": description}


def choose(points: dict, per_place: dict, select: str, score: str) -> tuple[float, np.ndarray, tuple | None]:
    """Select-then-score: the place (layer, site) with the best validation value `select`, scored by `score`
    on test. The choice is made again in every resample (validation and test problems resampled together),
    so the interval includes the uncertainty of the choice. Returns (value, per-resample values, place)."""
    places = list(points)
    val = np.array([points[p][select] for p in places], dtype=float)
    if not np.isfinite(val).any():
        n = len(next(iter(per_place.values()))[score])
        return float("nan"), np.full(n, np.nan), None
    best = int(np.nanargmax(val))
    val_s = np.stack([per_place[p][select] for p in places])
    test_s = np.stack([per_place[p][score] for p in places])
    finite = np.isfinite(val_s)
    choice = np.argmax(np.where(finite, val_s, -np.inf), axis=0)
    chosen = np.where(finite.any(axis=0), test_s[choice, np.arange(test_s.shape[1])], np.nan)
    return float(points[places[best]][score]), chosen, places[best]


def _points(table: pd.DataFrame) -> dict:
    by_place = table.groupby(["model", "target", "layer", "site"])
    return {key: dict(zip(rows.metric, rows.value)) for key, rows in by_place}


def select_then_score(table: pd.DataFrame, samples: dict, model: str, target: str,
                      select: str = "validation_selectivity", score: str = "selectivity",
                      sites: list[str] | None = None) -> tuple[float, np.ndarray, tuple | None]:
    """`choose` over every (layer, site) probed for `model` and `target` (or only at `sites`)."""
    here = table[(table.model == model) & (table.target == target)]
    if sites is not None:
        here = here[here.site.isin(sites)]
    if here.empty:
        raise ValueError(f"no probes for model={model!r}, target={target!r}" + (f" at sites {sites}" if sites else ""))
    points = {(l, s): v for (_, _, l, s), v in _points(here).items()}
    return choose(points, {p: samples[(model, target, *p)] for p in points}, select, score)


def best_layer(table: pd.DataFrame, model: str, target: str, site: str = SUMMARY_SITE,
               metric: str = "validation_selectivity") -> int:
    """The layer where a target's probe scores highest on `metric` at `site` (a validation metric: the
    test set is not used to choose)."""
    rows = table[(table.model == model) & (table.target == target) & (table.site == site)
                 & (table.metric == metric)]
    if rows.empty:
        raise ValueError(f"no probes for model={model!r}, target={target!r}, site={site!r}")
    return int(rows.loc[rows.value.idxmax(), "layer"])


def decodable_layer(table: pd.DataFrame, model: str, target: str, margin: float,
                    site: str = SUMMARY_SITE) -> int | None:
    """The first layer whose probe beats the majority-class baseline by more than `margin` with its
    whole interval (lower bound of accuracy - majority accuracy); None if no layer does."""
    rows = table[(table.model == model) & (table.target == target) & (table.site == site)
                 & (table.metric == "over_majority") & (table.ci_low > margin)]
    return None if rows.empty else int(rows.layer.min())


def _where(place) -> str:
    return "no layer (no example of a seen type)" if place is None else \
        f"layer {place[0]}, {place[1].removeprefix('hook_')}"


def summary(table: pd.DataFrame, samples: dict, models: list[str], n_layers: int, decodable_margin: float,
            confidence: float = 0.95, site: str = SUMMARY_SITE) -> dict:
    """The headline numbers ({key: {value, ci, description}}), all at `site` (the residual stream: what the
    layers so far have made available). Selectivities are read at the layer chosen on validation, the choice
    re-made in every bootstrap resample."""
    out = {}
    have = set(table.target)
    if "intermediate" in have:
        for m in models:
            value, s, place = select_then_score(table, samples, m, "intermediate", sites=[site])
            out[f"probe_selectivity_intermediate_{m}"] = entry(
                estimate(value, s, confidence),
                f"{m}: selectivity (task - control accuracy on test examples of types seen in training) of the "
                f"intermediate-result probe at the layer most selective on validation ({_where(place)}; re-chosen in "
                "every resample)")
        if {REFERENCE, STUDY} <= set(models):
            out[f"probe_selectivity_gain_{STUDY}_vs_{REFERENCE}"] = entry(
                selectivity_gain(table, samples, STUDY, REFERENCE, "intermediate", confidence, site),
                f"{STUDY.upper()} minus {REFERENCE.upper()} intermediate-result selectivity, each at its own layer "
                "chosen on validation; paired bootstrap over the same validation and test problems")
    if "answer_last_digit" in have:
        for m in models:
            if not (table[(table.model == m) & (table.target == "answer_last_digit")]).size:
                continue
            layer = decodable_layer(table, m, "answer_last_digit", decodable_margin, site)
            out[f"answer_decodable_layer_{m}"] = {
                "value": float(n_layers if layer is None else layer), "ci": None,
                "description": f"{m}: first layer whose answer-digit probe on the residual stream beats the majority "
                               f"class by more than {decodable_margin} (lower {confidence:.0%} bound); "
                               f"{n_layers} (the number of layers) means never"}
            shown = n_layers - 1 if layer is None else layer
            rows = table[(table.model == m) & (table.target == "answer_last_digit") & (table.layer == shown)
                         & (table.site == site) & (table.metric == "selectivity")]
            out[f"probe_selectivity_answer_{m}"] = entry(
                estimate(float(rows.value.iloc[0]), samples[(m, "answer_last_digit", shown, site)]["selectivity"],
                         confidence),
                f"{m}: answer-digit probe selectivity at layer {shown} (the decodable layer, else the last)")
    if "correct" in have:
        for m in models:
            if not (table[(table.model == m) & (table.target == "correct")]).size:
                continue
            value, s, place = select_then_score(table, samples, m, "correct", "validation_accuracy", "over_majority",
                                                [site])
            out[f"probe_correct_over_majority_{m}"] = entry(
                estimate(value, s, confidence),
                f"{m}: accuracy of predicting its own answer's correctness from the last prompt token, minus the "
                f"majority-class baseline, at the layer most accurate on validation ({_where(place)})")
    return out


def selectivity_gain(table: pd.DataFrame, samples: dict, treatment: str, reference: str = REFERENCE,
                     target: str = "intermediate", confidence: float = 0.95, site: str = SUMMARY_SITE,
                     n: int | None = None) -> Estimate | None:
    """`treatment`'s selectivity for `target` at `site` minus the reference's, each at its own layer chosen on
    validation (re-chosen per resample), paired over the same resamples; None when either was not probed
    there. `n`: the problems resampled (validation and test)."""
    have = set(table[(table.target == target) & (table.site == site)].model)
    if not {reference, treatment} <= have:
        return None
    ref_value, ref_samples, _ = select_then_score(table, samples, reference, target, sites=[site])
    value, s, _ = select_then_score(table, samples, treatment, target, sites=[site])
    return estimate(value - ref_value, s - ref_samples, confidence, n)


def table_records(table: pd.DataFrame) -> list[dict]:
    """The probe table as JSON-safe rows (NaN, e.g. the selectivity of a target without seen types, as None)."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


