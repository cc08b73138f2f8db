"""The verdict's caveats: what limits it, generated from the params (scale, seeds, analyze-only, missing
controls or placebos) and the evidence (RLVR's gain, rows that do not count)."""
from __future__ import annotations

import pandas as pd

from rlvr_utils.core.fmt import observed
from rlvr_utils.treatments import registry

PARAMS = ("rehearsal", "model", "organism", "verdict", "seed")


def caveats(cfg, gain, table: pd.DataFrame, other_seeds: list[int]) -> list[str]:
    """What limits the verdict, generated from the params and the evidence. `gain`: RLVR's accuracy gain over
    SFT as (value, ci or None), None when not measured."""
    out = []
    if cfg.rehearsal:
        out.append("Rehearsal: this run only proves that the real-scale code path works, on a toy model trained "
                   "for seconds; its numbers and its verdict mean nothing.")
    if cfg.model.base == "organism":
        o = cfg.organism
        out.append(f"Scale: a model organism of {o.num_layers} layers and hidden size {o.hidden_size}; what holds "
                   "at this scale may not hold for billion-parameter models.")
    else:
        out.append(f"Scale: one base model, {cfg.model.base}.")
    if cfg.model.analyze_only:
        out.append("Analyze-only: the checkpoints were given, not trained here; the controls and nulls are "
                   "only as comparable to them as their training recipes are.")
    if not registry.names(cfg, "control"):
        out.append("No positive controls (variants.controls is empty): no row can show that it tells a Routing "
                   "change from a Representation change, so none counts and the verdict is inconclusive.")
    if len(registry.names(cfg, "placebo")) < 2:
        out.append("Fewer than two placebo runs (variants.placebos): only random updates are left as a yardstick, "
                   "and any trained update beats those, so no row counts.")
    if cfg.model.analyze_only:
        out.append("Seeds: one given RLVR checkpoint; the intervals resample problems, not training runs"
                   + (", and the controls were trained here with this run's GRPO params from the given SFT model."
                      if registry.names(cfg, "control") else "."))
    elif other_seeds:
        out.append(f"Seeds: this run (seed {cfg.seed}) and replicate seeds {', '.join(map(str, other_seeds))}; a "
                   "row counts only where every seed agrees.")
    else:
        out.append(f"Seeds: one training run (seed {cfg.seed}); the intervals resample problems, not training "
                   "runs. `make replicate` adds seeds " + ", ".join(map(str, cfg.verdict.replicate_seeds)) + ".")
    if gain is None:
        out.append("RLVR's accuracy gain over SFT was not measured.")
    elif gain[1] is not None and gain[1][0] <= 0:
        out.append(f"RLVR's accuracy gain over SFT ({observed(*gain)}) is not clearly above zero: the "
                   "internal changes may not be the ones that matter for accuracy.")
    counted = table.loc[table["calibration"] == "counts", "group"].unique().tolist() if "group" in table else []
    if len(counted) == 1:
        out.append(f"The answer rests on one calibrated measurement ({counted[0]}): every other row fails its "
                   "calibration, most because a placebo run changes the model as much as a control does.")
    failing = table.loc[table["calibration"] != "counts", "measurement"].tolist()
    if failing:
        out.append(f"{len(failing)} of {len(table)} rows do not count (see the calibration column).")
    return out


def box(caveats: list[str], title: str = "Limitations of this run's answer") -> str:
    """The caveats as a MyST warning box, for the top of the verdict chapter and the abstract (a page, or a
    glued notebook output pasted with `{glue:md}` and `:format: myst`)."""
    items = "\n".join(f"- {c}" for c in caveats) or "- None recorded."
    return f"```{{admonition}} {title}\n:class: warning\n\n{items}\n```\n"
