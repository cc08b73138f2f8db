"""Linear probes with control tasks: what each model's activations make linearly decodable.

A probe is a logistic regression on standardised activations, trained to read a target at one token
position. Targets come from the problems:
  - 'intermediate': each intermediate result, read at the position just before the completion writes
    it (the position whose next-token prediction is the value's first digit);
  - 'answer_last_digit': the last digit of the gold final answer, read at the answer position (the
    one that predicts the first character after '####' or '\\boxed{');
  - 'correct': whether the model's own greedy answer is correct, read at the last prompt token,
    before it has written anything.

Chance and memorisation are measured, not assumed (Hewitt & Liang 2019):
  - the majority-class baseline: the most frequent training label, predicted for every test example;
  - a control task: every example has a *type*, the surface form its label is a function of
    (`ProbeTarget.types`); each type gets a fixed random label, dealt so that the control's label shares
    equal the task's, and the same probe is trained on those labels. Selectivity = task accuracy - control
    accuracy, both on the test examples whose type occurs in training (an unseen type's control label
    cannot be learned, which would inflate selectivity), is what the representation offers beyond
    memorising surface form;
  - its noise floor: the same pipeline run on shuffled activations (`noise_floor`).
Splits are train / validation / test by problem: no problem has examples on two sides. The L2 strength
and the layer and site a headline number is read at are chosen on validation, and the choice is made again
in every bootstrap resample of validation and test problems, so intervals include it. Every probe of a
target shares one split and one set of resamples, so differences between layers and models are paired.
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
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from rlvr_utils.core import stats
from rlvr_utils.models.families import site_name
from rlvr_utils.core.plots import STAGE_COLORS

log = logging.getLogger(__name__)

SUMMARY_SITE = "hook_resid_post"  # the residual stream: what a layer has made available downstream
# The final answer starts after the last '####' at the start of a line, or after the last '\boxed{'.
_ANSWER_START = re.compile(r"(?:^|\n)#### *(?=\S)|\\boxed\{")


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
    """Hewitt & Liang's control task with the task's label distribution: each distinct type gets one
    fixed random label, and every example of that type carries it.

    The labels are dealt out so that each class's share of examples matches the task's: the types, in
    random order, are laid end to end on a line, each as long as its number of examples; the task's labels,
    grouped by class in random class order, are laid on the same line; each type takes the class under its
    midpoint. Shares then match up to one type's count at each class boundary. (Drawing each type's label
    independently from the label distribution gives the control another majority share than the task's,
    and so another chance level: 0.22 vs 0.13 on the organism's answer digit.)
    """
    labels = np.asarray(labels)
    if len(types) != len(labels):
        raise ValueError(f"types and labels must have the same length, got {len(types)} and {len(labels)}")
    if len(labels) == 0:
        return labels.copy()
    index = {}
    type_of = np.array([index.setdefault(t, len(index)) for t in types])
    counts = np.bincount(type_of)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    classes, class_counts = np.unique(labels, return_counts=True)
    class_order = rng.permutation(len(classes))
    class_ends = np.cumsum(class_counts[class_order])
    midpoints = np.cumsum(counts[order]) - counts[order] / 2
    slot = np.minimum(np.searchsorted(class_ends, midpoints, side="right"), len(classes) - 1)
    mapping = np.empty(len(counts), dtype=labels.dtype)
    mapping[order] = classes[class_order[slot]]
    return mapping[type_of]


@dataclass
class Split:
    """Example indices of the train, validation and test problems, and whether each example's control type
    occurs in training (a control label can only be learned for a type seen in training)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seen: np.ndarray  # bool per example


