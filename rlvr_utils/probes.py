"""Linear probes with control tasks: what each model's activations make linearly decodable.

A probe is a logistic regression on standardised activations, its L2 strength chosen by
cross-validation, trained to read a target at one token position. Targets come from the problems:
  - 'intermediate': each intermediate result, read at the position just before the completion writes
    it (the position whose next-token prediction is the value's first digit);
  - 'answer_last_digit': the last digit of the gold final answer, read at the answer position (the
    one that predicts the first character after '####' or '\\boxed{');
  - 'correct': whether the model's own greedy answer is correct, read at the last prompt token,
    before it has written anything.

Chance and memorisation are measured, not assumed:
  - the majority-class baseline: the most frequent training label, predicted for every test example;
  - a control task after Hewitt & Liang (2019): every example has a *type*, the surface form its label
    is a function of (`ProbeTarget.types`); each type gets a fixed random label drawn from the task's
    label distribution, and the same probe is trained on those labels. A probe that merely memorises
    surface form does as well on the control task, so selectivity = task accuracy - control accuracy
    is what the representation offers beyond that.
Splits are by problem: no problem has examples on both sides, inside cross-validation too. Intervals
are bootstraps over test problems, never tokens, and every probe of a target shares one test set and
one set of resamples, so differences between layers and models are paired.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import sklearn
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import stats
from .architecture import site_name
from .plots import STAGE_COLORS

log = logging.getLogger(__name__)

SUMMARY_SITE = "hook_resid_post"  # the residual stream: what a layer has made available downstream
# The final answer starts after the last '####' at the start of a line, or after the last '\boxed{'.
_ANSWER_START = re.compile(r"(?:^|\n)#### *(?=\S)|\\boxed\{")
# scikit-learn 1.8 deprecates the implicit L2 penalty of LogisticRegressionCV; say it explicitly there.
_LRCV_KWARGS = ({"l1_ratios": (0.0,), "use_legacy_attributes": False}
                if tuple(int(x) for x in sklearn.__version__.split(".")[:2]) >= (1, 8) else {})


@dataclass
class ProbeTarget:
    """Examples of one probing target: where to read (cache row, token position) and what to decode."""

    name: str
    rows: np.ndarray       # token-cache row of each example
    positions: np.ndarray  # token position whose activation the probe reads
    labels: np.ndarray     # class to decode
    groups: np.ndarray     # problem id: splits keep a problem's examples together
    types: list            # control-task type: the surface form the label is a function of

    def __post_init__(self):
        self.rows, self.positions = np.asarray(self.rows, dtype=int), np.asarray(self.positions, dtype=int)
        self.labels, self.groups = np.asarray(self.labels), np.asarray(self.groups)
        sizes = {len(self.rows), len(self.positions), len(self.labels), len(self.groups), len(self.types)}
        if len(sizes) != 1:
            raise ValueError(f"ProbeTarget {self.name!r}: rows, positions, labels, groups and types must have "
                             f"one entry per example, got lengths {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.rows)


# --- finding targets in token sequences -----------------------------------------------------------
def token_starts(tokenizer, ids: list[int]) -> tuple[str, np.ndarray]:
    """(text of `ids`, start character of each token in it)."""
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    lengths = [len(tokenizer.decode([i], clean_up_tokenization_spaces=False)) for i in ids]
    if sum(lengths) != len(text):  # a character split over tokens: prefix lengths are exact, but slower
        prefix = [len(tokenizer.decode(ids[: k + 1], clean_up_tokenization_spaces=False)) for k in range(len(ids))]
        lengths = np.diff([0] + prefix).tolist()
    return text, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)


def _token_at(starts: np.ndarray, char: int) -> int:
    return int(np.searchsorted(starts, char, side="right") - 1)


def _number_text(value) -> str:
    """21.0 -> '21', 2.5 -> '2.5': how a value is written in a solution."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _expression(text: str) -> str:
    """'19 + 2 ' -> '19 + 2': an expression with its spacing normalised (the control type)."""
    return " ".join(text.split())


