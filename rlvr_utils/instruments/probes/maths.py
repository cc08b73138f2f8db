"""The probe maths: a linear probe, its Hewitt & Liang control task, cross-fitting by problem and the scores
under bootstrap resamples of problems.

A probe is a logistic regression on standardised activations, trained to read a target (`ProbeTarget`) at one
token position. Chance and memorisation are measured, not assumed (Hewitt & Liang 2019):
  - the majority-class baseline: the most frequent training label, predicted for every test example;
  - a control task: every example has a *type*, the surface form its label is a function of
    (`ProbeTarget.types`); each type gets a fixed random label, dealt so that the control's label shares
    equal the task's, and a probe of the same family is trained on those labels. Selectivity = task accuracy -
    control accuracy, both on the test examples whose type occurs in the probe's training data (an unseen type's
    control label cannot be learned, which would inflate selectivity), is what the representation offers beyond
    memorising surface form.

Cross-fitting (`plan`): the problems are dealt into round(1 / test_fraction) folds and every fold is the test set
once, so every example is scored once by probes that never saw its problem (one held-out split scored 63 test
examples of seen types on the default run; 5 folds score 264). In each fold the other problems are split into train
and validation; the task probe's and the control probe's L2 strengths are each chosen on validation (the control on
its own search, not the task's strength), then both are refitted on train + validation and predict the test fold.
The control labels are dealt from the fold's train + validation labels. Nothing a fold chooses reads its test
examples.
Scores are computed for the sample and every bootstrap resample of problems at once (weights; row 0 is the sample
itself), so that a choice made on validation can be re-made in every resample (`sweep`).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit, KFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from rlvr_utils.core import stats
from rlvr_utils.instruments.probes.targets import ProbeTarget


# --- control task, splits, fit -------------------------------------------------------------------
def control_labels(types: list, labels, seed: int = 0, fit=None) -> np.ndarray:
    """Hewitt & Liang's control task with the task's label distribution: each distinct type gets one
    fixed random label, and every example of that type carries it.

    The labels are dealt out so that each class's share of examples matches the task's: the types, in
    random order, are laid end to end on a line, each as long as its number of examples; the task's labels,
    grouped by class in random class order, are laid on the same line; each type takes the class under its
    midpoint. Shares then match up to one type's count at each class boundary. (Drawing each type's label
    independently from the label distribution gives the control another majority share than the task's,
    and so another chance level: 0.22 vs 0.13 on the organism's answer digit.)

    `fit` (example indices): deal from those examples' types and labels only -- a fold's train + validation,
    so that no test label is read; a type outside them gets a label drawn from their label shares (it is never
    scored: its control label cannot be learned).
    """
    labels = np.asarray(labels)
    if len(types) != len(labels):
        raise ValueError(f"types and labels must have the same length, got {len(types)} and {len(labels)}")
    if len(labels) == 0:
        return labels.copy()
    index = {}
    type_of = np.array([index.setdefault(t, len(index)) for t in types])
    fit = np.arange(len(labels)) if fit is None else np.asarray(fit, dtype=int)
    counts_all = np.bincount(type_of[fit], minlength=len(index))
    dealt = np.flatnonzero(counts_all)  # the types that occur in `fit`
    counts = counts_all[dealt]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    classes, class_counts = np.unique(labels[fit], return_counts=True)
    class_order = rng.permutation(len(classes))
    class_ends = np.cumsum(class_counts[class_order])
    midpoints = np.cumsum(counts[order]) - counts[order] / 2
    slot = np.minimum(np.searchsorted(class_ends, midpoints, side="right"), len(classes) - 1)
    mapping = rng.choice(classes, size=len(index), p=class_counts / class_counts.sum())
    mapping[dealt[order]] = classes[class_order[slot]]
    return mapping[type_of]


@dataclass
class Split:
    """Example indices of the train, validation and test problems, and whether each example's control type
    occurs in the data a control probe that scores it was trained on: `seen` in train (what validation is
    scored on), `seen_fit` in train + validation (what the refitted probes score test on; None: as `seen`)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seen: np.ndarray  # bool per example
    seen_fit: np.ndarray | None = None

    def __post_init__(self):
        if self.seen_fit is None:
            self.seen_fit = self.seen


