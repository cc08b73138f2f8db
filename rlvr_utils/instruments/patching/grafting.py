"""Component grafting: hybrid models that take one component type's weights from a donor checkpoint.

"SFT with RLVR's attention" is the SFT model whose attention weights (and the norm that feeds them) are
copied from RLVR; its accuracy, next to SFT's and RLVR's, says how much of RLVR's gain that component
carries on its own.

Every parameter belongs to exactly one component (`component_map`):
    embed       token (and position) embeddings; a tied unembedding is the same tensor, so it is here too
    attn        per layer: the attention module and its input norm (OLMo2: its output norm)
    mlp         per layer: the MLP and its input norm (OLMo2: its output norm)
    final_norm  the norm before the unembedding
    unembed     an untied unembedding (lm_head / embed_out)
so grafting every component reproduces the donor and grafting none the receiver.

A share of the gain is reported only when the gain itself is distinguishable from zero (its paired
bootstrap interval excludes 0); otherwise the row says "gain not distinguishable from zero".
`swapped` grafts in place for the duration of a `with` block (patching uses it to run a donor's component
on the receiver's own input without copying the model).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from rlvr_utils.models import families as architecture
from rlvr_utils.core import stats

GAIN_NOTE = "gain not distinguishable from zero"
COMPONENTS = ("embed", "attn", "mlp", "final_norm", "unembed")
LAYER_COMPONENTS = ("attn", "mlp")

# per family: a decoder layer's child modules and the component each belongs to
_LAYER_CHILDREN = {
    **{family: {"self_attn": "attn", "input_layernorm": "attn", "mlp": "mlp", "post_attention_layernorm": "mlp"}
       for family in ("llama", "qwen2", "qwen3", "mistral")},
    "olmo2": {"self_attn": "attn", "post_attention_layernorm": "attn", "mlp": "mlp", "post_feedforward_layernorm": "mlp"},
    "gpt2": {"attn": "attn", "ln_1": "attn", "mlp": "mlp", "ln_2": "mlp"},
    "gpt_neox": {"attention": "attn", "input_layernorm": "attn", "mlp": "mlp", "post_attention_layernorm": "mlp"},
}


def component_map(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    """{parameter name: (component, layer or None)} for every parameter, tied aliases included.

    Raises ValueError for a parameter that fits no component, so a new architecture cannot be grafted
    with some weights silently left behind.
    """
    family = model.config.model_type
    if family not in _LAYER_CHILDREN:
        raise ValueError(f"model_type {family!r} is not supported for grafting; supported: {sorted(_LAYER_CHILDREN)}")
    names = {id(m): n for n, m in model.named_modules()}
    layer_prefix = {names[id(b.block)] + ".": i for i, b in enumerate(architecture.blocks(model))}
    owners = [(names[id(architecture.final_norm(model))] + ".", "final_norm"),
              (names[id(architecture.unembedding(model))] + ".", "unembed")]
    owners += [(n + ".", "embed") for n, m in model.named_modules() if isinstance(m, nn.Embedding)]

    out: dict[str, tuple[str, int | None]] = {}
    first_name: dict[int, str] = {}  # tensor identity -> first parameter name (for tied weights)
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:  # a tied alias shares its owner's component
            out[name] = out[first_name[id(param)]]
            continue
        first_name[id(param)] = name
        out[name] = _classify(name, family, layer_prefix, owners)
    return out


def _classify(name, family, layer_prefix, owners) -> tuple[str, int | None]:
    for prefix, layer in layer_prefix.items():
        if name.startswith(prefix):
            child = name[len(prefix):].split(".")[0]
            if child not in _LAYER_CHILDREN[family]:
                raise ValueError(f"parameter {name!r}: layer child {child!r} is in no component of {family}")
            return _LAYER_CHILDREN[family][child], layer
    for prefix, component in owners:
        if name.startswith(prefix):
            return component, None
    raise ValueError(f"parameter {name!r} is in no component ({COMPONENTS})")


@dataclass(frozen=True)
class Graft:
    """Which donor weights a hybrid takes: `components` at `layers` (None = every layer; embeddings,
    final norm and unembedding have no layer and are taken whenever named)."""

    name: str
    components: tuple[str, ...]
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"components {sorted(unknown)} unknown; choose from {COMPONENTS}")


def graft(receiver: nn.Module, donor: nn.Module, components: Iterable[str],
          layers: Iterable[int] | None = None) -> nn.Module:
    """A copy of `receiver` whose `components` (at `layers`, None = all) hold the donor's weights."""
    components = set(components)
    unknown = components - set(COMPONENTS)
    if unknown:
        raise ValueError(f"components {sorted(unknown)} unknown; choose from {COMPONENTS}")
    n_layers = len(architecture.blocks(receiver))
    layers = None if layers is None else set(layers)
    if layers is not None and not layers <= set(range(n_layers)):
        raise ValueError(f"layers {sorted(layers - set(range(n_layers)))} out of range 0..{n_layers - 1}")
    donor_params = dict(donor.named_parameters(remove_duplicate=False))
    hybrid = copy.deepcopy(receiver)
    cmap = component_map(hybrid)
    with torch.no_grad():
        for name, param in hybrid.named_parameters(remove_duplicate=False):
            source = donor_params.get(name)
            if source is None or source.shape != param.shape:
                raise ValueError(f"donor and receiver differ in architecture at {name!r}")
            component, layer = cmap[name]
            if component in components and (layer is None or layers is None or layer in layers):
                param.copy_(source)
    return hybrid


