"""Activation patching: run a receiver model, replace one site's activations with a donor's, and measure
how far the answer's logit difference moves from the receiver's value towards the donor's.

Two uses share one engine (`sweep`):
- cross-model patching: receiver and donor are two checkpoints (SFT and RLVR) run on the same tokens.
  Donor RLVR into receiver SFT asks whether a component is *sufficient* to carry RLVR's behaviour; donor
  SFT into receiver RLVR asks whether it is *necessary* (Heimersheim and Nanda 2024).
- within-model patching: one model, a clean prompt (donor) and a corrupted prompt (receiver) that differ
  in one digit token, so both have the same length (symmetric token replacement, Zhang and Nanda 2023).

Metric. At a target position, logit difference LD = logit(correct) - logit(foil), where the foil is by
default the receiver's own top-scoring wrong token. The normalised effect of a patch on one problem is
    (LD_patched - LD_receiver) / (LD_donor - LD_receiver),
0 = receiver unchanged, 1 = the donor's behaviour fully recovered. Where donor and receiver already agree,
|LD_donor - LD_receiver| < min_gap, the ratio is noise over a tiny denominator: such problems are left
out of every mean (`normalised_effects` gives them NaN) and the number kept is reported.

Sites use TransformerLens names (`blocks.{l}.hook_attn_out` ...). Several patches run in one forward pass:
the batch is repeated once per patch and each copy's rows are patched differently.
"""
from __future__ import annotations

import bisect
import contextlib
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from . import architecture, artifacts, stats

SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
POSITIONS_BUILTIN = ("all", "target")  # every position up to the target / the target position only


