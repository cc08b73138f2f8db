"""The evidence table: each measurement on RLVR read against the same measurement on random updates of the
same size, and trusted only when it classifies known controls correctly.

Every analysis writes, per treatment T compared with SFT, `metrics/<file>["variants"][T][key] = {value, ci}`
(see `variants.py` for the treatments). A row is a list of *signals*: a key, the direction in which a value
beyond the nulls counts (`high` or `low`), and the hypothesis it then supports. For one treatment:

- the **null envelope** is the union of the nulls' intervals (a null itself is read against the other nulls);
- a signal **fires** when T's whole interval lies beyond that envelope in its direction *and* T's distance
  from the nulls' mean reaches the row's effect size: `relative` signals need a distance of at least
  `verdict.min_relative_effect` times the nulls' own scale (mean |value| plus spread), `absolute` ones a
  distance of at least the VerdictParams field they name;
- the row reads **Representation learning** when a Representation signal fires (MLP change beyond random),
  else **Routing** when a Routing signal fires, else **no evidence** ("indistinguishable from a random update
  of the same size"); without a value and interval for T and at least two nulls it is **not measured**.

A row **counts** toward the verdict only when it passes its calibration on this run: the attention-only
control reads Routing and the MLP-only control Representation learning (a row that can only support one side
must read "no evidence" on the other control), and the identical model and every null read no evidence.
With replicate seeds, a row counts only when it counts on every seed and RLVR's reading agrees across them.
The rules are data (RULES), so the notebook prints them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from rlvr_utils.core import artifacts
from rlvr_utils.evidence import replicate as replication
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import NO_EVIDENCE, REPRESENTATION, ROUTING  # one definition of the readings

PARAMS = ("verdict", "organism")  # params sections read here (rlvr_utils.core.deps)

log = logging.getLogger(__name__)

NOT_MEASURED = "not measured"
INCONCLUSIVE = "inconclusive"
METRICS_FILES = ("eval.json", "variants.json", "same_input.json", "cka.json", "probes.json", "crosscoder.json",
                 "patching.json", "grafting.json", "weights.json")


@dataclass(frozen=True)
class Signal:
    key: str
    direction: Literal["high", "low"]
    supports: str
    effect: str = "relative"  # 'relative', or a VerdictParams field holding an absolute distance


@dataclass(frozen=True)
class Rule:
    measurement: str
    file: str
    signals: tuple[Signal, ...]
    routing_predicts: str
    representation_predicts: str
    counted: bool = True  # False: shown, but it re-reads a measurement that a counted row already uses
    note: str = ""


def _pair(attn: str, mlp: str, effect: str = "relative") -> tuple[Signal, ...]:
    return (Signal(attn, "high", ROUTING, effect), Signal(mlp, "high", REPRESENTATION, effect))


RULES: tuple[Rule, ...] = (
    Rule("Same-input change of each component's function, 1 − CKA (SFT's inputs through SFT's and T's weights)",
         "same_input.json", _pair("attn_change", "mlp_change"),
         "attention changed beyond random, MLPs did not", "MLPs changed beyond random"),
    Rule("Same-input relative change of each component's output", "same_input.json",
         _pair("attn_relative_change", "mlp_relative_change"), "attention changed beyond random, MLPs did not",
         "MLPs changed beyond random", counted=False, note="the same outputs as the CKA row"),
    Rule("End-to-end change of component outputs, 1 − CKA (each model on its own residual stream)", "cka.json",
         _pair("attn_change_end_to_end", "mlp_change_end_to_end"), "attention outputs moved beyond random, MLP "
         "outputs did not", "MLP outputs moved beyond random",
         note="mixes in upstream changes: an MLP reading a changed residual stream moves with it"),
    Rule("Direct effect on the answer's log-probability of T's component outputs patched into SFT (later "
         "components frozen)", "patching.json", _pair("attn_direct_effect", "mlp_direct_effect"),
         "attention carries the effect", "MLPs carry the effect"),
    Rule("Structured (top-k) energy of the weight update, per matrix relative to the nulls'", "weights.json",
         _pair("attn_structured_update_vs_null", "mlp_structured_update_vs_null", "null_ratio_margin"),
         "structured update in attention only", "structured update reaches the MLPs"),
    Rule("Rotation of the weights' top singular subspace (k at the spectral gap), per matrix relative to the "
         "nulls'", "weights.json", _pair("attn_rotation_vs_null", "mlp_rotation_vs_null", "null_ratio_margin"),
         "attention subspaces rotated beyond random, MLPs' not", "MLP subspaces rotated beyond random"),
    Rule("MLP share of the update's energy per parameter", "weights.json",
         (Signal("mlp_share", "low", ROUTING, "share_margin"), Signal("mlp_share", "high", REPRESENTATION,
                                                                      "share_margin")),
         "attention-heavy", "MLP-heavy",
         note="the nulls copy RLVR's per-tensor norms, so RLVR's own share always equals theirs"),
    Rule("Effective rank of the update / full rank", "weights.json",
         (Signal("effective_rank_ratio", "low", ROUTING, "share_margin"),), "lower rank than random", "—"),
    Rule("Gain in probe selectivity for intermediate results over SFT", "probes.json",
         (Signal("selectivity_gain", "high", REPRESENTATION, "probe_gain_margin"),), "—",
         "new decodable intermediate results"),
    Rule("Model-specific crosscoder latents (SFT vs T)", "crosscoder.json",
         (Signal("specific_latents", "high", REPRESENTATION),), "—", "features that SFT lacks"),
)

# Shown beside the evidence, not tallied: did RLVR help, and by how much did the controls and nulls?
ACCURACY: tuple[tuple[str, str], ...] = (
    ("eval.json", "accuracy_base"), ("eval.json", "accuracy_sft"), ("eval.json", "accuracy_rlvr"),
    ("eval.json", "rlvr_minus_sft_accuracy"))
CONTEXT: tuple[tuple[str, str], ...] = (
    ("weights.json", "rlvr_relative_update_norm"), ("weights.json", "sft_relative_update_norm"),
    ("cka.json", "cka_permutation_baseline"),
    ("grafting.json", "graft_attn_share"), ("grafting.json", "graft_mlp_share"),
)


# --- reading ---------------------------------------------------------------------------------------
def context_keys(controls: list[str]) -> list[tuple[str, str]]:
    """Accuracies, each control's gain over SFT (the variants chapter's variants.json), then the other context rows."""
    return [*ACCURACY, *(("variants.json", f"{c}_minus_sft_accuracy") for c in controls), *CONTEXT]


def load_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    """{file name: its JSON} for the metrics files that exist; an unreadable one is left out with a warning
    (its rows become "not measured")."""
    out = {}
    for name in METRICS_FILES:
        path = Path(metrics_dir) / name
        if not path.exists():
            continue
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            log.warning("%s is not valid JSON (%s): its rows are not measured; re-run its notebook", path, err)
            continue
        if isinstance(loaded, dict):
            out[name] = loaded
    return out


def _entry(entry) -> tuple[float, tuple[float, float] | None] | None:
    if not isinstance(entry, dict):
        return None
    value, ci = entry.get("value"), entry.get("ci")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        return None
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
        isinstance(c, (int, float)) and np.isfinite(c) for c in ci)
    return float(value), ((float(ci[0]), float(ci[1])) if ok else None)


def variant_value(metrics: Mapping[str, dict], file: str, treatment: str, key: str):
    """(value, ci or None) of one treatment's measurement, None when missing or not a number."""
    return _entry(metrics.get(file, {}).get("variants", {}).get(treatment, {}).get(key))