def problem_split(groups, test_fraction: float, validation_fraction: float = 0.2, seed: int = 0,
                  types: list | None = None) -> Split:
    """Train / validation / test example indices with every problem (group) on exactly one side.

    Settings (the L2 strength, the layer and site) are chosen on validation; test is scored once. `seen`
    marks the examples whose type (`types`) occurs in training (all True without `types`).
    """
    groups = np.asarray(groups)
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name}={value} must be between 0 and 1")
    if test_fraction + validation_fraction >= 1:
        raise ValueError(f"test_fraction + validation_fraction = {test_fraction + validation_fraction} leaves no "
                         "problem to train on")
    if len(np.unique(groups)) < 3:
        raise ValueError(f"a train/validation/test split by problem needs at least 3 problems, got "
                         f"{len(np.unique(groups))}")
    outer = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    rest, test = next(outer.split(np.zeros(len(groups)), groups=groups))
    inner = GroupShuffleSplit(n_splits=1, test_size=validation_fraction / (1 - test_fraction), random_state=seed)
    train, validation = (rest[i] for i in next(inner.split(np.zeros(len(rest)), groups=groups[rest])))
    if types is None:
        seen = np.ones(len(groups), dtype=bool)
    else:
        trained = {types[i] for i in train}
        seen = np.array([t in trained for t in types])
    return Split(np.sort(train), np.sort(validation), np.sort(test), seen)


def fit_predict(X, y, train, validation, test, Cs=(0.01, 0.1, 1.0), max_iter: int = 200, tol: float = 1e-3,
                C: float | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Logistic-regression probes on standardised `train` activations, one per L2 strength in `Cs` (or only
    `C`); the one with the best validation accuracy predicts. Returns (validation predictions, test
    predictions, C used); a training set with one class predicts it (C None)."""
    X, y = np.asarray(X), np.asarray(y)
    classes = np.unique(y[train])
    if len(classes) == 1:
        return np.full(len(validation), classes[0]), np.full(len(test), classes[0]), None
    scaler = StandardScaler().fit(X[train])
    Xt, Xv, Xs = scaler.transform(X[train]), scaler.transform(X[validation]), scaler.transform(X[test])
    # Strongest regularisation first, each fit starting from the last: the path costs little more than one fit.
    linear = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    best = None
    # One BLAS thread: the fits are small, and threads only fight over the cores.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(Cs) if C is None else [C]:
            linear.set_params(C=c).fit(Xt, y[train])
            pred_v = linear.predict(Xv)
            score = np.mean(pred_v == y[validation]) if len(validation) else 0.0
            if best is None or score > best[0]:  # ties keep the stronger regularisation
                best = (score, pred_v, linear.predict(Xs), float(c))
    return best[1], best[2], best[3]


def majority_predict(y, train, n: int) -> np.ndarray:
    """The majority-class baseline: the most frequent training label, `n` times."""
    majority = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), np.asarray(y)[train])
    return majority.predict(np.zeros((n, 1)))


# --- scores under bootstrap resamples of problems --------------------------------------------------
def resample_weights(groups, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """(n_bootstrap, n_examples): how often each example's problem is drawn in each resample."""
    _, problem = np.unique(np.asarray(groups), return_inverse=True)
    if len(problem) == 0:
        return np.zeros((n_bootstrap, 0))
    idx = stats.bootstrap_indices(problem.max() + 1, n_bootstrap, seed)
    counts = np.stack([np.bincount(i, minlength=problem.max() + 1) for i in idx])
    return counts[:, problem].astype(float)


def accuracy(y_true, y_pred, weights=None) -> np.ndarray | float:
    """Accuracy; with `weights` (B, n) one value per resample (NaN where a resample has no example)."""
    hits = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    if weights is None:
        return float(hits.mean()) if len(hits) else float("nan")
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, weights @ hits / np.where(total > 0, total, 1), np.nan)


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
    if not np.isfinite(value) or not np.isfinite(samples).any():
        return {"value": None if not np.isfinite(value) else float(value), "ci": None}
    return {"value": float(value), "ci": list(stats.interval(samples, confidence))}


