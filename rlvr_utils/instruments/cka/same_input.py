"""Same-input comparison of components: did the function of a layer's attention or MLP change?

Comparing two models' stored component outputs (end-to-end CKA) mixes two things: a change in the
component and a change in what flows into it from upstream. An RLVR update of attention weights only
moves every later MLP's *input*, so end-to-end CKA of MLP outputs drops although no MLP weight changed.

Here both versions of a component get identical inputs: the reference model's (SFT's) input to the
attention or MLP of layer l is run through the reference's and the treatment's version (its layer norm
included), and the two outputs are compared at the same positions. One forward pass of the treatment
does it for every layer: forward pre-hooks replace each decoder layer's input by the reference's
resid_pre[l] and the MLP's input (in pre-norm models, the input of the norm in front of it) by the
reference's resid_mid[l] = resid_pre[l] + attn_out[l]. Measures per layer and component, at the positions of the
activation store's selection:
  - change = 1 - debiased linear CKA (geometry up to rotation and scale);
  - relative change = ||out_T - out_S||_F / ||out_S||_F (also sees a rescaling, which CKA ignores).
Intervals: bootstrap over problems, the same resamples for every layer, so means over layers keep their
joint uncertainty. Families: every one whose blocks have an MLP input apart from the attention's (`Block.mlp_in` of
rlvr_utils.models.families: in post-norm OLMo-2 the output norms belong to the component); the component outputs
are its `attn_out` and `mlp_out` sites.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch

from rlvr_utils.activations.tokens import TokenCache, iter_batches, select_positions
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.core.stats import interval
from rlvr_utils.instruments.base import Instrument, Measures
from rlvr_utils.instruments.cka.maths import COMPONENT_SITES, bootstrap_cka, linear_cka, problem_counts
from rlvr_utils.models.families import Block, blocks, family_of, site_name, supported
from rlvr_utils.models.hooks import active, on_input, on_output
from rlvr_utils.models.loading import load
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import REFERENCE

PARAMS = ("cka", "extract")

MEASURES = {
    "attn_change": "1 - debiased linear CKA of the two attention versions' outputs on the reference's input, "
                   "mean over layers",
    "mlp_change": "1 - debiased linear CKA of the two MLP versions' outputs on the reference's input, mean over layers",
    "attn_relative_change": "||attn_T - attn_S||_F / ||attn_S||_F on the reference's input, mean over layers",
    "mlp_relative_change": "||mlp_T - mlp_S||_F / ||mlp_S||_F on the reference's input, mean over layers",
}


# --- one batch: both versions of every component on the reference's inputs ------------------------------
def checked_blocks(model) -> list[Block]:
    """The model's blocks, after checking that its family feeds the MLP an input of its own (`mlp_in`): that
    input is what the treatment's MLP is given."""
    if family_of(model).mlp_in is None:
        have = [t for t in supported() if family_of(t).mlp_in is not None]
        raise ValueError(f"same-input comparison needs each block's MLP input apart from its attention input; "
                         f"model_type {model.config.model_type!r} has none (attention and MLP read the residual "
                         f"stream in parallel, and would need their own input hooks). Families that have one: {have}")
    return blocks(model)


@contextlib.contextmanager
def _hooks(model, layers, inputs: dict, outputs: dict, keep: Callable, replace: bool) -> Iterator[None]:
    """Record (replace=False) or overwrite (replace=True) each layer's resid_pre and resid_mid in `inputs`,
    and store keep(output) of every attention and MLP in `outputs` under its TransformerLens site name."""
    parts = checked_blocks(model)

    def swap(key, what):
        def fn(current):
            if not replace:
                inputs[key] = current.detach()
                return None
            return _checked(inputs[key], current, what)
        return fn

    def output(name):
        def fn(out):
            outputs[name] = keep(out.detach())
        return fn

    handles = []
    with active(handles):
        for l in layers:
            part = parts[l]
            handles += [on_input(part.block, swap(("resid_pre", l), f"layer {l} input")),
                        on_input(part.mlp_in, swap(("resid_mid", l), f"layer {l} MLP input")),
                        on_output(part.attn_out, output(site_name(l, COMPONENT_SITES["attn"]))),
                        on_output(part.mlp_out, output(site_name(l, COMPONENT_SITES["mlp"])))]
        yield


def _checked(recorded: torch.Tensor, current: torch.Tensor, what: str) -> torch.Tensor:
    if recorded.shape != current.shape:
        raise ValueError(f"{what}: the reference's recorded input has shape {tuple(recorded.shape)} but the treatment "
                         f"computes {tuple(current.shape)}: the two models must share one architecture")
    return recorded.to(device=current.device, dtype=current.dtype)