def summary_value(metrics: Mapping[str, dict], file: str, key: str):
    return _entry(metrics.get(file, {}).get("summary", {}).get(key))


# --- deciding --------------------------------------------------------------------------------------
@dataclass
class SignalReading:
    fired: bool
    value: float | None
    ci: tuple[float, float] | None
    null_mean: float | None
    envelope: tuple[float, float] | None
    effect: float | None  # signed distance from the nulls' mean, in the row's effect units


def read_signal(signal: Signal, value, nulls: list, params) -> SignalReading:
    """Whether one treatment's (value, ci) lies beyond the nulls' envelope by the signal's effect size."""
    if value is None or value[1] is None or len(nulls) < 2:
        return SignalReading(False, value and value[0], value and value[1], None, None, None)
    x, (lo, hi) = value
    null_values = np.array([n[0] for n in nulls])
    envelope = (min(n[1][0] if n[1] else n[0] for n in nulls), max(n[1][1] if n[1] else n[0] for n in nulls))
    mean = float(null_values.mean())
    if signal.effect == "relative":
        scale = float(np.abs(null_values).mean() + null_values.std(ddof=1))
        needed = params.min_relative_effect
        effect = (x - mean) / scale if scale > 0 else (np.sign(x - mean) * np.inf if x != mean else 0.0)
    else:
        needed = float(getattr(params, signal.effect))
        effect = x - mean
    if signal.direction == "high":
        fired = lo > envelope[1] and effect >= needed
    else:
        fired = hi < envelope[0] and -effect >= needed
    return SignalReading(bool(fired), x, (lo, hi), mean, envelope, float(effect))


