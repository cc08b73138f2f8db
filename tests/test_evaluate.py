"""pass@k against its definition, and bootstrap intervals that cover what they should."""
import itertools
import math

import numpy as np
import pytest

from rlvr_utils.evaluation import evaluate
from rlvr_utils.core import stats
from rlvr_utils.evaluation.evaluate import pass_at_k


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 3), (8, 0, 4), (8, 8, 2), (10, 3, 10), (64, 5, 16)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_by_enumeration():
    """Fraction of all k-subsets of n samples that contain a correct one."""
    samples = [1, 0, 0, 1, 0, 0]
    for k in range(1, 7):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(6, 2, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="pass@8"):
        pass_at_k(4, 1, 8)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = stats.bootstrap(rng.random(50) < 0.6, n_bootstrap=1000)
    large = stats.bootstrap(rng.random(2000) < 0.6, n_bootstrap=1000)
    for r in (small, large):
        assert r["ci"][0] <= r["value"] <= r["ci"][1]
    assert large["ci"][1] - large["ci"][0] < small["ci"][1] - small["ci"][0]
    assert large["ci"][0] < 0.6 < large["ci"][1]


def test_paired_difference_sees_a_consistent_gain():
    a = np.array([1, 1, 1, 0] * 50, dtype=float)
    b = np.array([1, 1, 0, 0] * 50, dtype=float)
    d = stats.paired_difference(a, b, n_bootstrap=500)
    assert d["value"] == pytest.approx(0.25) and d["ci"][0] > 0.15


def test_summary_compares_rlvr_with_bases_better_format(tmp_path):
    """Base is asked in its own narrative and with few-shot examples; RLVR is compared with the better one."""
    from rlvr_utils.core import config
    from rlvr_utils.training import data

    cfg = config.Params(runs_dir=str(tmp_path), name="fmt", evaluation={"pass_k": [1], "n_bootstrap": 200})
    correct = {"base": [1, 0, 0, 0], "base_fewshot": [1, 1, 0, 0], "sft": [1, 1, 1, 0], "rlvr": [1, 1, 1, 1]}
    for name, values in correct.items():
        data.write_jsonl(cfg.path("eval", f"{name}_greedy.jsonl"),
                         [{"id": i, "completion": "", "correct": bool(c), "formatted": True} for i, c in enumerate(values)])
        if name != "base_fewshot":
            data.write_jsonl(cfg.path("eval", f"{name}_samples.jsonl"),
                             [{"id": i, "n": 1, "correct": c} for i, c in enumerate(values)])
    s = evaluate.summarize(cfg)["summary"]
    assert s["accuracy_base"]["value"] == 0.25 and s["accuracy_base_fewshot"]["value"] == 0.5
    assert s["rlvr_minus_base_accuracy"]["value"] == 0.5  # against few-shot, the better format
    assert s["rlvr_minus_sft_accuracy"]["value"] == 0.25


def test_stored_answers_are_reused_only_while_their_evaluation_is_up_to_date(tmp_path):
    """Grafting pairs its grafts with each model's own greedy answers from the variants chapter: only while that
    evaluation's stamp still matches the checkpoint and the problems."""
    from rlvr_utils.core import artifacts, config
    from rlvr_utils.evaluation import evaluate as ev
    from rlvr_utils.training import data as td

    cfg = config.from_dict({"name": "r", "runs_dir": str(tmp_path)})
    cfg.model_dir("sft").mkdir(parents=True)
    (cfg.model_dir("sft") / "config.json").write_text("{}")
    td.write_jsonl(cfg.path("data", "eval.jsonl"), [{"question": f"q{i}", "answer": str(i)} for i in range(4)])
    path, fingerprint, inputs = ev._stamp_of(cfg, "sft")
    td.write_jsonl(path, [{"correct": c} for c in (True, False, True, True)])
    artifacts.stamp(path, fingerprint, inputs)
    assert ev.stored_correct(cfg, "sft", 3) == [True, False, True]
    assert ev.stored_correct(cfg, "sft", 5) is None  # fewer answers than problems asked for
    (cfg.model_dir("sft") / "config.json").write_text('{"changed": 1}')  # another checkpoint: stale
    assert ev.stored_correct(cfg, "sft", 3) is None


def test_an_evaluation_does_not_depend_on_the_treatment_families(tmp_path):
    """Adding a placebo, or editing a control family's code, must not re-evaluate base, SFT and RLVR (three
    minutes of decoding on the organism): the evaluation's stamp follows neither the treatments' params nor code."""
    from rlvr_utils.core import config, deps
    from rlvr_utils.evaluation import evaluate as ev

    assert not [m for m in deps.closure([ev.__name__]) if m.startswith("rlvr_utils.treatments")]
    stamps = [ev._stamp_of(config.from_dict({"runs_dir": str(tmp_path), "variants": {"placebos": n}}), "sft")[1]
              for n in (2, 3)]
    assert stamps[0] == stamps[1]
