"""Activation patching and direct effects: which component of which layer carries a donor model's behaviour
into a receiver model.

Metric. Teacher forcing on the shared token cache: the mean log-probability (nats) of the final answer's
actual tokens, each scored at the position that predicts it (`answer_span`; any tokenizer, digits merged
or not). Receiver and donor read the same tokens, so the target is one definition for both directions and
needs no foil. Clean/corrupted patching inside one model scores logit(clean digit) - logit(corrupted digit)
at the position where the completion copies the changed number.

Two effects per layer l and component c (attention or MLP, each with its input norm, as in `grafting`):
- total effect (activation patching): the receiver is run with c's output at layer l replaced, at every
  position up to the answer, by the donor's; later components recompute on the changed stream. A change
  upstream travels through later components, so a changed first-layer MLP also reads as a large total effect
  of later attention layers.
- direct effect (path patching, Wang et al. 2022; Goldowsky-Dill et al. 2023): the same replacement with
  every later component frozen at its receiver value. The final residual is then the receiver's plus the
  output difference, so the effect is computed without a forward pass: add the difference to the receiver's
  final residual, apply the receiver's final norm and unembedding, score.
Which donor output? `donor_outputs="same_input"` (the default) runs the donor's component on the
receiver's own input at that layer (its weights swapped into the receiver for one forward pass,
`grafting.swapped`); `"own_run"` takes the output from the donor's own forward pass, whose input already
differs when anything upstream changed. Planted tests (tests/test_patching.py) decide: with only the first
layer's MLP changed, own-run direct effects also credit every later attention layer (their inputs moved);
same-input direct effects are exactly 0 for every unchanged component and credit the MLP. Same-input is
what the per-variant measures use; own-run is reported beside it, labelled.

Normalisation. A normalised effect is computed on the aggregate metric, (mean patched - mean receiver) /
(mean donor - mean receiver) (Heimersheim and Nanda 2024), with a paired bootstrap over problems; it is
reported only when the denominator's interval excludes 0. No problem is dropped; every report says how many
problems it rests on.

Sites use TransformerLens names (`blocks.{l}.hook_attn_out` ...). Several patches run in one forward pass:
the batch is repeated once per patch and each copy's rows are patched differently.
"""
from __future__ import annotations

import contextlib
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from rlvr_utils.models import families as architecture
from rlvr_utils.core import artifacts, stats
from rlvr_utils.instruments.patching import grafting

SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
COMPONENT_SITES = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}
POSITIONS_BUILTIN = ("all", "target")  # every position up to the last scored one / the scored positions
DONOR_OUTPUTS = ("same_input", "own_run")


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


def _input_hook(module: nn.Module, fn):
    """A pre-hook calling fn(first input) -> replacement or None."""
    def pre_hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        new = fn(hidden)
        if new is None:
            return None
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _hook(model: nn.Module, layer: int, site: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register `fn(activation) -> replacement or None` at a site; returns the handle."""
    module, is_input = _site_module(model, layer, site)
    if is_input:
        return _input_hook(module, fn)

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


def _final_residual(model: nn.Module, input_ids, attention_mask, handles=()) -> torch.Tensor:
    """(batch, seq, d) residual stream entering the final norm, with extra hook `handles` active."""
    kept = {}

    def keep(t):
        kept["resid"] = t.detach()
    handles = list(handles) + [_input_hook(architecture.final_norm(model), keep)]
    with _hooks(handles):
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    return kept["resid"]


def readout(model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Logits of final residuals (any leading shape): the model's final norm, then its unembedding."""
    return architecture.unembedding(model)(architecture.final_norm(model)(resid)).float()


def score(model: nn.Module, resid: torch.Tensor, batch: PatchBatch) -> torch.Tensor:
    """Per-row metric (k, batch) of final residuals (k, batch, seq, d) decoded by `model`'s read-out:
    mean teacher-forced log-probability of the scored next tokens, or the logit difference correct - foil."""
    rows, pos = batch.score.nonzero(as_tuple=True)
    logits = readout(model, resid[:, rows, pos])  # (k, P, vocab): only the scored positions are projected
    if batch.correct is not None:  # one scored position per row, in row order
        return logits[..., batch.correct].diagonal(dim1=-2, dim2=-1) - logits[..., batch.foil].diagonal(dim1=-2, dim2=-1)
    nxt = batch.input_ids[rows, pos + 1]
    logp = torch.log_softmax(logits, -1).gather(-1, nxt.expand(logits.shape[0], -1)[..., None])[..., 0]
    total = torch.zeros(logits.shape[0], batch.score.shape[0], device=logp.device).index_add_(1, rows, logp)
    return total / batch.score.sum(1)


@torch.no_grad()
def record(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           sites: Iterable[tuple[int, str]]) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor]:
    """({(layer, site): (batch, seq, hidden)}, final residual (batch, seq, hidden))."""
    acts: dict[tuple[int, str], torch.Tensor] = {}

    def keep(key):
        def fn(t):
            acts[key] = t.detach()
        return fn

    handles = [_hook(model, layer, site, keep((layer, site))) for layer, site in set(sites)]
    return acts, _final_residual(model, input_ids, attention_mask, handles)