def _by_id(problems: list[dict], cache) -> dict[int, dict]:
    by_id = {int(p["id"]): p for p in problems}
    missing = sorted(set(cache.problem_ids) - set(by_id))
    if missing:
        raise ValueError(f"problems has no row for token-cache problem ids {missing[:10]} ({len(missing)} missing)")
    return by_id


# The arithmetic just before '=': numbers, operators, brackets, '$' and spaces (not a sentence's '.').
# A digit run is matched whole ((?!\d)), so a failed search cannot backtrack through its splits.
_LEFT_SIDE = r"((?:\d+(?:\.\d+)?(?!\d)|[ \t+\-*/×÷()$])*)"


def intermediate_target(cache, problems: list[dict], tokenizer, label: str = "value") -> ProbeTarget:
    """Each intermediate result, at the position just before the completion writes it.

    The problem's `intermediates` are looked for in order in the completion as '<expression> = <value>'
    (GSM8K's '<<48/2=24>>' too); a value the completion never writes (a wrong step) gives no example.
    `label` 'value' decodes the whole number, 'last_digit' its last digit. The control type is the
    expression just read ('19 + 2'), which the value is a function of.
    """
    if label not in ("value", "last_digit"):
        raise ValueError(f"label={label!r} must be 'value' or 'last_digit'")
    by_id = _by_id(problems, cache)
    out = {"rows": [], "positions": [], "labels": [], "groups": [], "types": []}
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        text, starts = token_starts(tokenizer, seq[plen:])
        cursor = 0
        for value in by_id[pid]["intermediates"]:
            written = _number_text(value)
            step = re.compile(_LEFT_SIDE + r"=\s*\$?\s*(" + re.escape(written) + r")(?!\.?\d)")
            found = step.search(text, cursor)
            if found is None:
                continue
            cursor = found.end()
            position = plen + _token_at(starts, found.start(2)) - 1
            value_label = written if label == "value" else written[-1]
            _append(out, row, position, value_label, pid, _expression(found.group(1)))
    return ProbeTarget("intermediate", **out)


def _answer_start(text: str) -> int | None:
    """Character where the final answer starts: after the last '####' line start, else the last '\\boxed{'."""
    found = list(_ANSWER_START.finditer(text))
    return found[-1].end() if found and found[-1].end() < len(text) else None


def answer_positions(cache, tokenizer) -> dict[int, int]:
    """{cache row: the position that predicts the first character of the final answer} for the rows
    whose completion has one (see `_answer_start`)."""
    out = {}
    for row, (seq, plen) in enumerate(zip(cache.sequences, cache.prompt_lengths)):
        text, starts = token_starts(tokenizer, seq[plen:])
        start = _answer_start(text)
        if start is not None:
            out[row] = plen + _token_at(starts, start) - 1
    return out


def answer_target(cache, problems: list[dict], tokenizer) -> ProbeTarget:
    """The last digit of the gold final answer, at the answer position (see `answer_positions`).

    The control type is the last number the completion wrote before the answer (the result of its last
    step, '27'): a probe that only reads that copy back finds a random function of it as decodable.
    """
    by_id = _by_id(problems, cache)
    out = {"rows": [], "positions": [], "labels": [], "groups": [], "types": []}
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        text, starts = token_starts(tokenizer, seq[plen:])
        start = _answer_start(text)
        digits = re.findall(r"\d", str(by_id[pid]["final"]))
        if start is None or not digits:
            continue
        numbers = re.findall(r"\d+(?:\.\d+)?", text[:start])
        _append(out, row, plen + _token_at(starts, start) - 1, digits[-1], pid, numbers[-1] if numbers else "")
    return ProbeTarget("answer_last_digit", **out)


def correct_target(cache, greedy: list[dict]) -> ProbeTarget:
    """Whether the model's own greedy answer (eval/<stage>_greedy.jsonl rows) is correct, at the last
    prompt token. Each prompt is its own control type: no surface token predicts correctness."""
    correct = {int(r["id"]): bool(r["correct"]) for r in greedy}
    out = {"rows": [], "positions": [], "labels": [], "groups": [], "types": []}
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        if pid in correct:
            _append(out, row, plen - 1, correct[pid], pid, tuple(seq[:plen]))
    return ProbeTarget("correct", **out)


