"""Linear probes: planted features found, chance on shuffled labels, control tasks, problem-level splits,
targets located in token sequences, and the activation-store lookup."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils.activations.extraction import extract
from rlvr_utils.activations.tokens import build_token_cache
from rlvr_utils.core.params import Params, ProbeParams
from rlvr_utils.instruments import base
from rlvr_utils.instruments.probes import figures, maths, sweep
from rlvr_utils.instruments.probes import targets as located
from rlvr_utils.instruments.probes.instrument import Probes
from rlvr_utils.models.hooks import capture
from rlvr_utils.training import organism
from rlvr_utils.training.data import write_jsonl


def planted(n_problems=150, per_problem=2, d=16, k=3, strength=3.0, seed=0):
    """Gaussian activations with a class-dependent direction added: linearly decodable by construction."""
    rng = np.random.default_rng(seed)
    n = n_problems * per_problem
    y = rng.integers(0, k, n)
    directions = rng.normal(size=(k, d))
    X = rng.normal(size=(n, d)) + strength * directions[y]
    return X, y, np.repeat(np.arange(n_problems), per_problem)


def score(X, y, groups, types, seed=0):
    """Cross-fitted test scores: ({metric: value}, {metric: per-resample values})."""
    target = located.ProbeTarget("t", np.arange(len(y)), np.zeros(len(y)), y, groups, types)
    scored = maths.cross_fit(X, maths.plan(target, 0.3, 0.2, 200, seed), Cs=(0.1, 1.0))
    return {k: float(v[0]) for k, v in scored.test.items()}, {k: v[1:] for k, v in scored.test.items()}


# --- the properties the issue asks for ---------------------------------------------------------
def test_probe_recovers_planted_feature_and_is_selective():
    X, y, groups = planted()
    types = [(i % 40,) for i in range(len(y))]  # 40 surface forms the label does not depend on
    point, samples = score(X, y, groups, types)
    assert point["accuracy"] > 0.9
    assert point["majority_accuracy"] < 0.5
    assert point["selectivity"] > 0.4
    assert np.quantile(samples["selectivity"], 0.025) > 0.3
    assert point["macro_f1"] > 0.9


def test_unique_types_have_no_selectivity_but_keep_their_accuracy():
    # every example its own type: no test type was seen in training, so the control task cannot be scored
    X, y, groups = planted()
    point, _ = score(X, y, groups, [(i,) for i in range(len(y))])
    assert point["accuracy"] > 0.9
    assert np.isnan(point["selectivity"]) and np.isnan(point["control_accuracy"])


def test_shuffled_labels_score_at_chance():
    X, y, groups = planted(k=2)
    shuffled = np.random.default_rng(1).permutation(y)
    point, samples = score(X, shuffled, groups, [(i,) for i in range(len(y))])
    lo, hi = np.quantile(samples["accuracy"], [0.025, 0.975])
    assert lo < 0.5 < hi  # the interval covers chance for two balanced classes
    assert abs(point["accuracy"] - 0.5) < 0.15
    assert point["accuracy"] < point["majority_accuracy"] + 0.1


def test_token_identity_probe_has_selectivity_near_zero():
    # the label is a function of the token alone, and the activation encodes the token: the control task
    # (a random function of the token) is as decodable, so the probe shows nothing beyond memorisation
    rng = np.random.default_rng(0)
    n_tokens, n = 12, 480
    tokens = rng.integers(0, n_tokens, n)
    embedding = rng.normal(size=(n_tokens, 24)) * 3
    X = embedding[tokens] + rng.normal(size=(n, 24))
    y = tokens % 4
    point, samples = score(X, y, np.arange(n) // 2, [(int(t),) for t in tokens])
    assert point["accuracy"] > 0.95
    assert point["control_accuracy"] > 0.95
    assert abs(point["selectivity"]) < 0.05
    assert np.quantile(samples["selectivity"], 0.975) < 0.1


def test_no_problem_on_two_sides_of_the_split():
    groups = np.repeat(np.arange(40), np.random.default_rng(0).integers(1, 4, 40))
    for seed in range(5):
        split = maths.problem_split(groups, 0.3, 0.2, seed)
        parts = [set(groups[p]) for p in (split.train, split.validation, split.test)]
        assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
        assert len(split.train) + len(split.validation) + len(split.test) == len(groups)
        assert 0.15 < len(parts[2]) / 40 < 0.45 and 0.1 < len(parts[1]) / 40 < 0.35
    with pytest.raises(ValueError, match="test_fraction"):
        maths.problem_split(groups, 1.5)
    with pytest.raises(ValueError, match="leaves no problem"):
        maths.problem_split(groups, 0.6, 0.4)
    with pytest.raises(ValueError, match="at least 3 problems"):
        maths.problem_split(np.zeros(5), 0.3)


def test_selectivity_counts_only_test_types_seen_in_training():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(120), 2)
    types = [f"t{rng.integers(0, 150)}" for _ in groups]  # many types occur once: unseen in training
    split = maths.problem_split(groups, 0.3, 0.2, 0, types)
    trained = {types[i] for i in split.train}
    assert split.seen.tolist() == [t in trained for t in types]
    assert 0 < (~split.seen[split.test]).sum() < len(split.test)  # some unseen, some seen
    target = located.ProbeTarget("t", np.arange(len(groups)), np.zeros(len(groups)), rng.integers(0, 3, len(groups)),
                                groups, types)
    table = maths.describe({"m": [target]}, 0.3, 0.2, 0)
    # cross-fitted: every example is a test example once, unseen when its type is not in its fold's train + validation
    unseen = sum(int((~f.seen_fit[f.test]).sum()) for f in maths.folds(groups, 0.3, 0.2, 0, types))
    assert table["test examples of unseen types"].item() == unseen
    assert table["scored test examples (seen types)"].item() == len(groups) - unseen > 0


# --- pieces --------------------------------------------------------------------------------------
def test_control_labels_are_a_fixed_random_function_of_type():
    types = [("a",), ("b",), ("a",), ("c",), ("b",), ("a",)] * 50
    labels = np.array(["x", "y", "z"] * 100)
    control = maths.control_labels(types, labels, seed=3)
    by_type = {}
    for t, c in zip(types, control):
        assert by_type.setdefault(t, c) == c
    assert set(control) <= set(labels)
    # many types: labels follow the task's label distribution
    many = [(i,) for i in range(3000)]
    drawn = maths.control_labels(many, np.array([0] * 2250 + [1] * 750), seed=0)
    assert abs(drawn.mean() - 0.25) < 0.01
    assert not np.array_equal(drawn, maths.control_labels(many, np.array([0] * 2250 + [1] * 750), seed=1))


@pytest.mark.parametrize("seed", range(5))
def test_control_task_has_the_tasks_majority_share(seed):
    # the answer digit's shape: ~40 types of unequal frequency, 10 classes, a skewed label distribution
    rng = np.random.default_rng(seed)
    type_of = rng.choice(40, size=500, p=rng.dirichlet(np.full(40, 3.0)))
    labels = np.where(type_of < 8, "0", (type_of % 10).astype(str))  # majority share ~0.25
    control = maths.control_labels([(int(t),) for t in type_of], labels, seed)
    for t in np.unique(type_of):  # a function of the type
        assert len(set(control[type_of == t])) == 1
    share = lambda y: np.unique(y, return_counts=True)[1].max() / len(y)  # noqa: E731
    largest_type = np.bincount(type_of).max() / len(type_of)
    assert abs(share(control) - share(labels)) <= largest_type
    assert share(control) == pytest.approx(share(labels), abs=0.05)
    classes = np.unique(labels)  # every class's count within one type's count of the task's
    assert all(abs((control == c).sum() - (labels == c).sum()) <= np.bincount(type_of).max() for c in classes)


def test_weighted_scores_match_resampled_rows_and_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    y_pred[:30] = y_true[:30]
    groups = np.repeat(np.arange(20), 3)
    weights = maths.resample_weights(groups, 25, seed=2)
    assert np.allclose(weights.sum(1), 60)  # each resample draws 20 problems of 3 examples
    acc, f1 = maths.accuracy(y_true, y_pred, weights), maths.macro_f1(y_true, y_pred, weights)
    for b in range(25):
        rows = np.repeat(np.arange(60), weights[b].astype(int))  # the resample written out
        assert acc[b] == pytest.approx(np.mean(y_true[rows] == y_pred[rows]))
        assert f1[b] == pytest.approx(f1_score(y_true[rows], y_pred[rows], average="macro"))
    assert maths.macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_one_class_training_set_predicts_it():
    X = np.random.default_rng(0).normal(size=(10, 3))
    val, test, C = maths.fit_predict(X, np.array([1] * 10), np.arange(6), np.arange(6, 8), np.arange(8, 10))
    assert val.tolist() == [1, 1] and test.tolist() == [1, 1] and C is None


def test_validation_picks_weaker_regularisation_for_a_strong_signal():
    X, y, groups = planted(n_problems=100, k=4, strength=1.0)
    split = maths.problem_split(groups, 0.3, 0.2)
    _, _, C = maths.fit_predict(X, y, split.train, split.validation, split.test, Cs=(1e-4, 1.0))
    assert C == 1.0  # C=1e-4 shrinks every weight to ~0: chance accuracy on validation
    _, pred, given = maths.fit_predict(X, y, split.train, split.validation, split.test, C=1e-4)
    assert given == 1e-4 and np.mean(pred == y[split.test]) < 0.6


# --- targets in token sequences ----------------------------------------------------------------
def small_tokenizer():
    corpus = ["Question: Ida had 19 apples. Ida found 2 more apples.\nAnswer:",
              " 19 + 2 = 21. 21 - 6 = 15.\n#### 15", "0 1 2 3 4 5 6 7 8 9 - ? $ = #"] * 20
    return organism.build_tokenizer(corpus, 300)


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


def problems(n=8, cycle=None):
    """Two-step problems; with `cycle`, the first number repeats every `cycle` problems (expressions recur)."""
    out = []
    for i in range(n):
        a, b, c = 11 + (i if cycle is None else i % cycle), 1 + i % 5, 2 + i % 3
        out.append({"id": 100 + i, "question": "", "prompt": f"Question: Ida had {a} apples.\nAnswer:",
                    "answer": f" {a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.\n#### {a + b - c}",
                    "final": str(a + b - c), "intermediates": [float(a + b), float(a + b - c)]})
    return out


def test_targets_sit_just_before_the_value_is_written(tokenizer):
    rows = problems()
    completions = {p["id"]: p["answer"] for p in rows}
    completions[101] = completions[101].replace("= 14.", "= 41.")  # a wrong first step: not an example
    cache = build_token_cache(tokenizer, rows, completions, "test")
    target = located.intermediate_target(cache, rows, tokenizer)
    by_problem = pd.Series(target.labels).groupby(target.groups).apply(list).to_dict()
    assert by_problem[100] == ["12", "10"] and by_problem[101] == ["11"]  # 101's steps: 14 (wrong), 11
    for row, pos, label, type_ in zip(target.rows, target.positions, target.labels, target.types):
        seq = cache.sequences[row]
        written = tokenizer.decode(seq[pos + 1:], clean_up_tokenization_spaces=False)
        assert written.startswith(label)  # the next tokens write the value
        before = tokenizer.decode(seq[: pos + 1]).rstrip()
        assert before.endswith("=") and before[:-1].rstrip().endswith(type_)
        a, op, b = type_.split()  # the control type is the expression just read
        assert int(a) + (int(b) if op == "+" else -int(b)) == int(label)
    digits = located.intermediate_target(cache, rows, tokenizer, label="last_digit")
    assert digits.labels.tolist() == [v[-1] for v in target.labels]

    answer = located.answer_target(cache, rows, tokenizer)
    assert len(answer) == len(rows)
    for row, pos, label, type_ in zip(answer.rows, answer.positions, answer.labels, answer.types):
        seq = cache.sequences[row]
        assert tokenizer.decode(seq[: pos + 1]).rstrip().endswith("####")
        assert tokenizer.decode(seq[pos + 1:]).strip() == rows[row]["final"]
        assert label == rows[row]["final"][-1]
        assert type_ == rows[row]["final"]  # the last number written before the answer


def test_expressions_are_found_in_other_solution_styles(tokenizer):
    rows = [{"id": 1, "question": "", "prompt": "Question: Ida had 48 apples.\nAnswer:", "final": "30",
             "answer": " Half is 48/2 = $24. Then <<24+6=30>>30 apples.\n#### 30", "intermediates": [24.0, 30.0]},
            {"id": 2, "question": "", "prompt": "Question: Ida had 2 apples.\nAnswer:", "final": "2.5",
             "answer": " 1.5 + 1 = 2.5 and 2.5 + 1 = 2.55.\n#### 2.5", "intermediates": [2.5, 3.5]}]
    cache = build_token_cache(tokenizer, rows, None, "gold")
    target = located.intermediate_target(cache, rows, tokenizer)
    assert target.labels.tolist() == ["24", "30", "2.5"]  # '= 2.55' is not 3.5, nor a second 2.5
    assert target.types == ["48/2", "24+6", "1.5 + 1"]


def test_answer_position_needs_an_answer(tokenizer):
    rows = problems(3)
    completions = {100: " 12 - 2 = 10.", 101: " 12 = 12.\n#### 12", 102: " done \\boxed{7}"}
    cache = build_token_cache(tokenizer, rows, completions, "test")
    found = located.answer_positions(cache, tokenizer)
    assert sorted(found) == [1, 2]
    assert tokenizer.decode(cache.sequences[2][found[2] + 1:]).startswith("7")


def test_correct_target_reads_the_last_prompt_token(tokenizer):
    rows = problems(4)
    cache = build_token_cache(tokenizer, rows, None, "gold")
    greedy = [{"id": 100, "correct": True}, {"id": 101, "correct": False}, {"id": 103, "correct": True}]
    target = located.correct_target(cache, greedy)
    assert target.rows.tolist() == [0, 1, 3]
    assert target.labels.tolist() == [True, False, True]
    assert target.positions.tolist() == [cache.prompt_lengths[r] - 1 for r in (0, 1, 3)]
    with pytest.raises(ValueError, match="one entry per example"):
        located.ProbeTarget("bad", [0, 1], [0], [1, 2], [0, 1], [(), ()])


def test_store_reader_reads_the_stored_activation_at_each_position(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows = problems(5)
    cache = build_token_cache(tokenizer, rows, None, "gold")
    store = extract(model, cache, tmp_path, "m", sites=["hook_resid_post"], layers=[1],
                                positions=("last_prompt", "completion"), batch_size=2, shard_size=2)
    target = located.intermediate_target(cache, rows, tokenizer)
    want_rows = np.concatenate([target.rows, [3, 0]])
    want_pos = np.concatenate([target.positions, [cache.prompt_lengths[3] - 1, cache.prompt_lengths[0] - 1]])
    got = sweep.StoreReader(store)("m", "blocks.1.hook_resid_post", want_rows, want_pos)
    for i, (r, p) in enumerate(zip(want_rows, want_pos)):
        with capture(model, ["hook_resid_post"], [1]) as acts, torch.no_grad():
            model(input_ids=torch.tensor([cache.sequences[r]]))
        assert np.allclose(got[i], acts["blocks.1.hook_resid_post"][0, p].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no stored activation"):
        sweep.StoreReader(store)("m", "blocks.1.hook_resid_post", [0], [0])


# --- a whole run and its summary ------------------------------------------------------------
def test_run_and_summary_pair_models_on_one_split():
    X, y, groups = planted(n_problems=150, d=8, k=2)
    rng = np.random.default_rng(5)
    noise = rng.normal(size=X.shape)
    # layer 1 of 'rlvr' carries the feature; everything else is noise
    acts = {("sft", 0): noise, ("sft", 1): noise, ("rlvr", 0): noise, ("rlvr", 1): X}
    target = located.ProbeTarget("intermediate", np.arange(len(y)), np.zeros(len(y)), y, groups,
                                [(i % 20,) for i in range(len(y))])

    def read(model, site, rows, positions):
        return acts[(model, int(site.split(".")[1]))][rows]

    table, samples = sweep.run(read, {"sft": [target], "rlvr": [target]}, layers=[0, 1], sites=["hook_resid_post"],
                                Cs=(1.0,), n_bootstrap=100)
    assert set(table.metric) == {"accuracy", "seen_accuracy", "control_accuracy", "selectivity", "majority_accuracy",
                                 "over_majority", "macro_f1", "validation_accuracy", "validation_selectivity"}
    assert table.n_test.nunique() == 1  # one split for every model and layer
    assert sweep.best_layer(table, "rlvr", "intermediate") == 1
    s = sweep.summary(table, samples, ["sft", "rlvr"], n_layers=2, decodable_margin=0.2)
    gain = s["probe_selectivity_gain_rlvr_vs_sft"]
    assert gain["value"] == pytest.approx(s["probe_selectivity_intermediate_rlvr"]["value"]
                                          - s["probe_selectivity_intermediate_sft"]["value"])
    assert gain["ci"][0] > 0.2
    assert all(set(v) == {"value", "ci", "description"} for v in s.values())


def test_decodable_layer_is_the_first_above_threshold():
    table = pd.DataFrame({"model": "m", "target": "a", "site": sweep.SUMMARY_SITE, "layer": [0, 1, 2, 3] * 2,
                          "metric": ["over_majority"] * 4 + ["selectivity"] * 4,
                          "value": [0.1, 0.4, 0.6, 0.7, 0.3, 0.1, 0.2, 0.0], "ci_low": [0.0, 0.15, 0.3, 0.5] * 2})
    assert sweep.decodable_layer(table, "m", "a", 0.2) == 2
    assert sweep.decodable_layer(table, "m", "a", 0.6) is None
    assert sweep.best_layer(table, "m", "a", metric="selectivity") == 0
    assert sweep.best_layer(table, "m", "a", metric="over_majority") == 3


def test_targets_without_enough_problems_are_left_out(tokenizer):
    rows = problems(4)
    cache = build_token_cache(tokenizer, rows, {p["id"]: " no working" for p in rows}, "test")
    greedy = {"m": [{"id": p["id"], "correct": False} for p in rows]}
    targets = located.targets_for(ProbeParams(), cache, rows, tokenizer, greedy)
    assert targets == {"m": []}  # no intermediate, no answer; 'correct' has 4 problems, fewer than 2 x 3 folds
    table, samples = sweep.run(lambda *a: None, targets, layers=[0], sites=["hook_resid_post"])
    assert table.empty and samples == {}
    assert sweep.summary(table, samples, ["m"], n_layers=1, decodable_margin=0.2) == {}
    figures.figure(table)


def test_reading_names_each_measured_number():
    summary = {"answer_decodable_layer_sft": {"value": 2.0, "ci": None, "description": ""},
               "probe_selectivity_answer_sft": {"value": 0.31, "ci": [0.2, 0.4], "description": ""},
               "answer_decodable_layer_rlvr": {"value": 4.0, "ci": None, "description": ""},
               "probe_selectivity_gain_rlvr_vs_sft": {"value": 0.1, "ci": [0.05, 0.15], "description": ""}}
    text = figures.reading(summary, n_layers=4, stages=("sft", "rlvr"))
    assert "decodable from layer 2 (selectivity 0.31 [0.20, 0.40])" in text
    assert "decodable at no layer" in text
    assert "more decodable than SFT at that layer" in text and "not measured" in text
    # the chapter describes; only the verdict's row (against the placebos) reads a hypothesis
    assert "Routing" not in text and "Representation" not in text
    inside = dict(summary, probe_selectivity_gain_rlvr_vs_sft={"value": 0.0, "ci": [-0.1, 0.1], "description": ""})
    assert "the interval contains 0: no change detected." in figures.reading(inside, n_layers=4, stages=("sft", "rlvr"))


# --- choices on validation, the noise floor, the variants ----------------------------------------
def test_the_place_is_chosen_on_validation_and_again_in_every_resample():
    # layer 0 is best on validation, layer 1 on test: the score is layer 0's test value, never layer 1's
    points = {(0, "s"): {"validation_selectivity": 0.5, "selectivity": 0.1},
              (1, "s"): {"validation_selectivity": 0.2, "selectivity": 0.9}}
    per_place = {(0, "s"): {"validation_selectivity": np.array([0.5, 0.1, np.nan]), "selectivity": np.array([0.1, 0.2, 0.3])},
                 (1, "s"): {"validation_selectivity": np.array([0.2, 0.3, np.nan]), "selectivity": np.array([0.9, 0.8, 0.7])}}
    value, resampled, place = sweep.choose(points, per_place, "validation_selectivity", "selectivity")
    assert value == 0.1 and place == (0, "s")
    assert resampled[:2].tolist() == [0.1, 0.8]  # resample 1 prefers layer 1 on its own validation draw
    assert np.isnan(resampled[2])  # no validation example in that resample: no choice


def _layers(n_layers=2, n_problems=80, strength=3.0, seed=0):
    X, y, groups = planted(n_problems=n_problems, d=8, k=3, strength=strength, seed=seed)
    noise = [np.random.default_rng(seed + 10 + l).normal(size=X.shape) for l in range(n_layers)]
    types = [(int(v), i % 15) for i, v in enumerate(y)]  # the label is a function of the type (like an expression)
    target = located.ProbeTarget("intermediate", np.arange(len(y)), np.zeros(len(y)), y, groups, types)
    return X, noise, target


def test_selectivity_on_pure_noise_lies_within_the_stated_noise_floor():
    X, _, target = _layers()
    layers, sites = [0, 1], ["hook_resid_post"]
    real = lambda model, site, rows, positions: X[rows]  # noqa: E731
    floor = sweep.noise_floor(real, "sft", target, layers, sites, Cs=(0.1, 1.0), n_bootstrap=200)
    lo, hi = floor["ci"]
    assert lo < 0 < hi and hi - lo < 0.5
    values = []
    for seed in range(10):  # fresh pure-noise activations through the same pipeline
        rng = np.random.default_rng(100 + seed)
        noise = {l: rng.normal(size=X.shape) for l in layers}
        table, samples = sweep.run(lambda m, site, rows, p: noise[int(site.split(".")[1])][rows], {"noise": [target]},
                                    layers, sites, Cs=(0.1, 1.0), n_bootstrap=50)
        values.append(sweep.select_then_score(table, samples, "noise", "intermediate")[0])
    values = np.array(values)
    # a 95% floor: about 1 draw in 20 falls outside it; 3 of 10 outside would say the floor is too narrow
    assert ((values >= lo) & (values <= hi)).sum() >= 8, (values, floor["ci"])
    assert abs(values.mean() - floor["value"]) < 0.06 and abs(values.mean()) < 0.06
    # the real feature is far above the floor
    table, samples = sweep.run(real, {"sft": [target]}, layers, sites, Cs=(0.1, 1.0), n_bootstrap=200)
    assert sweep.select_then_score(table, samples, "sft", "intermediate")[0] > hi + 0.2


def test_variant_gains_pair_every_treatment_with_the_reference():
    X, noise, target = _layers()
    weak = 0.1 * X + noise[0]  # the reference decodes the feature less well
    acts = {"sft": [noise[1], weak], "rlvr": [noise[1], X], "null_0": [noise[0], weak + 0.05 * noise[1]],
            "identical": [noise[1], weak]}

    def read(model, site, rows, positions):
        return acts[model][int(site.split(".")[1])][rows]

    targets = located.with_treatments({"sft": [target]}, ["rlvr", "null_0", "identical", "mlp_only"],
                                     ["sft", "rlvr", "null_0", "identical"])
    assert set(targets) == {"sft", "rlvr", "null_0", "identical"}  # mlp_only has no activations
    table, samples = sweep.run(read, targets, [0, 1], ["hook_resid_post"], Cs=(1.0,), n_bootstrap=200)
    gains = {t: g for t in ["rlvr", "null_0", "identical", "mlp_only"]
             if (g := sweep.selectivity_gain(table, samples, t)) is not None}
    assert set(gains) == {"rlvr", "null_0", "identical"}
    assert all(g.interval == "bootstrap" for g in gains.values())
    assert gains["rlvr"].ci[0] > 0.1
    lo, hi = gains["null_0"].ci
    assert lo < 0 < hi or abs(gains["null_0"].value) < 0.05
    assert (gains["identical"].value, gains["identical"].ci) == (0.0, (0.0, 0.0))
    s = sweep.summary(table, samples, ["sft", "rlvr"], n_layers=2, decodable_margin=0.2)
    assert s["probe_selectivity_gain_rlvr_vs_sft"]["value"] == gains["rlvr"].value


# --- the instrument through the driver -------------------------------------------------------------
def tiny_run(root, tokenizer, n_problems=30, study_seed=2):
    """Params of a run under `root` with a token cache, problems, greedy answers for base, SFT and RLVR, and
    tiny checkpoints with stored activations: base, SFT, RLVR, the identical copy of SFT and one null
    (`study_seed` 1 makes RLVR a copy of SFT too)."""
    cfg = Params(runs_dir=str(root), probes={"Cs": [1.0], "n_bootstrap": 50, "lens_batch_size": 8})
    rows = problems(n_problems, cycle=3)
    cache = build_token_cache(tokenizer, rows, None, "gold")
    cache.save(cfg.path("tokens"))
    write_jsonl(cfg.path("data", "eval.jsonl"), rows)
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    for name, seed in (("base", 0), ("sft", 1), ("rlvr", study_seed), ("identical", 1), ("null_0", 3)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
        model.save_pretrained(cfg.model_ref(name))
        tokenizer.save_pretrained(cfg.model_ref(name))
        extract(model, cache, cfg.path("activations"), name, batch_size=8, shard_size=64)
    for stage in ("base", "sft", "rlvr"):
        write_jsonl(cfg.path("eval", f"{stage}_greedy.jsonl"), [{"id": p["id"], "correct": i % 3 == 0}
                                                                 for i, p in enumerate(rows)])
    return cfg


def test_the_instrument_measures_every_treatment_with_stored_activations(tokenizer, tmp_path):
    cfg = tiny_run(tmp_path, tokenizer)
    result = base.run(cfg, Probes(), progress=False)
    assert set(result["variants"]) == {"rlvr", "identical", "null_0"}  # the others have no activations
    assert {"attn_only", "mlp_only", "null_1"} <= set(result["missing"])
    # SFT's weights copied: the same activations, probes and resamples, so exactly no gain
    same = result["variants"]["identical"]["selectivity_gain"]
    assert (same["value"], same["ci"], same["interval"]) == (0.0, [0.0, 0.0], "bootstrap")
    assert 0 < same["n"] < 30  # the problems with a scored test example (a seen type)
    assert result["variants"]["rlvr"]["selectivity_gain"]["interval"] == "bootstrap"
    assert result["summary"]["probe_selectivity_gain_rlvr_vs_sft"]["value"] == \
        result["variants"]["rlvr"]["selectivity_gain"]["value"]
    table = pd.DataFrame(result["probes"])
    assert set(table[table.model == "null_0"].site) == {sweep.SUMMARY_SITE}  # a null: the verdict's site only
    assert set(table[table.model == "rlvr"].site) == set(cfg.probes.sites)  # the study: every site
    assert {"selectivity_noise_floor", "answer_decodable_layer_sft"} <= set(result["summary"])
    assert not any(k.startswith("lens_") for k in result["summary"])  # the lens writes lens.json
    again = base.run(cfg, Probes(), progress=False)  # up to date: read, not recomputed
    assert again["seconds"] == result["seconds"]



# --- captions: the takeaway on this run, its numbers formatted from the data -----------------------------------
def _probe_rows(records):
    return pd.DataFrame(records, columns=["model", "target", "layer", "site", "metric", "value", "ci_low", "ci_high"])


def test_probe_captions_state_the_numbers_and_read_an_interval_holding_zero_as_no_change():
    from rlvr_utils.core import captions, fmt

    table = _probe_rows([
        ("sft", "intermediate", 1, "hook_resid_post", "accuracy", 0.69, 0.63, 0.73),
        ("rlvr", "intermediate", 1, "hook_resid_post", "accuracy", 0.71, 0.64, 0.75),
        ("sft", "intermediate", 1, "hook_resid_post", "majority_accuracy", 0.084, 0.06, 0.1),
        ("rlvr", "intermediate", 1, "hook_resid_post", "majority_accuracy", 0.084, 0.06, 0.1),
        ("rlvr", "intermediate", 0, "hook_resid_post", "accuracy", 0.3, 0.2, 0.4),  # not the last layer
        ("sft", "correct", 1, "hook_resid_post", "selectivity", float("nan"), float("nan"), float("nan")),
    ])
    accuracy = figures.caption_accuracy(table)
    assert fmt.interval(0.69, [0.63, 0.73]) in accuracy and fmt.interval(0.71, [0.64, 0.75]) in accuracy
    assert fmt.number(0.084) in accuracy and fmt.interval(0.3, [0.2, 0.4]) not in accuracy

    summary = {"probe_selectivity_intermediate_sft": {"value": 0.42, "ci": [0.31, 0.47]},
               "probe_selectivity_intermediate_rlvr": {"value": 0.45, "ci": [0.32, 0.51]},
               "probe_selectivity_gain_rlvr_vs_sft": {"value": 0.027, "ci": [-0.012, 0.068]},
               "selectivity_noise_floor": {"value": 0.014, "ci": [-0.037, 0.07]},
               "answer_decodable_layer_sft": {"value": 2.0, "ci": None},
               "answer_decodable_layer_rlvr": {"value": 2.0, "ci": None},  # = the number of layers: never
               "probe_correct_over_majority_sft": {"value": 0.0625, "ci": [-0.008, 0.129]},
               "probe_correct_over_majority_rlvr": {"value": 0.1, "ci": [0.05, 0.15]}}
    selectivity = figures.caption_selectivity(table, summary)
    assert fmt.interval(0.42, [0.31, 0.47]) in selectivity and fmt.interval(0.014, [-0.037, 0.07]) in selectivity
    assert captions.change(summary["probe_selectivity_gain_rlvr_vs_sft"]) in selectivity
    assert "no change detected" in selectivity and "'correct' has no selectivity" in selectivity
    summary["answer_decodable_layer_sft"]["value"] = 1.0
    over = figures.caption_over_majority(table, summary)
    assert "from layer 1 (SFT)" in over and "at no layer (RLVR)" in over
    assert f"no gain detected ({captions.estimate(summary['probe_correct_over_majority_sft'], sign=True)})" in over
    assert captions.estimate(summary["probe_correct_over_majority_rlvr"], sign=True) in over
    empty = _probe_rows([])
    assert all("not measured" in f(empty, {}).lower() for f in (figures.caption_selectivity, figures.caption_over_majority))
    assert "not measured" in figures.caption_accuracy(empty).lower()