@contextlib.contextmanager
def swapped(receiver: nn.Module, donor: nn.Module, components: Iterable[str], layers: Iterable[int] | None = None):
    """`receiver` itself holds the donor's `components` (at `layers`) inside the block, its own weights after."""
    components = set(components)
    unknown = components - set(COMPONENTS)
    if unknown:
        raise ValueError(f"components {sorted(unknown)} unknown; choose from {COMPONENTS}")
    layers = None if layers is None else set(layers)
    donor_params = dict(donor.named_parameters(remove_duplicate=False))
    cmap = component_map(receiver)
    saved = {}
    try:
        with torch.no_grad():
            for name, param in receiver.named_parameters(remove_duplicate=False):
                component, layer = cmap[name]
                if component in components and (layer is None or layers is None or layer in layers):
                    source = donor_params.get(name)
                    if source is None or source.shape != param.shape:
                        raise ValueError(f"donor and receiver differ in architecture at {name!r}")
                    if name not in saved:
                        saved[name] = (param, param.detach().clone())
                    param.copy_(source)
        yield receiver
    finally:
        with torch.no_grad():
            for param, original in saved.values():
                param.copy_(original)


def layer_range(n_layers: int, which: str) -> tuple[int, ...]:
    """'all', 'first_half' or 'second_half' of the layers."""
    half = n_layers // 2
    ranges = {"all": range(n_layers), "first_half": range(half), "second_half": range(half, n_layers)}
    if which not in ranges:
        raise ValueError(f"layer range {which!r} is not one of {sorted(ranges)}")
    return tuple(ranges[which])


def standard_grafts(n_layers: int, ranges: Sequence[str] = ("all",)) -> list[Graft]:
    """Attention-only and MLP-only grafts over each layer range, then attention + MLP over every layer
    (what is left of the gain after that lives in the embeddings and final norm)."""
    out = []
    for which in ranges:
        layers = layer_range(n_layers, which)
        suffix = "" if which == "all" else f" ({which.replace('_', ' ')})"
        out += [Graft(f"attention{suffix}", ("attn",), layers), Graft(f"MLP{suffix}", ("mlp",), layers)]
    out.append(Graft("attention + MLP", ("attn", "mlp"), layer_range(n_layers, "all")))
    return out


