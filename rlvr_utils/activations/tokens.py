"""The shared token cache, its batches, and the position selections every representation analysis reads.

Every representation analysis compares models at the same tokens. So sequences (prompt + completion) are
tokenised once into a `TokenCache` and replayed through every model; position i is the same token in all of
them.

Position selections (all refer to positions p of a sequence, 0-based):
  - 'last_prompt': the last prompt token; its output predicts the first completion token.
  - 'completion':  every position whose next-token prediction is a completion token, i.e. p in
                   [prompt_length - 1, length - 2]: the states from which the model wrote its
                   completion. The last prompt token is included; the last completion token is not.
  - 'frac:F':      one position per sequence, the 'completion' position a fraction F of the way
                   through: p = prompt_length - 1 + round(F * (completion_length - 1)).
Sequences with an empty completion contribute no 'completion' or 'frac:' positions.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from rlvr_utils.core import artifacts

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"


@dataclass
class TokenCache:
    """Token ids of prompt + completion for each problem, unpadded, shared by every model."""

    sequences: list[list[int]]
    prompt_lengths: list[int]
    problem_ids: list[int]
    source: str  # where completions came from: 'rlvr', 'sft', 'base' or 'gold'
    pad_token_id: int

    def __post_init__(self):
        n = len(self.sequences)
        if not (len(self.prompt_lengths) == len(self.problem_ids) == n):
            raise ValueError(
                f"TokenCache needs one prompt_length and problem_id per sequence: got {n} sequences, "
                f"{len(self.prompt_lengths)} prompt_lengths, {len(self.problem_ids)} problem_ids"
            )
        for row, (seq, p) in enumerate(zip(self.sequences, self.prompt_lengths)):
            if not 1 <= p <= len(seq):
                raise ValueError(f"prompt_lengths[{row}]={p} must be in 1..{len(seq)} (the sequence length)")

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def completion_lengths(self) -> list[int]:
        return [len(s) - p for s, p in zip(self.sequences, self.prompt_lengths)]

    @property
    def fingerprint(self) -> str:
        """Hash of the token ids, prompt lengths and problem ids: what every stored activation depends on."""
        data = json.dumps([self.sequences, self.prompt_lengths, self.problem_ids]).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write the cache to `folder` (replaced whole, atomically)."""
        with artifacts.atomic_dir(folder) as tmp:
            artifacts.write_json(tmp / TOKENS_FILE, {**asdict(self), "fingerprint": self.fingerprint})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TokenCache":
        data = artifacts.read_json(Path(folder) / TOKENS_FILE)
        data.pop("fingerprint", None)
        return cls(**data)


def build_token_cache(tokenizer, problems: list[dict], completions: dict[int, str] | None, source: str,
                      strict: bool = False) -> TokenCache:
    """Tokenise prompt + completion for each problem (eval.jsonl rows).

    `completions` maps problem id -> completion text; None uses each problem's gold `answer`.
    Prompt ids are `tokenizer(prompt)` (special tokens as the model saw them at evaluation); completion
    ids are `tokenizer(prompt + completion)` minus that prefix, so tokens merge across the boundary as
    they would in one text. When a merge across the boundary changes the prompt's ids (rare with byte
    BPE, e.g. '\\n' + '\\n'), the completion is tokenised on its own and appended instead; `strict`
    raises a ValueError then.
    """
    if completions is not None:
        missing = [p["id"] for p in problems if p["id"] not in completions]
        if missing:
            raise ValueError(f"completions has no entry for problem ids {missing[:10]} ({len(missing)} missing)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id: set tokenizer.pad_token first")
    sequences, prompt_lengths, ids, split = [], [], [], 0
    for problem in problems:
        prompt = problem["prompt"]
        completion = problem["answer"] if completions is None else completions[problem["id"]]
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion)["input_ids"]
        if full[: len(prompt_ids)] != prompt_ids:
            if strict:
                raise ValueError(
                    f"problem {problem['id']}: tokenising prompt + completion changes the prompt's tokens "
                    f"at the boundary (prompt ends {prompt[-20:]!r}, completion starts {completion[:20]!r})"
                )
            split += 1
            full = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
        sequences.append(list(full))
        prompt_lengths.append(len(prompt_ids))
        ids.append(int(problem["id"]))
    if split:
        log.warning("%d of %d completions were tokenised apart from their prompt (boundary merge)", split, len(problems))
    return TokenCache(sequences, prompt_lengths, ids, source, int(pad))


def iter_batches(cache: TokenCache, batch_size: int, rows: list[int] | None = None
                 ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield (rows, input_ids [B, T], attention_mask [B, T]), right-padded with the cache's pad id.

    Right padding keeps every real token at its own position (causal attention never looks right),
    so activations at real positions do not depend on the batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    rows = list(range(len(cache))) if rows is None else list(rows)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(cache.sequences[r]) for r in chunk)
        input_ids = torch.full((len(chunk), width), cache.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            seq = cache.sequences[r]
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        yield chunk, input_ids, mask


def check_selection(selection: str) -> float | None:
    """None for the named selections, the fraction for 'frac:F'; ValueError otherwise."""
    if selection in ("last_prompt", "completion"):
        return None
    if selection.startswith("frac:"):
        try:
            frac = float(selection[5:])
        except ValueError:
            frac = -1.0
        if 0.0 <= frac <= 1.0:
            return frac
    raise ValueError(f"position selection {selection!r} is not one of 'last_prompt', 'completion', 'frac:<0..1>'")


def select_positions(cache: TokenCache, selection: str, rows: list[int] | None = None) -> list[tuple[int, int]]:
    """(row, position) pairs of a selection, in row order (see the module docstring for definitions);
    `rows` restricts it to some cache rows."""
    frac = check_selection(selection)
    out = []
    for row in range(len(cache)) if rows is None else rows:
        seq, p = cache.sequences[row], cache.prompt_lengths[row]
        n_completion = len(seq) - p
        if selection == "last_prompt":
            out.append((row, p - 1))
        elif n_completion == 0:
            continue
        elif selection == "completion":
            out.extend((row, pos) for pos in range(p - 1, len(seq) - 1))
        else:
            out.append((row, p - 1 + int(round(frac * (n_completion - 1)))))
    return out
