"""Where the probes read and what they decode: targets located in the token sequences themselves.

  - 'intermediate': each intermediate result, read at the position just before the completion writes
    it (the position whose next-token prediction is the value's first digit);
  - 'answer_last_digit': the last digit of the gold final answer, read at the answer position (the
    one that predicts the first character after '####' or '\\boxed{');
  - 'correct': whether the model's own greedy answer is correct, read at the last prompt token,
    before it has written anything.
Every example also gets its control-task *type*: the surface form its label is a function of (see
`maths.control_labels`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from rlvr_utils.treatments.registry import REFERENCE

log = logging.getLogger(__name__)

# The final answer starts after the last '####' at the start of a line, or after the last '\boxed{'.
ANSWER_START = re.compile(r"(?:^|\n)#### *(?=\S)|\\boxed\{")
# The arithmetic just before '=': numbers, operators, brackets, '$' and spaces (not a sentence's '.').
# A digit run is matched whole ((?!\d)), so a failed search cannot backtrack through its splits.
LEFT_SIDE = r"((?:\d+(?:\.\d+)?(?!\d)|[ \t+\-*/×÷()$])*)"
MIN_PROBLEMS = 10  # cross-fitting needs a few problems on every side of every fold (at least 2 per fold)


@dataclass
class ProbeTarget:
    """Examples of one probing target: where to read (cache row, token position) and what to decode."""

    name: str
    rows: np.ndarray       # token-cache row of each example
    positions: np.ndarray  # token position whose activation the probe reads
    labels: np.ndarray     # class to decode
    groups: np.ndarray     # problem id: splits keep a problem's examples together
    types: list            # control-task type: the surface form the label is a function of

    def __post_init__(self):
        self.rows, self.positions = np.asarray(self.rows, dtype=int), np.asarray(self.positions, dtype=int)
        self.labels, self.groups = np.asarray(self.labels), np.asarray(self.groups)
        sizes = {len(self.rows), len(self.positions), len(self.labels), len(self.groups), len(self.types)}
        if len(sizes) != 1:
            raise ValueError(f"ProbeTarget {self.name!r}: rows, positions, labels, groups and types must have "
                             f"one entry per example, got lengths {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.rows)


def token_starts(tokenizer, ids: list[int]) -> tuple[str, np.ndarray]:
    """(text of `ids`, start character of each token in it)."""
    text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    lengths = [len(tokenizer.decode([i], clean_up_tokenization_spaces=False)) for i in ids]
    if sum(lengths) != len(text):  # a character split over tokens: prefix lengths are exact, but slower
        prefix = [len(tokenizer.decode(ids[: k + 1], clean_up_tokenization_spaces=False)) for k in range(len(ids))]
        lengths = np.diff([0] + prefix).tolist()
    return text, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)


def _token_at(starts: np.ndarray, char: int) -> int:
    return int(np.searchsorted(starts, char, side="right") - 1)


def _number_text(value) -> str:
    """21.0 -> '21', 2.5 -> '2.5': how a value is written in a solution."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _expression(text: str) -> str:
    """'19 + 2 ' -> '19 + 2': an expression with its spacing normalised (the control type)."""
    return " ".join(text.split())


def _by_id(problems: list[dict], cache) -> dict[int, dict]:
    by_id = {int(p["id"]): p for p in problems}
    missing = sorted(set(cache.problem_ids) - set(by_id))
    if missing:
        raise ValueError(f"problems has no row for token-cache problem ids {missing[:10]} ({len(missing)} missing)")
    return by_id


def _examples() -> dict[str, list]:
    return {"rows": [], "positions": [], "labels": [], "groups": [], "types": []}


def _append(out: dict, row, position, label, group, type_) -> None:
    for key, value in zip(("rows", "positions", "labels", "groups", "types"), (row, position, label, group, type_)):
        out[key].append(value)


def intermediate_target(cache, problems: list[dict], tokenizer, label: str = "value") -> ProbeTarget:
    """Each intermediate result, at the position just before the completion writes it.

    The problem's `intermediates` are looked for in order in the completion as '<expression> = <value>'
    (GSM8K's '<<48/2=24>>' too); a value the completion never writes (a wrong step) gives no example.
    `label` 'value' decodes the whole number, 'last_digit' its last digit. The control type is the
    expression just read ('19 + 2'), which the value is a function of.
    """
    if label not in ("value", "last_digit"):
        raise ValueError(f"label={label!r} must be 'value' or 'last_digit'")
    by_id = _by_id(problems, cache)
    out = _examples()
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        text, starts = token_starts(tokenizer, seq[plen:])
        cursor = 0
        for value in by_id[pid]["intermediates"]:
            written = _number_text(value)
            step = re.compile(LEFT_SIDE + r"=\s*\$?\s*(" + re.escape(written) + r")(?!\.?\d)")
            found = step.search(text, cursor)
            if found is None:
                continue
            cursor = found.end()
            position = plen + _token_at(starts, found.start(2)) - 1
            value_label = written if label == "value" else written[-1]
            _append(out, row, position, value_label, pid, _expression(found.group(1)))
    return ProbeTarget("intermediate", **out)