def read_rule(rule: Rule, metrics: Mapping[str, dict], treatment: str, null_names: list[str], params) -> dict:
    """One row for one treatment: its reading and, per signal, the value, interval, null envelope and effect."""
    others = [n for n in null_names if n != treatment]
    signals = []
    for signal in rule.signals:
        nulls = [v for v in (variant_value(metrics, rule.file, n, signal.key) for n in others) if v is not None]
        signals.append((signal, read_signal(signal, variant_value(metrics, rule.file, treatment, signal.key),
                                            nulls, params), len(nulls)))
    measured = all(r.ci is not None and n >= 2 for _, r, n in signals)
    fired = {s.supports for s, r, _ in signals if r.fired}
    if REPRESENTATION in fired:
        reading = REPRESENTATION
    elif ROUTING in fired:
        reading = ROUTING
    elif not measured:
        reading = NOT_MEASURED
    else:
        reading = NO_EVIDENCE
    return {"reading": reading, "signals": [
        {"key": s.key, "direction": s.direction, "supports": s.supports, "value": r.value,
         "ci": list(r.ci) if r.ci else None, "null_mean": r.null_mean,
         "null_envelope": list(r.envelope) if r.envelope else None, "effect": r.effect, "fired": r.fired,
         "n_nulls": n} for s, r, n in signals]}


def calibration(rule: Rule, readings: Mapping[str, str], null_names: list[str], expected: Mapping[str, str]) -> str:
    """'counts', or why the row does not: a treatment with a known answer misread (a control, a null or the
    identical model read as evidence), or a control or nulls missing. `expected`: {treatment: known answer}
    (treatments.registry.expected)."""
    sides = {s.supports for s in rule.signals}
    problems = [f"no control with a known {answer} answer in this run" for answer in (ROUTING, REPRESENTATION)
                if answer not in expected.values()]
    for control, answer in expected.items():
        if answer not in (ROUTING, REPRESENTATION):
            continue
        expected_reading = answer
        got = readings.get(control)
        if got in (None, NOT_MEASURED):
            problems.append(f"control {control} not measured")
        elif expected_reading in sides and got != expected_reading:
            problems.append(f"{control} reads {got}, expected {expected_reading}")
        elif expected_reading not in sides and got != NO_EVIDENCE:
            problems.append(f"{control} reads {got}, expected no evidence (this row cannot support "
                            f"{expected_reading})")
    if len(null_names) < 2:
        problems.append("fewer than 2 nulls")
    for name in [n for n, answer in expected.items() if answer == NO_EVIDENCE]:
        if readings.get(name) in (ROUTING, REPRESENTATION):
            problems.append(f"{name} reads {readings[name]}")
    if not rule.counted:
        problems.append(f"not counted: {rule.note}")
    return "counts" if not problems else "; ".join(problems)


def calibration_short(calibration: str) -> str:
    """A row's calibration in a few words, for per-seed tables."""
    if calibration == "counts":
        return "counts"
    return "not counted by design" if calibration.startswith("not counted") else "fails calibration"