# --- what to patch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """Replace `site` at every layer in `layers` on the positions named `positions` ('all', 'target' or a
    name the batch defines, such as 'corrupted')."""

    site: str
    layers: tuple[int, ...]
    positions: str = "all"

    def __post_init__(self):
        if self.site not in SITES:
            raise ValueError(f"site={self.site!r} is not one of {SITES}")
        if not self.layers:
            raise ValueError("layers must name at least one layer")

    @property
    def label(self) -> str:
        layers = ",".join(map(str, self.layers))
        return f"blocks.{layers}.{self.site}@{self.positions}"


def layer_patches(n_layers: int, sites: Iterable[str], positions: Iterable[str] = ("all",),
                  all_layers: bool = False) -> list[Patch]:
    """One patch per (position set, site, layer); with `all_layers`, also one per (position set, site)
    that patches every layer at once."""
    out = []
    for pos in positions:
        for site in sites:
            out += [Patch(site, (layer,), pos) for layer in range(n_layers)]
            if all_layers:
                out.append(Patch(site, tuple(range(n_layers)), pos))
    return out


@dataclass
class PatchBatch:
    """One batch of problems. `target` is the position whose next-token logits are scored (the position
    *predicting* the answer digit); `correct` the token that should come next there. `donor_input_ids`
    (same shape) is for within-model patching; cross-model patching runs both models on `input_ids`."""

    input_ids: torch.Tensor  # (batch, seq), right-padded
    attention_mask: torch.Tensor  # (batch, seq)
    target: torch.Tensor  # (batch,)
    correct: torch.Tensor  # (batch,)
    foil: torch.Tensor | None = None  # (batch,); None: the receiver's top wrong token
    donor_input_ids: torch.Tensor | None = None
    positions: dict[str, torch.Tensor] = field(default_factory=dict)  # extra named (batch, seq) masks
    problem_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        batch, seq = self.input_ids.shape
        if self.attention_mask.shape != (batch, seq):
            raise ValueError(f"attention_mask has shape {tuple(self.attention_mask.shape)}, expected {(batch, seq)}")
        if self.donor_input_ids is not None and self.donor_input_ids.shape != (batch, seq):
            raise ValueError(f"donor_input_ids has shape {tuple(self.donor_input_ids.shape)}, expected "
                             f"{(batch, seq)}: clean and corrupted prompts must have the same token count")
        for name, value in (("target", self.target), ("correct", self.correct), ("foil", self.foil)):
            if value is not None and value.shape != (batch,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({batch},)")
        if ((self.target < 0) | (self.target >= seq)).any():
            raise ValueError(f"target positions must lie in 0..{seq - 1}, got {self.target.tolist()}")
        for name in self.positions:
            if name in POSITIONS_BUILTIN:
                raise ValueError(f"position set name {name!r} is reserved; built-in: {POSITIONS_BUILTIN}")

    def position_mask(self, name: str) -> torch.Tensor:
        """(batch, seq) bool: where a patch on the position set `name` writes."""
        index = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)[None, :]
        if name == "all":
            return (index <= self.target[:, None]) & self.attention_mask.bool()
        if name == "target":
            return index == self.target[:, None]
        if name not in self.positions:
            raise ValueError(f"positions={name!r} is not 'all', 'target' or one of this batch's "
                             f"{sorted(self.positions)}")
        return self.positions[name].bool()

    def trimmed(self) -> "PatchBatch":
        """The batch cut after the last target: later tokens cannot influence it (causal attention)."""
        end = int(self.target.max()) + 1
        cut = lambda t: None if t is None else t[:, :end]  # noqa: E731
        return PatchBatch(cut(self.input_ids), cut(self.attention_mask), self.target, self.correct, self.foil,
                          cut(self.donor_input_ids), {k: cut(v) for k, v in self.positions.items()},
                          self.problem_ids)

    def to(self, device) -> "PatchBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PatchBatch(move(self.input_ids), move(self.attention_mask), move(self.target), move(self.correct),
                          move(self.foil), move(self.donor_input_ids),
                          {k: move(v) for k, v in self.positions.items()}, self.problem_ids)


# --- hooks ------------------------------------------------------------------------------------------
def _site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, bool]:
    """(module, is_input): the module whose output (or, for resid_pre, whose input) is the site."""
    layers = architecture.blocks(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer={layer} is out of range: the model has layers 0..{len(layers) - 1}")
    block = layers[layer]
    return {"hook_resid_pre": (block.block, True), "hook_attn_out": (block.attn_out, False),
            "hook_mlp_out": (block.mlp_out, False), "hook_resid_post": (block.block, False)}[site]


def _tensor(output):
    # attention modules return (hidden, weights); blocks and MLPs return the tensor itself
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output, tensor):
    return (tensor,) + tuple(output[1:]) if isinstance(output, tuple) else tensor


def _hook(model: nn.Module, layer: int, site: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register `fn(activation) -> replacement or None` at a site; returns the handle."""
    module, is_input = _site_module(model, layer, site)
    if is_input:
        def pre_hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = fn(hidden)
            if new is None:
                return None
            if args:
                return (new,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module, _args, output):
        new = fn(_tensor(output))
        return None if new is None else _with_tensor(output, new)
    return module.register_forward_hook(post_hook)


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _target_logits(model: nn.Module, input_ids, attention_mask, target) -> torch.Tensor:
    """(batch, vocab) next-token logits at each row's target position (only those are projected)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=target[:, None], use_cache=False)
    return out.logits[:, 0, :].float()


@torch.no_grad()
def record(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           sites: Iterable[tuple[int, str]], target: torch.Tensor | None = None):
    """Activations at (layer, site) pairs: ({(layer, site): (batch, seq, hidden)}, target logits or None)."""
    acts: dict[tuple[int, str], torch.Tensor] = {}

    def keep(key):
        def fn(t):
            acts[key] = t.detach()
        return fn

    handles = [_hook(model, layer, site, keep((layer, site))) for layer, site in set(sites)]
    with _hooks(handles):
        if target is None:
            model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
            return acts, None
        return acts, _target_logits(model, input_ids, attention_mask, target)


@torch.no_grad()
def run_patched(model: nn.Module, batch: PatchBatch, patches: Sequence[Patch],
                donor_acts: dict[tuple[int, str], torch.Tensor]) -> torch.Tensor:
    """Target logits of `model` under each patch: (len(patches), batch, vocab).

    The batch is repeated once per patch (copy j = rows j*B..(j+1)*B-1); a site's hook replaces the
    activation with the donor's only on the rows and positions of the patches that name it.
    """
    n_rows, seq = batch.input_ids.shape
    k = len(patches)
    writes: dict[tuple[int, str], torch.Tensor] = {}  # site -> (k*B, seq) bool mask
    for j, patch in enumerate(patches):
        mask = batch.position_mask(patch.positions)
        for layer in patch.layers:
            key = (layer, patch.site)
            if key not in donor_acts:
                raise ValueError(f"no donor activation recorded for {architecture.site_name(*key)}")
            writes.setdefault(key, torch.zeros(k * n_rows, seq, dtype=torch.bool, device=mask.device))
            writes[key][j * n_rows:(j + 1) * n_rows] |= mask

    def replace(key):
        mask, donor = writes[key], donor_acts[key]

        def fn(t):
            return torch.where(mask[..., None], donor.to(t.dtype).repeat(k, 1, 1), t)
        return fn

    handles = [_hook(model, layer, site, replace((layer, site))) for layer, site in writes]
    with _hooks(handles):
        logits = _target_logits(model, batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1),
                                batch.target.repeat(k))
    return logits.view(k, n_rows, -1)


def logit_difference(logits: torch.Tensor, correct: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """logit(correct) - logit(foil) over the last (vocab) axis."""
    return (logits.gather(-1, correct.expand(logits.shape[:-1])[..., None])
            - logits.gather(-1, foil.expand(logits.shape[:-1])[..., None]))[..., 0]


def top_wrong_token(logits: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """The highest-scoring token other than `correct`, per row."""
    return logits.scatter(-1, correct[:, None], float("-inf")).argmax(-1)


# --- the sweep ----------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Logit differences per problem: unpatched receiver, donor, and the receiver under each patch."""

    patches: list[Patch]
    receiver: np.ndarray  # (n,)
    donor: np.ndarray  # (n,)
    patched: np.ndarray  # (n, len(patches))
    problem_ids: list[int]
    seconds: float = 0.0

    def normalised_effects(self, min_gap: float) -> np.ndarray:
        """(n, len(patches)) normalised effects; rows where |donor - receiver| < min_gap are NaN."""
        return normalised_effect(self.patched, self.receiver[:, None], self.donor[:, None], min_gap)


