"""Answer extraction, verification and the GRPO rewards, on real GSM8K answers."""
import json
import random
from pathlib import Path

import pytest

from rlvr_utils import rewards
from rlvr_utils.data import gsm8k_row

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
    from rlvr_utils.config import Params

    cfg = Params(grpo={"reward_weights": {"accuracy": 1.0, "format": 0.01}})
    assert rewards.reward_weights(cfg) == [1.0, 0.01]
    assert [f.__name__ for f in rewards.REWARD_FUNCS] == ["accuracy_reward", "format_reward"]
