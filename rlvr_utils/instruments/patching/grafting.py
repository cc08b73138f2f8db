"""Component grafting: how much of the study model's (RLVR's) accuracy gain over the reference (SFT) one
component type carries on its own.

"SFT with RLVR's attention" is the SFT model whose attention weights (the sublayer's own weights; its norms
are the component 'norm', `families`) are copied from RLVR (`swap.graft`); its greedy accuracy, next to SFT's
and RLVR's, gives the share of the gain that the attention carries. A share is reported only when the gain
itself is distinguishable from zero (its paired bootstrap interval excludes 0); otherwise the row says "gain not
distinguishable from zero". Run it with `base.run(cfg, Grafting())`: metrics/grafting.json holds the accuracies,
the gain, one row per graft and a `summary` (graft_attn_share, graft_mlp_share, graft_attn_mlp_share) that the
verdict shows beside its rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from torch import nn

from rlvr_utils.core import stats
from rlvr_utils.core.device import run_device
from rlvr_utils.core.estimate import Estimate
from rlvr_utils.evaluation.evaluate import greedy_eval, stored_correct
from rlvr_utils.instruments import base
from rlvr_utils.instruments.patching.swap import graft
from rlvr_utils.models import chat, families, loading
from rlvr_utils.models.families import COMPONENTS
from rlvr_utils.training import data
from rlvr_utils.treatments.registry import REFERENCE, STUDY

PARAMS = ("patching", "evaluation")  # params sections read here (rlvr_utils.core.deps)

GAIN_NOTE = "gain not distinguishable from zero"
# summary key, graft name (`standard_grafts`), what it takes: the shares the verdict shows as context
SHARES = (("graft_attn_share", "attention", "attention"), ("graft_mlp_share", "MLP", "MLPs"),
          ("graft_attn_mlp_share", "attention + MLP", "attention and MLPs"))
GAINS = {"graft_attn_share": "attn_graft_gain", "graft_mlp_share": "mlp_graft_gain",  # a graft's gain over SFT
         "graft_attn_mlp_share": "attn_mlp_graft_gain"}


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


def layer_range(n_layers: int, which: str) -> tuple[int, ...]:
    """'all', 'first_half' or 'second_half' of the layers."""
    half = n_layers // 2
    ranges = {"all": range(n_layers), "first_half": range(half), "second_half": range(half, n_layers)}
    if which not in ranges:
        raise ValueError(f"layer range {which!r} is not one of {sorted(ranges)}")
    return tuple(ranges[which])


def standard_grafts(n_layers: int, ranges: Sequence[str] = ("all",)) -> list[Graft]:
    """Attention-only and MLP-only grafts over each layer range, then attention + MLP over every layer
    (what is left of the gain after that lives in the norms, the embeddings and the final norm)."""
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
                confidence: float = 0.95, seed: int = 0, log: Callable[[str], None] = print,
                receiver_correct: Sequence[bool] | None = None, donor_correct: Sequence[bool] | None = None) -> dict:
    """Evaluate receiver, donor and each hybrid with `evaluate(model) -> correct per problem` (the same
    problems in the same order every call) and return accuracies, gains over the receiver and shares of the
    donor's gain, with paired intervals. `receiver_correct`, `donor_correct`: their answers, when already
    evaluated.

    {"receiver": {...}, "donor": {...}, "gain": {...}, "rows": [{"graft", "components", "layers",
    "accuracy", "gain", "share", "correct"}]}: "accuracy"/"gain"/"share" are {"value", "ci"} dicts.
    """
    def timed(label, model):
        start = time.perf_counter()
        correct = np.asarray(evaluate(model), dtype=bool)
        log(f"{label}: accuracy {correct.mean():.3f} on {len(correct)} problems ({time.perf_counter() - start:.1f} s)")
        return correct

    boot = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    receiver_correct = (timed("receiver", receiver) if receiver_correct is None
                        else np.asarray(receiver_correct, dtype=bool))
    donor_correct = timed("donor", donor) if donor_correct is None else np.asarray(donor_correct, dtype=bool)
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
                     "gain": stats.paired_difference(correct, receiver_correct, **boot),
                     "share": gain_share(receiver_correct, donor_correct, correct, **boot),
                     "correct": correct.tolist()})
    return {"receiver": {**stats.bootstrap(receiver_correct.astype(float), np.mean, **boot),
                         "correct": receiver_correct.tolist()},
            "donor": {**stats.bootstrap(donor_correct.astype(float), np.mean, **boot),
                      "correct": donor_correct.tolist()},
            "gain": stats.paired_difference(donor_correct, receiver_correct, **boot),
            "rows": rows}


def shares(table: dict) -> dict[str, Estimate]:
    """What the verdict reads from one treatment's grafts: its own gain over the reference, each standard
    graft's gain (`attn_graft_gain`, `mlp_graft_gain`) and share of the treatment's gain (undefined where that
    gain is not distinguishable from zero), all with paired bootstrap intervals over problems."""
    rows = {row["graft"]: row for row in table["rows"]}
    n = len(table["donor"]["correct"])
    out = {"gain": Estimate(table["gain"]["value"], table["gain"]["ci"], "bootstrap", n)}
    for key, name, _ in SHARES:
        if name in rows:
            share, gain = rows[name]["share"], rows[name]["gain"]
            out[key] = Estimate(share["value"], share["ci"], "bootstrap", n) if share["ci"] else Estimate.undefined(n)
            out[GAINS[key]] = Estimate(gain["value"], gain["ci"], "bootstrap", n)
    return out


class Grafting(base.Instrument):
    """Every treatment's attention and MLP updates grafted into the reference, one at a time, each evaluated
    greedily on the first `patching.graft_problems` held-out problems: the behavioural row of the verdict (does
    a component's update alone help beyond what a placebo's does?). The study model also gets the layer-range
    grafts of `patching.graft_ranges` and attention + MLP together, for its chapter. `evaluate` (model -> correct
    per problem) replaces the greedy evaluation, for tests."""

    name = "grafting"
    reads = ("data/eval.jsonl", "eval")  # the problems, and the models' own greedy answers (`_stored`)

    def __init__(self, evaluate: Callable[[nn.Module], Sequence[bool]] | None = None):
        self.evaluate = evaluate

    def _stored(self, cfg, name: str) -> list[bool] | None:
        """A model's own answers from its up-to-date greedy evaluation (same problems, same decoding; checked
        identical on the default run), unless a test's `evaluate` replaces the decoding."""
        return stored_correct(cfg, name, cfg.patching.graft_problems) if self.evaluate is None else None

    def prepare(self, cfg, treatments: list[str]) -> dict:
        device = run_device(cfg)
        receiver, tokenizer = loading.load(cfg.model_ref(REFERENCE), cfg, device)
        problems = data.read_jsonl(cfg.path("data", "eval.jsonl"))[:cfg.patching.graft_problems]
        evaluate = self.evaluate
        if evaluate is None:
            ev = cfg.evaluation

            prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in problems])  # as evaluation asks them

            def evaluate(model):
                return [r["correct"] for r in greedy_eval(model, tokenizer, problems, ev.max_new_tokens, ev.batch_size,
                                                          prompts)]
        # the reference is evaluated once: every treatment's gains are paired with the same answers
        receiver_correct = self._stored(cfg, REFERENCE)
        return {"device": device, "receiver": receiver, "problems": problems, "evaluate": evaluate, "tables": {},
                "receiver_correct": receiver_correct if receiver_correct is not None else list(evaluate(receiver))}

    def measure(self, cfg, treatment: str, shared: dict) -> dict[str, Estimate]:
        donor, _ = loading.load(cfg.model_ref(treatment), cfg, shared["device"])
        n_layers = len(families.blocks(shared["receiver"]))
        grafts = (standard_grafts(n_layers, cfg.patching.graft_ranges) if treatment == STUDY
                  else standard_grafts(n_layers)[:2])  # attention alone, MLPs alone: what the verdict reads
        table = graft_table(shared["receiver"], donor, grafts, shared["evaluate"], cfg.patching.n_bootstrap,
                            cfg.evaluation.confidence, cfg.seed, receiver_correct=shared["receiver_correct"],
                            donor_correct=self._stored(cfg, treatment))
        shared["tables"][treatment] = {"n_problems": len(shared["problems"]), **table}
        return shares(table)

    def report(self, cfg, shared: dict, variants: dict) -> dict:
        table = shared["tables"].get(STUDY)
        if table is None:
            return {}
        summary = {key: {**variants[STUDY][key].to_json(),
                         "description": f"share of the {STUDY.upper()}-{REFERENCE.upper()} greedy accuracy gain "
                                        f"recovered by grafting {STUDY.upper()}'s {what} of every layer into "
                                        f"{REFERENCE.upper()} (paired bootstrap over problems; NaN when the gain "
                                        "is not distinguishable from zero)"}
                   for key, _, what in SHARES if key in variants[STUDY]}
        return {**table, "summary": summary}