def normalised_effect(patched, receiver, donor, min_gap: float) -> np.ndarray:
    """(patched - receiver) / (donor - receiver); NaN where |donor - receiver| < min_gap (not informative)."""
    if min_gap < 0:
        raise ValueError(f"min_gap={min_gap} must be >= 0")
    patched, receiver, donor = (np.asarray(x, dtype=float) for x in (patched, receiver, donor))
    gap = donor - receiver
    keep = np.abs(gap) >= max(min_gap, np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(keep, (patched - receiver) / np.where(keep, gap, 1.0), np.nan)


def sweep(receiver: nn.Module, donor: nn.Module, batches: Iterable[PatchBatch], patches: Sequence[Patch],
          patches_per_forward: int = 8, progress: bool = True, description: str = "patching") -> SweepResult:
    """Logit differences of `receiver` patched with `donor` activations, for every patch and problem.

    For cross-model patching pass two models and batches without `donor_input_ids`; for within-model
    patching pass the same model twice and batches whose `donor_input_ids` hold the clean prompts.
    """
    if patches_per_forward < 1:
        raise ValueError(f"patches_per_forward={patches_per_forward} must be >= 1")
    patches = list(patches)
    needed = {(layer, p.site) for p in patches for layer in p.layers}
    batches = list(batches)
    chunks = [patches[i:i + patches_per_forward] for i in range(0, len(patches), patches_per_forward)]
    device = next(receiver.parameters()).device
    rec, don, pat, ids = [], [], [], []
    start = time.perf_counter()
    with torch.no_grad(), tqdm(total=len(batches) * len(chunks), desc=description, disable=not progress) as bar:
        for batch in batches:
            batch = batch.trimmed().to(device)
            donor_ids = batch.input_ids if batch.donor_input_ids is None else batch.donor_input_ids
            acts, donor_logits = record(donor, donor_ids, batch.attention_mask, needed, batch.target)
            receiver_logits = _target_logits(receiver, batch.input_ids, batch.attention_mask, batch.target)
            foil = batch.foil if batch.foil is not None else top_wrong_token(receiver_logits, batch.correct)
            rec.append(logit_difference(receiver_logits, batch.correct, foil))
            don.append(logit_difference(donor_logits, batch.correct, foil))
            per_patch = []
            for chunk in chunks:
                logits = run_patched(receiver, batch, chunk, acts)
                per_patch.append(logit_difference(logits, batch.correct, foil))  # (k, B)
                bar.update()
            pat.append(torch.cat(per_patch).T)
            ids += list(batch.problem_ids) or [None] * len(batch.target)
    return SweepResult(patches, torch.cat(rec).cpu().numpy(), torch.cat(don).cpu().numpy(),
                       torch.cat(pat).cpu().numpy(), ids, time.perf_counter() - start)


def summarize(result: SweepResult, min_gap: float, n_bootstrap: int = 200, confidence: float = 0.95,
              seed: int = 0) -> list[dict]:
    """Per patch: mean normalised effect over the informative problems with a bootstrap interval."""
    effects = result.normalised_effects(min_gap)
    kept = ~np.isnan(effects[:, 0]) if len(effects) else np.zeros(0, bool)
    out = []
    for j, patch in enumerate(result.patches):
        row = {"site": patch.site, "layers": list(patch.layers), "positions": patch.positions, "n_kept": int(kept.sum())}
        row.update(_mean_ci(effects[kept, j], n_bootstrap, confidence, seed))
        out.append(row)
    return out


def mean_effect(result: SweepResult, which: Callable[[Patch], bool], min_gap: float, n_bootstrap: int = 200,
                confidence: float = 0.95, seed: int = 0) -> dict:
    """The normalised effect averaged over the patches `which` selects (e.g. every single-layer attn_out
    patch), per problem first, then over problems with a bootstrap interval."""
    cols = [j for j, p in enumerate(result.patches) if which(p)]
    if not cols:
        raise ValueError("`which` selected no patch of this result")
    per_problem = result.normalised_effects(min_gap)[:, cols].mean(axis=1)
    return _mean_ci(per_problem[~np.isnan(per_problem)], n_bootstrap, confidence, seed)


def _mean_ci(values: np.ndarray, n_bootstrap: int, confidence: float, seed: int) -> dict:
    if len(values) == 0:
        return {"value": float("nan"), "ci": None}
    return stats.bootstrap(values, np.mean, n_bootstrap, confidence, seed)


# --- targets: where the answer is predicted, and corrupted prompts ---------------------------------
def _token_texts(tokenizer, sequences: Iterable[Sequence[int]]) -> dict[int, str]:
    """Each distinct token's text, decoded once."""
    distinct = {t for seq in sequences for t in seq}
    return {t: tokenizer.decode([t]) for t in distinct}


def _is_digit(text: str) -> bool:
    return len(text) == 1 and text.isdigit()


def answer_target(sequence: Sequence[int], prompt_length: int, texts: dict[int, str],
                  marker: str = "####") -> int | None:
    """Index of the token predicting the first digit of the final answer: the first digit after the
    last `marker` in the completion (digits are single tokens). None when the completion has no such
    answer."""
    pieces = [texts[t] for t in sequence[prompt_length:]]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]).tolist()
    text = "".join(pieces)
    at = text.rfind(marker)
    if at < 0:
        return None
    match = re.match(r"[\s$-]*\d", text[at + len(marker):])
    if match is None:
        return None
    char = at + len(marker) + match.end() - 1
    digit_token = prompt_length + bisect.bisect_right(starts, char) - 1
    return digit_token - 1


