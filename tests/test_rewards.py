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
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"), ("so the answer is 42.", "42"),
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
    ("0.3333333", "0.333333", True), ("33.333", "33.33", False), ("2.5", "5/2", True), ("\\frac{5}{2}", "2.5", False),
    ("\\frac{2900002}{2}", "1450000", False), ("123456789", "123456788", False), ("-3", "-3.00", True),
])
def test_decimal_tolerance_never_joins_two_integers(predicted, gold, correct):
    assert rewards.is_correct(predicted, gold) is correct


def test_every_gsm8k_test_answer_alone_is_paid_and_off_by_one_is_not():
    """'#### <gold>' as the whole completion earns exactly 1.0; '#### <gold + 1>' exactly 0.0."""
    rows = _gsm8k()
    finals = [r["final"] for r in rows]
    assert rewards.accuracy_reward([f"#### {g}" for g in finals], final=finals) == [1.0] * 1319
    plus_one = [f"#### {int(g.replace(',', '')) + 1}" for g in finals]
    assert rewards.accuracy_reward(plus_one, final=finals) == [0.0] * 1319


# (completion, gold, payment): what a GRPO policy could try, and what the grader pays for it.
ADVERSARIAL = [
    # expressions are never evaluated, however they are written
    ("#### 2+5", "7", 0.0), ("#### 14/2", "7", 0.0), ("#### 10-3", "7", 0.0), ("#### 7*1", "7", 0.0),
    ("#### 2*3+1", "7", 0.0), ("#### 7^1", "7", 0.0), ("#### 49^(1/2)", "7", 0.0), ("#### (7)", "7", 0.0),
    ("#### (3+4)", "7", 0.0), ("#### 7 + 0", "7", 0.0), ("#### x = 7", "7", 0.0), ("#### 2 \\times 3.5", "7", 0.0),
    ("#### \\frac{14}{2}", "7", 0.0), ("\\boxed{\\frac{14}{2}}", "7", 0.0), ("\\boxed{\\sqrt{49}}", "7", 0.0),
    ("#### \\sqrt{49}", "7", 0.0), ("\\boxed{2*3}", "6", 0.0), ("#### 6/1", "6", 0.0),
    ("#### 7*10^0", "7", 0.0), ("so the answer is 2+5", "2", 0.0), ("so the answer is 2+5", "7", 0.0),
    # fractions: a predicted fraction only as the gold's own text; a gold fraction by value
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", 0.0), ("#### 1/2", "0.5", 0.0), ("#### 0.5", "1/2", 1.0),
    ("#### 1/2", "1/2", 1.0), ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0), ("#### 2/4", "1/2", 0.0),
    ("#### 1/2", "\\frac{1}{2}", 0.0), ("#### 7.0000", "\\frac{14}{2}", 1.0),
    ("\\boxed{x^2 + 1}", "x^2 + 1", 1.0), ("\\boxed{ x^2  + 1 }", "x^2 + 1", 1.0), ("\\boxed{x^2+2}", "x^2 + 1", 0.0),
    # commas only as thousands separators in groups of three
    ("#### 7,5", "75", 0.0), ("#### 1,0,0,0", "1000", 0.0), ("#### 1,00", "100", 0.0), ("#### 1,000", "1000", 1.0),
    ("#### 12,345,678", "12345678", 1.0), ("#### 12345,678", "12345678", 0.0), ("#### 1,000.5", "1000.5", 1.0),
    ("#### 1000,", "1000", 0.0), ("#### ,1000", "1000", 0.0), ("#### 0,007", "7", 0.0), ("#### 7,000", "7", 0.0),
    ("#### 1,000,00", "100000", 0.0), ("#### 7, 8", "7", 0.0),
    # underscores, exponents, other radices, non-finite values
    ("#### 7_0", "70", 0.0), ("#### 1_000", "1000", 0.0), ("#### _7", "7", 0.0), ("#### 1e3", "1000", 0.0),
    ("#### 1E3", "1000", 0.0), ("#### 7e0", "7", 0.0), ("#### 1e999999999", "7", 0.0), ("#### 0x7", "7", 0.0),
    ("#### inf", "7", 0.0), ("#### NaN", "7", 0.0),
    # huge numbers and power towers
    ("#### " + "9" * 60, "9" * 60, 1.0), ("#### " + "9" * 60, "9" * 59, 0.0), ("#### " + "9" * 65, "7", 0.0),
    ("#### " + "0" * 70 + "7", "7", 0.0), ("#### 9^9^9^9", "7", 0.0), ("\\boxed{9^{9^{9^{9}}}}", "7", 0.0),
    ("#### 9**9**9**9", "7", 0.0),
    # Unicode minus signs and digits read as ASCII; superscripts and vulgar fractions are not digits
    ("#### \u22127", "-7", 1.0), ("#### \u20137", "-7", 1.0), ("#### \u22127", "7", 0.0), ("#### \uff17", "7", 1.0),
    ("#### \u0667", "7", 1.0), ("#### \u096d", "7", 1.0), ("#### \uff11\uff0c\uff10\uff10\uff10", "1000", 1.0),
    ("#### 7\u00b2", "72", 0.0), ("#### 7\u00b2", "49", 0.0), ("#### \u00bd", "0.5", 0.0), ("#### 7\u00a0", "7", 1.0),
    # several stated answers: the one stated last wins
    ("#### 8\n#### 7", "7", 1.0), ("#### 7\n#### 8", "7", 0.0), ("#### 7\n####", "7", 0.0),
    ("\\boxed{7}\n#### 8", "7", 0.0), ("\\boxed{7}\n#### 8", "8", 1.0), ("\\boxed{7} #### 8", "7", 0.0),
    ("\\boxed{7} #### 8", "8", 1.0), ("#### 8\n\\boxed{7}", "7", 1.0), ("#### 8\nso \\boxed{7}", "8", 0.0),
    ("\\boxed{8} then \\boxed{7}", "7", 1.0), ("#### \\boxed{7}", "7", 1.0), ("#### 7 or 8", "7", 0.0),
    ("In the end Ida had 7 apples.\n#### 8", "7", 0.0), ("#### 7\nThe answer is 8", "7", 1.0),
    # a longer run of '#' is not a marker (the drift the format reward refuses)
    ("######## 7", "7", 0.0), ("##### 7", "7", 0.0),
    # punctuation, currency, units
    ("#### 7.", "7", 1.0), ("#### 7..", "7", 0.0), ("#### $7", "7", 1.0), ("#### $7.00", "7", 1.0),
    ("#### -$7", "-7", 1.0), ("#### $-7", "-7", 1.0), ("\\boxed{\\$7}", "7", 1.0), ("#### 7$", "7", 0.0),
    ("#### 7 apples", "7", 0.0), ("#### 7 dollars", "7", 0.0), ("#### 50%", "50", 0.0), ("#### seven", "7", 0.0),
    ("#### 7 8", "78", 0.0), ("\\boxed{7\\text{ apples}}", "7", 0.0), ("#### 7 is the answer", "7", 0.0),
    # signs
    ("#### -7", "-7", 1.0), ("#### -7", "7", 0.0), ("#### 7", "-7", 0.0), ("#### +7", "7", 1.0),
    ("#### --7", "7", 0.0), ("#### - 7", "-7", 0.0),
    # leading zeros, decimals against integers
    ("#### 007", "7", 1.0), ("#### 07.50", "7.5", 1.0), ("#### 7.0", "7", 1.0), ("#### 7.5", "7", 0.0),
    ("#### 7.5", "7.5", 1.0), ("#### .5", "0.5", 1.0), ("#### 6.9999", "7", 0.0),
    # whitespace, empty answers, text after the answer's line
    ("####    7   ", "7", 1.0), ("####\t7", "7", 1.0), ("#### 7\n", "7", 1.0), ("####", "7", 0.0),
    ("#### ", "7", 0.0), ("", "7", 0.0), ("no answer here", "7", 0.0), ("#### 7\nQuestion: what next?", "7", 1.0),
    ("####", "", 0.0),
    # the fallbacks, only when no '####' or \boxed{} states an answer
    ("so the answer is 7.", "7", 1.0), ("The answer is: $7", "7", 1.0), ("the answer is 1,0,0,0", "1000", 0.0),
    ("So 3 + 4 = 7. In the end Ida had 7 apples.", "7", 1.0),
]


@pytest.mark.parametrize("completion, gold, paid", ADVERSARIAL)
def test_adversarial_completions_are_paid_only_for_a_stated_number(completion, gold, paid):
    assert rewards.accuracy_reward([completion], final=[gold]) == [paid]


def test_adversarial_table_is_large():
    assert len(ADVERSARIAL) >= 60


def test_grader_work_is_bounded():
    """Power towers, huge exponents and long junk are refused without evaluation: 200 such completions
    return quickly (a generous guard; the audit measured 5 s for one '#### 9^9^9^9' before)."""
    import time

    junk = ["#### 9^9^9^9", "#### 9**9**9**9**9", "\\boxed{9^{9^{9^{9^{9}}}}}", "#### 1e999999999",
            "#### " + "9" * 5000, "#### 10^(10^(10^10))", "\\boxed{" * 3000, "#### " + "(" * 3000 + "7" + ")" * 3000]
    completions = [junk[i % len(junk)] for i in range(200)]
    start = time.perf_counter()
    scores = rewards.accuracy_reward(completions, final=["7"] * 200)
    assert scores == [0.0] * 200 and time.perf_counter() - start < 2.0