@dataclass
class Predictions:
    """Predictions of a probe, its control probe and the majority baseline on one part of the split."""

    y_true: np.ndarray
    y_pred: np.ndarray
    control_true: np.ndarray
    control_pred: np.ndarray
    majority_pred: np.ndarray
    seen: np.ndarray  # the example's control type occurs in training

    def scores(self, weights: np.ndarray, f1: bool = True) -> dict[str, np.ndarray]:
        """Per resample (a row of `weights`): accuracy, majority-class accuracy and accuracy over it, macro-F1
        on every example; on the examples of seen types, the task ('seen_accuracy') and control accuracy and
        selectivity = their difference. An unseen type's control label is a coin the probe never saw, so
        scoring it would credit the task with what the control could not learn."""
        acc = accuracy(self.y_true, self.y_pred, weights)
        majority = accuracy(self.y_true, self.majority_pred, weights)
        seen_w = weights[:, self.seen]
        seen_acc = accuracy(self.y_true[self.seen], self.y_pred[self.seen], seen_w)
        control = accuracy(self.control_true[self.seen], self.control_pred[self.seen], seen_w)
        out = {"accuracy": acc, "seen_accuracy": seen_acc, "control_accuracy": control,
               "selectivity": seen_acc - control, "majority_accuracy": majority, "over_majority": acc - majority}
        if f1:
            out["macro_f1"] = macro_f1(self.y_true, self.y_pred, weights)
        return out


@dataclass
class ProbeOutcome:
    """A probe's predictions on the validation and test problems, and the L2 strength chosen."""

    validation: Predictions
    test: Predictions
    C: float | None = None

    def samples(self, validation_weights: np.ndarray, test_weights: np.ndarray) -> dict[str, np.ndarray]:
        """Test scores per resample, plus the validation scores that choose a layer ('validation_*')."""
        with threadpool_limits(1):  # small products: threads only fight over the cores
            out = self.test.scores(test_weights)
            val = self.validation.scores(validation_weights, f1=False)
        out.update(validation_accuracy=val["accuracy"], validation_selectivity=val["selectivity"])
        return out

    def point(self) -> dict[str, float]:
        """The same scores on the validation and test sets themselves."""
        ones = lambda part: np.ones((1, len(part.y_true)))  # noqa: E731
        return {k: float(v[0]) for k, v in self.samples(ones(self.validation), ones(self.test)).items()}


def probe(X, target: ProbeTarget, split: Split, control: np.ndarray, Cs=(0.01, 0.1, 1.0), max_iter: int = 200,
          tol: float = 1e-3) -> ProbeOutcome:
    """Fit the task probe (L2 strength chosen on validation) and the control probe, the same probe with the
    same strength, on the same activations and split."""
    tr, va, te = split.train, split.validation, split.test
    y = target.labels
    val_pred, test_pred, C = fit_predict(X, y, tr, va, te, Cs, max_iter, tol)
    control_val, control_test, _ = fit_predict(X, control, tr, va, te, Cs, max_iter, tol, C=C)
    majority = majority_predict(y, tr, 1)[0]

    def part(idx, pred, control_pred):
        return Predictions(y[idx], pred, control[idx], control_pred, np.full(len(idx), majority, dtype=y.dtype),
                           split.seen[idx])

    return ProbeOutcome(part(va, val_pred, control_val), part(te, test_pred, control_test), C)


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


@dataclass
class Prepared:
    """What every probe of one target shares: the split and the resamples of validation and test problems."""

    target: ProbeTarget
    split: Split
    validation_weights: np.ndarray
    test_weights: np.ndarray


def prepare(target: ProbeTarget, test_fraction: float = 0.3, validation_fraction: float = 0.2,
            n_bootstrap: int = 200, seed: int = 0) -> Prepared:
    split = problem_split(target.groups, test_fraction, validation_fraction, seed, target.types)
    return Prepared(target, split, resample_weights(target.groups[split.validation], n_bootstrap, seed),
                    resample_weights(target.groups[split.test], n_bootstrap, seed + 1))


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
        value, s, _ = _choose(points, per_place, "validation_selectivity", "selectivity")
        values.append(value)
        pooled.append(s)
    pooled = np.concatenate(pooled)
    return {"value": float(np.nanmean(values)), "ci": list(stats.interval(pooled, confidence)), "samples": pooled}


