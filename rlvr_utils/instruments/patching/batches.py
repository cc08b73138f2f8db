"""What patching scores: batches of problems with the positions whose next token is scored.

Cross-model patching scores the final answer's actual tokens, each at the position that predicts it
(`answer_span`: the first number after the last answer marker, for any tokenizer, digits merged or not), so
receiver and donor read the same tokens and the target needs no foil. Clean/corrupted patching inside one model
changes one digit token of a prompt's number (same token count) and scores logit(clean digit) - logit(corrupted
digit) where the completion first copies that number; it needs a tokenizer that writes every digit alone.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

POSITIONS_BUILTIN = ("all", "target")  # every position up to the last scored one / the scored positions


@dataclass
class PatchBatch:
    """One batch of problems. `score` marks the positions whose next token is scored (teacher forcing: the
    token that really follows in `input_ids`). With `correct` and `foil` given, the metric is instead
    logit(correct) - logit(foil) at the single scored position of each row (clean/corrupted patching).
    `donor_input_ids` (same shape) is for within-model patching; cross-model patching runs both models on
    `input_ids`."""

    input_ids: torch.Tensor  # (batch, seq), right-padded
    attention_mask: torch.Tensor  # (batch, seq)
    score: torch.Tensor  # (batch, seq) bool
    correct: torch.Tensor | None = None  # (batch,)
    foil: torch.Tensor | None = None  # (batch,)
    donor_input_ids: torch.Tensor | None = None
    positions: dict[str, torch.Tensor] = field(default_factory=dict)  # extra named (batch, seq) masks
    problem_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        batch, seq = self.input_ids.shape
        for name, value in (("attention_mask", self.attention_mask), ("score", self.score),
                            ("donor_input_ids", self.donor_input_ids)):
            if value is not None and value.shape != (batch, seq):
                extra = ": clean and corrupted prompts must have the same token count" if name == "donor_input_ids" else ""
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {(batch, seq)}{extra}")
        self.score = self.score.bool()
        counts = self.score.sum(1)
        if (counts == 0).any():
            raise ValueError(f"rows {torch.nonzero(counts == 0)[:, 0].tolist()} score no position")
        rows, pos = self.score.nonzero(as_tuple=True)
        if (pos + 1 >= seq).any() or not self.attention_mask[rows, (pos + 1).clamp(max=seq - 1)].bool().all():
            raise ValueError("a scored position's next token must be a real (unpadded) token of the row")
        if (self.correct is None) != (self.foil is None):
            raise ValueError("give both correct and foil (logit difference) or neither (teacher-forced log-prob)")
        if self.correct is not None:
            if (counts != 1).any():
                raise ValueError("the logit-difference metric needs exactly one scored position per row")
            for name, value in (("correct", self.correct), ("foil", self.foil)):
                if value.shape != (batch,):
                    raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({batch},)")
        for name in self.positions:
            if name in POSITIONS_BUILTIN:
                raise ValueError(f"position set name {name!r} is reserved; built-in: {POSITIONS_BUILTIN}")

    @property
    def last(self) -> torch.Tensor:
        """(batch,) the last scored position of each row."""
        index = torch.arange(self.score.shape[1], device=self.score.device)[None, :]
        return torch.where(self.score, index, -1).max(1).values

    def position_mask(self, name: str) -> torch.Tensor:
        """(batch, seq) bool: where a patch on the position set `name` writes."""
        index = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)[None, :]
        if name == "all":
            return (index <= self.last[:, None]) & self.attention_mask.bool()
        if name == "target":
            return self.score
        if name not in self.positions:
            raise ValueError(f"positions={name!r} is not 'all', 'target' or one of this batch's "
                             f"{sorted(self.positions)}")
        return self.positions[name].bool()

    def trimmed(self) -> "PatchBatch":
        """The batch cut after the last scored token: later tokens cannot influence it (causal attention)."""
        end = int(self.last.max()) + 2
        cut = lambda t: None if t is None else t[:, :end]  # noqa: E731
        return PatchBatch(cut(self.input_ids), cut(self.attention_mask), cut(self.score), self.correct, self.foil,
                          cut(self.donor_input_ids), {k: cut(v) for k, v in self.positions.items()},
                          self.problem_ids)

    def to(self, device) -> "PatchBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PatchBatch(move(self.input_ids), move(self.attention_mask), move(self.score), move(self.correct),
                          move(self.foil), move(self.donor_input_ids),
                          {k: move(v) for k, v in self.positions.items()}, self.problem_ids)


# --- targets: the answer's tokens, and corrupted prompts ------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def token_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, np.ndarray]:
    """(decoded text of `ids`, start character of each token in it), exact for byte-level BPE, SentencePiece
    and digit-level tokenizers (prefix decoding where single-token decoding does not add up)."""
    text = tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
    lengths = [len(tokenizer.decode([i], clean_up_tokenization_spaces=False)) for i in ids]
    if sum(lengths) != len(text):  # a character split over tokens, or spaces added on decoding
        prefix = [len(tokenizer.decode(list(ids[:k + 1]), clean_up_tokenization_spaces=False)) for k in range(len(ids))]
        lengths = np.diff([0] + prefix).tolist()
    return text, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int) if len(ids) else np.zeros(0, int)


def check_tokenizer(tokenizer) -> None:
    """ValueError unless the tokenizer decodes its own encoding of arithmetic text back to the same text:
    the answer's tokens are located through decoded text."""
    probe = "21 + 6 = 27.\n#### 1,027.5"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    if back.strip() != probe:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')!r}) "
                         f"does not decode its own tokens back to the text ({probe!r} -> {back!r}): patching and "
                         "lens targets cannot be located in its token sequences")