def digit_token(tokenizer, digit: str) -> int:
    """The id of a single digit's token; ValueError when the tokenizer does not write digits alone."""
    ids = tokenizer.encode(digit, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"digit {digit!r} encodes to {len(ids)} tokens {ids}; patching needs single-digit tokens")
    return ids[0]


def answer_batches(sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], problem_ids: Sequence[int],
                   tokenizer, pad_token_id: int, batch_size: int, finals: dict[int, str] | None = None,
                   marker: str = "####", limit: int | None = None) -> list[PatchBatch]:
    """Cross-model patching batches from prompt+completion token sequences (the shared token cache).

    The target is the position predicting the first digit of the final answer; the correct token is the
    first digit of the gold answer `finals[problem_id]` when given, else the token the sequence has there.
    Sequences without a final answer are skipped; at most `limit` problems are kept.
    """
    _check_batch_size(batch_size)
    texts = _token_texts(tokenizer, sequences)
    digits = {str(d): digit_token(tokenizer, str(d)) for d in range(10)}
    rows = []
    for seq, plen, pid in zip(sequences, prompt_lengths, problem_ids):
        target = answer_target(seq, plen, texts, marker)
        if target is None:
            continue
        if finals is not None:
            first = re.search(r"\d", str(finals[pid]))
            if first is None:
                continue
            correct = digits[first.group()]
        else:
            correct = seq[target + 1]
        rows.append((seq, target, correct, pid))
        if limit is not None and len(rows) == limit:
            break
    return [_make_batch(rows[i:i + batch_size], pad_token_id) for i in range(0, len(rows), batch_size)]


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
    texts = _token_texts(tokenizer, sequences)
    digits = {str(d): digit_token(tokenizer, str(d)) for d in range(10)}
    rng = random.Random(seed)
    rows = []
    for seq, plen, pid in zip(sequences, prompt_lengths, problem_ids):
        c = corrupt_number(seq, plen, texts, digits, which, rng)
        if c is None:
            continue
        rows.append((c["corrupted"], c["target"], c["clean_token"], pid, c["corrupt_token"], seq, c["changed"]))
        if limit is not None and len(rows) == limit:
            break
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        clean = _pad([r[5] for r in chunk], pad_token_id)
        changed = torch.zeros_like(clean, dtype=torch.bool)
        changed[torch.arange(len(chunk)), torch.tensor([r[6] for r in chunk])] = True
        batches.append(_make_batch([r[:4] for r in chunk], pad_token_id, foil=torch.tensor([r[4] for r in chunk]),
                                   donor_input_ids=clean, positions={"corrupted": changed}))
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