def _seen(types: list | None, n: int, fitted: np.ndarray) -> np.ndarray:
    if types is None:
        return np.ones(n, dtype=bool)
    trained = {types[i] for i in fitted}
    return np.array([t in trained for t in types])


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name}={value} must be between 0 and 1")


def _train_validation(groups: np.ndarray, rest: np.ndarray, validation_fraction: float, seed: int, types):
    inner = GroupShuffleSplit(n_splits=1, test_size=validation_fraction, random_state=seed)
    train, validation = (np.sort(rest[i]) for i in next(inner.split(np.zeros(len(rest)), groups=groups[rest])))
    return train, validation, _seen(types, len(groups), train), \
        _seen(types, len(groups), np.concatenate([train, validation]))


def _check_fractions(test_fraction: float, validation_fraction: float) -> None:
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        _check_fraction(name, value)
    if test_fraction + validation_fraction >= 1:
        raise ValueError(f"test_fraction + validation_fraction = {test_fraction + validation_fraction} leaves no "
                         "problem to train on")


def problem_split(groups, test_fraction: float, validation_fraction: float = 0.2, seed: int = 0,
                  types: list | None = None) -> Split:
    """One train / validation / test split of example indices with every problem (group) on exactly one side
    (`folds` makes every problem a test problem once). `seen` marks the examples whose type (`types`) occurs in
    training (all True without `types`)."""
    groups = np.asarray(groups)
    _check_fractions(test_fraction, validation_fraction)
    if len(np.unique(groups)) < 3:
        raise ValueError(f"a train/validation/test split by problem needs at least 3 problems, got "
                         f"{len(np.unique(groups))}")
    outer = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    rest, test = next(outer.split(np.zeros(len(groups)), groups=groups))
    train, validation, seen, seen_fit = _train_validation(groups, rest, validation_fraction / (1 - test_fraction),
                                                          seed, types)
    return Split(train, validation, np.sort(test), seen, seen_fit)


def folds(groups, test_fraction: float = 0.2, validation_fraction: float = 0.2, seed: int = 0,
          types: list | None = None) -> list[Split]:
    """Cross-fitting splits: the problems (groups) dealt at random into round(1 / `test_fraction`) folds, each
    the test set of one split; in each, the other problems are split into train and validation (a
    `validation_fraction` of all problems). Every example is a test example exactly once, never with its
    problem on another side."""
    groups = np.asarray(groups)
    _check_fractions(test_fraction, validation_fraction)
    n_folds, problems = max(2, round(1 / test_fraction)), np.unique(groups)
    if len(problems) < 2 * n_folds:
        raise ValueError(f"test_fraction={test_fraction}: {n_folds} cross-fitting folds need at least 2 problems per "
                         f"fold (a validation problem and a test problem), got {len(problems)} problems")
    inner = validation_fraction / (1 - test_fraction)
    out = []
    for k, (_, test_p) in enumerate(KFold(n_folds, shuffle=True, random_state=seed).split(problems)):
        test = np.flatnonzero(np.isin(groups, problems[test_p]))
        rest = np.setdiff1d(np.arange(len(groups)), test)
        train, validation, seen, seen_fit = _train_validation(groups, rest, inner, seed + k, types)
        out.append(Split(train, validation, test, seen, seen_fit))
    return out