def _append(out: dict, row, position, label, group, type_) -> None:
    for key, value in zip(("rows", "positions", "labels", "groups", "types"), (row, position, label, group, type_)):
        out[key].append(value)


# --- control task, split, fit -------------------------------------------------------------------
def control_labels(types: list, labels, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: each distinct type gets one label drawn at random from the
    empirical distribution of `labels`; every example of that type carries it."""
    labels = np.asarray(labels)
    if len(types) != len(labels):
        raise ValueError(f"types and labels must have the same length, got {len(types)} and {len(labels)}")
    distinct = list(dict.fromkeys(types))
    drawn = np.random.default_rng(seed).choice(labels, size=len(distinct))
    mapping = dict(zip(distinct, drawn))
    return np.array([mapping[t] for t in types])


def problem_split(groups, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) example indices with every problem (group) on exactly one side."""
    groups = np.asarray(groups)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be between 0 and 1")
    if len(np.unique(groups)) < 2:
        raise ValueError(f"a problem-level split needs at least 2 problems, got {len(np.unique(groups))}")
    split = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    return next(split.split(np.zeros(len(groups)), groups=groups))


def fit_predict(X, y, groups, train, test, cv_folds: int = 3, Cs=(0.01, 0.1, 1.0), max_iter: int = 200,
                tol: float = 1e-3, C: float | None = None) -> tuple[np.ndarray, float | None]:
    """Train a logistic-regression probe on standardised `train` activations and predict `test`.

    The L2 strength is chosen among `Cs` by cross-validation over groups (problems), unless `C` is
    given. Returns (predictions, C used); a training set with one class predicts it (C None).
    """
    X, y, groups = np.asarray(X), np.asarray(y), np.asarray(groups)
    classes = np.unique(y[train])
    if len(classes) == 1:
        return np.full(len(test), classes[0]), None
    if C is None:
        n_folds = min(cv_folds, len(np.unique(groups[train])))
        folds = list(GroupKFold(n_splits=n_folds).split(X[train], y[train], groups[train]))
        linear = LogisticRegressionCV(Cs=list(Cs), cv=folds, max_iter=max_iter, tol=tol, scoring="accuracy",
                                      **_LRCV_KWARGS)
    else:
        linear = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
    probe = make_pipeline(StandardScaler(), linear)
    # One BLAS thread: the fits are small, and threads only fight over the cores.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        probe.fit(X[train], y[train])
    chosen = C if C is not None else float(np.ravel(linear.C_)[0])
    return probe.predict(X[test]), chosen


def majority_predict(y, train, test) -> np.ndarray:
    """The majority-class baseline: the most frequent training label, for every test example."""
    majority = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), np.asarray(y)[train])
    return majority.predict(np.zeros((len(test), 1)))


# --- scores under bootstrap resamples of test problems ------------------------------------------
def resample_weights(groups, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, n_examples): how often each example's problem is drawn in each resample."""
    _, problem = np.unique(np.asarray(groups), return_inverse=True)
    idx = stats.bootstrap_indices(problem.max() + 1, n_bootstrap, seed)
    counts = np.stack([np.bincount(i, minlength=problem.max() + 1) for i in idx])
    return counts[:, problem].astype(float)


def accuracy(y_true, y_pred, weights=None) -> np.ndarray | float:
    """Accuracy; with `weights` (B, n) one value per resample."""
    hits = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    if weights is None:
        return float(hits.mean())
    return weights @ hits / weights.sum(axis=1)