# --- headline numbers ------------------------------------------------------------------------
def _choose(points: dict, per_place: dict, select: str, score: str) -> tuple[float, np.ndarray, tuple | None]:
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
    return {key: dict(zip(rows.metric, rows.value)) for key, rows in table.groupby(["model", "target", "layer", "site"])}


def select_then_score(table: pd.DataFrame, samples: dict, model: str, target: str, select: str = "validation_selectivity",
                      score: str = "selectivity", sites: list[str] | None = None) -> tuple[float, np.ndarray, tuple | None]:
    """`_choose` over every (layer, site) probed for `model` and `target` (or only at `sites`)."""
    here = table[(table.model == model) & (table.target == target)]
    if sites is not None:
        here = here[here.site.isin(sites)]
    if here.empty:
        raise ValueError(f"no probes for model={model!r}, target={target!r}" + (f" at sites {sites}" if sites else ""))
    points = {(l, s): v for (_, _, l, s), v in _points(here).items()}
    return _choose(points, {p: samples[(model, target, *p)] for p in points}, select, score)


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
        chosen = {m: select_then_score(table, samples, m, "intermediate", sites=[site]) for m in models}
        for m in models:
            value, s, place = chosen[m]
            out[f"probe_selectivity_intermediate_{m}"] = {
                **_estimate(value, s, confidence),
                "description": f"{m}: selectivity (task - control accuracy on test examples of types seen in "
                               f"training) of the intermediate-result probe at the layer most selective on validation "
                               f"({_where(place)}; re-chosen in every resample)"}
        if {"sft", "rlvr"} <= set(models):
            gain = chosen["rlvr"][0] - chosen["sft"][0], chosen["rlvr"][1] - chosen["sft"][1]
            out["probe_selectivity_gain_rlvr_vs_sft"] = {
                **_estimate(*gain, confidence),
                "description": "RLVR minus SFT intermediate-result selectivity, each at its own layer chosen on "
                               "validation; paired bootstrap over the same validation and test problems"}
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
            out[f"probe_selectivity_answer_{m}"] = {
                **_estimate(float(rows.value.iloc[0]), samples[(m, "answer_last_digit", shown, site)]["selectivity"],
                            confidence),
                "description": f"{m}: answer-digit probe selectivity at layer {shown} (the decodable layer, "
                               "else the last)"}
    if "correct" in have:
        for m in models:
            if not (table[(table.model == m) & (table.target == "correct")]).size:
                continue
            value, s, place = select_then_score(table, samples, m, "correct", "validation_accuracy", "over_majority",
                                                [site])
            out[f"probe_correct_over_majority_{m}"] = {
                **_estimate(value, s, confidence),
                "description": f"{m}: accuracy of predicting its own answer's correctness from the last prompt "
                               f"token, minus the majority-class baseline, at the layer most accurate on validation "
                               f"({_where(place)})"}
    return out


def variant_gains(table: pd.DataFrame, samples: dict, treatments: list[str], reference: str = "sft",
                  target: str = "intermediate", confidence: float = 0.95, site: str = SUMMARY_SITE) -> dict:
    """{T: {"selectivity_gain": {value, ci}}}: T's selectivity for `target` at `site` minus the reference's,
    each at its own layer chosen on validation (re-chosen per resample), paired over the same resamples."""
    have = set(table[(table.target == target) & (table.site == site)].model)
    if reference not in have:
        return {}
    ref_value, ref_samples, _ = select_then_score(table, samples, reference, target, sites=[site])
    out = {}
    for t in treatments:
        if t not in have:
            continue
        value, s, _ = select_then_score(table, samples, t, target, sites=[site])
        out[t] = {"selectivity_gain": _estimate(value - ref_value, s - ref_samples, confidence)}
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
    shared = [t for t in shared if _splittable(t)]
    out = {}
    for model, rows in greedy.items():
        own = [correct_target(cache, rows)] if "correct" in pcfg.targets else []
        out[model] = shared + [t for t in own if _splittable(t)]
    return out


