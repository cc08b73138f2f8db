"""The probe maths: a linear probe, its Hewitt & Liang control task, the split by problem and the scores
under bootstrap resamples of problems.

A probe is a logistic regression on standardised activations, trained to read a target (`ProbeTarget`) at one
token position. Chance and memorisation are measured, not assumed (Hewitt & Liang 2019):
  - the majority-class baseline: the most frequent training label, predicted for every test example;
  - a control task: every example has a *type*, the surface form its label is a function of
    (`ProbeTarget.types`); each type gets a fixed random label, dealt so that the control's label shares
    equal the task's, and the same probe is trained on those labels. Selectivity = task accuracy - control
    accuracy, both on the test examples whose type occurs in training (an unseen type's control label
    cannot be learned, which would inflate selectivity), is what the representation offers beyond
    memorising surface form.
Splits are train / validation / test by problem: no problem has examples on two sides. The L2 strength is
chosen on validation; scores are computed for every bootstrap resample of validation and test problems at
once (as weights), so that a choice made on validation can be re-made in every resample (`sweep`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from rlvr_utils.core import stats
from rlvr_utils.instruments.probes.targets import ProbeTarget


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


@dataclass
class Prepared:
    """What every probe of one target shares: the split and the resamples of validation and test problems."""

    target: ProbeTarget
    split: Split
    validation_weights: np.ndarray
    test_weights: np.ndarray

    @property
    def n_resampled(self) -> int:
        """Problems the bootstrap resamples (validation and test): the `n` of an estimate read from them."""
        groups = self.target.groups
        return len(np.unique(groups[self.split.validation])) + len(np.unique(groups[self.split.test]))


def prepare(target: ProbeTarget, test_fraction: float = 0.3, validation_fraction: float = 0.2,
            n_bootstrap: int = 200, seed: int = 0) -> Prepared:
    split = problem_split(target.groups, test_fraction, validation_fraction, seed, target.types)
    return Prepared(target, split, resample_weights(target.groups[split.validation], n_bootstrap, seed),
                    resample_weights(target.groups[split.test], n_bootstrap, seed + 1))


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