@torch.no_grad()
def run_patched(model: nn.Module, batch: PatchBatch, patches: Sequence[Patch],
                donor_acts: dict[tuple[int, str], torch.Tensor]) -> torch.Tensor:
    """Per-row metric of `model` under each patch: (len(patches), batch).

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
    resid = _final_residual(model, batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1), handles)
    return score(model, resid.view(k, n_rows, seq, -1), batch)


# --- the sweeps ---------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Per-problem metric of the unpatched receiver, the donor, and the receiver under each patch."""

    patches: list[Patch]
    receiver: np.ndarray  # (n,)
    donor: np.ndarray  # (n,)
    patched: np.ndarray  # (n, len(patches))
    problem_ids: list[int]
    seconds: float = 0.0


def sweep(receiver: nn.Module, donor: nn.Module, batches: Iterable[PatchBatch], patches: Sequence[Patch],
          patches_per_forward: int = 8, progress: bool = True, description: str = "patching") -> SweepResult:
    """Metric of `receiver` patched with `donor` activations, for every patch and problem (total effects).

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
            acts, donor_resid = record(donor, donor_ids, batch.attention_mask, needed)
            receiver_resid = _final_residual(receiver, batch.input_ids, batch.attention_mask)
            rec.append(score(receiver, receiver_resid[None], batch)[0])
            don.append(score(donor, donor_resid[None], batch)[0])
            per_patch = [torch.zeros(0, len(batch.score), device=device)]
            for chunk in chunks:
                per_patch.append(run_patched(receiver, batch, chunk, acts))  # (k, B)
                bar.update()
            pat.append(torch.cat(per_patch).T)
            ids += list(batch.problem_ids) or [None] * len(batch.score)
    return SweepResult(patches, torch.cat(rec).cpu().numpy(), torch.cat(don).cpu().numpy(),
                       torch.cat(pat).cpu().numpy(), ids, time.perf_counter() - start)


@dataclass
class DirectResult:
    """Per problem: receiver and donor metric, and per (layer, component) the direct effect (nats of the
    metric) with same-input and own-run donor outputs, and the metric of the receiver with that one
    component's weights swapped for the donor's (`graft`, a same-input total effect)."""

    components: list[tuple[int, str]]  # (layer, 'attn' | 'mlp')
    receiver: np.ndarray  # (n,)
    donor: np.ndarray  # (n,)
    direct: np.ndarray  # (n, len(components)), same-input donor outputs
    direct_own_run: np.ndarray  # (n, len(components))
    graft: np.ndarray  # (n, len(components)): metric of the receiver with the component swapped
    problem_ids: list[int]
    seconds: float = 0.0


@torch.no_grad()
def direct_effects(receiver: nn.Module, donor: nn.Module, batches: Iterable[PatchBatch], progress: bool = True,
                   description: str = "direct effects") -> DirectResult:
    """Direct effect of each layer's attention and MLP of `donor` on `receiver`'s metric (cross-model: both
    models read `input_ids`). Costs one forward pass of each model and one per (layer, component) for the
    same-input outputs."""
    n_layers = len(architecture.blocks(receiver))
    components = [(layer, c) for layer in range(n_layers) for c in COMPONENT_SITES]
    sites = [(layer, COMPONENT_SITES[c]) for layer, c in components]
    device = next(receiver.parameters()).device
    batches = list(batches)
    out = {k: [] for k in ("receiver", "donor", "direct", "direct_own_run", "graft")}
    ids = []
    start = time.perf_counter()
    for batch in tqdm(batches, desc=description, disable=not progress):
        batch = batch.trimmed().to(device)
        if batch.donor_input_ids is not None:
            raise ValueError("direct effects compare two models on the same tokens: donor_input_ids must be None")
        rec_acts, rec_resid = record(receiver, batch.input_ids, batch.attention_mask, sites)
        don_acts, don_resid = record(donor, batch.input_ids, batch.attention_mask, sites)
        rec_metric = score(receiver, rec_resid[None], batch)[0]
        same, graft = [], []
        for (layer, c), site in zip(components, sites):
            # the donor's component (and its input norm) on the receiver's own input at this layer
            with grafting.swapped(receiver, donor, [c], [layer]):
                acts, hybrid_resid = record(receiver, batch.input_ids, batch.attention_mask, [site])
            same.append(acts[site] - rec_acts[site])
            graft.append(score(receiver, hybrid_resid[None], batch)[0])
        own = [don_acts[site] - rec_acts[site] for site in sites]
        for key, deltas in (("direct", same), ("direct_own_run", own)):
            # later components frozen: final residual = receiver's + the component's output difference
            patched = score(receiver, rec_resid[None] + torch.stack(deltas), batch)
            out[key].append((patched - rec_metric).T)
        out["graft"].append(torch.stack(graft).T)
        out["receiver"].append(rec_metric)
        out["donor"].append(score(donor, don_resid[None], batch)[0])
        ids += list(batch.problem_ids) or [None] * len(batch.score)
    arrays = {k: torch.cat(v).cpu().numpy() for k, v in out.items()}
    return DirectResult(components, problem_ids=ids, seconds=time.perf_counter() - start, **arrays)


# --- estimates with intervals -----------------------------------------------------------------------------
def mean_ci(values, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean over problems with a bootstrap interval; NaN without problems."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": float("nan"), "ci": None}
    return stats.bootstrap(values, np.mean, n_bootstrap, confidence, seed)


def distinguishable(estimate: dict) -> bool:
    """True when an interval exists and excludes 0."""
    ci = estimate.get("ci")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def normalised(patched, receiver, donor, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """(mean patched - mean receiver) / (mean donor - mean receiver) on the aggregate metric, paired bootstrap
    over problems (0 = the receiver unchanged, 1 = the donor's behaviour). NaN with a "note" when the
    denominator's own interval contains 0."""
    table = np.column_stack([np.asarray(x, dtype=float) for x in (patched, receiver, donor)])
    gap = mean_ci(table[:, 2] - table[:, 1], n_bootstrap, confidence, seed)
    if not distinguishable(gap):
        return {"value": float("nan"), "ci": None, "note": "donor - receiver gap not distinguishable from zero"}

    def ratio(rows):
        patched_mean, receiver_mean, donor_mean = rows.mean(axis=0)
        return (patched_mean - receiver_mean) / (donor_mean - receiver_mean) if donor_mean != receiver_mean else np.nan

    return stats.bootstrap(table, ratio, n_bootstrap, confidence, seed)


def patch_rows(result: SweepResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Per patch: total effect in nats (mean patched - mean receiver) and its normalised value."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return [{"site": p.site, "layers": list(p.layers), "positions": p.positions, "n_problems": len(result.receiver),
             "effect": mean_ci(result.patched[:, j] - result.receiver, **boot),
             "normalised": normalised(result.patched[:, j], result.receiver, result.donor, **boot)}
            for j, p in enumerate(result.patches)]