MIN_PROBLEMS = 10  # a train / validation / test split needs a few problems on every side


def _splittable(target: ProbeTarget) -> bool:
    n_problems = len(np.unique(target.groups))
    if n_problems < MIN_PROBLEMS:
        log.warning("target %r has examples in %d problems, fewer than the %d a train/validation/test split needs: "
                    "left out", target.name, n_problems, MIN_PROBLEMS)
        return False
    return True


def with_treatments(targets: dict[str, list[ProbeTarget]], treatments: list[str], available: list[str],
                    reference: str = "sft", names=("intermediate",)) -> dict[str, list[ProbeTarget]]:
    """`targets` plus, for every treatment with stored activations that has none yet, the reference's
    targets named `names` (the ones the variants' comparison needs: probing everything for every null
    would cost the most and decide nothing more)."""
    out = dict(targets)
    shared = [t for t in targets.get(reference, []) if t.name in names]
    for t in treatments:
        if t not in out and t in available and shared:
            out[t] = shared
    return out


def describe(targets: dict[str, list[ProbeTarget]], test_fraction: float = 0.3, validation_fraction: float = 0.2,
             seed: int = 0) -> pd.DataFrame:
    """One row per model x target: examples, problems, classes, majority share of the task and of its control
    task, control types, and the test examples whose type never occurs in training (left out of selectivity)."""
    rows = []
    for model, model_targets in targets.items():
        for t in model_targets:
            _, counts = np.unique(t.labels, return_counts=True)
            _, control_counts = np.unique(control_labels(t.types, t.labels, seed), return_counts=True)
            split = problem_split(t.groups, test_fraction, validation_fraction, seed, t.types)
            rows.append({"model": model, "target": t.name, "examples": len(t), "problems": len(np.unique(t.groups)),
                         "classes": len(counts), "majority share": counts.max() / counts.sum(),
                         "control majority share": control_counts.max() / control_counts.sum(),
                         "control types": len(set(t.types)), "test examples": len(split.test),
                         "test examples of unseen types": int((~split.seen[split.test]).sum())})
    return pd.DataFrame(rows)


def analyse(cfg, store, targets: dict[str, list[ProbeTarget]], reference: str = "sft"
            ) -> tuple[pd.DataFrame, dict, dict]:
    """Probe every model's stored activations (probes params section), plus every treatment of
    `registry.names(cfg)` whose activations are in `store` (its intermediate-result target only).

    Returns (table, summary, variants): summary holds the headline numbers and `selectivity_noise_floor`,
    variants {T: {"selectivity_gain": {value, ci}}} for each treatment T against `reference`.
    """
    from rlvr_utils.treatments.registry import names as variant_names

    p = cfg.probes
    treatments = variant_names(cfg)
    targets = with_treatments(targets, treatments, store.models(), reference)
    meta = store.meta(next(iter(targets)))
    sites = [s for s in p.sites if s in meta["sites"]]
    if not sites:
        raise ValueError(f"probes.sites={p.sites}: none of them was extracted (have {meta['sites']})")
    reader = StoreReader(store)
    settings = dict(Cs=p.Cs, max_iter=p.max_iter, tol=p.tol, test_fraction=p.test_fraction,
                    validation_fraction=p.validation_fraction, n_bootstrap=p.n_bootstrap,
                    confidence=cfg.evaluation.confidence, seed=cfg.seed)
    site = SUMMARY_SITE if SUMMARY_SITE in sites else sites[-1]
    # Every site for the models the figures show; the others at the site the headline numbers are read at.
    extra = [m for m in targets if m in treatments and m != "rlvr"]
    table, samples = run(reader, {m: t for m, t in targets.items() if m not in extra}, meta["layers"], sites,
                         **settings)
    if extra:
        more, more_samples = run(reader, {m: targets[m] for m in extra}, meta["layers"], [site], **settings)
        table, samples = pd.concat([table, more], ignore_index=True), {**samples, **more_samples}
    stages = [m for m in targets if m not in treatments or m == "rlvr"]
    out = summary(table, samples, stages, max(meta["layers"]) + 1, p.decodable_margin, cfg.evaluation.confidence, site)
    inter = [t for t in targets.get(reference, []) if t.name == "intermediate"]
    if inter:
        started = time.perf_counter()
        floor = noise_floor(reader, reference, inter[0], meta["layers"], [site], **settings)
        log.info("selectivity noise floor in %.1f s", time.perf_counter() - started)
        out["selectivity_noise_floor"] = {
            "value": floor["value"], "ci": floor["ci"],
            "description": f"intermediate-result selectivity of {reference}'s activations ({site}) with their rows "
                           "shuffled over examples (no information about the labels), through the same split, probes, "
                           "control task and validation choice of layer; pooled over shuffles and resamples"}
    return table, out, variant_gains(table, samples, treatments, reference, "intermediate", cfg.evaluation.confidence,
                                     site)


