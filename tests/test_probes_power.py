"""Probes with power: cross-fitting that scores every example once, no choice of a fold that reads its test labels,
the control probe's own L2 strength, and the planted-result power check (a known new decodable result is found,
nulls stay near 0)."""
from __future__ import annotations

import numpy as np
import pytest

from rlvr_utils.instruments.probes import maths, sweep
from rlvr_utils.instruments.probes import targets as located
from tests.test_probes import planted


def test_cross_fitting_tests_every_example_once_and_never_beside_its_problem():
    groups = np.repeat(np.arange(60), np.random.default_rng(1).integers(1, 4, 60))
    splits = maths.folds(groups, 0.2, 0.2, seed=3)
    assert len(splits) == 5
    tested = np.concatenate([f.test for f in splits])
    assert sorted(tested.tolist()) == list(range(len(groups)))  # each example in exactly one test fold
    for f in splits:
        parts = [set(groups[p]) for p in (f.train, f.validation, f.test)]
        assert all(a.isdisjoint(b) for a, b in ((parts[0], parts[1]), (parts[0], parts[2]), (parts[1], parts[2])))
        assert len(f.train) + len(f.validation) + len(f.test) == len(groups)
    with pytest.raises(ValueError, match="2 problems per fold"):
        maths.folds(np.arange(6), 0.2)
    with pytest.raises(ValueError, match="leaves no problem"):
        maths.folds(groups, 0.5, 0.5)


def test_no_choice_of_a_fold_reads_its_test_labels():
    # scramble the labels of fold 0's test examples: its control labels, both L2 strengths and its validation
    # scores (what chooses the layer) must not move; only its test scores may
    X, y, groups = planted(n_problems=90, k=4, strength=1.0)
    types = [(int(v), i % 9) for i, v in enumerate(y)]
    target = located.ProbeTarget("t", np.arange(len(y)), np.zeros(len(y)), y, groups, types)
    before = maths.plan(target, 0.2, 0.2, 50, seed=0)
    test0 = before.folds[0].test
    scrambled = y.copy()
    scrambled[test0] = (y[test0] + 1) % 4
    after = maths.plan(located.ProbeTarget("t", target.rows, target.positions, scrambled, groups, types), 0.2, 0.2, 50)
    assert np.array_equal(before.controls[0], after.controls[0])
    a, b = maths.cross_fit(X, before, Cs=(0.01, 1.0)), maths.cross_fit(X, after, Cs=(0.01, 1.0))
    assert (a.C[0], a.control_C[0]) == (b.C[0], b.control_C[0])
    for key in a.select:
        assert np.array_equal(a.select[key][0], b.select[key][0], equal_nan=True)
    assert not np.array_equal(a.sums["selectivity"][0][0], b.sums["selectivity"][0][0])  # the test fold did change