def direct_rows(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Per (layer, component): same-input and own-run direct effects and the one-component graft effect,
    in nats and normalised by the donor - receiver gap."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    rec, don = result.receiver, result.donor
    rows = []
    for j, (layer, c) in enumerate(result.components):
        row = {"layer": layer, "component": c, "n_problems": len(rec)}
        for key, values in (("direct", result.direct[:, j]), ("direct_own_run", result.direct_own_run[:, j]),
                            ("graft", result.graft[:, j] - rec)):
            row[key] = mean_ci(values, **boot)
            row[f"{key}_normalised"] = normalised(rec + values, rec, don, **boot)
        rows.append(row)
    return rows


def component_totals(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The per-variant measures: attention and MLP direct effects summed over layers, and the total effect
    (donor metric - receiver metric), each {value, ci} in nats, bootstrap over problems."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    out = {}
    for c in COMPONENT_SITES:
        cols = [j for j, (_, comp) in enumerate(result.components) if comp == c]
        out[f"{c}_direct_effect"] = mean_ci(result.direct[:, cols].sum(1), **boot)
    out["total_effect"] = mean_ci(result.donor - result.receiver, **boot)
    return out


def component_shares(result: DirectResult, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Attention and MLP direct effects summed over layers as shares of the donor - receiver gap (aggregate
    normalisation; NaN when the gap is not distinguishable from zero)."""
    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    out = {}
    for c in COMPONENT_SITES:
        cols = [j for j, (_, comp) in enumerate(result.components) if comp == c]
        out[f"{c}_direct_share"] = normalised(result.receiver + result.direct[:, cols].sum(1), result.receiver,
                                              result.donor, **boot)
    return out


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


def _token_texts(tokenizer, sequences: Iterable[Sequence[int]]) -> dict[int, str]:
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
    texts = _token_texts(tokenizer, sequences)
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


# --- notebook 08: the study's patching experiments -----------------------------------------------------
WITHIN_POSITIONS = ("corrupted", "target")  # 'all' would restore resid_pre trivially (only one token differs)
SECTIONS = ("seed", "model", "organism", "data", "sft", "grpo", "evaluation", "extract", "patching", "variants")


def fingerprint(cfg) -> str:
    """What metrics/patching.json depends on: the checkpoints, the token cache, evaluation and patching."""
    from rlvr_utils.activations import store as activations
    from rlvr_utils.treatments import registry

    refs = [artifacts.checkpoint_fingerprint(cfg.model_ref(name)) for name in ("sft", *registry.names(cfg))]
    return cfg.fingerprint(*SECTIONS) + "-" + stats_hash(refs)


def stats_hash(items) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:12]


def compare(receiver: nn.Module, donor: nn.Module, batches: list[PatchBatch], patches: Sequence[Patch], cfg,
            progress: bool = True, name: str = "donor") -> dict:
    """Total effects (activation patching) and direct effects of `donor` in `receiver`, JSON-ready."""
    pc = cfg.patching
    boot = dict(n_bootstrap=pc.n_bootstrap, confidence=cfg.evaluation.confidence, seed=cfg.seed)
    total = sweep(receiver, donor, batches, patches, pc.patches_per_forward, progress, f"patching {name}")
    direct = direct_effects(receiver, donor, batches, progress, f"direct effects {name}")
    return {"n_problems": len(direct.receiver), "metric": "mean log-probability of the answer tokens (nats)",
            "receiver_metric": mean_ci(direct.receiver, **boot), "donor_metric": mean_ci(direct.donor, **boot),
            **component_totals(direct, **boot), **component_shares(direct, **boot),
            "patches": patch_rows(total, **boot), "components": direct_rows(direct, **boot),
            "seconds": total.seconds + direct.seconds}


def cross_model(cfg, models: dict, tokenizer, cache, progress: bool = True) -> dict:
    """Every treatment into SFT (direct effects: the per-variant measures; total-effect patching for RLVR only),
    and SFT into RLVR (necessity), on the answer tokens."""
    pc = cfg.patching
    batches = answer_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                             cache.pad_token_id, pc.batch_size, pc.answer_marker, pc.n_problems)
    if not batches:
        raise ValueError(f"no token-cache sequence has a final answer after {pc.answer_marker!r}")
    patches = layer_patches(len(architecture.blocks(models["sft"])), pc.sites, pc.positions, all_layers=True)
    # total-effect sweeps (one forward pass per patch) only for the study pair; every treatment gets direct
    # effects (2 per layer), which is what the verdict reads: 9 treatments x 256 organism problems stay minutes
    out = {f"{name}_into_sft": {"donor": name, "receiver": "sft",
                                **compare(models["sft"], model, batches, patches if name == "rlvr" else [], cfg,
                                          progress, name)}
           for name, model in models.items() if name != "sft"}
    if "rlvr" in models:
        out["sft_into_rlvr"] = {"donor": "sft", "receiver": "rlvr",
                                **compare(models["rlvr"], models["sft"], batches, patches, cfg, progress, "sft into rlvr")}
    return out


def within_model(cfg, models: dict, tokenizer, cache, progress: bool = True) -> dict:
    """Clean/corrupted patching inside SFT and inside RLVR: where the corrupted number's information flows."""
    pc = cfg.patching
    batches = corrupted_batches(cache.sequences, cache.prompt_lengths, cache.problem_ids, tokenizer,
                                cache.pad_token_id, pc.batch_size, pc.corrupt_number, cfg.seed, pc.n_problems)
    if not batches:
        raise ValueError(f"no prompt has a number #{pc.corrupt_number} that its completion writes again")
    patches = layer_patches(len(architecture.blocks(models["sft"])), pc.sites, WITHIN_POSITIONS)
    boot = dict(n_bootstrap=pc.n_bootstrap, confidence=cfg.evaluation.confidence, seed=cfg.seed)
    out = {}
    for name in ("sft", "rlvr"):
        result = sweep(models[name], models[name], batches, patches, pc.patches_per_forward, progress,
                       f"clean/corrupted {name}")
        out[name] = {"n_problems": len(result.receiver), "metric": "logit(clean digit) - logit(corrupted digit)",
                     "corrupted": mean_ci(result.receiver, **boot), "clean": mean_ci(result.donor, **boot),
                     "patches": patch_rows(result, **boot), "seconds": result.seconds}
    return out


def variants_block(cross: dict) -> dict:
    """{treatment: {attn_direct_effect, mlp_direct_effect, total_effect}} for the verdict."""
    keys = ("attn_direct_effect", "mlp_direct_effect", "total_effect")
    return {report["donor"]: {k: _value_ci(report[k]) for k in keys}
            for name, report in cross.items() if report["receiver"] == "sft"}


def summary(results: dict) -> dict:
    """The keys 10_verdict reads: graft shares and direct-effect shares, each {value, ci, description}."""
    out = {}
    rows = {row["graft"]: row for row in results["grafting"]["rows"]}
    for key, graft_name, what in (("graft_attn_share", "attention", "attention (with its input norm)"),
                                  ("graft_mlp_share", "MLP", "MLPs (with their input norms)"),
                                  ("graft_attn_mlp_share", "attention + MLP", "attention and MLPs")):
        if graft_name in rows:
            out[key] = {**_value_ci(rows[graft_name]["share"]),
                        "description": f"share of the RLVR-SFT greedy accuracy gain recovered by grafting RLVR's "
                                       f"{what} of every layer into SFT (paired bootstrap over problems; NaN when "
                                       "the gain is not distinguishable from zero)"}
    for direction in ("rlvr_into_sft", "sft_into_rlvr"):
        report = results["cross_model"].get(direction)
        if report is None:
            continue
        donor, receiver = report["donor"].upper(), report["receiver"].upper()
        for c, short in (("attn", "attn_out"), ("mlp", "mlp_out")):
            out[f"patch_{short}_effect_{direction}"] = {
                **_value_ci(report[f"{c}_direct_share"]),
                "description": f"direct effect of {donor}'s {short} (same input, later components frozen), summed "
                               f"over layers, as a share of the {donor} - {receiver} gap in the answer tokens' mean "
                               f"log-probability ({report['n_problems']} problems; NaN when the gap is not "
                               "distinguishable from zero)"}
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


def available_treatments(cfg) -> list[str]:
    """Treatments (`variants.treatments`) whose checkpoint exists; RLVR is always included (required)."""
    from rlvr_utils.treatments import registry

    return [name for name in registry.names(cfg)
            if name == registry.STUDY or (cfg.model_dir(name) / "config.json").exists()]


def run(cfg, force: bool = False, progress: bool = True, evaluate: Callable | None = None) -> str:
    """Notebook 08's analysis: cross-model patching and direct effects of every treatment into SFT (and SFT
    into RLVR), clean/corrupted patching, grafting; writes metrics/patching.json unless it is up to date.
    `evaluate` (model -> correct per problem) replaces greedy evaluation of the grafts, for tests."""
    from rlvr_utils.activations import store as activations
    from rlvr_utils.training import data
    from rlvr_utils.models import loading as loader
    from rlvr_utils.treatments import registry

    path = cfg.path("metrics", "patching.json")
    inputs = [*(cfg.model_ref(n) for n in ("sft", *registry.names(cfg))), cfg.path("data", "eval.jsonl"),
              cfg.path("tokens")]  # content-checked by the stamp
    if not force and artifacts.is_current(path, fingerprint(cfg), inputs):
        return f"{path} is up to date: skipped"
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = available_treatments(cfg)
    models, tokenizer = {}, None
    for name in ("sft", *names):
        models[name], tokenizer = loader.load(cfg.model_ref(name), cfg, device)
    missing = sorted(set(registry.names(cfg)) - set(names))
    if missing:
        print(f"no checkpoint for treatments {missing}: left out")
    problems = data.read_jsonl(cfg.path("data", "eval.jsonl"))
    cache = activations.TokenCache.load(cfg.path("tokens"))
    answered = sum(answer_span(s, p, tokenizer, cfg.patching.answer_marker) is not None
                   for s, p in zip(cache.sequences, cache.prompt_lengths))
    print(f"token cache ({cache.source} completions): {answered} of {len(cache)} sequences have a final answer")
    if answered == 0:  # e.g. an untrained model wrote the completions: patch on the gold solutions instead
        cache = activations.build_token_cache(tokenizer, problems[:cfg.patching.n_problems], None, "gold")
        print("no final answer to patch on: using the gold solutions of the held-out problems instead")
    results = {"settings": cfg.patching.model_dump(mode="json"), "token_source": cache.source}

    def within():
        try:
            return within_model(cfg, models, tokenizer, cache, progress)
        except ValueError as error:  # e.g. a tokenizer that merges digits: say why, keep the rest
            print(f"clean/corrupted patching skipped: {error}")
            return {"skipped": str(error)}

    steps = [("cross_model", lambda: cross_model(cfg, models, tokenizer, cache, progress))]
    if cfg.patching.within_model:
        steps.append(("within_model", within))
    steps.append(("grafting", lambda: grafting.run(cfg, models["sft"], models["rlvr"], tokenizer, problems, evaluate)))
    for name, step in steps:
        began = time.perf_counter()
        print(f"{name.replace('_', ' ')} ...", flush=True)
        results[name] = step()
        print(f"{name.replace('_', ' ')} done in {time.perf_counter() - began:.1f} s", flush=True)
    results["variants"] = variants_block(results["cross_model"])
    results["summary"] = summary(results)
    results["seconds"] = time.perf_counter() - start
    artifacts.write_json(path, _finite(results))
    artifacts.stamp(path, fingerprint(cfg), inputs, seconds=results["seconds"])
    return f"wrote {path} in {results['seconds']:.1f} s"


# --- figures and reading ---------------------------------------------------------------------------------
SITE_LABELS = {"hook_resid_pre": "resid_pre", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out",
               "hook_resid_post": "resid_post"}
COMPONENT_COLORS = {"attn": "#1f77b4", "mlp": "#ff7f0e"}


def layer_frame(report: dict):
    """Per layer and component (pandas, long form): total effect (activation patching at every position up to
    the answer, later components recompute), direct effect (same input, later components frozen), direct
    effect with own-run donor outputs; nats with intervals."""
    import pandas as pd

    records = []
    for p in report["patches"]:
        comp = {"hook_attn_out": "attn", "hook_mlp_out": "mlp"}.get(p["site"])
        if comp and len(p["layers"]) == 1 and p["positions"] == "all":
            records.append({"layer": p["layers"][0], "component": comp, "effect": "total", **_flat(p["effect"])})
    for r in report["components"]:
        records.append({"layer": r["layer"], "component": r["component"], "effect": "direct", **_flat(r["direct"])})
        records.append({"layer": r["layer"], "component": r["component"], "effect": "direct (own run)",
                        **_flat(r["direct_own_run"])})
    return pd.DataFrame(records)


def _flat(estimate: dict) -> dict:
    ci = estimate.get("ci") or [np.nan, np.nan]
    value = estimate.get("value")
    return {"value": np.nan if value is None else value, "lo": np.nan if ci[0] is None else ci[0],
            "hi": np.nan if ci[1] is None else ci[1]}


def plot_layers(report: dict, title: str, effects=("total", "direct")):
    """One panel per effect kind: per layer, the attention and MLP effect (nats, 95% interval) on the answer
    tokens' mean log-probability; the donor - receiver gap as a dashed line for scale."""
    import matplotlib.pyplot as plt

    frame = layer_frame(report)
    fig, axes = plt.subplots(1, len(effects), figsize=(4.6 * len(effects), 3.6), squeeze=False, sharey=True)
    gap = report["total_effect"]["value"]
    for ax, kind in zip(axes[0], effects):
        rows = frame[frame.effect == kind]
        for offset, (comp, part) in zip((-0.18, 0.18), rows.groupby("component", sort=False)):
            ax.bar(part.layer + offset, part.value, width=0.36, color=COMPONENT_COLORS[comp], label=comp)
            ax.errorbar(part.layer + offset, part.value, yerr=np.abs(np.vstack([part.value - part.lo, part.hi - part.value])),
                        fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.axhline(0, color="black", lw=0.8)
        if gap is not None:
            ax.axhline(gap, color="#d62728", ls="--", lw=1, label="donor − receiver")
        ax.set(title=f"{kind} effect", xlabel="layer", ylabel="Δ mean log p(answer tokens) [nats]")
        ax.set_xticks(sorted(frame.layer.unique()))
        ax.legend(fontsize="small")
    fig.suptitle(f"{title} ({report['n_problems']} problems)")
    fig.tight_layout()
    return fig


def variants_frame(results: dict):
    """One row per treatment: attention and MLP direct effects summed over layers and the total effect."""
    import pandas as pd

    rows = []
    for name, measures in results["variants"].items():
        n = results["cross_model"][f"{name}_into_sft"]["n_problems"]
        for key, entry in measures.items():
            rows.append({"treatment": name, "measure": key, "n_problems": n, **_flat(entry)})
    return pd.DataFrame(rows)


def plot_variants(results: dict):
    """Per treatment (donor into SFT): attention and MLP direct effects summed over layers, and the total
    effect, with 95% intervals."""
    import matplotlib.pyplot as plt

    frame = variants_frame(results)
    names = list(dict.fromkeys(frame.treatment))
    measures = {"attn_direct_effect": ("attention direct", COMPONENT_COLORS["attn"]),
                "mlp_direct_effect": ("MLP direct", COMPONENT_COLORS["mlp"]), "total_effect": ("total", "#7f7f7f")}
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) + 1.8))
    for offset, (key, (label, color)) in zip((-0.25, 0.0, 0.25), measures.items()):
        part = frame[frame.measure == key].set_index("treatment").loc[names]
        y = np.arange(len(names)) + offset
        ax.barh(y, part.value, height=0.24, color=color, label=label)
        ax.errorbar(part.value, y, xerr=np.abs(np.vstack([part.value - part.lo, part.hi - part.value])), fmt="none",
                    ecolor="black", capsize=2, lw=0.8)
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Δ mean log p(answer tokens) in SFT [nats] (95% bootstrap CI)")
    ax.set_title("Each treatment's components patched into SFT: direct effects summed over layers")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def plot_heatmaps(reports: dict[str, dict], titles: dict[str, str], suptitle: str = ""):
    """Clean/corrupted patching: one heatmap (layer x site@positions, normalised effect) per model."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    def table(report):
        frame = pd.DataFrame([{"layer": str(p["layers"][0]), "column": f"{SITE_LABELS[p['site']]}@{p['positions']}",
                               "effect": _flat(p["normalised"])["value"]}
                              for p in report["patches"] if len(p["layers"]) == 1])
        out = frame.pivot(index="layer", columns="column", values="effect")
        return out.loc[sorted(out.index, key=int), list(dict.fromkeys(frame["column"]))]

    tables = {name: table(r) for name, r in reports.items()}
    width = max(3.0, 0.75 * max(t.shape[1] for t in tables.values())) + 1.5
    height = 0.45 * max(t.shape[0] for t in tables.values()) + 1.8
    fig, axes = plt.subplots(1, len(reports), figsize=(width * len(reports), height), squeeze=False)
    for ax, (name, report) in zip(axes[0], reports.items()):
        sns.heatmap(tables[name].astype(float), ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", center=0, vmin=-1,
                    vmax=1, annot_kws={"fontsize": 8}, cbar_kws={"label": "normalised effect"})
        ax.set_title(f"{titles.get(name, name)} ({report['n_problems']} problems)")
        ax.set_xlabel("patched site @ positions")
        ax.set_ylabel("layer")
        ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=35, ha="right")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _fmt(entry: dict | None, digits: int = 2) -> str:
    if not entry or entry.get("value") is None:
        return (entry or {}).get("note", "n/a")
    ci = "" if not entry.get("ci") else f" [{entry['ci'][0]:.{digits}f}, {entry['ci'][1]:.{digits}f}]"
    return f"**{entry['value']:+.{digits}f}**{ci}"


def reading(results: dict) -> str:
    """A short reading of this run's numbers (markdown) for the notebook's closing summary."""
    graft, s = results["grafting"], results["summary"]
    gain = graft["gain"]
    lo, hi = gain["ci"] if gain.get("ci") else (float("nan"), float("nan"))
    parts = [
        f"On {graft['n_problems']} held-out problems RLVR answers {graft['donor']['value']:.1%} correctly and SFT "
        f"{graft['receiver']['value']:.1%}: a gain of {100 * gain['value']:+.1f} points (95% CI [{100 * lo:+.1f}, "
        f"{100 * hi:+.1f}]). Grafting RLVR's attention into SFT recovers a share {_fmt(s.get('graft_attn_share'))} of "
        f"that gain, its MLPs {_fmt(s.get('graft_mlp_share'))}, both {_fmt(s.get('graft_attn_mlp_share'))}.",
        "Per treatment, the change in SFT's mean log-probability of the answer tokens (nats, 95% CI):\n\n" + "\n".join(
            f"- **{name}** into SFT ({results['cross_model'][f'{name}_into_sft']['n_problems']} problems): total "
            f"effect {_fmt(m['total_effect'])}; direct effects summed over layers: attention "
            f"{_fmt(m['attn_direct_effect'])}, MLP {_fmt(m['mlp_direct_effect'])}."
            for name, m in results["variants"].items())]
    within = results.get("within_model")
    if within and "skipped" not in within:
        parts.append(_within_reading(within))
    return "\n\n".join(parts)


def _within_reading(within: dict) -> str:
    """Which component at the copy position carries the corrupted number in SFT, and the same cell in RLVR."""
    candidates = [(i, p) for i, p in enumerate(within["sft"]["patches"])
                  if p["site"] != "hook_resid_pre" and p["positions"] == "target" and p["normalised"]["value"] is not None]
    if not candidates:
        return "The clean and corrupted runs do not differ distinguishably: the information flow cannot be read."
    i, best = max(candidates, key=lambda c: c[1]["normalised"]["value"])
    rlvr = within["rlvr"]["patches"][i]["normalised"]["value"]
    text = (f"Inside each model ({within['sft']['n_problems']} problems), the corrupted number reaches the position "
            f"where the working copies it mainly through layer {best['layers'][0]}'s {SITE_LABELS[best['site']]}: "
            f"restoring it brings back {best['normalised']['value']:.2f} of the clean preference in SFT and ")
    return text + ("an unmeasured share in RLVR." if rlvr is None else f"{rlvr:.2f} in RLVR.")