def fit_predict(X, y, train, validation, test, Cs=(0.01, 0.1, 1.0), max_iter: int = 200, tol: float = 1e-3,
                C: float | None = None, refit: bool = False,
                scored=None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Logistic-regression probes on standardised `train` activations, one per L2 strength in `Cs` (or only
    `C`); the one with the best validation accuracy (on the validation examples where `scored`, a bool mask, is
    True; all by default) is chosen. With `refit` it is fitted again on train + validation (standardised anew)
    before predicting test. Returns (validation predictions, test predictions, C used); a training set with one
    class predicts it (C None)."""
    X, y = np.asarray(X), np.asarray(y)
    train, validation, test = (np.asarray(i, dtype=int) for i in (train, validation, test))
    classes = np.unique(y[train])
    if len(classes) == 1:
        return np.full(len(validation), classes[0]), np.full(len(test), classes[0]), None
    scored = np.ones(len(validation), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    scaler = StandardScaler().fit(X[train])
    Xt, Xv = scaler.transform(X[train]), scaler.transform(X[validation])
    # Strongest regularisation first, each fit starting from the last: the path costs little more than one fit.
    linear = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    best = None
    # One BLAS thread: the fits are small, and threads only fight over the cores.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(Cs) if C is None else [C]:
            linear.set_params(C=c).fit(Xt, y[train])
            pred_v = linear.predict(Xv)
            score = np.mean(pred_v[scored] == y[validation][scored]) if scored.any() else 0.0
            if best is None or score > best[0]:  # ties keep the stronger regularisation
                best = (score, pred_v, float(c), linear.coef_.copy(), linear.intercept_.copy())
        _, pred_v, c, coef, intercept = best
        if not refit:
            linear.coef_, linear.intercept_ = coef, intercept  # the chosen probe, not the path's last
            return pred_v, linear.predict(scaler.transform(X[test])), c
        fit_rows = np.concatenate([train, validation])
        scaler = StandardScaler().fit(X[fit_rows])
        again = LogisticRegression(C=c, max_iter=max_iter, tol=tol, warm_start=True)
        again.coef_, again.intercept_ = _start(coef, intercept, classes, np.unique(y[fit_rows]))
        again.fit(scaler.transform(X[fit_rows]), y[fit_rows])
        return pred_v, again.predict(scaler.transform(X[test])), c


def _start(coef, intercept, classes, new_classes):
    """Starting weights for the refit on train + validation: the chosen probe's for the classes it knows, zero
    weights and its lowest intercept for a class only validation has (a cold start takes ~3x the iterations)."""
    if len(classes) == 2 or len(new_classes) == 2:  # binary: one row of weights
        return (coef, intercept) if np.array_equal(classes, new_classes) else (None, None)
    at = {c: i for i, c in enumerate(classes)}
    rows = [at.get(c) for c in new_classes]
    start = np.array([coef[i] if i is not None else np.zeros(coef.shape[1]) for i in rows])
    bias = np.array([intercept[i] if i is not None else intercept.min() for i in rows])
    return start, bias


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


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def accuracy(y_true, y_pred, weights=None) -> np.ndarray | float:
    """Accuracy; with `weights` (B, n) one value per resample (NaN where a resample has no example)."""
    hits = (np.asarray(y_true) == np.asarray(y_pred)).astype(float)
    if weights is None:
        return float(hits.mean()) if len(hits) else float("nan")
    return _ratio(weights @ hits, weights.sum(axis=1))


def macro_f1(y_true, y_pred, weights=None) -> np.ndarray | float:
    """scikit-learn's f1_score(average='macro') -- the mean F1 over the classes present in y_true or
    y_pred -- for each weighting of the examples at once (one row of `weights` per resample)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    w = np.ones((1, len(y_true))) if weights is None else np.asarray(weights, dtype=float)
    classes = np.union1d(y_true, y_pred)
    is_true = (y_true[:, None] == classes).astype(float)
    is_pred = (y_pred[:, None] == classes).astype(float)
    tp, fp, fn = w @ (is_true * is_pred), w @ ((1 - is_true) * is_pred), w @ (is_true * (1 - is_pred))
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # absent classes do not count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(f1, axis=1)
    return float(out[0]) if weights is None else out


@dataclass
class Predictions:
    """Predictions of a probe, its control probe and the majority baseline on one part of a split."""

    y_true: np.ndarray
    y_pred: np.ndarray
    control_true: np.ndarray
    control_pred: np.ndarray
    majority_pred: np.ndarray
    seen: np.ndarray  # the example's control type occurs in the control probe's training data

    def sums(self, weights: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(numerator, count) per resample of a difference of accuracies -- 'selectivity' (task - control on the
        examples of seen types) or 'over_majority' (task - majority class on every example) -- so that parts
        scored by different probes (the folds) pool by adding both."""
        if metric == "selectivity":
            diff = (self.y_true == self.y_pred).astype(float) - (self.control_true == self.control_pred)
            w = weights[:, self.seen]
            return w @ diff[self.seen], w.sum(axis=1)
        if metric == "over_majority":
            diff = (self.y_true == self.y_pred).astype(float) - (self.y_true == self.majority_pred)
            return weights @ diff, weights.sum(axis=1)
        raise ValueError(f"metric={metric!r}: expected 'selectivity' or 'over_majority'")

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

    @staticmethod
    def pooled(parts: list[Predictions]) -> Predictions:
        """The parts one after the other (the folds' test predictions: every example once)."""
        return Predictions(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                             ("y_true", "y_pred", "control_true", "control_pred", "majority_pred", "seen")))


@dataclass
class ProbeOutcome:
    """A probe's predictions on the validation and test problems of one split, and the L2 strengths chosen for
    the task and (on its own) for the control probe."""

    validation: Predictions
    test: Predictions
    C: float | None = None
    control_C: float | None = None


def probe(X, target: ProbeTarget, split: Split, control: np.ndarray, Cs=(0.01, 0.1, 1.0), max_iter: int = 200,
          tol: float = 1e-3, refit: bool = True) -> ProbeOutcome:
    """Fit the task probe and the control probe on the same activations and split, each with its L2 strength
    chosen on validation (the control's on the validation examples of types seen in training, the only ones whose
    control label can be learned); with `refit`, both are refitted on train + validation to predict test."""
    tr, va, te = split.train, split.validation, split.test
    y = target.labels
    val_pred, test_pred, C = fit_predict(X, y, tr, va, te, Cs, max_iter, tol, refit=refit)
    seen_test = (split.seen_fit if refit else split.seen)[te]
    scored = split.seen[va]
    fitted = np.concatenate([tr, va]) if refit else tr
    if scored.any() or seen_test.any():
        control_val, control_test, control_C = fit_predict(X, control, tr, va, te, Cs, max_iter, tol, refit=refit,
                                                           scored=scored if scored.any() else None)
    else:  # every type is its problem's own (e.g. a prompt): no control label is ever scored, no control probe
        control_val, control_test, control_C = control[va], control[te], None
    majority = majority_predict(y, tr, 1)[0], majority_predict(y, fitted, 1)[0]

    def part(idx, pred, control_pred, seen, m):
        return Predictions(y[idx], pred, control[idx], control_pred, np.full(len(idx), m, dtype=y.dtype), seen)

    return ProbeOutcome(part(va, val_pred, control_val, scored, majority[0]),
                        part(te, test_pred, control_test, seen_test, majority[1]), C, control_C)


# --- cross-fitting: every problem a test problem once ------------------------------------------------
@dataclass
class Plan:
    """What every probe of one target shares: the folds, each fold's control labels (dealt from its train +
    validation), and the weights of the sample (row 0, all ones) and of every bootstrap resample of problems."""

    target: ProbeTarget
    folds: list[Split]
    controls: list[np.ndarray]
    weights: np.ndarray  # (1 + n_bootstrap, n_examples)

    @property
    def scored(self) -> np.ndarray:
        """Per example: scored for selectivity (its type occurs in its fold's train + validation)."""
        out = np.zeros(len(self.target), dtype=bool)
        for split in self.folds:
            out[split.test] = split.seen_fit[split.test]
        return out

    @property
    def n_scored_problems(self) -> int:
        """Problems with a scored test example: the `n` of a selectivity."""
        return len(np.unique(self.target.groups[self.scored]))


def plan(target: ProbeTarget, test_fraction: float = 0.2, validation_fraction: float = 0.2, n_bootstrap: int = 200,
         seed: int = 0) -> Plan:
    splits = folds(target.groups, test_fraction, validation_fraction, seed, target.types)
    controls = [control_labels(target.types, target.labels, seed + k, np.concatenate([s.train, s.validation]))
                for k, s in enumerate(splits)]
    weights = np.vstack([np.ones((1, len(target))), resample_weights(target.groups, n_bootstrap, seed)])
    return Plan(target, splits, controls, weights)


@dataclass
class Scored:
    """A cross-fitted probe's scores, each (1 + n_bootstrap,) with the sample first: `test` (every fold's test
    predictions pooled) and `validation` (pooled) per metric; per fold (rows), the validation scores that
    choose a place (`select`) and the test (numerator, count) a chosen place contributes (`sums`)."""

    test: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    select: dict[str, np.ndarray]
    sums: dict[str, tuple[np.ndarray, np.ndarray]]
    C: list
    control_C: list


SCORE = ("selectivity", "over_majority")  # what a place chosen per fold is scored by (pooled over folds)


def cross_fit(X, plan: Plan, Cs=(0.01, 0.1, 1.0), max_iter: int = 200, tol: float = 1e-3) -> Scored:
    """Probe `X` (the target's activations, one row per example) in every fold of `plan` and score it."""
    X = np.asarray(X)
    outcomes = [probe(X, plan.target, s, c, Cs, max_iter, tol) for s, c in zip(plan.folds, plan.controls)]
    w = plan.weights
    with threadpool_limits(1):  # small products: threads only fight over the cores
        order = np.concatenate([s.test for s in plan.folds])
        test = Predictions.pooled([o.test for o in outcomes]).scores(w[:, order])
        val_order = np.concatenate([s.validation for s in plan.folds])
        validation = Predictions.pooled([o.validation for o in outcomes]).scores(w[:, val_order], f1=False)
        per_fold = [o.validation.scores(w[:, s.validation], f1=False) for o, s in zip(outcomes, plan.folds)]
        select = {f"validation_{m}": np.stack([v[m] for v in per_fold]) for m in ("selectivity", "accuracy",
                                                                                   "over_majority")}
        sums = {}
        for metric in SCORE:
            parts = [o.test.sums(w[:, s.test], metric) for o, s in zip(outcomes, plan.folds)]
            sums[metric] = (np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))
    return Scored(test, validation, select, sums, [o.C for o in outcomes], [o.control_C for o in outcomes])


def most_common(values: list):
    """The most frequent value (the L2 strength, the place most folds chose); None when there is none."""
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def describe(targets: dict[str, list[ProbeTarget]], test_fraction: float = 0.2, validation_fraction: float = 0.2,
             seed: int = 0) -> pd.DataFrame:
    """One row per model x target: examples, problems, classes, majority share of the task and of its control
    task, control types, test examples (each example once, over the folds) and those scored for selectivity
    (type seen in the fold's train + validation) or not."""
    rows = []
    for model, model_targets in targets.items():
        for t in model_targets:
            _, counts = np.unique(t.labels, return_counts=True)
            _, control_counts = np.unique(control_labels(t.types, t.labels, seed), return_counts=True)
            scored = plan(t, test_fraction, validation_fraction, 1, seed).scored
            rows.append({"model": model, "target": t.name, "examples": len(t), "problems": len(np.unique(t.groups)),
                         "classes": len(counts), "majority share": counts.max() / counts.sum(),
                         "control majority share": control_counts.max() / control_counts.sum(),
                         "control types": len(set(t.types)), "test examples": len(t),
                         "scored test examples (seen types)": int(scored.sum()),
                         "test examples of unseen types": int((~scored).sum())})
    return pd.DataFrame(rows)