def test_the_control_probe_chooses_its_own_regularisation():
    # the task is one direction among noisy features; the control is a random label per type, learnable only by
    # memorising the types' embeddings: the two are best at different L2 strengths
    rng = np.random.default_rng(0)
    n, n_types = 600, 60
    type_of = rng.integers(0, n_types, n)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 80))
    X[:, 0] += 1.5 * (2 * y - 1)
    X[:, 1:41] += 2.0 * rng.normal(size=(n_types, 40))[type_of]
    target = located.ProbeTarget("t", np.arange(n), np.zeros(n), y, np.arange(n) // 2, [(int(t),) for t in type_of])
    split = maths.folds(target.groups, 0.2, 0.2, 0, target.types)[0]
    control = maths.control_labels(target.types, y, 0, np.concatenate([split.train, split.validation]))
    outcome = maths.probe(X, target, split, control, Cs=(0.001, 0.01, 0.1, 1.0, 10.0))
    _, _, own = maths.fit_predict(X, control, split.train, split.validation, split.test, (0.001, 0.01, 0.1, 1.0, 10.0),
                                  scored=split.seen[split.validation])
    _, _, task = maths.fit_predict(X, y, split.train, split.validation, split.test, (0.001, 0.01, 0.1, 1.0, 10.0))
    assert outcome.control_C == own and outcome.C == task  # each its own validation search
    assert outcome.control_C != outcome.C  # so the control does not inherit the task's strength


def test_planted_reader_writes_a_decodable_label_only_where_asked():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(40, 8)).astype(np.float32)
    acts.setflags(write=False)  # like a memory-mapped store
    target = located.ProbeTarget("intermediate", np.arange(0, 40, 2), np.zeros(20), np.arange(20) % 4,
                                np.arange(20), [(i,) for i in range(20)])
    read = lambda model, site, rows, positions: acts[np.asarray(rows)]  # noqa: E731
    planted_read = sweep.Planted(read, "t", "blocks.1.hook_resid_post", target, strength=1.0)
    rows = np.arange(40)
    assert np.array_equal(planted_read("t", "blocks.0.hook_resid_post", rows, np.zeros(40)), acts)
    assert np.array_equal(planted_read("sft", "blocks.1.hook_resid_post", rows, np.zeros(40)), acts)
    got = planted_read("t", "blocks.1.hook_resid_post", rows, np.zeros(40))
    assert np.array_equal(got[1::2], acts[1::2])  # rows that are no example of the target are left alone
    shift = got[::2] - acts[::2]
    assert np.allclose(np.linalg.norm(shift, axis=1), np.linalg.norm(acts, axis=1).mean(), rtol=1e-4)
    for label in range(4):  # one direction per class
        assert np.allclose(shift[target.labels == label], shift[target.labels == label][0], atol=1e-5)
    with pytest.raises(ValueError, match="strength"):
        sweep.Planted(read, "t", "s", target, -1.0)


def test_power_a_planted_result_is_found_and_nulls_stay_near_zero():
    # the reference decodes the result weakly at every layer (a type-dependent representation, as a model that
    # reads the expression); nulls add small random changes; the treatment is the reference with the result
    # planted at layer 1 at half the activations' norm
    rng = np.random.default_rng(0)
    n_problems, n_layers = 200, 3
    groups = np.repeat(np.arange(n_problems), 2)
    type_of = rng.integers(0, 30, len(groups))
    y = type_of % 6  # the label is a function of the type, as a value of its expression
    embed = rng.normal(size=(30, 16))
    base = [embed[type_of] * 0.5 + rng.normal(size=(len(y), 16)) for _ in range(n_layers)]
    target = located.ProbeTarget("intermediate", np.arange(len(y)), np.zeros(len(y)), y, groups,
                                [(int(t),) for t in type_of])
    acts = {"sft": base, "t": base}
    for k in range(3):
        acts[f"null_{k}"] = [x + 0.3 * np.random.default_rng(10 + k).normal(size=x.shape) for x in base]

    def read(model, site, rows, positions):
        return acts[model][int(site.split(".")[1])][np.asarray(rows)]

    planted_read = sweep.Planted(read, "t", "blocks.1.hook_resid_post", target, strength=0.5)
    table, samples = sweep.run(planted_read, {m: [target] for m in acts}, list(range(n_layers)), ["hook_resid_post"],
                               Cs=(0.1, 1.0), n_bootstrap=200)
    gains = {m: sweep.selectivity_gain(table, samples, m) for m in acts if m != "sft"}
    nulls = [gains[f"null_{k}"] for k in range(3)]
    assert all(abs(g.value) < 0.05 for g in nulls), nulls
    assert gains["t"].ci[0] > max(g.ci[1] for g in nulls) + 0.1, (gains["t"], nulls)
    assert gains["t"].value > 0.25
    # the drop side sees no loss in the plant: the change it reports is no lower than the nulls'
    drop = sweep.selectivity_gain(table, samples, "t", lower=True)
    assert drop.value > min(g.value for g in nulls) - 0.05