def table_records(table: pd.DataFrame) -> list[dict]:
    """The probe table as JSON-safe rows (NaN, e.g. the selectivity of a target without seen types, as None)."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


# --- figures --------------------------------------------------------------------------------------
_LABELS = {"accuracy": "accuracy", "selectivity": "selectivity (task − control)",
           "over_majority": "accuracy − majority class", "macro_f1": "macro-F1"}


def figure(table: pd.DataFrame, metric: str = "accuracy", models=None) -> plt.Figure:
    """One panel per target x site: `metric` per layer for each model (all, or `models`) with its interval.
    For accuracy the control-task accuracy (dashed) and the majority baseline (dotted) are drawn too."""
    if models is not None:
        table = table[table.model.isin(list(models))]
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
        if v["value"] is None:
            return "undefined"
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
                         "at the layer and site chosen on validation")
        lens_layer = summary.get(f"lens_answer_layer_{m}", {}).get("value", float("nan"))
        if lens_layer == lens_layer:  # NaN when no completion has an answer position
            parts.append(f"its logit lens gives its final answer token from layer {lens_layer:.0f}")
        found = "; ".join(parts) or "no intermediate result or answer was found in the completions"
        lines.append(f"- **{m}**: {found}.")
    gain = summary.get("probe_selectivity_gain_rlvr_vs_sft")
    if gain and gain.get("ci"):
        lo, hi = gain["ci"]
        verdict = ("RLVR made them more decodable, as Representation learning predicts" if lo > 0 else
                   "RLVR made them less decodable" if hi < 0 else
                   "the interval contains 0: no change detected, as Routing predicts")
        lines += ["", "RLVR − SFT selectivity for intermediate results: "
                      f"{show('probe_selectivity_gain_rlvr_vs_sft')}; {verdict}."]
    floor = summary.get("selectivity_noise_floor")
    if floor and floor.get("ci"):
        lines += ["", "Noise floor of selectivity (the same pipeline on shuffled features): "
                      f"{show('selectivity_noise_floor')}: a selectivity or gain inside this range is no evidence."]
    lines += ["", "Cross-model lens at the last layer (KL to the owner's output, nats): SFT's read-out on RLVR's "
                  f"stream {show('lens_cross_kl_rlvr_by_sft', 3)}, RLVR's on SFT's "
                  f"{show('lens_cross_kl_sft_by_rlvr', 3)}; for scale, the base model's read-out on SFT's stream "
                  f"{show('lens_cross_kl_sft_by_base', 3)}."]
    return "\n".join(lines)
