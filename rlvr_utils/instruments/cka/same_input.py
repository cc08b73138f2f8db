"""Same-input comparison of components: did the function of a layer's attention or MLP change?

Comparing two models' stored component outputs (end-to-end CKA) mixes two things: a change in the
component and a change in what flows into it from upstream. An RLVR update of attention weights only
moves every later MLP's *input*, so end-to-end CKA of MLP outputs drops although no MLP weight changed.

Here both versions of a component get identical inputs: the reference model's (SFT's) input to the
attention or MLP of layer l is run through the reference's and the treatment's version (its layer norm
included), and the two outputs are compared at the same positions. One forward pass of the treatment
does it for every layer: forward pre-hooks replace each decoder layer's input by the reference's
resid_pre[l] and the MLP's input (in pre-norm models, the input of the norm in front of it) by the
reference's resid_mid[l] = resid_pre[l] + attn_out[l]. Measures per layer and component, at the positions of the activation store's selection:
  - change = 1 - debiased linear CKA (geometry up to rotation and scale);
  - relative change = ||out_T - out_S||_F / ||out_S||_F (also sees a rescaling, which CKA ignores).
Intervals: bootstrap over problems, the same resamples for every layer, so means over layers keep their
joint uncertainty. Families: Llama-style pre-norm decoders (llama, qwen2, qwen3, mistral), OLMo-2 (post-norm: the
output norms belong to the component) and GPT-2; the component outputs are the sites of `architecture`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from rlvr_utils.models.families import blocks, site_name

log = logging.getLogger(__name__)

# the module whose input is the MLP's residual-stream input (resid_mid): its norm in pre-norm families, the MLP
# itself in OLMo-2, which normalises after each sublayer (its output norms belong to the component's version)
_MLP_INPUT = {"llama": "post_attention_layernorm", "qwen2": "post_attention_layernorm",
              "qwen3": "post_attention_layernorm", "mistral": "post_attention_layernorm", "olmo2": "mlp", "gpt2": "ln_2"}
FAMILIES = tuple(_MLP_INPUT)
COMPONENTS = {"attn": "hook_attn_out", "mlp": "hook_mlp_out"}
MEASURES = {
    "attn_change": "1 - debiased linear CKA of the two attention versions' outputs on the reference's input, "
                   "mean over layers",
    "mlp_change": "1 - debiased linear CKA of the two MLP versions' outputs on the reference's input, mean over layers",
    "attn_relative_change": "||attn_T - attn_S||_F / ||attn_S||_F on the reference's input, mean over layers",
    "mlp_relative_change": "||mlp_T - mlp_S||_F / ||mlp_S||_F on the reference's input, mean over layers",
}


# --- one batch: both versions of every component on the reference's inputs ------------------------------
def _parts(model) -> list[tuple]:
    """Per layer: (decoder layer, module whose input is resid_mid, attention-output module, MLP-output module)."""
    family = model.config.model_type
    if family not in _MLP_INPUT:
        raise ValueError(f"same-input comparison supports {FAMILIES}; model_type {family!r} is not one of them "
                         "(GPT-NeoX's parallel attention and MLP would need their own input hooks)")
    return [(b.block, getattr(b.block, _MLP_INPUT[family]), b.attn_out, b.mlp_out) for b in blocks(model)]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _hooks(model, layers, inputs: dict, outputs: dict, keep: Callable, replace: bool) -> Iterator[None]:
    """Record (replace=False) or overwrite (replace=True) each layer's resid_pre and resid_mid in `inputs`,
    and store keep(output) of every attention and MLP in `outputs` under its TransformerLens site name."""
    handles = []
    parts = _parts(model)

    def swap(key, what):
        def hook(module, args, kwargs):
            current = args[0] if args else kwargs["hidden_states"]
            if not replace:
                inputs[key] = current.detach()
                return None
            new = _checked(inputs[key], current, what)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        return hook

    def layer_input(layer):
        return swap(("resid_pre", layer), f"layer {layer} input")

    def mlp_input_hook(layer):
        return swap(("resid_mid", layer), f"layer {layer} MLP input")

    def output(name):
        def hook(module, args, out):
            outputs[name] = keep(_first(out).detach())
        return hook

    try:
        for l in layers:
            layer, mlp_input, attn_out, mlp_out = parts[l]
            handles.append(layer.register_forward_pre_hook(layer_input(l), with_kwargs=True))
            handles.append(mlp_input.register_forward_pre_hook(mlp_input_hook(l), with_kwargs=True))
            handles.append(attn_out.register_forward_hook(output(site_name(l, COMPONENTS["attn"]))))
            handles.append(mlp_out.register_forward_hook(output(site_name(l, COMPONENTS["mlp"]))))
        yield
    finally:
        for h in handles:
            h.remove()


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
    ref_layers, treat_layers = _parts(reference), _parts(treatment)
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
    from rlvr_utils.activations.store import iter_batches, select_positions

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
    seed the resamples are those of `cka.bootstrap_cka`."""
    from rlvr_utils.instruments.cka.cka import problem_counts

    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    counts, index = problem_counts(groups, n_bootstrap, seed)
    P = counts.shape[1]
    diff = np.bincount(index, weights=((Y - X) ** 2).sum(1), minlength=P)
    size = np.bincount(index, weights=(X ** 2).sum(1), minlength=P)
    return _ratio_root(counts @ diff, counts @ size)


