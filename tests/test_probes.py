"""Linear probes: planted features found, chance on shuffled labels, control tasks, problem-level splits,
targets located in token sequences, and the activation-store lookup."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils import activations, organism, probes
from rlvr_utils.config import ProbeParams



def planted(n_problems=150, per_problem=2, d=16, k=3, strength=3.0, seed=0):
    """Gaussian activations with a class-dependent direction added: linearly decodable by construction."""
    rng = np.random.default_rng(seed)
    n = n_problems * per_problem
    y = rng.integers(0, k, n)
    directions = rng.normal(size=(k, d))
    X = rng.normal(size=(n, d)) + strength * directions[y]
    return X, y, np.repeat(np.arange(n_problems), per_problem)


def score(X, y, groups, types, seed=0):
    target = probes.ProbeTarget("t", np.arange(len(y)), np.zeros(len(y)), y, groups, types)
    split = probes.problem_split(groups, 0.3, seed)
    outcome = probes.probe(X, target, split, probes.control_labels(types, y, seed), cv_folds=3, Cs=(0.1, 1.0))
    weights = probes.resample_weights(groups[split[1]], 200, seed)
    return outcome.point(), outcome.samples(weights)


# --- the properties the issue asks for ---------------------------------------------------------
def test_probe_recovers_planted_feature_and_is_selective():
    X, y, groups = planted()
    unique_types = [(i,) for i in range(len(y))]  # the label is a function of no surface token
    point, samples = score(X, y, groups, unique_types)
    assert point["accuracy"] > 0.9
    assert point["majority_accuracy"] < 0.5
    assert point["selectivity"] > 0.4
    assert np.quantile(samples["selectivity"], 0.025) > 0.3
    assert point["macro_f1"] > 0.9


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


def test_no_problem_in_both_train_and_test():
    groups = np.repeat(np.arange(40), np.random.default_rng(0).integers(1, 4, 40))
    for seed in range(5):
        train, test = probes.problem_split(groups, 0.3, seed)
        assert set(groups[train]).isdisjoint(groups[test])
        assert len(train) + len(test) == len(groups)
        assert 0.15 < len(set(groups[test])) / 40 < 0.45
    with pytest.raises(ValueError, match="test_fraction"):
        probes.problem_split(groups, 1.5)
    with pytest.raises(ValueError, match="at least 2 problems"):
        probes.problem_split(np.zeros(5), 0.3)


# --- pieces --------------------------------------------------------------------------------------
def test_control_labels_are_a_fixed_random_function_of_type():
    types = [("a",), ("b",), ("a",), ("c",), ("b",), ("a",)] * 50
    labels = np.array(["x", "y", "z"] * 100)
    control = probes.control_labels(types, labels, seed=3)
    by_type = {}
    for t, c in zip(types, control):
        assert by_type.setdefault(t, c) == c
    assert set(control) <= set(labels)
    # many types: labels follow the task's label distribution
    many = [(i,) for i in range(3000)]
    drawn = probes.control_labels(many, np.array([0] * 2250 + [1] * 750), seed=0)
    assert abs(drawn.mean() - 0.25) < 0.03
    assert not np.array_equal(drawn, probes.control_labels(many, np.array([0] * 2250 + [1] * 750), seed=1))


def test_weighted_scores_match_resampled_rows_and_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    y_pred[:30] = y_true[:30]
    groups = np.repeat(np.arange(20), 3)
    weights = probes.resample_weights(groups, 25, seed=2)
    assert np.allclose(weights.sum(1), 60)  # each resample draws 20 problems of 3 examples
    acc, f1 = probes.accuracy(y_true, y_pred, weights), probes.macro_f1(y_true, y_pred, weights)
    for b in range(25):
        rows = np.repeat(np.arange(60), weights[b].astype(int))  # the resample written out
        assert acc[b] == pytest.approx(np.mean(y_true[rows] == y_pred[rows]))
        assert f1[b] == pytest.approx(f1_score(y_true[rows], y_pred[rows], average="macro"))
    assert probes.macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_one_class_training_set_predicts_it():
    X = np.random.default_rng(0).normal(size=(10, 3))
    pred, C = probes.fit_predict(X, np.array([1] * 10), np.arange(10), np.arange(7), np.arange(7, 10))
    assert pred.tolist() == [1, 1, 1] and C is None


def test_cross_validation_picks_weaker_regularisation_for_a_strong_signal():
    X, y, groups = planted(n_problems=100, k=4, strength=1.0)
    train, test = probes.problem_split(groups, 0.3)
    _, C = probes.fit_predict(X, y, groups, train, test, Cs=(1e-4, 1.0))
    assert C == 1.0  # C=1e-4 shrinks every weight to ~0: chance accuracy in every fold
    pred, given = probes.fit_predict(X, y, groups, train, test, C=1e-4)
    assert given == 1e-4 and np.mean(pred == y[test]) < 0.6


# --- targets in token sequences ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Question: Ida had 19 apples. Ida found 2 more apples.\nAnswer:",
              " 19 + 2 = 21. 21 - 6 = 15.\n#### 15", "0 1 2 3 4 5 6 7 8 9 - ? $ = #"] * 20
    return organism.build_tokenizer(corpus, 300)


def problems(n=8):
    out = []
    for i in range(n):
        a, b, c = 11 + i, 1 + i % 5, 2 + i % 3
        out.append({"id": 100 + i, "question": "", "prompt": f"Question: Ida had {a} apples.\nAnswer:",
                    "answer": f" {a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}.\n#### {a + b - c}",
                    "final": str(a + b - c), "intermediates": [float(a + b), float(a + b - c)]})
    return out


def test_targets_sit_just_before_the_value_is_written(tokenizer):
    rows = problems()
    completions = {p["id"]: p["answer"] for p in rows}
    completions[101] = completions[101].replace("= 14.", "= 41.")  # a wrong first step: not an example
    cache = activations.build_token_cache(tokenizer, rows, completions, "test")
    target = probes.intermediate_target(cache, rows, tokenizer)
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
    digits = probes.intermediate_target(cache, rows, tokenizer, label="last_digit")
    assert digits.labels.tolist() == [v[-1] for v in target.labels]

    answer = probes.answer_target(cache, rows, tokenizer)
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
    cache = activations.build_token_cache(tokenizer, rows, None, "gold")
    target = probes.intermediate_target(cache, rows, tokenizer)
    assert target.labels.tolist() == ["24", "30", "2.5"]  # '= 2.55' is not 3.5, nor a second 2.5
    assert target.types == ["48/2", "24+6", "1.5 + 1"]


def test_answer_position_needs_an_answer(tokenizer):
    rows = problems(3)
    completions = {100: " 12 - 2 = 10.", 101: " 12 = 12.\n#### 12", 102: " done \\boxed{7}"}
    cache = activations.build_token_cache(tokenizer, rows, completions, "test")
    found = probes.answer_positions(cache, tokenizer)
    assert sorted(found) == [1, 2]
    assert tokenizer.decode(cache.sequences[2][found[2] + 1:]).startswith("7")


def test_correct_target_reads_the_last_prompt_token(tokenizer):
    rows = problems(4)
    cache = activations.build_token_cache(tokenizer, rows, None, "gold")
    greedy = [{"id": 100, "correct": True}, {"id": 101, "correct": False}, {"id": 103, "correct": True}]
    target = probes.correct_target(cache, greedy)
    assert target.rows.tolist() == [0, 1, 3]
    assert target.labels.tolist() == [True, False, True]
    assert target.positions.tolist() == [cache.prompt_lengths[r] - 1 for r in (0, 1, 3)]
    with pytest.raises(ValueError, match="one entry per example"):
        probes.ProbeTarget("bad", [0, 1], [0], [1, 2], [0, 1], [(), ()])


def test_store_reader_reads_the_stored_activation_at_each_position(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows = problems(5)
    cache = activations.build_token_cache(tokenizer, rows, None, "gold")
    store = activations.extract(model, cache, tmp_path, "m", sites=["hook_resid_post"], layers=[1],
                                positions=("last_prompt", "completion"), batch_size=2, shard_size=2)
    target = probes.intermediate_target(cache, rows, tokenizer)
    want_rows = np.concatenate([target.rows, [3, 0]])
    want_pos = np.concatenate([target.positions, [cache.prompt_lengths[3] - 1, cache.prompt_lengths[0] - 1]])
    got = probes.StoreReader(store)("m", "blocks.1.hook_resid_post", want_rows, want_pos)
    for i, (r, p) in enumerate(zip(want_rows, want_pos)):
        with activations.capture(model, ["hook_resid_post"], [1]) as acts, torch.no_grad():
            model(input_ids=torch.tensor([cache.sequences[r]]))
        assert np.allclose(got[i], acts["blocks.1.hook_resid_post"][0, p].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="no stored activation"):
        probes.StoreReader(store)("m", "blocks.1.hook_resid_post", [0], [0])


# --- a whole run and its summary ------------------------------------------------------------
def test_run_and_summary_pair_models_on_one_split():
    X, y, groups = planted(n_problems=60, d=8, k=2)
    rng = np.random.default_rng(5)
    noise = rng.normal(size=X.shape)
    # layer 1 of 'rlvr' carries the feature; everything else is noise
    acts = {("sft", 0): noise, ("sft", 1): noise, ("rlvr", 0): noise, ("rlvr", 1): X}
    target = probes.ProbeTarget("intermediate", np.arange(len(y)), np.zeros(len(y)), y, groups,
                                [(i,) for i in range(len(y))])

    def read(model, site, rows, positions):
        return acts[(model, int(site.split(".")[1]))][rows]

    table, samples = probes.run(read, {"sft": [target], "rlvr": [target]}, layers=[0, 1], sites=["hook_resid_post"],
                                Cs=(1.0,), n_bootstrap=100)
    assert set(table.metric) == {"accuracy", "control_accuracy", "selectivity", "majority_accuracy", "over_majority",
                                 "macro_f1"}
    assert table.n_test.nunique() == 1  # one split for every model and layer
    assert probes.best_layer(table, "rlvr", "intermediate") == 1
    s = probes.summary(table, samples, ["sft", "rlvr"], n_layers=2, decodable_margin=0.2)
    gain = s["probe_selectivity_gain_rlvr_vs_sft"]
    assert gain["value"] == pytest.approx(s["probe_selectivity_intermediate_rlvr"]["value"]
                                          - s["probe_selectivity_intermediate_sft"]["value"])
    assert gain["ci"][0] > 0.2
    assert all(set(v) == {"value", "ci", "description"} for v in s.values())


def test_decodable_layer_is_the_first_above_threshold():
    table = pd.DataFrame({"model": "m", "target": "a", "site": probes.SUMMARY_SITE, "layer": [0, 1, 2, 3] * 2,
                          "metric": ["over_majority"] * 4 + ["selectivity"] * 4,
                          "value": [0.1, 0.4, 0.6, 0.7, 0.3, 0.1, 0.2, 0.0], "ci_low": [0.0, 0.15, 0.3, 0.5] * 2})
    assert probes.decodable_layer(table, "m", "a", 0.2) == 2
    assert probes.decodable_layer(table, "m", "a", 0.6) is None
    assert probes.best_layer(table, "m", "a") == 0
    assert probes.best_layer(table, "m", "a", metric="over_majority") == 3


def test_targets_without_enough_problems_are_left_out(tokenizer):
    rows = problems(4)
    cache = activations.build_token_cache(tokenizer, rows, {p["id"]: " no working" for p in rows}, "test")
    greedy = {"m": [{"id": p["id"], "correct": False} for p in rows]}
    targets = probes.targets_for(ProbeParams(), cache, rows, tokenizer, greedy)
    assert targets == {"m": []}  # no intermediate, no answer; 'correct' has 4 problems, fewer than 2 x 3 folds
    table, samples = probes.run(lambda *a: None, targets, layers=[0], sites=["hook_resid_post"])
    assert table.empty and samples == {}
    assert probes.summary(table, samples, ["m"], n_layers=1, decodable_margin=0.2) == {}
    probes.figure(table)


def test_reading_names_each_measured_number():
    summary = {"answer_decodable_layer_sft": {"value": 2.0, "ci": None, "description": ""},
               "probe_selectivity_answer_sft": {"value": 0.31, "ci": [0.2, 0.4], "description": ""},
               "answer_decodable_layer_rlvr": {"value": 4.0, "ci": None, "description": ""},
               "probe_selectivity_gain_rlvr_vs_sft": {"value": 0.1, "ci": [0.05, 0.15], "description": ""}}
    text = probes.reading(summary, n_layers=4, stages=("sft", "rlvr"))
    assert "decodable from layer 2 (selectivity 0.31 [0.20, 0.40])" in text
    assert "decodable at no layer" in text
    assert "Representation learning" in text and "not measured" in text