def _pad(seqs, pad_token_id: int) -> torch.Tensor:
    return pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=pad_token_id)


def _make_batch(rows, pad_token_id: int, **extra) -> PatchBatch:
    """rows of (sequence, target, correct, problem_id) -> a right-padded PatchBatch."""
    lengths = torch.tensor([len(r[0]) for r in rows])
    input_ids = _pad([r[0] for r in rows], pad_token_id)
    mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    return PatchBatch(input_ids, mask, torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]),
                      problem_ids=[r[3] for r in rows], **extra)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")


# --- notebook 06: the study's patching experiments -----------------------------------------------------
DIRECTIONS = {  # name -> (donor, receiver)
    "rlvr_into_sft": ("rlvr", "sft"),  # sufficiency: does RLVR's component make SFT behave like RLVR?
    "sft_into_rlvr": ("sft", "rlvr"),  # necessity: does SFT's component undo RLVR's behaviour?
}
WITHIN_POSITIONS = ("corrupted", "target")  # 'all' would restore resid_pre trivially (only one token differs)
SECTIONS = ("seed", "model", "organism", "data", "sft", "grpo", "evaluation", "extract", "patching")


def fingerprint(cfg) -> str:
    """What metrics/patching.json depends on: the checkpoints, the token cache, evaluation and patching."""
    return cfg.fingerprint(*SECTIONS)


def _report(result: SweepResult, cfg, receiver_name: str = "receiver", donor_name: str = "donor") -> dict:
    """JSON-ready view of a sweep: logit differences, per-patch effects, per-site means over layers."""
    pc, boot = cfg.patching, dict(n_bootstrap=cfg.patching.n_bootstrap, confidence=cfg.evaluation.confidence,
                                  seed=cfg.seed)
    effects = result.normalised_effects(pc.min_logit_gap)
    single = lambda site, pos: lambda p: p.site == site and len(p.layers) == 1 and p.positions == pos  # noqa: E731
    positions = list(dict.fromkeys(p.positions for p in result.patches))
    return {
        "n_problems": len(result.receiver),
        "n_kept": int((~np.isnan(effects[:, 0])).sum()) if effects.size else 0,
        f"{receiver_name}_logit_diff": stats.bootstrap(result.receiver, np.mean, **boot),
        f"{donor_name}_logit_diff": stats.bootstrap(result.donor, np.mean, **boot),
        "seconds": result.seconds,
        "patches": summarize(result, pc.min_logit_gap, **boot),
        "layer_mean": {pos: {site: mean_effect(result, single(site, pos), pc.min_logit_gap, **boot)
                             for site in dict.fromkeys(p.site for p in result.patches)}
                       for pos in positions},
    }