def measure(X, Y, groups, debiased: bool = True, n_bootstrap: int = 200, seed: int = 0) -> dict:
    """CKA and relative change of two outputs at the same rows, each with its bootstrap replicates."""
    from rlvr_utils.instruments.cka.cka import bootstrap_cka, linear_cka

    if len(groups) != len(X):
        raise ValueError(f"groups must give one problem per row: {len(groups)} groups for {len(X)} rows")
    return {"cka": linear_cka(X, Y, debiased), "cka_samples": bootstrap_cka(X, Y, groups, n_bootstrap, debiased, seed),
            "relative_change": relative_change(X, Y),
            "relative_change_samples": bootstrap_relative_change(X, Y, groups, n_bootstrap, seed)}


def compare(reference, treatment, cache, selection: str = "completion", debiased: bool = True,
            n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0, batch_size: int = 32,
            layers: list[int] | None = None, max_bytes: int = 2 << 30) -> dict:
    """Same-input comparison of one treatment with the reference: {"rows": per layer and component,
    "summary": {attn_change, mlp_change, attn_relative_change, mlp_relative_change: {value, ci}}}.
    Layers are collected in groups whose outputs fit in `max_bytes` (one forward pass per group)."""
    from rlvr_utils.activations.store import select_positions
    from rlvr_utils.core.stats import interval

    layers = list(range(len(_parts(reference)))) if layers is None else list(layers)
    per_layer = 16 * len(select_positions(cache, selection)) * reference.config.hidden_size  # 2 sites x 2 models, fp32
    step = max(1, max_bytes // max(per_layer, 1))
    rows, samples = [], {}
    for first in range(0, len(layers), step):
        outputs, groups = collect(reference, treatment, cache, selection, batch_size, layers[first:first + step])
        for name, (X, Y) in outputs.items():
            layer, component = int(name.split(".")[1]), _component(name)
            m = measure(X, Y, groups, debiased, n_bootstrap, seed)
            samples[(component, layer)] = m
            rows.append({"layer": layer, "component": component, "site": name, "n": int(len(X)),
                         "cka": m["cka"], "cka_ci": list(interval(m["cka_samples"], confidence)),
                         "change": 1.0 - m["cka"], "change_ci": list(interval(1.0 - m["cka_samples"], confidence)),
                         "relative_change": m["relative_change"],
                         "relative_change_ci": list(interval(m["relative_change_samples"], confidence))})
    summary = {}
    for component in COMPONENTS:
        mine = [m for (c, _), m in sorted(samples.items()) if c == component]
        change = np.mean([1.0 - m["cka_samples"] for m in mine], axis=0)
        rel = np.mean([m["relative_change_samples"] for m in mine], axis=0)
        summary[f"{component}_change"] = {"value": float(np.mean([1.0 - m["cka"] for m in mine])),
                                          "ci": list(interval(change, confidence))}
        summary[f"{component}_relative_change"] = {"value": float(np.mean([m["relative_change"] for m in mine])),
                                                   "ci": list(interval(rel, confidence))}
    return {"rows": rows, "summary": summary, "n": int(len(groups)), "n_problems": int(len(np.unique(groups)))}


def _component(name: str) -> str:
    site = name.split(".")[2]
    return next(c for c, s in COMPONENTS.items() if s == site)


# --- one run -------------------------------------------------------------------------------------------------
def available_treatments(cfg) -> list[str]:
    """The run's treatments (variants.treatments) whose checkpoint exists."""
    from rlvr_utils.core.config import _looks_local
    from rlvr_utils.treatments.registry import names

    out = []
    for name in names(cfg):
        ref = cfg.model_ref(name)
        if Path(ref).is_dir() or not _looks_local(ref):  # a hub id is taken to exist
            out.append(name)
    return out


def run(cfg, force: bool = False) -> dict:
    """runs/<name>/metrics/same_input.json: every available treatment against SFT on the run's token cache
    (runs/<name>/tokens/, made by 04_extract); skipped when the params, the cache and every checkpoint are
    unchanged, unless `force`."""
    from tqdm.auto import tqdm

    from rlvr_utils.core import artifacts
    from rlvr_utils.activations.store import TokenCache
    from rlvr_utils.core.artifacts import checkpoint_fingerprint
    from rlvr_utils.core.config import _looks_local
    from rlvr_utils.models.loading import load
    from rlvr_utils.treatments.registry import REFERENCE, names

    path = cfg.path("metrics", "same_input.json")
    tokens = cfg.path("tokens")
    if not (tokens / "tokens.json").exists():
        raise FileNotFoundError(f"no token cache at {tokens}: run 04_extract first")
    cache = TokenCache.load(tokens)
    names = available_treatments(cfg)
    checkpoints = {name: checkpoint_fingerprint(cfg.model_ref(name)) for name in [REFERENCE, *names]}
    fingerprint = hashlib.sha256(json.dumps([cfg.fingerprint("cka", "seed", "model"), cfg.extract.layers,
                                             cache.fingerprint, checkpoints]).encode()).hexdigest()[:16]
    inputs = [tokens, *(cfg.model_ref(name) for name in [REFERENCE, *names])]  # content-checked by the stamp
    if not force and artifacts.is_current(path, fingerprint, inputs):
        log.info("same-input comparison is up to date (%s)", path)
        return artifacts.read_json(path)

    c = cfg.cka
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"reference": REFERENCE, "selection": c.position, "debiased": c.debiased, "confidence": c.confidence,
              "n_bootstrap": c.n_bootstrap, "measures": MEASURES, "rows": [], "variants": {}, "seconds": {}}
    if not names:
        log.warning("no treatment checkpoint exists yet (looked for %s): same_input.json lists no variant",
                    [cfg.model_ref(t) for t in names(cfg)])
    if not Path(cfg.model_ref(REFERENCE)).is_dir() and _looks_local(cfg.model_ref(REFERENCE)):
        raise FileNotFoundError(f"no reference checkpoint at {cfg.model_ref(REFERENCE)}: train SFT (01_train_sft) first")
    reference, _ = load(cfg.model_ref(REFERENCE), cfg, device)
    for name in tqdm(names, desc=f"same input vs {REFERENCE}"):
        started = time.perf_counter()
        treatment, _ = load(cfg.model_ref(name), cfg, device)
        out = compare(reference, treatment, cache, c.position, c.debiased, c.n_bootstrap, c.confidence, cfg.seed,
                      cfg.extract.batch_size, cfg.extract.layers)
        del treatment
        result["rows"] += [{"variant": name, **row} for row in out["rows"]]
        result["variants"][name] = out["summary"]
        result["n"], result["n_problems"] = out["n"], out["n_problems"]
        result["seconds"][name] = time.perf_counter() - started
        log.info("same-input %s vs %s: %.1f s", name, REFERENCE, result["seconds"][name])
    result = artifacts.json_safe(result)
    artifacts.write_json(path, result)
    artifacts.stamp(path, fingerprint, inputs, seconds=sum(result["seconds"].values()))
    return result


