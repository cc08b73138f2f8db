"""Activation patching and direct effects: which component of which layer carries a donor model's behaviour
into a receiver model.

Two effects per layer l and component c (attention or MLP: the sublayer's own weights, `families`):
- total effect (activation patching): the receiver is run with c's output at layer l replaced, at every
  position up to the answer, by the donor's; later components recompute on the changed stream. A change
  upstream travels through later components, so a changed first-layer MLP also reads as a large total effect
  of later attention layers.
- direct effect (path patching, Wang et al. 2022; Goldowsky-Dill et al. 2023): the same replacement with
  every later component frozen at its receiver value. The final residual is then the receiver's plus the
  output difference, so the effect is computed without a forward pass: add the difference to the receiver's
  final residual, apply the receiver's final norm and unembedding, score.
Which donor output? Same input (the per-variant measures) runs the donor's component on the receiver's own
input at that layer (its weights swapped into the receiver for one forward pass, `swap.swapped`); own run
takes the output from the donor's own forward pass, whose input already differs when anything upstream
changed. Planted tests (tests/test_patching.py) decide: with only the first layer's MLP changed, own-run
direct effects also credit every later attention layer (their inputs moved); same-input direct effects are
exactly 0 for every unchanged component and credit the MLP. Own-run is reported beside it, labelled.

Sites use TransformerLens names (`blocks.{l}.hook_attn_out` ...) and the one hook layer (models.hooks).
Several patches run in one forward pass: the batch is repeated once per patch and each copy's rows are
patched differently.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rlvr_utils.instruments.patching import swap
from rlvr_utils.instruments.patching.batches import PatchBatch
from rlvr_utils.models import families, hooks
from rlvr_utils.models.families import SITES

COMPONENT_SITES = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}


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


# --- running a model with hooks ------------------------------------------------------------------------
def final_residual(model: nn.Module, input_ids, attention_mask, handles=()) -> torch.Tensor:
    """(batch, seq, d) residual stream entering the final norm, with extra hook `handles` active."""
    kept = {}

    def keep(t):
        kept["resid"] = t.detach()
    handles = list(handles) + [hooks.on_input(families.final_norm(model), keep)]
    with hooks.active(handles):
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    return kept["resid"]


def readout(model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
    """Logits of final residuals (any leading shape): the model's final norm, then its unembedding."""
    return families.unembedding(model)(families.final_norm(model)(resid)).float()


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

    handles = [hooks.hook(model, layer, site, keep((layer, site))) for layer, site in set(sites)]
    return acts, final_residual(model, input_ids, attention_mask, handles)


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
                raise ValueError(f"no donor activation recorded for {families.site_name(*key)}")
            writes.setdefault(key, torch.zeros(k * n_rows, seq, dtype=torch.bool, device=mask.device))
            writes[key][j * n_rows:(j + 1) * n_rows] |= mask

    def replace(key):
        mask, donor = writes[key], donor_acts[key]

        def fn(t):
            return torch.where(mask[..., None], donor.to(t.dtype).repeat(k, 1, 1), t)
        return fn

    handles = [hooks.hook(model, layer, site, replace((layer, site))) for layer, site in writes]
    resid = final_residual(model, batch.input_ids.repeat(k, 1), batch.attention_mask.repeat(k, 1), handles)
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
            receiver_resid = final_residual(receiver, batch.input_ids, batch.attention_mask)
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
    n_layers = len(families.blocks(receiver))
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
            # the donor's component (its own weights; the receiver's norms) on the receiver's own input here
            with swap.swapped(receiver, donor, [c], [layer]):
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
