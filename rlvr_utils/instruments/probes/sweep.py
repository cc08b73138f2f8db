"""Probing sweeps: every model x target x layer x site, the noise floor, the power check, and the headline
numbers read off them by select-then-score.

Every probe of a target shares one cross-fitting plan (`maths.plan`: folds, control labels, resamples), so
differences between layers and models are paired. The layer and site a headline number is read at are chosen in
each fold on that fold's validation problems only, and the choice is made again in every bootstrap resample (on
the resampled validation problems), so intervals include it; a fold's test problems are never read to choose.
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
from rlvr_utils.instruments.probes.maths import Plan, Scored, cross_fit, most_common, plan
from rlvr_utils.instruments.probes.targets import ProbeTarget
from rlvr_utils.models.families import site_name
from rlvr_utils.treatments.registry import REFERENCE, STUDY

log = logging.getLogger(__name__)

SUMMARY_SITE = "hook_resid_post"  # the residual stream: what a layer has made available downstream


# --- readers: the activation store, and the store with a planted target ------------------------------
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


class Planted:
    """A reader with a perfectly decodable target written into one model's activations at one site: the power
    check of the probes (does a known new feature give a selectivity gain clear of the nulls'?).

    Every example of `target` read from `model` at `site` gets `strength` x (the mean norm of the activations
    read there) along its label's direction: one fixed random unit direction per class, so the label is
    linearly decodable from the plant alone at any strength, and the plant carries nothing about the control
    task (a random function of the type). Every other read is `read`'s, unchanged."""

    def __init__(self, read: Callable, model: str, site: str, target: ProbeTarget, strength: float, seed: int = 0):
        if strength < 0:
            raise ValueError(f"strength={strength} must be >= 0 (a multiple of the activations' mean norm)")
        self.read, self.model, self.site, self.strength, self.seed = read, model, site, strength, seed
        self.classes = {c: i for i, c in enumerate(np.unique(target.labels))}
        self.labels = {(int(r), int(p)): self.classes[y] for r, p, y in zip(target.rows, target.positions,
                                                                             target.labels)}

    def __call__(self, model: str, site: str, rows, positions) -> np.ndarray:
        X = self.read(model, site, rows, positions)
        if model != self.model or site != self.site:
            return X
        X = np.array(X, dtype=np.float32)  # a copy: the store's arrays are read-only
        which = np.array([self.labels.get((int(r), int(p)), -1) for r, p in zip(rows, positions)])
        directions = np.random.default_rng(self.seed).normal(size=(len(self.classes), X.shape[1]))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        scale = self.strength * np.linalg.norm(X, axis=1).mean()
        X[which >= 0] += scale * directions[which[which >= 0]]
        return X


# --- one run over models x targets x layers x sites ---------------------------------------------
_COLUMNS = ["model", "target", "layer", "site", "metric", "value", "ci_low", "ci_high", "C", "control_C", "n_folds",
            "n_train", "n_validation", "n_test", "n_test_problems", "n_test_seen"]
TABLE_METRICS = {"validation_accuracy": "accuracy", "validation_selectivity": "selectivity"}  # pooled validation


def _ci(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    return stats.interval(samples, confidence) if np.isfinite(samples).any() else (float("nan"), float("nan"))


def _records(model, fp: Plan, layer, site, scored: Scored, confidence) -> list[dict]:
    groups = fp.target.groups
    common = {"model": model, "target": fp.target.name, "layer": layer, "site": site, "C": most_common(scored.C),
              "control_C": most_common(scored.control_C), "n_folds": len(fp.folds),
              "n_train": int(np.mean([len(s.train) for s in fp.folds])),
              "n_validation": int(np.mean([len(s.validation) for s in fp.folds])), "n_test": len(fp.target),
              "n_test_problems": len(np.unique(groups)), "n_test_seen": int(fp.scored.sum())}
    values = {**scored.test, **{k: scored.validation[m] for k, m in TABLE_METRICS.items()}}
    return [{**common, "metric": metric, "value": float(v[0]), "ci_low": _ci(v[1:], confidence)[0],
             "ci_high": _ci(v[1:], confidence)[1]} for metric, v in values.items()]


def plans(targets: dict[str, list[ProbeTarget]], test_fraction: float = 0.2, validation_fraction: float = 0.2,
          n_bootstrap: int = 200, seed: int = 0) -> dict[str, Plan]:
    """One cross-fitting plan per target name. Targets with the same name must have the same examples for every
    model (only the labels may differ, as for 'correct'), so that all share one plan: paired comparisons."""
    shared: dict[str, Plan] = {}
    for model, model_targets in targets.items():
        for t in model_targets:
            if t.name not in shared:
                shared[t.name] = plan(t, test_fraction, validation_fraction, n_bootstrap, seed)
            elif not (np.array_equal(shared[t.name].target.rows, t.rows)
                      and np.array_equal(shared[t.name].target.positions, t.positions)):
                raise ValueError(f"target {t.name!r} of model {model!r} has other examples than the same target of "
                                 "another model; a paired comparison needs the same ones")
    return shared


def run(read: Callable[[str, str, np.ndarray, np.ndarray], np.ndarray], targets: dict[str, list[ProbeTarget]],
        layers: list[int], sites: list[str], Cs=(0.01, 0.1, 1.0), max_iter: int = 200, tol: float = 1e-3,
        test_fraction: float = 0.2, validation_fraction: float = 0.2, n_bootstrap: int = 200,
        confidence: float = 0.95, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Probe every model's activations for its targets at every layer and site.

    `read(model, site_name, rows, positions)` returns activations [n, d]; `targets` maps a model name
    to its targets (any names; see `plans`). Returns a tidy table (one row per model x target x layer x site x
    metric, with value, ci_low, ci_high: pooled test scores, and 'validation_*' pooled validation scores) and the
    scores {(model, target, layer, site): maths.Scored} that the headline numbers choose from.
    """
    shared = plans(targets, test_fraction, validation_fraction, n_bootstrap, seed)
    records, samples = [], {}
    jobs = [(m, t, l, s) for m, ts in targets.items() for t in ts for l in layers for s in sites]
    started = time.perf_counter()
    for model, target, layer, site in tqdm(jobs, desc="probes"):
        fp = shared[target.name]
        fp = Plan(target, fp.folds, fp.controls, fp.weights)  # this model's labels
        scored = cross_fit(read(model, site_name(layer, site), target.rows, target.positions), fp, Cs, max_iter, tol)
        samples[(model, target.name, layer, site)] = scored
        records += _records(model, fp, layer, site, scored, confidence)
    log.info("%d probes (each with its control, cross-fitted) in %.1f s", len(jobs), time.perf_counter() - started)
    return pd.DataFrame.from_records(records, columns=_COLUMNS), samples


def noise_floor(read, model: str, target: ProbeTarget, layers: list[int], sites: list[str], Cs=(0.01, 0.1, 1.0),
                max_iter: int = 200, tol: float = 1e-3, test_fraction: float = 0.2, validation_fraction: float = 0.2,
                n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0, n_shuffles: int = 5) -> dict:
    """The selectivity a representation with no information reaches through the same pipeline.

    `model`'s activations at every layer and site, with their rows shuffled over examples (the features keep
    their distribution but lose every link to the labels and types), go through the same folds, probes,
    control task and validation choice of layer (among `layers` x `sites`) as the real ones. Pooled over
    `n_shuffles` shuffles, so that the interval holds the spread of the fits as well as that of the problems:
    {"value": mean selectivity, "ci": interval of the pooled resamples, "samples": array}.
    """
    fp = plan(target, test_fraction, validation_fraction, n_bootstrap, seed)
    values, pooled = [], []
    for k in range(n_shuffles):
        order = np.random.default_rng([seed, 7919, k]).permutation(len(target))
        per_place = {}
        for layer, site in itertools.product(layers, sites):
            X = np.asarray(read(model, site_name(layer, site), target.rows, target.positions))[order]
            per_place[(layer, site)] = cross_fit(X, fp, Cs, max_iter, tol)
        value, s, _ = chosen(per_place, "validation_selectivity", "selectivity")
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
    """Select-then-score on one split: the place (layer, site) with the best validation value `select`, scored
    by `score` on test. The choice is made again in every resample (validation and test problems resampled
    together), so the interval includes the uncertainty of the choice. Returns (value, per-resample values,
    place)."""
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
    chosen_s = np.where(finite.any(axis=0), test_s[choice, np.arange(test_s.shape[1])], np.nan)
    return float(points[places[best]][score]), chosen_s, places[best]


def chosen(scored: dict[tuple, Scored], select: str, score: str, first_above: float | None = None,
           confidence: float = 0.95) -> tuple[float, np.ndarray, tuple | None]:
    """Select-then-score over the folds: in each fold the place is chosen on that fold's validation problems
    (`choose`: the best `select`, again in every resample; with `first_above`, the first place whose validation
    `select` has its lower bound above it, else the last, fixed over resamples), and the test examples of every
    fold are scored at their fold's place and pooled (`score`: 'selectivity' or 'over_majority'). A fold with no
    validation score scores nothing. Returns (value, per-resample values, the place most folds chose)."""
    places = list(scored)
    first = scored[places[0]]
    num, den, picks = np.zeros_like(first.sums[score][0][0]), np.zeros_like(first.sums[score][0][0]), []
    for k in range(first.select[select].shape[0]):
        if first_above is None:
            points = {p: {select: s.select[select][k, 0], score: s.sums[score][0][k, 0]} for p, s in scored.items()}
            per_place = {p: {select: s.select[select][k, 1:], score: s.sums[score][0][k, 1:]}
                         for p, s in scored.items()}
            value, resampled, place = choose(points, per_place, select, score)
            got = np.concatenate([[value], resampled])
        else:
            lows = [_ci(scored[p].select[select][k, 1:], confidence)[0] for p in places]
            place = next((p for p, lo in zip(places, lows) if lo > first_above), places[-1])
            got = scored[place].sums[score][0][k]
        ok = np.isfinite(got)
        num, den = num + np.where(ok, got, 0.0), den + np.where(ok, first.sums[score][1][k], 0.0)
        picks.append(place)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return float(out[0]), out[1:], most_common(picks)


def _scored_places(table: pd.DataFrame, samples: dict, model: str, target: str, sites) -> dict:
    here = table[(table.model == model) & (table.target == target)]
    if sites is not None:
        here = here[here.site.isin(sites)]
    if here.empty:
        raise ValueError(f"no probes for model={model!r}, target={target!r}" + (f" at sites {sites}" if sites else ""))
    places = sorted({(int(l), s) for l, s in zip(here.layer, here.site)})
    return {p: samples[(model, target, *p)] for p in places}


def select_then_score(table: pd.DataFrame, samples: dict, model: str, target: str,
                      select: str = "validation_selectivity", score: str = "selectivity",
                      sites: list[str] | None = None) -> tuple[float, np.ndarray, tuple | None]:
    """`chosen` over every (layer, site) probed for `model` and `target` (or only at `sites`)."""
    return chosen(_scored_places(table, samples, model, target, sites), select, score)


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
    whole interval (lower bound of accuracy - majority accuracy); None if no layer does. A description of the
    test curves: the summary's decodable layer is chosen per fold on validation (`chosen` with `first_above`)."""
    rows = table[(table.model == model) & (table.target == target) & (table.site == site)
                 & (table.metric == "over_majority") & (table.ci_low > margin)]
    return None if rows.empty else int(rows.layer.min())


def _where(place) -> str:
    return "no layer (no example of a seen type)" if place is None else \
        f"layer {place[0]}, {place[1].removeprefix('hook_')}"


def summary(table: pd.DataFrame, samples: dict, models: list[str], n_layers: int, decodable_margin: float,
            confidence: float = 0.95, site: str = SUMMARY_SITE) -> dict:
    """The headline numbers ({key: {value, ci, description}}), all at `site` (the residual stream: what the
    layers so far have made available). Every place is chosen per fold on that fold's validation problems."""
    out = {}
    have = set(table.target)
    if "intermediate" in have:
        for m in models:
            value, s, place = select_then_score(table, samples, m, "intermediate", sites=[site])
            out[f"probe_selectivity_intermediate_{m}"] = entry(
                estimate(value, s, confidence),
                f"{m}: selectivity (task - control accuracy on test examples of types seen in training) of the "
                f"intermediate-result probe at the layer most selective on each fold's validation problems "
                f"({_where(place)} in most folds; re-chosen in every resample), test folds pooled")
        if {REFERENCE, STUDY} <= set(models):
            out[f"probe_selectivity_gain_{STUDY}_vs_{REFERENCE}"] = entry(
                selectivity_gain(table, samples, STUDY, REFERENCE, "intermediate", confidence, site),
                f"{STUDY.upper()} minus {REFERENCE.upper()} intermediate-result selectivity at the layer where "
                f"{STUDY.upper()} gains most on validation (per fold, re-chosen in every resample); paired bootstrap "
                "over the same problems")
    if "answer_last_digit" in have:
        for m in models:
            if not (table[(table.model == m) & (table.target == "answer_last_digit")]).size:
                continue
            places = _scored_places(table, samples, m, "answer_last_digit", [site])
            decodable = {p: s for p, s in places.items()
                         if _ci(s.validation["over_majority"][1:], confidence)[0] > decodable_margin}
            layer = min(decodable)[0] if decodable else None
            out[f"answer_decodable_layer_{m}"] = {
                "value": float(n_layers if layer is None else layer), "ci": None,
                "description": f"{m}: first layer whose answer-digit probe on the residual stream beats the majority "
                               f"class by more than {decodable_margin} on validation (lower {confidence:.0%} bound); "
                               f"{n_layers} (the number of layers) means never"}
            value, s, place = chosen(places, "validation_over_majority", "selectivity", decodable_margin, confidence)
            out[f"probe_selectivity_answer_{m}"] = entry(
                estimate(value, s, confidence),
                f"{m}: answer-digit probe selectivity at the decodable layer (else the last), chosen on each fold's "
                f"validation problems ({_where(place)} in most folds), test folds pooled")
    if "correct" in have:
        for m in models:
            if not (table[(table.model == m) & (table.target == "correct")]).size:
                continue
            value, s, place = select_then_score(table, samples, m, "correct", "validation_accuracy", "over_majority",
                                                [site])
            out[f"probe_correct_over_majority_{m}"] = entry(
                estimate(value, s, confidence),
                f"{m}: accuracy of predicting its own answer's correctness from the last prompt token, minus the "
                f"majority-class baseline, at the layer most accurate on validation ({_where(place)} in most folds)")
    return out


def difference(a: Scored, b: Scored, lower: bool = False) -> Scored:
    """`a` minus `b` for select-then-score of a paired change: per fold the validation difference (negated with
    `lower`, so that choosing the largest picks the largest drop) and the test numerators' difference over the
    same counts (both models share one plan: the same folds, resamples and scored examples)."""
    sign = -1.0 if lower else 1.0
    return Scored({}, {}, {k: sign * (a.select[k] - b.select[k]) for k in a.select},
                  {k: (a.sums[k][0] - b.sums[k][0], a.sums[k][1]) for k in a.sums}, [], [])


def selectivity_gain(table: pd.DataFrame, samples: dict, treatment: str, reference: str = REFERENCE,
                     target: str = "intermediate", confidence: float = 0.95, site: str = SUMMARY_SITE,
                     n: int | None = None, lower: bool = False) -> Estimate | None:
    """`treatment`'s selectivity for `target` at `site` minus the reference's at the same layer: the layer where
    the treatment gains most on validation (per fold, re-chosen per resample; with `lower`, where it loses most),
    paired over the same resamples; None when either was not probed there. `n`: the problems whose test examples
    are scored.

    Same-layer and paired, not each model's best layer against the other's: a result made decodable at an
    earlier layer than the reference's best is a change the peak-to-peak difference misses (a perfectly
    decodable value planted at layer 1 of the default run gains +0.03 peak-to-peak, +0.21 here)."""
    have = set(table[(table.target == target) & (table.site == site)].model)
    if not {reference, treatment} <= have:
        return None
    mine = _scored_places(table, samples, treatment, target, [site])
    theirs = _scored_places(table, samples, reference, target, [site])
    value, s, _ = chosen({p: difference(mine[p], theirs[p], lower) for p in mine if p in theirs},
                         "validation_selectivity", "selectivity")
    return estimate(value, s, confidence, n)


def table_records(table: pd.DataFrame) -> list[dict]:
    """The probe table as JSON-safe rows (NaN, e.g. the selectivity of a target without seen types, as None)."""
    return table.astype(object).where(table.notna(), None).to_dict("records")