def macro_f1(y_true, y_pred, weights=None) -> np.ndarray | float:
    """scikit-learn's f1_score(average='macro') -- the mean F1 over the classes present in y_true or
    y_pred -- for each weighting of the examples at once (one row of `weights` per resample)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    w = np.ones((1, len(y_true))) if weights is None else np.asarray(weights, dtype=float)
    classes = np.union1d(y_true, y_pred)
    is_true = (y_true[:, None] == classes).astype(float)
    is_pred = (y_pred[:, None] == classes).astype(float)
    tp, fp, fn = w @ (is_true * is_pred), w @ ((1 - is_true) * is_pred), w @ (is_true * (1 - is_pred))
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)  # absent classes do not count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(f1, axis=1)
    return float(out[0]) if weights is None else out


def _estimate(value: float, samples: np.ndarray, confidence: float) -> dict:
    return {"value": float(value), "ci": list(stats.interval(samples, confidence))}


@dataclass
class ProbeOutcome:
    """Test predictions of one probe, its control probe and the majority baseline."""

    y_true: np.ndarray
    y_pred: np.ndarray
    control_true: np.ndarray
    control_pred: np.ndarray
    majority_pred: np.ndarray

    def samples(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per-resample accuracy, control accuracy, selectivity, majority-class accuracy, accuracy over
        the majority class, and macro-F1."""
        acc = accuracy(self.y_true, self.y_pred, weights)
        control = accuracy(self.control_true, self.control_pred, weights)
        majority = accuracy(self.y_true, self.majority_pred, weights)
        return {"accuracy": acc, "control_accuracy": control, "selectivity": acc - control,
                "majority_accuracy": majority, "over_majority": acc - majority,
                "macro_f1": macro_f1(self.y_true, self.y_pred, weights)}

    def point(self) -> dict[str, float]:
        """The same scores on the test set itself."""
        return {k: float(v[0]) for k, v in self.samples(np.ones((1, len(self.y_true)))).items()}


def probe(X, target: ProbeTarget, split, control: np.ndarray, cv_folds: int = 3, Cs=(0.01, 0.1, 1.0),
          max_iter: int = 200, tol: float = 1e-3) -> ProbeOutcome:
    """Fit the task probe (L2 strength by cross-validation) and the control probe, the same probe with
    the same strength, on the same activations and split."""
    train, test = split
    y_pred, C = fit_predict(X, target.labels, target.groups, train, test, cv_folds, Cs, max_iter, tol)
    control_pred, _ = fit_predict(X, control, target.groups, train, test, cv_folds, Cs, max_iter, tol, C=C)
    return ProbeOutcome(y_true=target.labels[test], y_pred=y_pred, control_true=control[test],
                        control_pred=control_pred, majority_pred=majority_predict(target.labels, train, test))


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