def answer_span(sequence: Sequence[int], prompt_length: int, tokenizer, marker: str = "####") -> tuple[int, int] | None:
    """[first, last] indices of the tokens that write the final answer: the first number after the last
    `marker` in the completion. A token that merges the answer with neighbouring characters (' 10',
    '=27') counts as an answer token. None when the completion has no such number."""
    text, starts = token_offsets(tokenizer, sequence[prompt_length:])
    at = text.rfind(marker)
    if at < 0:
        return None
    match = re.match(r"[\s$]*(" + _NUMBER.pattern + ")", text[at + len(marker):])
    if match is None:
        return None
    first_char = at + len(marker) + match.start(1)
    last_char = at + len(marker) + match.end(1) - 1
    token_at = lambda char: int(np.searchsorted(starts, char, side="right") - 1)  # noqa: E731
    return prompt_length + token_at(first_char), prompt_length + token_at(last_char)


def digit_token(tokenizer, digit: str) -> int:
    """The id of a single digit's token; ValueError when the tokenizer does not write digits alone."""
    ids = tokenizer.encode(digit, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"digit {digit!r} encodes to {len(ids)} tokens {ids}; patching needs single-digit tokens")
    return ids[0]


def answer_batches(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], problem_ids: Sequence[int],
                   tokenizer, pad_token_id: int, batch_size: int, marker: str = "####",
                   limit: int | None = None) -> list[PatchBatch]:
    """Cross-model batches from prompt+completion token sequences (the shared token cache): each row scores
    the final answer's tokens where they are predicted (teacher forcing). Sequences without a final answer
    are skipped; at most `limit` problems are kept."""
    _check_batch_size(batch_size)
    check_tokenizer(tokenizer)
    rows = []
    for seq, plen, pid in zip(sequences, prompt_lengths, problem_ids):
        span = answer_span(seq, plen, tokenizer, marker)
        if span is None:
            continue
        rows.append((seq, span, pid))
        if limit is not None and len(rows) == limit:
            break
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        input_ids, mask = _pad([r[0] for r in chunk], pad_token_id)
        scored = torch.zeros_like(mask, dtype=torch.bool)
        for b, (_, (first, last), _) in enumerate(chunk):
            scored[b, first - 1:last] = True  # position p predicts token p + 1
        batches.append(PatchBatch(input_ids, mask, scored, problem_ids=[r[2] for r in chunk]))
    return batches


def _is_digit(text: str) -> bool:
    return len(text) == 1 and text.isdigit()


def token_texts(tokenizer, sequences: Iterable[Sequence[int]]) -> dict[int, str]:
    """Each distinct token's text, decoded once."""
    distinct = {t for seq in sequences for t in seq}
    return {t: tokenizer.decode([t]) for t in distinct}