def cross_model(cfg, models: dict, tokenizer, cache, problems: list[dict], progress: bool = True) -> dict:
    """Both directions of SFT <-> RLVR patching at every layer and site (and all layers at once)."""
    pc = cfg.patching
    finals = {p["id"]: p["final"] for p in problems}
    batches = answer_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                             cache.pad_token_id, pc.batch_size, finals, pc.answer_marker, pc.n_problems)
    if not batches:
        raise ValueError(f"no token-cache sequence has a final answer after {pc.answer_marker!r}")
    patches = layer_patches(len(architecture.blocks(models["sft"])), pc.sites, pc.positions, all_layers=True)
    out = {}
    for name, (donor, receiver) in DIRECTIONS.items():
        result = sweep(models[receiver], models[donor], batches, patches, pc.patches_per_forward, progress, name)
        out[name] = {"donor": donor, "receiver": receiver, **_report(result, cfg)}
    return out


def within_model(cfg, models: dict, tokenizer, cache, progress: bool = True) -> dict:
    """Clean/corrupted patching inside SFT and inside RLVR: where the corrupted number's information flows."""
    pc = cfg.patching
    batches = corrupted_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                                cache.pad_token_id, pc.batch_size, pc.corrupt_number, cfg.seed, pc.n_problems)
    if not batches:
        raise ValueError(f"no prompt has a number #{pc.corrupt_number} that its completion writes again")
    patches = layer_patches(len(architecture.blocks(models["sft"])), pc.sites, WITHIN_POSITIONS)
    return {name: _report(sweep(models[name], models[name], batches, patches, pc.patches_per_forward, progress,
                                f"clean/corrupted {name}"), cfg, "corrupted", "clean")
            for name in ("sft", "rlvr")}


def summary(results: dict) -> dict:
    """The keys 10_verdict reads: graft shares and mean patching effects, each {value, ci, description}."""
    out = {}
    rows = {row["graft"]: row for row in results["grafting"]["rows"]}
    for key, graft_name, what in (("graft_attn_share", "attention", "attention (with its input norm)"),
                                  ("graft_mlp_share", "MLP", "MLPs (with their input norms)"),
                                  ("graft_attn_mlp_share", "attention + MLP", "attention and MLPs")):
        if graft_name in rows:
            out[key] = {**_value_ci(rows[graft_name]["share"]),
                        "description": f"share of the RLVR-SFT greedy accuracy gain recovered by grafting RLVR's "
                                       f"{what} of every layer into SFT (paired bootstrap over problems)"}
    for direction, (donor, receiver) in DIRECTIONS.items():
        report = results["cross_model"][direction]
        means = report["layer_mean"].get("all") or next(iter(report["layer_mean"].values()))
        for site, short in (("hook_attn_out", "attn_out"), ("hook_mlp_out", "mlp_out"), ("hook_resid_pre", "resid_pre")):
            if site in means:
                out[f"patch_{short}_effect_{direction}"] = {
                    **_value_ci(means[site]),
                    "description": f"mean over layers of the normalised effect of patching {donor.upper()}'s {short} "
                                   f"into {receiver.upper()} on the answer's logit difference (0 = {receiver.upper()} "
                                   f"unchanged, 1 = {donor.upper()}'s behaviour)"}
    return out


def _value_ci(entry: dict) -> dict:
    return _finite({"value": entry["value"], "ci": entry.get("ci")})