# --- reading it beside the end-to-end comparison ---------------------------------------------------------------
def per_layer_table(same_input: dict, cka_result: dict | None = None) -> "pd.DataFrame":
    """One row per variant, layer, component and measure ('same input' / 'end to end (mixes upstream
    changes)'): change = 1 - CKA with its interval."""
    import pandas as pd

    records = [{"variant": r["variant"], "layer": r["layer"], "component": r["component"], "measure": SAME_INPUT,
                "change": r["change"], "lo": r["change_ci"][0], "hi": r["change_ci"][1]} for r in same_input["rows"]]
    for cell in (cka_result or {}).get("variant_cells", []):
        records.append({"variant": cell["variant"], "layer": cell["layer"], "component": cell["component"],
                        "measure": END_TO_END, "change": cell["change"], "lo": cell["change_ci"][0],
                        "hi": cell["change_ci"][1]})
    return pd.DataFrame(records)


SAME_INPUT = "same input"
END_TO_END = "end to end (mixes upstream changes)"


def summary_table(same_input: dict, cka_result: dict | None = None) -> "pd.DataFrame":
    """Per variant: same-input and end-to-end change of attention and MLP (mean over layers, interval)."""
    import pandas as pd

    def fmt(entry):
        if not entry or entry.get("value") is None:
            return ""
        lo, hi = entry["ci"]
        return f"{entry['value']:.2e} [{_e(lo)}, {_e(hi)}]"

    end = (cka_result or {}).get("variants", {})
    records = []
    for name, measures in same_input["variants"].items():
        records.append({"variant": name,
                        "attn change, same input": fmt(measures.get("attn_change")),
                        "MLP change, same input": fmt(measures.get("mlp_change")),
                        "attn relative change, same input": fmt(measures.get("attn_relative_change")),
                        "MLP relative change, same input": fmt(measures.get("mlp_relative_change")),
                        "attn change, end to end": fmt(end.get(name, {}).get("attn_change_end_to_end")),
                        "MLP change, end to end": fmt(end.get(name, {}).get("mlp_change_end_to_end"))})
    return pd.DataFrame(records).set_index("variant") if records else pd.DataFrame()


