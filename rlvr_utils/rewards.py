"""Verifiable rewards: answer extraction, verification, and the study's R = w_acc * R_accuracy + w_fmt * R_format.

Reward functions follow TRL's signature `f(completions, **dataset_columns) -> list[float]`; the GRPO
data set carries the gold answer in its `final` column.
"""
from __future__ import annotations

import re

from math_verify import parse, verify

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


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def is_correct(predicted: str | None, gold: str) -> bool:
    """Numbers compare by value ('1,000', '18.0', '$18' equal 1000, 18, 18); other forms via math-verify."""
    if predicted is None:
        return False
    a, b = _as_number(predicted), _as_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return bool(verify(parse(gold), parse(predicted)))


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