def evidence(metrics: Mapping[str, dict], treatments: list[str], null_names: list[str], params,
             expected: Mapping[str, str]) -> pd.DataFrame:
    """One row per rule: each treatment's reading, RLVR's signals, and whether the row counts. `expected`
    gives the known answers ({treatment: reading}) that calibrate each row."""
    rows = []
    for rule in RULES:
        per = {t: read_rule(rule, metrics, t, null_names, params) for t in treatments}
        readings = {t: r["reading"] for t, r in per.items()}
        rows.append({"measurement": rule.measurement, "file": rule.file,
                     "routing_predicts": rule.routing_predicts, "representation_predicts": rule.representation_predicts,
                     "note": rule.note, "readings": readings, "rlvr": readings.get(registry.STUDY, NOT_MEASURED),
                     "signals": per.get(registry.STUDY, {}).get("signals", []),
                     "calibration": calibration(rule, readings, null_names, expected)})
    return pd.DataFrame(rows)


def tally(table: pd.DataFrame, treatment: str = registry.STUDY, counted_only: bool = True) -> dict[str, int]:
    rows = table[table["calibration"] == "counts"] if counted_only else table
    readings = [r.get(treatment, NOT_MEASURED) for r in rows["readings"]]
    return {label: readings.count(label) for label in (ROUTING, REPRESENTATION, NO_EVIDENCE, NOT_MEASURED)}


def overall(counts: Mapping[str, int], params) -> str:
    """The side that leads by at least `min_margin` counted rows once at least `min_decided_rows` are decided;
    'mixed' when neither leads enough; else 'inconclusive'."""
    decided = counts[ROUTING] + counts[REPRESENTATION]
    if decided < params.min_decided_rows:
        return INCONCLUSIVE
    lead = counts[ROUTING] - counts[REPRESENTATION]
    if abs(lead) < params.min_margin:
        return "mixed"
    return ROUTING if lead > 0 else REPRESENTATION


# --- replication over seeds ------------------------------------------------------------------------------
def replicate_dirs(cfg) -> dict[int, Path]:
    """Metrics folders of the replicate seeds (`verdict.replicate_seeds`) that `replicate` ran for this run and
    that have a verdict; the run itself is one of them under its own seed."""
    out = {cfg.seed: cfg.path("metrics")}
    made = replication.recorded(cfg)
    for seed in cfg.verdict.replicate_seeds:
        if seed != cfg.seed and seed in made and (made[seed] / "metrics" / "verdict.json").exists():
            out[seed] = made[seed] / "metrics"
    return dict(sorted(out.items()))


def outside_inputs(cfg) -> dict[str, str | None]:
    """Files outside this run that the verdict reads (the replicate seeds'), with their content digests: the
    runner re-runs the verdict chapter when one changes."""
    return {str(folder / name): artifacts.digest(folder / name) for seed, folder in replicate_dirs(cfg).items()
            if seed != cfg.seed for name in ("verdict.json", "variants.json")}


def replicate(table: pd.DataFrame, seed: int, others: Mapping[int, dict]) -> pd.DataFrame:
    """Add per-seed RLVR readings and calibrations (this run's `seed`, and other seeds' verdict.json); a row
    keeps counting only when it counts on every seed and RLVR reads the same on all of them."""
    table = table.copy()
    seeds_reading, final = [], []
    for i, row in table.iterrows():
        per_seed = {f"seed {seed}": (row["rlvr"], row["calibration"])}
        for other, result in others.items():
            match = next((r for r in result["rows"] if r["measurement"] == row["measurement"]), None)
            per_seed[f"seed {other}"] = (match["rlvr"], match["calibration"]) if match else (NOT_MEASURED, "missing")
        seeds_reading.append({k: {"rlvr": v[0], "calibration": v[1]} for k, v in per_seed.items()})
        agree = len({v[0] for v in per_seed.values()}) == 1 and all(v[1] == "counts" for v in per_seed.values())
        if row["calibration"] == "counts" and not agree:
            final.append("seeds disagree: " + ", ".join(f"{k} {v[0]} ({v[1]})" for k, v in per_seed.items()))
        else:
            final.append(row["calibration"])
    table["seeds"] = seeds_reading
    table["calibration"] = final
    return table