def gain_share(receiver_correct, donor_correct, graft_correct, n_bootstrap: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> dict:
    """Share of the donor's accuracy gain over the receiver that a graft recovers,
    (acc_graft - acc_receiver) / (acc_donor - acc_receiver), with a paired bootstrap over problems
    (the same resampled problems for all three). NaN with a "note" when the gain's own paired interval
    contains 0: a ratio over a denominator that may be zero measures nothing."""
    table = np.column_stack([np.asarray(x, dtype=float) for x in (receiver_correct, donor_correct, graft_correct)])
    gain = stats.paired_difference(table[:, 1], table[:, 0], n_bootstrap, confidence, seed)
    if not (gain["ci"][0] > 0 or gain["ci"][1] < 0):
        return {"value": float("nan"), "ci": None, "note": GAIN_NOTE}

    def share(rows):
        receiver, donor, hybrid = rows.mean(axis=0)
        return (hybrid - receiver) / (donor - receiver) if donor != receiver else np.nan

    return stats.bootstrap(table, share, n_bootstrap, confidence, seed)


def graft_table(receiver: nn.Module, donor: nn.Module, grafts: Sequence[Graft],
                evaluate: Callable[[nn.Module], Sequence[bool]], n_bootstrap: int = 2000,
                confidence: float = 0.95, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Evaluate receiver, donor and each hybrid with `evaluate(model) -> correct per problem` (the same
    problems in the same order every call) and return accuracies and shares of the gain with intervals.

    {"receiver": {...}, "donor": {...}, "gain": {...}, "rows": [{"graft", "components", "layers",
    "accuracy", "share", "correct"}]}: "accuracy"/"share"/"gain" are {"value", "ci"} dicts.
    """
    def timed(label, model):
        start = time.perf_counter()
        correct = np.asarray(evaluate(model), dtype=bool)
        log(f"{label}: accuracy {correct.mean():.3f} on {len(correct)} problems ({time.perf_counter() - start:.1f} s)")
        return correct

    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    receiver_correct = timed("receiver", receiver)
    donor_correct = timed("donor", donor)
    if len(receiver_correct) != len(donor_correct):
        raise ValueError("evaluate returned different numbers of problems for receiver and donor")
    rows = []
    for g in grafts:
        hybrid = graft(receiver, donor, g.components, g.layers)
        correct = timed(g.name, hybrid)
        del hybrid
        rows.append({"graft": g.name, "components": list(g.components), "n_problems": len(correct),
                     "layers": None if g.layers is None else list(g.layers),
                     "accuracy": stats.bootstrap(correct.astype(float), np.mean, **boot),
                     "share": gain_share(receiver_correct, donor_correct, correct, **boot),
                     "correct": correct.tolist()})
    return {"receiver": {**stats.bootstrap(receiver_correct.astype(float), np.mean, **boot),
                         "correct": receiver_correct.tolist()},
            "donor": {**stats.bootstrap(donor_correct.astype(float), np.mean, **boot),
                      "correct": donor_correct.tolist()},
            "gain": stats.paired_difference(donor_correct, receiver_correct, **boot),
            "rows": rows}


def run(cfg, receiver: nn.Module, donor: nn.Module, tokenizer, problems: list[dict],
        evaluate: Callable[[nn.Module], Sequence[bool]] | None = None) -> dict:
    """Notebook 06's grafting table: RLVR's attention / MLPs over `patching.graft_ranges` grafted into SFT,
    each evaluated greedily on the first `patching.graft_problems` held-out problems."""
    pc, ev = cfg.patching, cfg.evaluation
    problems = problems[:pc.graft_problems]
    if evaluate is None:
        from rlvr_utils.evaluation.evaluate import greedy_eval

        def evaluate(model):
            return [r["correct"] for r in greedy_eval(model, tokenizer, problems, ev.max_new_tokens, ev.batch_size)]
    grafts = standard_grafts(len(architecture.blocks(receiver)), pc.graft_ranges)
    table = graft_table(receiver, donor, grafts, evaluate, pc.n_bootstrap, ev.confidence, cfg.seed)
    return {"n_problems": len(problems), **table}


def table_frame(result: dict):
    """The grafting table (pandas): accuracy and share of the gain per hybrid, with intervals."""
    import pandas as pd

    def ci(entry):
        return "" if entry.get("ci") is None else "[{:.2f}, {:.2f}]".format(*entry["ci"])

    def value(entry):
        return np.nan if entry["value"] is None else entry["value"]

    rows = [{"model": "SFT (receiver)", "accuracy": value(result["receiver"]), "accuracy CI": ci(result["receiver"]),
             "share of gain": 0.0, "share CI": ""}]
    rows += [{"model": f"SFT + RLVR {row['graft']}", "accuracy": value(row["accuracy"]),
              "accuracy CI": ci(row["accuracy"]), "share of gain": value(row["share"]),
              "share CI": row["share"].get("note") or ci(row["share"])}
             for row in result["rows"]]
    rows.append({"model": "RLVR (donor)", "accuracy": value(result["donor"]), "accuracy CI": ci(result["donor"]),
                 "share of gain": 1.0, "share CI": ""})
    return pd.DataFrame(rows)


def plot_shares(result: dict):
    """Bar chart: share of the SFT -> RLVR accuracy gain each graft recovers, with bootstrap intervals."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    kinds = {("attn",): "attention", ("mlp",): "MLP"}
    frame = pd.DataFrame([{
        "graft": r["graft"], "kind": kinds.get(tuple(r["components"]), "attention + MLP"),
        "share": np.nan if r["share"]["value"] is None else r["share"]["value"],
        "lo": np.nan if r["share"]["ci"] is None else r["share"]["ci"][0],
        "hi": np.nan if r["share"]["ci"] is None else r["share"]["ci"][1]} for r in result["rows"]])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(frame) + 1.8))
    sns.barplot(frame, x="share", y="graft", hue="kind", dodge=False, legend=False, ax=ax,
                palette={"attention": "#1f77b4", "MLP": "#ff7f0e", "attention + MLP": "#7f7f7f"})
    ax.errorbar(frame["share"], np.arange(len(frame)), fmt="none", ecolor="black", capsize=3,
                xerr=np.abs(np.vstack([frame["share"] - frame["lo"], frame["hi"] - frame["share"]])))
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(1, color="#d62728", lw=1, ls="--", label="RLVR's full gain")
    ax.set_xlabel("share of the RLVR - SFT accuracy gain recovered (95% bootstrap CI)")
    ax.set_ylabel("RLVR weights grafted into SFT")
    gain, n = result["gain"], len(result["donor"]["correct"])
    note = "" if gain.get("ci") and (gain["ci"][0] > 0 or gain["ci"][1] < 0) else f": {GAIN_NOTE}, no share is reported"
    ax.set_title(f"Grafting RLVR components into SFT\n(RLVR - SFT accuracy gain {100 * gain['value']:+.1f} points on "
                 f"{n} problems{note})")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
