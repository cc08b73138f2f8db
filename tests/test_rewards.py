"""Answer extraction, verification and the GRPO rewards, on real GSM8K answers."""
import json
import random
from pathlib import Path

import pytest

from rlvr_utils.training import rewards
from rlvr_utils.training.data import gsm8k_row

GSM8K_TEST = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"


def _gsm8k():
    return [gsm8k_row(json.loads(line), i) for i, line in enumerate(GSM8K_TEST.read_text().splitlines())]


def test_every_gsm8k_test_answer_scores_full_accuracy_against_itself():
    rows = _gsm8k()
    assert len(rows) == 1319
    scores = rewards.accuracy_reward([r["answer"] for r in rows], final=[r["final"] for r in rows])
    assert scores == [1.0] * 1319
    assert rewards.format_reward([r["answer"] for r in rows]) == [1.0] * 1319


def test_shuffled_gold_answers_score_zero():
    rows = [r for r in _gsm8k()]
    finals = [r["final"] for r in rows]
    shuffled = finals[:]
    random.Random(0).shuffle(shuffled)
    pairs = [(r["answer"], g) for r, g in zip(rows, shuffled) if float(g.replace(",", "")) != float(r["final"].replace(",", ""))]
    scores = rewards.accuracy_reward([a for a, _ in pairs], final=[g for _, g in pairs])
    assert len(pairs) > 1200 and sum(scores) == 0


@pytest.mark.parametrize("text, gold", [
    ("so 1000 in all\n#### 1,000", "1000"), ("#### 18.0", "18"), ("#### $18", "18"),
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"), ("so the answer is 42.", "42"),
    ("#### 7\nmore text\n#### 9", "9"),
])
def test_equivalent_forms_are_correct(text, gold):
    assert rewards.accuracy_reward([text], final=[gold]) == [1.0]


@pytest.mark.parametrize("text, formatted", [
    (" 19 + 2 = 21. 21 + 6 = 27.\n#### 27", True),
    (" 19 + 2 = 21.\n######## 27", False),   # the drift an unanchored pattern would reward
    (" 19 + 2 = 21. #### 27", False),         # not on its own line
    (" 19 + 2 = 21.\n#### 27\nQuestion: more", False),  # must end the completion
    ("so $\\boxed{27}$", True),
    ("27", False),
])
def test_format_reward_is_anchored(text, formatted):
    assert rewards.format_reward([text]) == [float(formatted)]


def test_combined_reward_weights_follow_params():
    from rlvr_utils.core.config import Params

    cfg = Params(grpo={"reward_weights": {"accuracy": 1.0, "format": 0.01}})
    assert rewards.reward_weights(cfg) == [1.0, 0.01]
    assert [f.__name__ for f in rewards.REWARD_FUNCS] == ["accuracy_reward", "format_reward"]


def _with_final(answer: str, final: str) -> str:
    head, _, _ = answer.rpartition("####")
    return f"{head}#### {final}"


@pytest.mark.parametrize("delta", [-1, 1])
def test_every_gsm8k_off_by_one_scores_zero(delta):
    """Integers compare exactly: 1,450,001 for 1,450,000 (a real test item) earns nothing."""
    rows = _gsm8k()
    wrong = [str(int(r["final"].replace(",", "")) + delta) for r in rows]
    scores = rewards.accuracy_reward([_with_final(r["answer"], w) for r, w in zip(rows, wrong)],
                                     final=[r["final"] for r in rows])
    assert len(rows) == 1319 and sum(scores) == 0
    # the comma-grouped gold form too, compared with an off-by-one written with commas
    big = [r for r in rows if "," in r["final"]]
    assert big and not any(rewards.is_correct(f"{int(r['final'].replace(',', '')) + delta:,}", r["final"]) for r in big)


@pytest.mark.parametrize("predicted, gold, correct", [
    ("1450001", "1,450,000", False), ("1450000.0", "1,450,000", True), ("1450000.4", "1450000", False),
    ("0.3333333", "0.333333", True), ("33.333", "33.33", False), ("2.5", "5/2", True), ("\\frac{5}{2}", "2.5", True),
    ("\\frac{2900002}{2}", "1450000", False), ("123456789", "123456788", False), ("-3", "-3.00", True),
])
def test_decimal_tolerance_never_joins_two_integers(predicted, gold, correct):
    assert rewards.is_correct(predicted, gold) is correct