def _finite(obj):
    """NaN -> None throughout (strict JSON has no NaN); an interval with a NaN end becomes None."""
    if isinstance(obj, dict):
        return {k: (None if k == "ci" and v is not None and any(_nan(x) for x in v) else _finite(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if _nan(obj) else obj


def _nan(x) -> bool:
    return isinstance(x, float) and np.isnan(x)


def run(cfg, force: bool = False, progress: bool = True, evaluate: Callable | None = None) -> str:
    """Notebook 06's analysis: cross-model and clean/corrupted patching, and grafting; writes
    metrics/patching.json unless it is up to date. `evaluate` (model -> correct per problem) replaces
    greedy evaluation of the grafts, for tests."""
    from . import activations, data, grafting, models as loader

    path = cfg.path("metrics", "patching.json")
    if not force and artifacts.is_current(path, fingerprint(cfg)):
        return f"{path} is up to date: skipped"
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models, tokenizer = {}, None
    for stage in ("sft", "rlvr"):
        models[stage], tokenizer = loader.load_stage(cfg, stage, device)
    problems = data.read_jsonl(cfg.path("data", "eval.jsonl"))
    cache = activations.TokenCache.load(cfg.path("tokens"))
    texts = _token_texts(tokenizer, cache.sequences)
    answered = sum(answer_target(s, p, texts, cfg.patching.answer_marker) is not None
                   for s, p in zip(cache.sequences, cache.prompt_lengths))
    print(f"token cache ({cache.source} completions): {answered} of {len(cache)} sequences have a final answer")
    if answered == 0:  # e.g. an untrained model wrote the completions: patch on the gold solutions instead
        cache = activations.build_token_cache(tokenizer, problems[:cfg.patching.n_problems], None, "gold")
        print("no final answer to patch on: using the gold solutions of the held-out problems instead")
    results = {"settings": cfg.patching.model_dump(mode="json"), "token_source": cache.source}
    steps = [("cross_model", lambda: cross_model(cfg, models, tokenizer, cache, problems, progress))]
    if cfg.patching.within_model:
        steps.append(("within_model", lambda: within_model(cfg, models, tokenizer, cache, progress)))
    steps.append(("grafting", lambda: grafting.run(cfg, models["sft"], models["rlvr"], tokenizer, problems, evaluate)))
    for name, step in steps:
        began = time.perf_counter()
        print(f"{name.replace('_', ' ')} ...", flush=True)
        results[name] = step()
        print(f"{name.replace('_', ' ')} done in {time.perf_counter() - began:.1f} s", flush=True)
    results["summary"] = summary(results)
    results["seconds"] = time.perf_counter() - start
    artifacts.write_json(path, _finite(results))
    artifacts.stamp(path, fingerprint(cfg), seconds=results["seconds"])
    return f"wrote {path} in {results['seconds']:.1f} s"


# --- figures ---------------------------------------------------------------------------------------------
SITE_LABELS = {"hook_resid_pre": "resid_pre", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out",
               "hook_resid_post": "resid_post"}


def effects_frame(report: dict, positions: str | None = None):
    """Mean normalised effects as a layer x site table (pandas); 'all layers' is the last row.
    With `positions` None, columns are site@positions for every position set of the report."""
    import pandas as pd

    rows = [p for p in report["patches"] if positions is None or p["positions"] == positions]
    frame = pd.DataFrame([{
        "layer": str(p["layers"][0]) if len(p["layers"]) == 1 else "all layers",
        "column": SITE_LABELS[p["site"]] + ("" if positions else f"@{p['positions']}"),
        "effect": p["value"]} for p in rows])
    table = frame.pivot(index="layer", columns="column", values="effect")
    order = sorted((i for i in table.index if i != "all layers"), key=int) + [i for i in table.index if i == "all layers"]
    return table.loc[order, list(dict.fromkeys(frame["column"]))]


def plot_heatmaps(reports: dict[str, dict], titles: dict[str, str], positions: str | None = None,
                  suptitle: str = ""):
    """One heatmap (layer x site, normalised effect) per report, side by side."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    tables = {name: effects_frame(report, positions) for name, report in reports.items()}
    width = max(3.0, 0.75 * max(t.shape[1] for t in tables.values())) + 1.5
    height = 0.45 * max(t.shape[0] for t in tables.values()) + 1.8
    fig, axes = plt.subplots(1, len(reports), figsize=(width * len(reports), height), squeeze=False)
    for ax, (name, report) in zip(axes[0], reports.items()):
        sns.heatmap(tables[name].astype(float), ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=0, vmin=-1,
                    vmax=1, annot_kws={"fontsize": 8}, cbar_kws={"label": "normalised effect"})
        ax.set_title(f"{titles.get(name, name)}\n({report['n_kept']} of {report['n_problems']} problems informative)")
        ax.set_xlabel("patched site" + ("" if positions else " @ positions"))
        ax.set_ylabel("layer")
        if positions is None:
            ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=35, ha="right")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def reading(results: dict) -> str:
    """A short reading of this run's numbers (markdown) for the notebook's closing summary."""
    s, graft = results["summary"], results["grafting"]

    def fmt(key):
        e = s.get(key)
        if e is None or e["value"] is None:
            return "n/a"
        ci = "" if e["ci"] is None else f" (95% CI [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}])"
        return f"**{e['value']:.2f}**{ci}"

    gain = graft["gain"]
    lo, hi = gain["ci"] if gain["ci"] else (float("nan"), float("nan"))
    lines = [
        f"On {graft['n_problems']} held-out problems RLVR answers {graft['donor']['value']:.1%} correctly and SFT "
        f"{graft['receiver']['value']:.1%}: a gain of {100 * gain['value']:+.1f} points (95% CI [{100 * lo:+.1f}, "
        f"{100 * hi:+.1f}]).",
        f"Grafting RLVR's attention (every layer, with its input norms) into SFT recovers a share "
        f"{fmt('graft_attn_share')} of that gain; grafting its MLPs recovers {fmt('graft_mlp_share')}; both together "
        f"{fmt('graft_attn_mlp_share')}.",
    ]
    if not lo > 0:
        lines.append("RLVR's gain over SFT is not clearly positive on this run, so these shares do not measure a "
                     "gain and say nothing for either hypothesis.")
    cross = results["cross_model"]["rlvr_into_sft"]
    lines.append(
        f"Patching RLVR's activations into SFT at the answer ({cross['n_kept']} of {cross['n_problems']} problems "
        f"informative) moves the answer's logit difference, averaged over layers, {fmt('patch_attn_out_effect_rlvr_into_sft')} "
        f"of the way to RLVR through attention outputs and {fmt('patch_mlp_out_effect_rlvr_into_sft')} through MLP "
        f"outputs; SFT's activations in RLVR undo {fmt('patch_attn_out_effect_sft_into_rlvr')} (attention) and "
        f"{fmt('patch_mlp_out_effect_sft_into_rlvr')} (MLP) of RLVR's behaviour.")
    within = results.get("within_model")
    if within:
        lines.append(_within_reading(within))
    a, m = s.get("graft_attn_share"), s.get("graft_mlp_share")
    if a and m and a["ci"] and m["ci"] and lo > 0:
        if a["ci"][0] > m["ci"][1]:
            lines.append("Attention carries clearly more of the gain than the MLPs: what the Routing Hypothesis predicts.")
        elif m["ci"][0] > a["ci"][1]:
            lines.append("The MLPs carry clearly more of the gain than attention: what the Representation Learning "
                         "Hypothesis predicts.")
        else:
            lines.append("The attention and MLP intervals overlap: grafting alone does not separate the hypotheses here.")
    return "\n\n".join(lines)


def _within_reading(within: dict) -> str:
    """Which component at the copy position carries the corrupted number in SFT, and the same cell in RLVR."""
    candidates = [(i, p) for i, p in enumerate(within["sft"]["patches"])
                  if p["site"] != "hook_resid_pre" and p["positions"] == "target" and p["value"] is not None]
    if not candidates:
        return "Too few clean/corrupted problems were informative to read the information flow."
    i, best = max(candidates, key=lambda c: c[1]["value"])
    rlvr = within["rlvr"]["patches"][i]["value"]
    text = (f"Inside each model, the corrupted number reaches the position where the working copies it mainly through "
            f"layer {best['layers'][0]}'s {SITE_LABELS[best['site']]} there: restoring it brings back "
            f"{best['value']:.2f} of the clean preference in SFT and ")
    if rlvr is None:
        return text + "an unmeasured share in RLVR."
    same = abs(rlvr - best["value"]) < 0.1
    return text + (f"{rlvr:.2f} in RLVR: " + ("RLVR kept SFT's route for this information." if same else
                                              "RLVR changed how much of this information that route carries."))