def _answer_start(text: str) -> int | None:
    """Character where the final answer starts: after the last '####' line start, else the last '\\boxed{'."""
    found = list(ANSWER_START.finditer(text))
    return found[-1].end() if found and found[-1].end() < len(text) else None


def answer_positions(cache, tokenizer) -> dict[int, int]:
    """{cache row: the position that predicts the first character of the final answer} for the rows
    whose completion has one (see `_answer_start`)."""
    out = {}
    for row, (seq, plen) in enumerate(zip(cache.sequences, cache.prompt_lengths)):
        text, starts = token_starts(tokenizer, seq[plen:])
        start = _answer_start(text)
        if start is not None:
            out[row] = plen + _token_at(starts, start) - 1
    return out


def answer_target(cache, problems: list[dict], tokenizer) -> ProbeTarget:
    """The last digit of the gold final answer, at the answer position (see `answer_positions`).

    The control type is the last number the completion wrote before the answer (the result of its last
    step, '27'): a probe that only reads that copy back finds a random function of it as decodable.
    """
    by_id = _by_id(problems, cache)
    out = _examples()
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        text, starts = token_starts(tokenizer, seq[plen:])
        start = _answer_start(text)
        digits = re.findall(r"\d", str(by_id[pid]["final"]))
        if start is None or not digits:
            continue
        numbers = re.findall(r"\d+(?:\.\d+)?", text[:start])
        _append(out, row, plen + _token_at(starts, start) - 1, digits[-1], pid, numbers[-1] if numbers else "")
    return ProbeTarget("answer_last_digit", **out)


def correct_target(cache, greedy: list[dict]) -> ProbeTarget:
    """Whether the model's own greedy answer (eval/<stage>_greedy.jsonl rows) is correct, at the last
    prompt token. Each prompt is its own control type: no surface token predicts correctness."""
    correct = {int(r["id"]): bool(r["correct"]) for r in greedy}
    out = _examples()
    for row, (seq, plen, pid) in enumerate(zip(cache.sequences, cache.prompt_lengths, cache.problem_ids)):
        if pid in correct:
            _append(out, row, plen - 1, correct[pid], pid, tuple(seq[:plen]))
    return ProbeTarget("correct", **out)


# --- the targets of a run ---------------------------------------------------------------------------
def targets_for(pcfg, cache, problems: list[dict], tokenizer, greedy: dict[str, list[dict]]
                ) -> dict[str, list[ProbeTarget]]:
    """{model: its targets} for the targets named in the `probes` params section; `greedy` maps each
    model to its eval/<model>_greedy.jsonl rows. Targets with too few problems to cross-fit are left out."""
    needed = max(MIN_PROBLEMS, 2 * max(2, round(1 / pcfg.test_fraction)))  # 2 problems per fold (maths.folds)
    shared = []
    if "intermediate" in pcfg.targets:
        shared.append(intermediate_target(cache, problems, tokenizer, pcfg.intermediate_label))
    if "answer_last_digit" in pcfg.targets:
        shared.append(answer_target(cache, problems, tokenizer))
    shared = [t for t in shared if splittable(t, needed)]
    out = {}
    for model, rows in greedy.items():
        own = [correct_target(cache, rows)] if "correct" in pcfg.targets else []
        out[model] = shared + [t for t in own if splittable(t, needed)]
    return out


def splittable(target: ProbeTarget, min_problems: int = MIN_PROBLEMS) -> bool:
    n_problems = len(np.unique(target.groups))
    if n_problems < min_problems:
        log.warning("target %r has examples in %d problems, fewer than the %d its cross-fitting folds need: "
                    "left out", target.name, n_problems, min_problems)
        return False
    return True


def with_treatments(targets: dict[str, list[ProbeTarget]], treatments: list[str], available: list[str],
                    reference: str = REFERENCE, names=("intermediate",)) -> dict[str, list[ProbeTarget]]:
    """`targets` plus, for every treatment with stored activations that has none yet, the reference's
    targets named `names` (the ones the variants' comparison needs: probing everything for every null
    would cost the most and decide nothing more)."""
    out = dict(targets)
    shared = [t for t in targets.get(reference, []) if t.name in names]
    for t in treatments:
        if t not in out and t in available and shared:
            out[t] = shared
    return out