def run(read: Callable[[str, str, np.ndarray, np.ndarray], np.ndarray], targets: dict[str, list[ProbeTarget]],
        layers: list[int], sites: list[str], cv_folds: int = 3, Cs=(0.01, 0.1, 1.0), max_iter: int = 200,
        tol: float = 1e-3, test_fraction: float = 0.3, n_bootstrap: int = 200, confidence: float = 0.95,
        seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Probe every model's activations for its targets at every layer and site.

    `read(model, site_name, rows, positions)` returns activations [n, d]; `targets` maps a model name
    to its targets. Targets with the same name must have the same examples for every model (only the
    labels may differ, as for 'correct'), so that all share one split and one set of resamples.
    Returns a tidy table (one row per model x target x layer x site x metric, with value, ci_low,
    ci_high) and the bootstrap samples {(model, target, layer, site): {metric: array}} for summaries.
    """
    shared: dict[str, tuple] = {}
    for model, model_targets in targets.items():
        for t in model_targets:
            if t.name not in shared:
                split = problem_split(t.groups, test_fraction, seed)
                shared[t.name] = (t, split, resample_weights(t.groups[split[1]], n_bootstrap, seed))
            elif not (np.array_equal(shared[t.name][0].rows, t.rows)
                      and np.array_equal(shared[t.name][0].positions, t.positions)):
                raise ValueError(f"target {t.name!r} of model {model!r} has other examples than the same target of "
                                 "another model; a paired comparison needs the same ones")
    records, samples = [], {}
    jobs = [(m, t, l, s) for m, ts in targets.items() for t in ts for l in layers for s in sites]
    started = time.perf_counter()
    for model, target, layer, site in tqdm(jobs, desc="probes"):
        _, split, weights = shared[target.name]
        X = read(model, site_name(layer, site), target.rows, target.positions)
        outcome = probe(X, target, split, control_labels(target.types, target.labels, seed),
                        cv_folds, Cs, max_iter, tol)
        per_resample = outcome.samples(weights)
        samples[(model, target.name, layer, site)] = per_resample
        for metric, value in outcome.point().items():
            lo, hi = stats.interval(per_resample[metric], confidence)
            records.append({"model": model, "target": target.name, "layer": layer, "site": site, "metric": metric,
                            "value": value, "ci_low": lo, "ci_high": hi, "n_train": len(split[0]),
                            "n_test": len(split[1]), "n_test_problems": len(np.unique(target.groups[split[1]]))})
    log.info("%d probes (each with its control) in %.1f s", len(jobs), time.perf_counter() - started)
    columns = ["model", "target", "layer", "site", "metric", "value", "ci_low", "ci_high", "n_train", "n_test",
               "n_test_problems"]
    return pd.DataFrame.from_records(records, columns=columns), samples


# --- headline numbers ------------------------------------------------------------------------
def best_layer(table: pd.DataFrame, model: str, target: str, site: str = SUMMARY_SITE,
               metric: str = "selectivity") -> int:
    """The layer where a target's probe scores highest on `metric` at `site`."""
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


def summary(table: pd.DataFrame, samples: dict, models: list[str], n_layers: int, decodable_margin: float,
            confidence: float = 0.95, site: str = SUMMARY_SITE) -> dict:
    """The headline numbers the verdict reads ({key: {value, ci, description}}); all at `site`."""
    out = {}

    def pick(model, target, layer, metric):
        rows = table[(table.model == model) & (table.target == target) & (table.layer == layer)
                     & (table.site == site) & (table.metric == metric)]
        return float(rows.value.iloc[0]), samples[(model, target, layer, site)][metric]

    have = set(table.target)
    if "intermediate" in have:
        best = {m: best_layer(table, m, "intermediate", site) for m in models}
        for m in models:
            value, s = pick(m, "intermediate", best[m], "selectivity")
            out[f"probe_selectivity_intermediate_{m}"] = {
                **_estimate(value, s, confidence),
                "description": f"{m}: selectivity (task - control accuracy) of the intermediate-result probe at its "
                               f"most selective layer ({best[m]}) of the residual stream"}
        if {"sft", "rlvr"} <= set(models):
            (vr, sr), (vs, ss) = pick("rlvr", "intermediate", best["rlvr"], "selectivity"), \
                pick("sft", "intermediate", best["sft"], "selectivity")
            out["probe_selectivity_gain_rlvr_vs_sft"] = {
                **_estimate(vr - vs, sr - ss, confidence),
                "description": "RLVR minus SFT intermediate-result selectivity, each at its own most selective "
                               "residual-stream layer; paired bootstrap over the same test problems"}
    if "answer_last_digit" in have:
        for m in models:
            layer = decodable_layer(table, m, "answer_last_digit", decodable_margin, site)
            out[f"answer_decodable_layer_{m}"] = {
                "value": float(n_layers if layer is None else layer), "ci": None,
                "description": f"{m}: first layer whose answer-digit probe on the residual stream beats the majority "
                               f"class by more than {decodable_margin} (lower {confidence:.0%} bound); "
                               f"{n_layers} (the number of layers) means never"}
            shown = n_layers - 1 if layer is None else layer
            value, s = pick(m, "answer_last_digit", shown, "selectivity")
            out[f"probe_selectivity_answer_{m}"] = {
                **_estimate(value, s, confidence),
                "description": f"{m}: answer-digit probe selectivity at layer {shown} (the decodable layer, "
                               "else the last)"}
    if "correct" in have:
        for m in models:
            layer = best_layer(table, m, "correct", site, metric="accuracy")
            value, s = pick(m, "correct", layer, "over_majority")
            out[f"probe_correct_over_majority_{m}"] = {
                **_estimate(value, s, confidence),
                "description": f"{m}: accuracy of predicting its own answer's correctness from the last prompt "
                               f"token, minus the majority-class baseline, at layer {layer}"}
    return out


# --- the notebook's steps -----------------------------------------------------------------------
def fingerprint(cfg, cache) -> str:
    """What probes.json depends on: the params that make the models, tokens and probes, and the tokens."""
    sections = ("seed", "model", "organism", "data", "sft", "grpo", "evaluation", "extract", "probes")
    return hashlib.sha256(f"{cfg.fingerprint(*sections)}:{cache.fingerprint}".encode()).hexdigest()[:16]


def targets_for(pcfg, cache, problems: list[dict], tokenizer, greedy: dict[str, list[dict]]
                ) -> dict[str, list[ProbeTarget]]:
    """{model: its targets} for the targets named in the `probes` params section; `greedy` maps each
    model to its eval/<model>_greedy.jsonl rows. Targets with too few problems to split are left out."""
    shared = []
    if "intermediate" in pcfg.targets:
        shared.append(intermediate_target(cache, problems, tokenizer, pcfg.intermediate_label))
    if "answer_last_digit" in pcfg.targets:
        shared.append(answer_target(cache, problems, tokenizer))
    shared = [t for t in shared if _splittable(t, pcfg.cv_folds)]
    out = {}
    for model, rows in greedy.items():
        own = [correct_target(cache, rows)] if "correct" in pcfg.targets else []
        out[model] = shared + [t for t in own if _splittable(t, pcfg.cv_folds)]
    return out


def _splittable(target: ProbeTarget, cv_folds: int) -> bool:
    n_problems = len(np.unique(target.groups))
    if n_problems < 2 * cv_folds:
        log.warning("target %r has examples in %d problems, fewer than the %d a split with %d CV folds needs: "
                    "left out", target.name, n_problems, 2 * cv_folds, cv_folds)
        return False
    return True


def describe(targets: dict[str, list[ProbeTarget]]) -> pd.DataFrame:
    """One row per model x target: examples, problems, classes, majority share."""
    rows = []
    for model, model_targets in targets.items():
        for t in model_targets:
            _, counts = np.unique(t.labels, return_counts=True)
            rows.append({"model": model, "target": t.name, "examples": len(t), "problems": len(np.unique(t.groups)),
                         "classes": len(counts), "majority share": counts.max() / counts.sum(),
                         "control types": len(set(t.types))})
    return pd.DataFrame(rows)


def analyse(cfg, store, targets: dict[str, list[ProbeTarget]]) -> tuple[pd.DataFrame, dict]:
    """Probe every model's stored activations (probes params section); returns (table, summary)."""
    p = cfg.probes
    meta = store.meta(next(iter(targets)))
    sites = [s for s in p.sites if s in meta["sites"]]
    if not sites:
        raise ValueError(f"probes.sites={p.sites}: none of them was extracted (have {meta['sites']})")
    table, samples = run(StoreReader(store), targets, meta["layers"],
                         sites, p.cv_folds, p.Cs, p.max_iter, p.tol, p.test_fraction, p.n_bootstrap,
                         cfg.evaluation.confidence, cfg.seed)
    site = SUMMARY_SITE if SUMMARY_SITE in sites else sites[-1]
    return table, summary(table, samples, list(targets), max(meta["layers"]) + 1, p.decodable_margin,
                          cfg.evaluation.confidence, site)


# --- figures --------------------------------------------------------------------------------------
_LABELS = {"accuracy": "accuracy", "selectivity": "selectivity (task − control)",
           "over_majority": "accuracy − majority class", "macro_f1": "macro-F1"}


def figure(table: pd.DataFrame, metric: str = "accuracy") -> plt.Figure:
    """One panel per target x site: `metric` per layer for each model with its interval. For accuracy the
    control-task accuracy (dashed) and the majority baseline (dotted) are drawn too."""
    if table.empty:  # e.g. completions that never write an intermediate result or an answer
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.set_axis_off()
        ax.set_title("No probe targets were found in this run's completions")
        return fig
    targets, sites = list(dict.fromkeys(table.target)), list(dict.fromkeys(table.site))
    fig, axes = plt.subplots(len(targets), len(sites), figsize=(3.6 * len(sites), 2.9 * len(targets)),
                             squeeze=False, sharex=True)
    for (i, target), (j, site) in itertools.product(enumerate(targets), enumerate(sites)):
        ax = axes[i][j]
        here = table[(table.target == target) & (table.site == site)]
        for model, rows in here.groupby("model", sort=False):
            color = STAGE_COLORS.get(model)
            line = rows[rows.metric == metric].sort_values("layer")
            sns.lineplot(data=line, x="layer", y="value", ax=ax, color=color, marker="o", label=model)
            ax.fill_between(line.layer, line.ci_low, line.ci_high, color=color, alpha=0.2)
            if metric == "accuracy":
                for extra, style in (("control_accuracy", "--"), ("majority_accuracy", ":")):
                    rows_e = rows[rows.metric == extra].sort_values("layer")
                    ax.plot(rows_e.layer, rows_e.value, linestyle=style, color=color, alpha=0.8)
        if metric != "accuracy":
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=f"{target} · {site.removeprefix('hook_')}", xlabel="layer", ylabel=_LABELS.get(metric, metric))
        ax.set_xticks(sorted(here.layer.unique()))
        if (i, j) != (0, 0) and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle(f"Probe {_LABELS.get(metric, metric)} per layer (95% bootstrap interval over test problems)")
    fig.tight_layout()
    return fig