# --- the whole chapter's result -----------------------------------------------------------------------------
def build(cfg) -> dict:
    """Everything the verdict chapter writes to metrics/verdict.json: rows with every treatment's reading and RLVR's
    signals, the calibration of each row, the verdict per treatment, replication, context and caveats."""
    metrics = load_metrics(cfg.path("metrics"))
    null_names = registry.names(cfg, "null")
    treatments = registry.names(cfg)
    table = evidence(metrics, treatments, null_names, cfg.verdict, registry.expected(cfg))
    single_seed = table.copy()
    others, per_seed = {}, {}
    for seed, folder in replicate_dirs(cfg).items():
        if folder == cfg.path("metrics"):
            reading = overall(tally(single_seed, registry.STUDY), cfg.verdict)
        else:
            other = json.loads((folder / "verdict.json").read_text())
            others[seed], reading = other["single_seed"], other["verdict"]
        per_seed[seed] = {"verdict": reading, "gains": _gains(folder)}
    if others:
        table = replicate(table, cfg.seed, others)
    verdicts = {t: overall(tally(table, t), cfg.verdict) for t in treatments}
    counts = tally(table)
    return {
        "summary": {
            "rows_counted": {"value": float((table["calibration"] == "counts").sum()), "ci": None,
                             "description": "evidence rows that pass their calibration (controls, nulls, seeds)"},
            "rows_routing": {"value": float(counts[ROUTING]), "ci": None,
                             "description": "counted rows on which RLVR reads Routing"},
            "rows_representation_learning": {"value": float(counts[REPRESENTATION]), "ci": None,
                                             "description": "counted rows on which RLVR reads Representation learning"},
        },
        "verdict": verdicts.get(registry.STUDY, INCONCLUSIVE),
        "verdicts": verdicts,
        "tally": counts,
        "rows": _records(table),
        "single_seed": {"rows": _records(single_seed)},
        "seeds": [cfg.seed, *others],
        "per_seed": per_seed,
        "context": context(metrics, registry.names(cfg, "control")),
        "thresholds": cfg.verdict.model_dump(),
        "caveats": caveats(cfg, metrics, table, list(others)),
    }


def _gains(metrics_dir: Path) -> dict[str, dict]:
    """Each treatment's greedy accuracy gain over SFT on that seed (the variants chapter), with its interval."""
    path = metrics_dir / "variants.json"
    found = json.loads(path.read_text())["variants"] if path.exists() else {}
    return {t: v["gain"] for t, v in found.items() if "gain" in v}


def context(metrics: Mapping[str, dict], controls: list[str]) -> list[dict]:
    rows = []
    for file, key in context_keys(controls):
        observed = summary_value(metrics, file, key)
        entry = metrics.get(file, {}).get("summary", {}).get(key, {})
        rows.append({"measurement": key, "source": file, "observed": format_observed(*(observed or (None, None))),
                     "description": entry.get("description", "") if isinstance(entry, dict) else ""})
    return rows


def caveats(cfg, metrics: Mapping[str, dict], table: pd.DataFrame, other_seeds: list[int]) -> list[str]:
    """What limits the verdict, generated from the params and the evidence."""
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
    gain = summary_value(metrics, "eval.json", "rlvr_minus_sft_accuracy")
    if gain is None:
        out.append("RLVR's accuracy gain over SFT was not measured.")
    elif gain[1] is not None and gain[1][0] <= 0:
        out.append(f"RLVR's accuracy gain over SFT ({format_observed(*gain)}) is not clearly above zero: the "
                   "internal changes may not be the ones that matter for accuracy.")
    failing = table.loc[table["calibration"] != "counts", "measurement"].tolist()
    if failing:
        out.append(f"{len(failing)} of {len(table)} rows do not count (see the calibration column).")
    return out


# --- showing ---------------------------------------------------------------------------------------
def format_observed(value: float | None, ci) -> str:
    if value is None:
        return "—"
    exact = ci is None or None in ci or ci[0] == ci[1]  # an exact value (a count, a total) has no interval to show
    return f"{value:.3g}" if exact else f"{value:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()} for rec in df.to_dict("records")]