def _e(x):
    return "nan" if x is None else f"{x:.2e}"


def plot_comparison(same_input: dict, cka_result: dict | None = None):
    """Change (1 - CKA) per layer: columns are components, rows the measure (same input; end to end). RLVR and
    the controls are lines; the nulls are a grey band (their range) with thin lines."""
    import matplotlib.pyplot as plt

    from rlvr_utils.core.plots import STAGE_COLORS

    table = per_layer_table(same_input, cka_result)
    measures = [m for m in (SAME_INPUT, END_TO_END) if m in set(table["measure"])] if len(table) else [SAME_INPUT]
    fig, axes = plt.subplots(len(measures), 2, figsize=(11, 3.6 * len(measures)), squeeze=False, sharex=True)
    colors = {"rlvr": STAGE_COLORS["rlvr"], "attn_only": "#9467bd", "mlp_only": "#2ca02c", "identical": "#1f77b4"}
    for i, measure_name in enumerate(measures):
        for j, component in enumerate(COMPONENTS):
            ax = axes[i][j]
            sub = table[(table["measure"] == measure_name) & (table["component"] == component)] if len(table) else table
            nulls = sub[sub["variant"].str.startswith("null_")] if len(sub) else sub
            if len(nulls):
                band = nulls.groupby("layer")["change"].agg(["min", "max"])
                ax.fill_between(band.index, band["min"], band["max"], color="grey", alpha=0.25,
                                label=f"nulls (range of {nulls['variant'].nunique()})")
                for _, one in nulls.groupby("variant"):
                    ax.plot(one["layer"], one["change"], color="grey", linewidth=0.6)
            named = [v for v in dict.fromkeys(sub["variant"]) if not v.startswith("null_")] if len(sub) else []
            for name in sorted(named, key=lambda v: v == "rlvr"):  # RLVR drawn last, on top of the controls
                one = sub[sub["variant"] == name].sort_values("layer")
                color = colors.get(name, "black")
                ax.plot(one["layer"], one["change"], marker="o", color=color, label=name,
                        linestyle="-" if name == "rlvr" else "--", markersize=6 if name == "rlvr" else 4)
                ax.fill_between(one["layer"], one["lo"], one["hi"], color=color, alpha=0.15)
            ax.set_yscale("symlog", linthresh=1e-6)
            ax.set_title(f"{'attention' if component == 'attn' else 'MLP'}: {measure_name}")
            ax.set_xlabel("layer")
            ax.set_ylabel("1 - debiased CKA with SFT")
            if len(sub):
                ax.set_xticks(sorted(sub["layer"].unique()))
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), title="vs SFT")
    fig.suptitle("Did the component change? Same input (the component's own change) vs end to end (its output "
                 "in each model, mixing upstream changes)")
    fig.tight_layout()
    return fig