def reading(summary: dict, n_layers: int, stages=("base", "sft", "rlvr")) -> str:
    """A short Markdown reading of probes.json's summary (probe and lens keys) for the notebook's close."""
    def show(key, digits=2):
        if key not in summary:
            return "not measured"
        v = summary[key]
        if v["ci"] is None:
            return f"{v['value']:.0f}"
        return f"{v['value']:.{digits}f} [{v['ci'][0]:.{digits}f}, {v['ci'][1]:.{digits}f}]"

    lines = []
    for m in stages:
        parts = []
        if f"answer_decodable_layer_{m}" in summary:
            layer = summary[f"answer_decodable_layer_{m}"]["value"]
            where = "at no layer" if layer >= n_layers else f"from layer {layer:.0f}"
            parts.append(f"the answer's last digit is decodable {where} (selectivity "
                         f"{show(f'probe_selectivity_answer_{m}')})")
        if f"probe_selectivity_intermediate_{m}" in summary:
            parts.append(f"intermediate results reach selectivity {show(f'probe_selectivity_intermediate_{m}')} "
                         "at their most selective layer")
        lens_layer = summary.get(f"lens_answer_layer_{m}", {}).get("value", float("nan"))
        if lens_layer == lens_layer:  # NaN when no completion has an answer position
            parts.append(f"its logit lens gives its final answer token from layer {lens_layer:.0f}")
        found = "; ".join(parts) or "no intermediate result or answer was found in the completions"
        lines.append(f"- **{m}**: {found}.")
    gain = summary.get("probe_selectivity_gain_rlvr_vs_sft")
    if gain:
        lo, hi = gain["ci"]
        verdict = ("RLVR made them more decodable, as Representation learning predicts" if lo > 0 else
                   "RLVR made them less decodable" if hi < 0 else
                   "the interval contains 0: no change detected, as Routing predicts")
        lines += ["", "RLVR − SFT selectivity for intermediate results: "
                      f"{show('probe_selectivity_gain_rlvr_vs_sft')}; {verdict}."]
    lines += ["", "Cross-model lens at the last layer (KL to the owner's output, nats): SFT's read-out on RLVR's "
                  f"stream {show('lens_cross_kl_rlvr_by_sft', 3)}, RLVR's on SFT's "
                  f"{show('lens_cross_kl_sft_by_rlvr', 3)}; for scale, the base model's read-out on SFT's stream "
                  f"{show('lens_cross_kl_sft_by_base', 3)}."]
    return "\n".join(lines)
