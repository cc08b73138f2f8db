"""Verifiable rewards: answer extraction, verification, and the study's R = w_acc * R_accuracy + w_fmt * R_format.

Reward functions follow TRL's signature `f(completions, **dataset_columns) -> list[float]`; the GRPO
data set carries the gold answer in its `final` column.

The accuracy reward is what GRPO optimises, so it is written to be un-gameable (an adversarial audit paid
'#### 2+5', '#### 7,5' for 75, '#### 7_0' for 70, and spent 5 s on '#### 9^9^9^9'). Its rules:
  * Which answer: the last stated one. A '####' marker (the rest of its line) and a \\boxed{...} are both
    statements of the answer; whichever starts later in the text wins ('\\boxed{7}\\n#### 8' answers 8,
    '#### 8\\n\\boxed{7}' answers 7, of several '####' lines the last). Only when neither appears do the
    fallbacks count: 'the answer is N', then the organism's narrative 'In the end X had N'. Text after the
    answer's line is ignored here (the format reward is what asks for the answer to end the completion).
  * What is paid: nothing is ever evaluated. A predicted answer is a number only if it is a single number
    literal: optional sign, optional '$', digits with optional thousands separators in valid groups of
    three ('1,000', '12,345,678'; not '1,00', '7,5'), optional decimal part; one trailing sentence period
    is dropped. No exponents ('1e3'), underscores ('7_0'), expressions ('2+5', '14/2', '\\frac{14}{2}',
    '\\sqrt{49}', '7^1'), units or words ('7 apples', '50%'). Unicode minus/dashes and Unicode decimal
    digits ('−7', '７', '٧') are read as ASCII first.
  * Numbers compare by exact value (integers exactly, '007' == 7, '7.0' == 7; decimals within a small
    tolerance that never joins two integers). Anything that is not a number literal is paid only if it
    is string-identical to the gold after whitespace normalisation, so NuminaMath golds such as
    '\\frac{1}{2}' are paid for exactly that text, but '1/2' or '0.5' are not. A gold (trusted, not
    generated) may itself be a fraction 'a/b' or '\\frac{a}{b}'; a predicted number equal to it is paid.
  * Bounded work: an answer longer than 64 characters (and than the gold) is refused before any parsing,
    and parsing is a few anchored regular expressions and an exact Fraction.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

PARAMS = ("grpo",)  # params sections read here (rlvr_utils.core.deps)

# "#### N" must open its own line and end the completion for the *format* reward: an unanchored pattern
# let GRPO drift to "######## 27" while still being paid for it.
_HASH_FINAL = re.compile(r"(?:^|\n)####[ \t]*([^#\s][^\n]*?)\s*\Z")
# For *accuracy* any '####' marker (not part of a longer run of '#') states an answer, so that a later
# '#### 8' overrides an earlier '\boxed{7}' even on the same line.
_HASH = re.compile(r"(?<!#)####(?!#)([^\n]*)")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
# The number must end at a space, '$' or the end ('the answer is 2+5' states no number, not 2).
_THE_ANSWER_IS = re.compile(r"answer is:?\s*\$?\s*([-\u2212\d.,/]+)(?=[\s$]|\Z)", re.IGNORECASE)
_IN_THE_END = re.compile(r"In the end \w+ had (-?\d+)")  # how the organism's pretraining stories end

# One number literal, ASCII only ([0-9], not \d, which matches any script's digits). A first group of a
# grouped number cannot start with 0, so '0,007' is not read as 7.
_INT = r"(?:[1-9][0-9]{0,2}(?:,[0-9]{3})+|[0-9]+)"
_NUMBER = re.compile(rf"(?:[-+]?(?:\\?\$)?|(?:\\?\$)[-+])({_INT}(?:\.[0-9]+)?|\.[0-9]+)")
# Fractions are read only in the gold (GSM8K golds are integers; NuminaMath's may be fractions).
_FRACTION = re.compile(rf"([-+]?)(?:({_INT})/({_INT})|\\[dt]?frac\{{({_INT})\}}\{{({_INT})\}})")
_MINUS = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-"))
_MAX_LEN = 64  # no honest numeric answer is longer; bounds the work on '9^9^9^9...' or 10,000 digits


def extract_answer(text: str) -> str | None:
    """The model's final answer: the last stated '####' line or \\boxed{}, whichever comes later; else
    'the answer is N', else the organism's narrative 'In the end X had N'. One trailing period is dropped."""
    stated = [m for p in (_HASH, _BOXED) for m in p.finditer(text)]
    if stated:
        found = max(stated, key=lambda m: m.start()).group(1)
    else:
        found = next((f[-1] for p in (_THE_ANSWER_IS, _IN_THE_END) if (f := p.findall(text))), None)
        if found is None:
            return None
    found = found.strip()
    return found[:-1].strip() if found.endswith(".") else found


def _normalise(text: str) -> str:
    """Unicode digits and minus signs as ASCII, whitespace collapsed. Superscripts, vulgar fractions and
    the like (category 'No') are left alone: NFKC would read '7²' as '72'."""
    if not any(unicodedata.category(c) == "No" for c in text):
        text = unicodedata.normalize("NFKC", text)  # fullwidth '７', '＄', '，', non-breaking spaces
        text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)  # '٧' -> '7'
    return " ".join(text.translate(_MINUS).split())


def _number(text: str) -> Fraction | None:
    """A single number literal ('1,000', '$18', '-3', '18.0', '.5') as an exact value; None otherwise."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    value = Fraction(m.group(1).replace(",", ""))
    return -value if "-" in text[:m.start(1)] else value


def _gold_value(gold: str) -> Fraction | None:
    """The gold's value: a number literal, or a fraction 'a/b' or '\\frac{a}{b}' (gold only)."""
    value = _number(gold)
    if value is not None or (m := _FRACTION.fullmatch(gold)) is None:
        return value
    num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
    num, den = (int(x.replace(",", "")) for x in (num, den))
    return None if den == 0 else Fraction(-num if m.group(1) == "-" else num, den)


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    """Integers compare exactly: a relative tolerance once paid 1,450,001 for 1,450,000. Decimals get
    a tolerance (1e-6 relative) capped at 1e-3, far below 1, so it never joins two different integers."""
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return abs(a - b) <= min(Fraction(1, 10**6) * max(1, abs(b)), Fraction(1, 1000))


def is_correct(predicted: str | None, gold: str) -> bool:
    """Whether `predicted` states the gold answer, by the rules in the module docstring: number literals
    by exact value, anything else only as the gold's own text. Never evaluates an expression."""
    if predicted is None or len(predicted) > max(_MAX_LEN, len(gold)):
        return False
    predicted, gold = _normalise(predicted), _normalise(gold)
    if not predicted or not gold:  # an empty '####', or a NuminaMath row with no \boxed{} gold
        return False
    if predicted == gold:
        return True
    a, b = _number(predicted), _gold_value(gold)
    return a is not None and b is not None and _numbers_equal(a, b)


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
