"""Verifiable rewards: answer extraction, verification, and the study's R = w_acc * R_accuracy + w_fmt * R_format.

Reward functions follow TRL's signature `f(completions, **dataset_columns) -> list[float]`; the GRPO
data set carries the gold answer in its `final` column.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from math_verify import parse, verify
from sympy import Number

# "#### N" must open its own line and end the completion: an unanchored pattern let GRPO drift to
# "######## 27" while still being paid for it.
_HASH_FINAL = re.compile(r"(?:^|\n)####[ \t]*([^#\s][^\n]*?)\s*\Z")
_HASH_ANY = re.compile(r"(?:^|\n)####[ \t]*([^#\s][^\n]*)")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_THE_ANSWER_IS = re.compile(r"answer is:?\s*\$?\s*([-\d.,/]+)", re.IGNORECASE)
_IN_THE_END = re.compile(r"In the end \w+ had (-?\d+)")  # how the organism's pretraining stories end


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last '#### N' line, else the last \\boxed{}, else 'the answer is N',
    else the organism's narrative 'In the end X had N'."""
    for pattern in (_HASH_ANY, _BOXED, _THE_ANSWER_IS, _IN_THE_END):
        found = pattern.findall(text)
        if found:
            return found[-1].strip().rstrip(".")
    return None


def _as_number(text: str) -> Decimal | None:
    """'1,000', '$18', '18.0', '-3' as exact decimals; None for anything else (fractions, LaTeX, words)."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _numbers_equal(a: Decimal, b: Decimal) -> bool:
    """Integers compare exactly: a relative tolerance once paid 1,450,001 for 1,450,000. Decimals get
    a tolerance (1e-6 relative) capped at 1e-3, far below 1, so it never joins two different integers."""
    if a == b:
        return True
    if a == a.to_integral_value() and b == b.to_integral_value():
        return False
    return abs(a - b) <= min(Decimal("1e-6") * max(Decimal(1), abs(b)), Decimal("1e-3"))


def is_correct(predicted: str | None, gold: str) -> bool:
    """Numbers compare by value ('1,000', '18.0', '$18' equal 1000, 18, 18; integers exactly); other
    forms (fractions, LaTeX) via math-verify, whose rational results must then be exactly equal."""
    if predicted is None:
        return False
    a, b = _as_number(predicted), _as_number(gold)
    if a is not None and b is not None:
        return _numbers_equal(a, b)
    parsed_gold, parsed_pred = parse(gold), parse(predicted)
    if not verify(parsed_gold, parsed_pred):
        return False
    x, y = (p[0] if p and isinstance(p[0], Number) else None for p in (parsed_gold, parsed_pred))
    if x is not None and y is not None and x.is_Rational and y.is_Rational:
        return x == y  # math-verify rounds floats; exact values must match exactly
    return True


def is_formatted(text: str) -> bool:
    """The format SFT teaches: working, then '#### N' alone on the last line (or a final \\boxed{N})."""
    if _HASH_FINAL.search(text):
        return True
    return bool(_BOXED.search(text)) and "####" not in text


def accuracy_reward(completions: list[str], final: list[str], **_) -> list[float]:
    return [1.0 if is_correct(extract_answer(c), g) else 0.0 for c, g in zip(completions, final)]


def format_reward(completions: list[str], **_) -> list[float]:
    return [1.0 if is_formatted(c) else 0.0 for c in completions]


REWARD_FUNCS = [accuracy_reward, format_reward]


def reward_weights(cfg) -> list[float]:
    """Weights in the order of REWARD_FUNCS, as TRL's GRPOConfig(reward_weights=...) expects."""
    w = cfg.grpo.reward_weights
    return [w.accuracy, w.format]
