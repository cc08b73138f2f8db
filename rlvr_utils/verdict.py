"""The evidence table: every analysis's headline numbers put against what the two hypotheses predict.

Each row reads one measurement from a metrics file's "summary" ({key: {"value", "ci", "description"}}),
compares its interval with a threshold from `VerdictParams`, and says which hypothesis it supports:
the side of the threshold the whole interval lies on, "inconclusive" when the interval contains the
threshold, "not measured" when the file or key is missing. A row built from two measurements (a
difference) uses the conservative interval [lo_a - hi_b, hi_a - lo_b]. The verdict tallies the rows;
the rules are data (RULES), so the notebook can print them as a table.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import pandas as pd

log = logging.getLogger(__name__)

ROUTING = "Routing"
REPRESENTATION = "Representation learning"
INCONCLUSIVE = "inconclusive"
NOT_MEASURED = "not measured"
METRICS_FILES = ("eval.json", "cka.json", "probes.json", "patching.json", "weights.json")


@dataclass(frozen=True)
class Rule:
    """One row of the evidence table. value = summary[file][key] (minus summary[file][minus] if given);
    Routing is supported when the interval lies on `routing_side` of params.verdict.<threshold>."""

    measurement: str
    file: str
    key: str
    threshold: str  # a VerdictParams field
    routing_side: Literal["below", "above"]
    routing_predicts: str
    representation_predicts: str
    minus: str | None = None


RULES: tuple[Rule, ...] = (
    Rule("MLP share of the RLVR update (energy per parameter)", "weights.json", "rlvr_update_mlp_share",
         "mlp_share_threshold", "below", "attention-heavy update", "update reaches the MLPs"),
    Rule("Effective rank of the RLVR update / full rank", "weights.json", "rlvr_update_effective_rank_ratio",
         "effective_rank_ratio_threshold", "below", "low-rank update", "high-rank update"),
    Rule("Rotation of the weights' top-k singular subspaces, SFT to RLVR (degrees)", "weights.json",
         "rlvr_top_subspace_angle", "subspace_angle_threshold", "below", "principal directions kept",
         "principal directions rotated"),
    Rule("CKA of MLP outputs, SFT vs RLVR", "cka.json", "cka_sft_rlvr_mlp_out", "cka_mlp_threshold", "above",
         "MLP features kept", "MLP features changed"),
    Rule("CKA of MLP outputs minus CKA of attention outputs, SFT vs RLVR", "cka.json", "cka_sft_rlvr_mlp_minus_attn",
         "cka_gap_threshold", "above", "attention changed more than MLP", "MLP changed at least as much"),
    Rule("Gain in probe selectivity for intermediate results, RLVR vs SFT", "probes.json",
         "probe_selectivity_gain_rlvr_vs_sft", "probe_gain_threshold", "below", "no new decodable features",
         "new decodable features"),
    Rule("Share of the RLVR gain from grafting MLP minus attention weights", "patching.json", "graft_mlp_share",
         "graft_gap_threshold", "below", "attention grafts carry the gain", "MLP grafts carry the gain",
         minus="graft_attn_share"),
    Rule("Patching effect of MLP outputs minus attention outputs, RLVR into SFT", "patching.json",
         "patch_mlp_out_effect_rlvr_into_sft", "patch_gap_threshold", "below", "attention outputs carry more",
         "MLP outputs carry more", minus="patch_attn_out_effect_rlvr_into_sft"),
)

# Shown beside the evidence, not tallied: they set the scene (did RLVR help? how big were the updates?)
CONTEXT: tuple[tuple[str, str], ...] = (
    ("eval.json", "accuracy_base"), ("eval.json", "accuracy_sft"), ("eval.json", "accuracy_rlvr"),
    ("eval.json", "rlvr_minus_sft_accuracy"),
    ("weights.json", "rlvr_relative_update_norm"), ("weights.json", "sft_relative_update_norm"),
    ("weights.json", "rlvr_update_sparsity"), ("weights.json", "sft_update_mlp_share"),
    ("weights.json", "sft_update_effective_rank_ratio"),
    ("weights.json", "sft_top_subspace_angle"),
    ("cka.json", "cka_sft_rlvr_attn_out"), ("cka.json", "cka_base_rlvr_attn_out"), ("cka.json", "cka_base_rlvr_mlp_out"),
    ("cka.json", "cka_permutation_baseline"),
    ("probes.json", "probe_selectivity_intermediate_base"), ("probes.json", "probe_selectivity_intermediate_sft"),
    ("probes.json", "probe_selectivity_intermediate_rlvr"),
    ("patching.json", "graft_attn_share"), ("patching.json", "graft_mlp_share"),
)


# --- reading ---------------------------------------------------------------------------------------
def load_summaries(metrics_dir: str | Path) -> dict[str, dict]:
    """{file name: its "summary" dict} for the metrics files that exist; a missing or unreadable file is
    left out (its rows become "not measured"), with a log line saying why."""
    out = {}
    for name in METRICS_FILES:
        path = Path(metrics_dir) / name
        if not path.exists():
            log.info("%s not found: its rows are not measured", path)
            continue
        try:
            summary = json.loads(path.read_text()).get("summary")
        except (json.JSONDecodeError, AttributeError) as err:
            log.warning("%s is not a metrics JSON object (%s): its rows are not measured", path, err)
            continue
        if isinstance(summary, dict):
            out[name] = summary
        else:
            log.warning("%s has no 'summary' dict: its rows are not measured", path)
    return out


def measurement(summaries: Mapping[str, dict], file: str, key: str) -> tuple[float, list[float] | None] | None:
    """(value, ci or None) of one summary entry; None when the file, key or a numeric value is missing."""
    entry = summaries.get(file, {}).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)) or isinstance(entry["value"], bool):
        return None
    ci = entry.get("ci")
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)):
        ci = None
    return float(entry["value"]), ([float(ci[0]), float(ci[1])] if ci else None)


def observe(summaries: Mapping[str, dict], rule: Rule) -> tuple[float, list[float] | None] | None:
    """The rule's observed value and interval; a difference of two entries gets the conservative interval
    [lo_a - hi_b, hi_a - lo_b] (an entry without interval counts as the point [v, v])."""
    a = measurement(summaries, rule.file, rule.key)
    if rule.minus is None or a is None:
        return a
    b = measurement(summaries, rule.file, rule.minus)
    if b is None:
        return None
    if a[1] is None and b[1] is None:
        return a[0] - b[0], None
    (a_lo, a_hi), (b_lo, b_hi) = a[1] or [a[0]] * 2, b[1] or [b[0]] * 2
    return a[0] - b[0], [a_lo - b_hi, a_hi - b_lo]


# --- deciding --------------------------------------------------------------------------------------
def decide(value: float, ci: list[float] | None, threshold: float, routing_side: str) -> str:
    """Which hypothesis a measurement supports: the side of `threshold` its whole interval (or, without
    one, its value) lies on; inconclusive when the interval contains the threshold."""
    if routing_side not in ("below", "above"):
        raise ValueError(f"routing_side={routing_side!r} must be 'below' or 'above'")
    lo, hi = ci if ci is not None else (value, value)
    if hi < threshold:
        side = "below"
    elif lo > threshold:
        side = "above"
    else:
        return INCONCLUSIVE
    return ROUTING if side == routing_side else REPRESENTATION


def evidence_table(summaries: Mapping[str, dict], params) -> pd.DataFrame:
    """One row per rule: measurement, threshold, predictions, observed value and interval, support."""
    rows = []
    for rule in RULES:
        threshold = float(getattr(params, rule.threshold))
        above_side = REPRESENTATION if rule.routing_side == "below" else ROUTING
        observed = observe(summaries, rule)
        value, ci = observed if observed else (None, None)
        rows.append({
            "measurement": rule.measurement,
            "source": f"{rule.file}: {rule.key}" + (f" - {rule.minus}" if rule.minus else ""),
            "threshold": threshold,
            "routing_predicts": f"{rule.routing_predicts} ({'<' if rule.routing_side == 'below' else '>'} {threshold:g})",
            "representation_predicts": f"{rule.representation_predicts} "
                                       f"({'>' if above_side == REPRESENTATION else '<'} {threshold:g})",
            "value": value,
            "ci": ci,
            "observed": format_observed(value, ci),
            "supports": NOT_MEASURED if observed is None else decide(value, ci, threshold, rule.routing_side),
        })
    return pd.DataFrame(rows)


def context_table(summaries: Mapping[str, dict]) -> pd.DataFrame:
    """The scene-setting measurements (accuracies, update sizes, ...) with their descriptions."""
    rows = []
    for file, key in CONTEXT:
        observed = measurement(summaries, file, key)
        value, ci = observed if observed else (None, None)
        description = summaries.get(file, {}).get(key, {}).get("description", "") if observed else ""
        rows.append({"measurement": key, "source": file, "observed": format_observed(value, ci),
                     "value": value, "ci": ci, "description": description})
    return pd.DataFrame(rows)


def tally(table: pd.DataFrame) -> dict[str, int]:
    counts = table["supports"].value_counts()
    return {label: int(counts.get(label, 0)) for label in (ROUTING, REPRESENTATION, INCONCLUSIVE, NOT_MEASURED)}


def overall(counts: Mapping[str, int], params) -> str:
    """The verdict from the tally: the side that leads by at least `min_margin` rows once at least
    `min_decided_rows` rows are decided; 'mixed' when neither leads enough; else 'inconclusive'."""
    decided = counts[ROUTING] + counts[REPRESENTATION]
    if decided < params.min_decided_rows:
        return INCONCLUSIVE
    lead = counts[ROUTING] - counts[REPRESENTATION]
    if abs(lead) < params.min_margin:
        return "mixed"
    return ROUTING if lead > 0 else REPRESENTATION


def thresholds_table(params) -> pd.DataFrame:
    """The decision rules as the notebook states them: one row per VerdictParams field."""
    return pd.DataFrame([{"param": f"verdict.{name}", "value": getattr(params, name), "rule": field.description}
                         for name, field in type(params).model_fields.items()])


def caveats(cfg, summaries: Mapping[str, dict], table: pd.DataFrame, parameters: int | None = None) -> list[str]:
    """What limits the verdict, generated from the params and the evidence: scale, seeds, task, gaps."""
    out = []
    if cfg.model.base == "organism":
        size = f"{parameters:,}" if parameters else (
            f"~{_organism_parameters(cfg.organism) / 1e6:.1f}M")
        out.append(f"Scale: a {size}-parameter model organism ({cfg.organism.num_layers} layers, hidden "
                   f"{cfg.organism.hidden_size}); what holds at this scale may not hold for billion-parameter models.")
    else:
        size = f" ({parameters / 1e9:.2f}B parameters)" if parameters else ""
        out.append(f"Scale: one base model, {cfg.model.base}{size}.")
    out.append(f"Seeds: one training run (seed {cfg.seed}); the intervals resample held-out problems, not "
               "training runs, so run-to-run variation of training is not in them.")
    d = cfg.data
    if d.grpo_source == "synthetic":
        steps = f"{d.min_steps}" if d.min_steps == d.max_steps else f"{d.min_steps}-{d.max_steps}"
        out.append(f"Task: synthetic {steps}-step add/subtract word problems (start <= {d.max_start}, operands "
                   f"<= {d.max_operand}, values <= {d.max_value}); one narrow skill, not general math reasoning.")
    else:
        out.append(f"Task: RLVR on {d.grpo_source} ({d.grpo_path}), evaluated on {d.eval_path or d.grpo_source}.")
    gain = measurement(summaries, "eval.json", "rlvr_minus_sft_accuracy")
    if gain is None:
        out.append("RLVR's accuracy gain over SFT was not measured: the internals compared may reflect no "
                   "behavioural change.")
    elif gain[1] is not None and gain[1][0] <= 0:
        out.append(f"RLVR's accuracy gain over SFT ({format_observed(*gain)}) is not clearly above zero: the "
                   "internal changes may not be the ones that matter for accuracy.")
    missing = table.loc[table["supports"] == NOT_MEASURED, "measurement"].tolist()
    if missing:
        out.append(f"Not measured ({len(missing)} of {len(table)} rows): " + "; ".join(missing) + ".")
    no_ci = [row.measurement for row in table.itertuples() if row.supports != NOT_MEASURED and row.ci is None]
    if no_ci:
        out.append("Decided on a point value, without an interval: " + "; ".join(no_ci) + ".")
    return out


def _organism_parameters(org) -> int:
    """Approximate parameter count of the organism (tied embeddings; q, k, v, o; gate, up, down)."""
    h, m, v = org.hidden_size, org.intermediate_size, org.vocab_size
    return v * h + org.num_layers * (4 * h * h + 3 * h * m)


def build(cfg) -> dict:
    """Everything notebook 08 writes to metrics/verdict.json: the evidence rows, the context, the tally,
    the verdict, the thresholds and the caveats."""
    summaries = load_summaries(cfg.path("metrics"))
    table = evidence_table(summaries, cfg.verdict)
    counts = tally(table)
    parameters = None
    weights_path = cfg.path("metrics", "weights.json")
    if weights_path.exists():
        parameters = json.loads(weights_path.read_text()).get("parameters")
    descriptions = {ROUTING: "evidence rows that support Routing", REPRESENTATION:
                    "evidence rows that support Representation learning", INCONCLUSIVE:
                    "evidence rows whose interval contains the threshold", NOT_MEASURED:
                    "evidence rows whose metrics file or key is missing"}
    keys = {ROUTING: "rows_routing", REPRESENTATION: "rows_representation_learning",
            INCONCLUSIVE: "rows_inconclusive", NOT_MEASURED: "rows_not_measured"}
    return {
        "summary": {keys[label]: {"value": float(n), "ci": None, "description": descriptions[label]}
                    for label, n in counts.items()},
        "verdict": overall(counts, cfg.verdict),
        "tally": counts,
        "rows": _records(table),
        "context": _records(context_table(summaries)),
        "thresholds": cfg.verdict.model_dump(),
        "caveats": caveats(cfg, summaries, table, parameters),
    }


# --- showing ---------------------------------------------------------------------------------------
def format_observed(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if ci is None else f"{value:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


_COLORS = {ROUTING: "#d8e8f7", REPRESENTATION: "#f9dcc4", INCONCLUSIVE: "#eeeeee", NOT_MEASURED: "#ffffff"}
_COLUMNS = {"measurement": "Measurement", "routing_predicts": "Routing predicts",
            "representation_predicts": "Representation learning predicts", "observed": "Observed [95% CI]",
            "supports": "Supports"}


def styled(table: pd.DataFrame):
    """The evidence table as a pandas Styler, the 'Supports' cell coloured by side."""
    shown = table[list(_COLUMNS)].rename(columns=_COLUMNS)
    return (shown.style.hide(axis="index")
            .map(lambda v: f"background-color: {_COLORS.get(v, '#ffffff')}", subset=["Supports"])
            .set_properties(**{"text-align": "left"}))


def markdown_table(table: pd.DataFrame) -> str:
    """The evidence table as a Markdown table (for the closing note)."""
    shown = table[list(_COLUMNS)].rename(columns=_COLUMNS)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines)


def evidence_figure(table: pd.DataFrame):
    """One small panel per measured row: the observed value with its interval, the threshold as a dashed
    line, the side Routing predicts shaded, the point coloured by the side the row supports."""
    import matplotlib.pyplot as plt

    shown = table[table["supports"] != NOT_MEASURED].reset_index(drop=True)
    fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(7.5, 0.9 * max(len(shown), 1) + 0.8), squeeze=False)
    for ax, row in zip(axes[:, 0], shown.itertuples()):
        lo, hi = row.ci if row.ci is not None else (row.value, row.value)
        span = max(abs(hi - row.threshold), abs(lo - row.threshold), abs(row.value - row.threshold), 1e-3) * 1.4
        rule = next(r for r in RULES if r.measurement == row.measurement)
        ax.axvspan(row.threshold - span if rule.routing_side == "below" else row.threshold,
                   row.threshold if rule.routing_side == "below" else row.threshold + span,
                   color=_COLORS[ROUTING], alpha=0.6, lw=0)
        ax.axvline(row.threshold, color="0.3", ls="--", lw=1)
        color = {ROUTING: "#1f77b4", REPRESENTATION: "#d95f02"}.get(row.supports, "0.4")
        ax.errorbar([row.value], [0], xerr=[[row.value - lo], [hi - row.value]], fmt="o", color=color, capsize=4)
        ax.set(xlim=(row.threshold - span, row.threshold + span), yticks=[], ylabel="")
        ax.set_title(f"{row.measurement}: {row.supports}", fontsize=9, loc="left")
    if shown.empty:
        axes[0, 0].text(0.5, 0.5, "no row measured yet", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[-1, 0].set_xlabel("observed value (dashed: threshold; shaded: the side Routing predicts)")
    fig.suptitle("Evidence rows: observed value and 95% interval against each threshold")
    fig.tight_layout()
    return fig


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()} for rec in df.to_dict("records")]