def check_single_digits(texts: dict[int, str]) -> None:
    """ValueError when a token writes a digit together with other characters ('10', ' 7'): clean/corrupted
    patching swaps one digit token for another."""
    merged = sorted(t for t in texts.values() if any(ch.isdigit() for ch in t) and not _is_digit(t))
    if merged:
        raise ValueError(f"the tokenizer merges digits with other characters (tokens {merged[:5]}): clean/corrupted "
                         "patching needs every digit to be its own token; set patching.within_model: false")


def corrupt_number(sequence: Sequence[int], prompt_length: int, texts: dict[int, str], digit_ids: dict[str, int],
                   which: int = -1, rng: random.Random | None = None) -> dict | None:
    """A corrupted copy of `sequence` with one number in the prompt changed by replacing its last digit
    token by another digit token (same token count), and the target where the completion first copies
    that number (the position predicting the changed digit).

    Returns {"corrupted", "changed", "target", "clean_token", "corrupt_token"} or None when the prompt has
    no such number or the completion never writes it. Single-digit numbers never become 0.
    """
    rng = rng or random.Random(0)
    is_digit = [_is_digit(texts[t]) for t in sequence]
    numbers = _digit_runs(is_digit, 0, prompt_length)
    if not numbers or not -len(numbers) <= which < len(numbers):
        return None
    start, end = numbers[which]
    changed = end - 1
    clean = texts[sequence[changed]]
    choices = [d for d in "0123456789" if d != clean and not (d == "0" and end - start == 1)]
    new = rng.choice(choices)
    number = list(sequence[start:end])
    for s, e in _digit_runs(is_digit, prompt_length, len(sequence)):
        if list(sequence[s:e]) == number:
            corrupted = list(sequence)
            corrupted[changed] = digit_ids[new]
            return {"corrupted": corrupted, "changed": changed, "target": e - 2,
                    "clean_token": sequence[changed], "corrupt_token": digit_ids[new]}
    return None


def corrupted_batches(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], problem_ids: Sequence[int],
                      tokenizer, pad_token_id: int, batch_size: int, which: int = -1, seed: int = 0,
                      limit: int | None = None) -> list[PatchBatch]:
    """Within-model patching batches: receiver = corrupted prompt, donor = clean prompt; correct = the
    clean digit, foil = the corrupted digit at the position where the completion copies the number.
    Adds the position set 'corrupted' (the changed token)."""
    _check_batch_size(batch_size)
    texts = token_texts(tokenizer, sequences)
    check_single_digits(texts)
    digits = {str(d): digit_token(tokenizer, str(d)) for d in range(10)}
    rng = random.Random(seed)
    rows = []
    for seq, plen, pid in zip(sequences, prompt_lengths, problem_ids):
        c = corrupt_number(seq, plen, texts, digits, which, rng)
        if c is None:
            continue
        rows.append(c | {"clean": seq, "pid": pid})
        if limit is not None and len(rows) == limit:
            break
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        clean, mask = _pad([r["clean"] for r in chunk], pad_token_id)
        corrupted, _ = _pad([r["corrupted"] for r in chunk], pad_token_id)
        at = torch.arange(len(chunk))
        changed = torch.zeros_like(mask, dtype=torch.bool)
        changed[at, torch.tensor([r["changed"] for r in chunk])] = True
        scored = torch.zeros_like(mask, dtype=torch.bool)
        scored[at, torch.tensor([r["target"] for r in chunk])] = True
        batches.append(PatchBatch(corrupted, mask, scored, torch.tensor([r["clean_token"] for r in chunk]),
                                  torch.tensor([r["corrupt_token"] for r in chunk]), donor_input_ids=clean,
                                  positions={"corrupted": changed}, problem_ids=[r["pid"] for r in chunk]))
    return batches


def _digit_runs(is_digit: list[bool], start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) spans of consecutive digit tokens within [start, end)."""
    runs, i = [], start
    while i < end:
        if is_digit[i]:
            j = i
            while j < end and is_digit[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _pad(seqs, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(right-padded ids, attention mask)."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = pad_sequence([torch.tensor(list(s)) for s in seqs], batch_first=True, padding_value=pad_token_id)
    return ids, (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
