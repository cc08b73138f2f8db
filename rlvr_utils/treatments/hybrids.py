"""Full-parameter controls with a known answer (`variants.hybrids`): every weight moves, but the task signal is in
one component only.

  - 'routing_hybrid': SFT + the attention-only control's attention update + the first placebo's update of
    everything else (a trained change of the MLPs, embeddings and norms that carries no task signal): a known
    Routing change that a "which side moved" measure cannot read, since both sides moved;
  - 'representation_hybrid': the mirror, with the MLP-only control's MLP update.
With `variants.norm_matched`, a `_matched` version of each has every tensor's update at RLVR's norm.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlvr_utils.models.families import family_of
from rlvr_utils.treatments.placebos import runs as placebo_runs
from rlvr_utils.treatments.registry import REPRESENTATION, ROUTING, Family, Treatment, register
from rlvr_utils.treatments.weights import build_from_checkpoints, rescaled_tensor

PARAMS = ("variants",)
HYBRIDS = {"routing_hybrid": ("attn", "attn_only", ROUTING), "representation_hybrid": ("mlp", "mlp_only", REPRESENTATION)}
PLACEBO = "placebo_0"


def hybrid(sft, carrier, placebo, component: str, component_of) -> dict:
    """SFT plus `carrier`'s update of the tensors of `component` and `placebo`'s update of every other tensor."""
    return {name: (carrier if component_of(name)[0] == component else placebo)[name] for name in sft}


def build(cfg, name: str) -> str:
    base = name.removesuffix("_matched")
    component, carrier, _ = HYBRIDS[base]
    model_type = json.loads((Path(cfg.model_ref("sft")) / "config.json").read_text())["model_type"]
    component_of = family_of(model_type).component_of

    def make(tensor, get):  # hybrid() and rescaled(), one tensor at a time
        mixed = get(carrier if component_of(tensor)[0] == component else PLACEBO)
        return rescaled_tensor(get("sft"), mixed, get("rlvr")) if name.endswith("_matched") else mixed
    sources = ("sft", carrier, PLACEBO, *(("rlvr",) if name.endswith("_matched") else ()))
    return build_from_checkpoints(cfg, name, make, sources)


def expand(cfg) -> list[Treatment]:
    v = cfg.variants
    if not (v.hybrids and placebo_runs(cfg) and set(v.controls) >= {c for _, c, _ in HYBRIDS.values()}):
        return []
    return [Treatment(f"{name}{suffix}", "control", answer, "hybrids",
                      f"SFT + {carrier}'s {component} update + {PLACEBO}'s update of the rest{suffix and ', at RLVR norm'}",
                      full=True, rescales=name if suffix else None)
            for name, (component, carrier, answer) in HYBRIDS.items()
            for suffix in ("", *(("_matched",) if v.norm_matched else ()))]


register(Family("hybrids", expand, build=build, order=15))