def same_input_outputs(reference, treatment, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       layers: list[int] | None = None,
                       transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """{site name: (reference output, treatment output)} of every layer's attention and MLP, both run on the
    reference's input to that component. Outputs are [B, T, d], or `transform` of them (e.g. a position
    selection)."""
    ref_layers, treat_layers = checked_blocks(reference), checked_blocks(treatment)
    if len(ref_layers) != len(treat_layers):
        raise ValueError(f"reference has {len(ref_layers)} layers, treatment {len(treat_layers)}: not one architecture")
    layers = list(range(len(ref_layers))) if layers is None else list(layers)
    bad = [l for l in layers if not 0 <= l < len(ref_layers)]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {len(ref_layers)} layers")
    keep = transform or (lambda t: t)
    inputs, out_ref, out_treat = {}, {}, {}
    with torch.inference_mode():
        with _hooks(reference, layers, inputs, out_ref, keep, replace=False):
            # the decoder without its unembedding: the logits are not needed
            reference.base_model(input_ids=input_ids.to(reference.device), attention_mask=_to(attention_mask, reference))
        with _hooks(treatment, layers, inputs, out_treat, keep, replace=True):
            treatment.base_model(input_ids=input_ids.to(treatment.device), attention_mask=_to(attention_mask, treatment))
    return {name: (out_ref[name], out_treat[name]) for name in out_ref}


def _to(mask, model):
    return None if mask is None else mask.to(model.device)


# --- over a token cache ------------------------------------------------------------------------------------
def collect(reference, treatment, cache, selection: str = "completion", batch_size: int = 32,
            layers: list[int] | None = None) -> tuple[dict, np.ndarray]:
    """({site name: (X reference [n, d], Y treatment [n, d])}, cache row of each of the n rows), at the
    positions of `selection` in the activation store's order."""
    wanted: dict[int, list[int]] = {}
    for row, pos in select_positions(cache, selection):
        wanted.setdefault(row, []).append(pos)
    parts: dict[str, list] = {}
    rows = []
    for batch_rows, input_ids, mask in iter_batches(cache, batch_size):
        pairs = [(i, p) for i, r in enumerate(batch_rows) for p in wanted.get(r, [])]
        if not pairs:
            continue
        b_idx = torch.tensor([b for b, _ in pairs], dtype=torch.long)
        p_idx = torch.tensor([p for _, p in pairs], dtype=torch.long)
        outs = same_input_outputs(reference, treatment, input_ids, mask, layers,
                                  transform=lambda t: t[b_idx.to(t.device), p_idx.to(t.device)].float().cpu())
        for name, (x, y) in outs.items():
            parts.setdefault(name, []).append((x.numpy(), y.numpy()))
        rows.extend(batch_rows[b] for b, _ in pairs)
    if not rows:
        raise ValueError(f"the token cache has no {selection!r} positions (every completion empty?)")
    return ({name: (np.concatenate([x for x, _ in v]), np.concatenate([y for _, y in v])) for name, v in parts.items()},
            np.asarray(rows))


# --- statistics ---------------------------------------------------------------------------------------------
def relative_change(X, Y) -> float:
    """||Y - X||_F / ||X||_F (inf when X is all zeros and Y is not, 0 when both are)."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    num, den = float(((Y - X) ** 2).sum()), float((X ** 2).sum())
    return _ratio_root(num, den)


def _ratio_root(num, den):
    """sqrt(num / den) elementwise; inf where only den is 0, 0 where both are."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), np.where(num > 0, np.inf, 0.0))
    return float(out) if out.ndim == 0 else out


def bootstrap_relative_change(X, Y, groups, n_bootstrap: int = 200, seed: int = 0) -> np.ndarray:
    """Relative change on `n_bootstrap` resamples of problems, [n_bootstrap]; with the same groups, size and
    seed the resamples are those of `maths.bootstrap_cka`."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    counts, index = problem_counts(groups, n_bootstrap, seed)
    P = counts.shape[1]
    diff = np.bincount(index, weights=((Y - X) ** 2).sum(1), minlength=P)
    size = np.bincount(index, weights=(X ** 2).sum(1), minlength=P)
    return _ratio_root(counts @ diff, counts @ size)


def measure(X, Y, groups, debiased: bool = True, n_bootstrap: int = 200, seed: int = 0, device="cpu") -> dict:
    """CKA and relative change of two outputs at the same rows, each with its bootstrap replicates; CKA's
    products run on `device` (the models')."""
    if len(groups) != len(X):
        raise ValueError(f"groups must give one problem per row: {len(groups)} groups for {len(X)} rows")
    Xd, Yd = (X, Y) if str(device) == "cpu" else (torch.as_tensor(X).to(device), torch.as_tensor(Y).to(device))
    return {"cka": linear_cka(Xd, Yd, debiased), "cka_samples": bootstrap_cka(Xd, Yd, groups, n_bootstrap, debiased, seed),
            "relative_change": relative_change(X, Y),
            "relative_change_samples": bootstrap_relative_change(X, Y, groups, n_bootstrap, seed)}


def compare(reference, treatment, cache, selection: str = "completion", debiased: bool = True,
            n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0, batch_size: int = 32,
            layers: list[int] | None = None, max_bytes: int = 2 << 30) -> dict:
    """Same-input comparison of one treatment with the reference: {"rows": per layer and component,
    "summary": {attn_change, mlp_change, attn_relative_change, mlp_relative_change: Estimate}} (bootstrap
    intervals over problems).
    Layers are collected in groups whose outputs fit in `max_bytes` (one forward pass per group)."""
    layers = list(range(len(checked_blocks(reference)))) if layers is None else list(layers)
    per_layer = 16 * len(select_positions(cache, selection)) * reference.config.hidden_size  # 2 sites x 2 models, fp32
    step = max(1, max_bytes // max(per_layer, 1))
    rows, samples = [], {}
    for first in range(0, len(layers), step):
        outputs, groups = collect(reference, treatment, cache, selection, batch_size, layers[first:first + step])
        for name, (X, Y) in outputs.items():
            layer, component = int(name.split(".")[1]), _component(name)
            m = measure(X, Y, groups, debiased, n_bootstrap, seed, reference.device)
            samples[(component, layer)] = m
            rows.append({"layer": layer, "component": component, "site": name, "n": int(len(X)),
                         "cka": m["cka"], "cka_ci": list(interval(m["cka_samples"], confidence)),
                         "change": 1.0 - m["cka"], "change_ci": list(interval(1.0 - m["cka_samples"], confidence)),
                         "relative_change": m["relative_change"],
                         "relative_change_ci": list(interval(m["relative_change_samples"], confidence))})
    n_problems = int(len(np.unique(groups)))
    summary = {}
    for component in COMPONENT_SITES:
        mine = [m for (c, _), m in sorted(samples.items()) if c == component]
        change = np.mean([1.0 - m["cka_samples"] for m in mine], axis=0)
        rel = np.mean([m["relative_change_samples"] for m in mine], axis=0)
        summary[f"{component}_change"] = Estimate(np.mean([1.0 - m["cka"] for m in mine]),
                                                  interval(change, confidence), "bootstrap", n_problems)
        summary[f"{component}_relative_change"] = Estimate(np.mean([m["relative_change"] for m in mine]),
                                                           interval(rel, confidence), "bootstrap", n_problems)
    return {"rows": rows, "summary": summary, "n": int(len(groups)), "n_problems": n_problems}


def _component(name: str) -> str:
    site = name.split(".")[2]
    return next(c for c, s in COMPONENT_SITES.items() if s == site)


# --- the instrument -------------------------------------------------------------------------------------------
class SameInput(Instrument):
    """metrics/same_input.json: every treatment whose checkpoint exists against the reference, on the run's token
    cache (runs/<name>/tokens/)."""

    name = "same_input"
    reads = ("tokens",)

    def prepare(self, cfg, treatments: list[str]) -> dict:
        tokens = cfg.path("tokens")
        if not (tokens / "tokens.json").exists():
            raise FileNotFoundError(f"no token cache at {tokens}: run 04_extract first")
        if not registry.has_checkpoint(cfg.model_ref(REFERENCE)):
            raise FileNotFoundError(f"no reference checkpoint at {cfg.model_ref(REFERENCE)}: train SFT first")
        device = run_device(cfg)
        reference, _ = load(cfg.model_ref(REFERENCE), cfg, device)
        return {"cache": TokenCache.load(tokens), "reference": reference, "device": device, "rows": [], "n": {}}

    def measure(self, cfg, treatment: str, shared: dict) -> Measures:
        c = cfg.cka
        model, _ = load(cfg.model_ref(treatment), cfg, shared["device"])
        out = compare(shared["reference"], model, shared["cache"], c.position, c.debiased, c.n_bootstrap,
                      c.confidence, cfg.seed, cfg.extract.batch_size, cfg.extract.layers)
        shared["rows"] += [{"variant": treatment, **row} for row in out["rows"]]
        shared["n"] = {"n": out["n"], "n_problems": out["n_problems"]}  # rows and problems: one cache, one count
        return out["summary"]

    def report(self, cfg, shared: dict, variants: dict[str, Measures]) -> dict:
        c = cfg.cka
        return {"reference": REFERENCE, "selection": c.position, "debiased": c.debiased, "confidence": c.confidence,
                "n_bootstrap": c.n_bootstrap, "measures": MEASURES, "rows": shared["rows"], **shared["n"]}
