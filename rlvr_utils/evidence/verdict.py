"""The evidence table: each measurement on RLVR read against the same measurement on updates that carry no task
signal, and trusted only when it reads known controls correctly.

Every analysis writes, per treatment T compared with SFT, `metrics/<file>["variants"][T][key] = {value, ci}`
(treatments: rlvr_utils.treatments). A row is a list of *signals*: a key, the direction in which a value beyond
the references counts (`high` or `low`), and the hypothesis it then supports. For one treatment:

- its **references** are the treatments known to carry no task signal, other than itself and its own rescaled
  copy: the *placebo* runs (RLVR's recipe paid by draws that ignore the completion: a trained update of RLVR's
  kind and size, the yardstick) and, as weaker references, the random-direction nulls and the identical copy;
- the **envelope** is the union of the references' intervals; a signal **fires** when T's whole interval lies
  beyond it in its direction *and* T's distance from the placebos' mean (the references' when fewer than two
  placebos) reaches the row's effect size: `relative` signals need a distance of `verdict.min_relative_effect`
  times the placebos' own scale (mean |value| plus spread), absolute ones the VerdictParams field they name;
- a row reads **Routing** when only its attention signal fires, **Representation learning** when only its MLP
  signal fires, **both** when both fire (**redundant** on a behavioural row where each component alone recovers
  at least `verdict.redundant_share` of T's gain), else **no evidence**; **not measured** without a value and
  interval for T and two references. No side wins by the order of the rules.

A row **counts** only when it reads every treatment with a known answer right on this run: the frozen controls
(one component trained, the rest frozen) and the full-parameter controls (a trained update of one component plus
a placebo's update of everything else, raw and at RLVR's norm) their side, and every placebo, null and the identical model "no
evidence"; it needs two placebos and a frozen and a full-parameter control of each answer. Rows that read one
measurement form a *group* that votes once. The verdict combines the counted groups' readings the same way,
without an order (`overall`). With replicate seeds, a row counts only when it counts on every seed and RLVR's
reading agrees across them. The rules are data (RULES), so the notebook prints them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from rlvr_utils.core import artifacts, fmt
from rlvr_utils.evidence import limits, replicate as replication
from rlvr_utils.treatments import registry
from rlvr_utils.treatments.registry import (  # one definition of the readings
    BOTH, NO_EVIDENCE, NOT_MEASURED, REDUNDANT, REPRESENTATION, ROUTING)

PARAMS = ("verdict", "organism")  # params sections read here (rlvr_utils.core.deps)

log = logging.getLogger(__name__)

INCONCLUSIVE = "inconclusive"
NEITHER = "neither"  # enough calibrated rows, and none tells the treatment from an update without task signal
DECIDED = (ROUTING, REPRESENTATION, BOTH, REDUNDANT)  # readings that say where a task-relevant change lives
METRICS_FILES = ("eval.json", "variants.json", "same_input.json", "cka.json", "probes.json", "crosscoder.json",
                 "transfer.json", "patching.json", "grafting.json", "weights.json")


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
    group: str  # rows that read one measurement vote once
    counted: bool = True  # False: shown, but it re-reads a measurement that a counted row already uses
    note: str = ""
    redundant: tuple[str, str] | None = None  # the attention and MLP shares of T's gain, when both sides fire


def _pair(attn: str, mlp: str, effect: str = "relative") -> tuple[Signal, ...]:
    return (Signal(attn, "high", ROUTING, effect), Signal(mlp, "high", REPRESENTATION, effect))


RULES: tuple[Rule, ...] = (
    Rule("Accuracy gain over SFT of SFT with T's attention update alone / T's MLP update alone (greedy, paired)",
         "grafting.json", _pair("attn_graft_gain", "mlp_graft_gain", "behaviour_margin"),
         "the attention update alone carries the gain", "the MLP update alone carries the gain", "behaviour",
         redundant=("graft_attn_share", "graft_mlp_share"),
         note="both: each side helps beyond a placebo; redundant: each alone recovers most of T's gain"),
    Rule("Same-input change of each component's function, 1 − CKA (SFT's inputs through SFT's and T's weights)",
         "same_input.json", _pair("attn_change", "mlp_change"),
         "attention changed beyond a placebo, MLPs did not", "MLPs changed beyond a placebo", "same-input function"),
    Rule("Same-input relative change of each component's output", "same_input.json",
         _pair("attn_relative_change", "mlp_relative_change"), "attention changed beyond a placebo, MLPs did not",
         "MLPs changed beyond a placebo", "same-input function", counted=False, note="the same outputs as the CKA row"),
    Rule("End-to-end change of component outputs, 1 − CKA (each model on its own residual stream)", "cka.json",
         _pair("attn_change_end_to_end", "mlp_change_end_to_end"), "attention outputs moved beyond a placebo, MLP "
         "outputs did not", "MLP outputs moved beyond a placebo", "end-to-end outputs",
         note="mixes in upstream changes: an MLP reading a changed residual stream moves with it"),
    Rule("Direct effect on the answer's log-probability of T's component outputs patched into SFT (later "
         "components frozen)", "patching.json", _pair("attn_direct_effect", "mlp_direct_effect"),
         "attention carries the effect", "MLPs carry the effect", "direct effect"),
    Rule("Structured (top-k) energy of the weight update, per matrix relative to a random update's", "weights.json",
         _pair("attn_structured_update_vs_null", "mlp_structured_update_vs_null", "null_ratio_margin"),
         "structured update in attention only", "structured update reaches the MLPs", "weight update"),
    Rule("Rotation of the weights' top singular subspace (k at the spectral gap), per matrix relative to a random "
         "update's", "weights.json", _pair("attn_rotation_vs_null", "mlp_rotation_vs_null", "null_ratio_margin"),
         "attention subspaces rotated beyond a placebo, MLPs' not", "MLP subspaces rotated beyond a placebo",
         "weight update"),
    Rule("MLP share of the update's energy per parameter", "weights.json",
         (Signal("mlp_share", "low", ROUTING, "share_margin"), Signal("mlp_share", "high", REPRESENTATION,
                                                                      "share_margin")),
         "attention-heavy", "MLP-heavy", "weight update",
         note="the norm-matched placebos have RLVR's per-tensor norms, so RLVR's own share equals theirs"),
    Rule("Effective rank of the update / full rank", "weights.json",
         (Signal("effective_rank_ratio", "low", ROUTING, "share_margin"),), "lower rank than a placebo", "—",
         "weight update"),
    Rule("Gain in probe selectivity for intermediate results over SFT", "probes.json",
         (Signal("selectivity_gain", "high", REPRESENTATION, "probe_gain_margin"),), "—",
         "new decodable intermediate results", "probes"),
    Rule("Model-specific crosscoder latents (SFT vs T)", "crosscoder.json",
         (Signal("specific_latents", "high", REPRESENTATION),), "—", "features that SFT lacks", "crosscoder"),
    Rule("Share of T's activations that SFT's sparse dictionary leaves unexplained, beyond SFT's own (dictionary "
         "transfer, held-out problems)", "transfer.json", (Signal("dictionary_excess_fvu", "high", REPRESENTATION),),
         "—", "features SFT's dictionary lacks (new, or lost)", "dictionary transfer"),
)

# Shown beside the evidence, not tallied: did RLVR help, and by how much did the controls and nulls?
ACCURACY: tuple[tuple[str, str], ...] = (
    ("eval.json", "accuracy_base"), ("eval.json", "accuracy_sft"), ("eval.json", "accuracy_rlvr"),
    ("eval.json", "rlvr_minus_sft_accuracy"))
CONTEXT: tuple[tuple[str, str], ...] = (
    ("weights.json", "rlvr_relative_update_norm"), ("weights.json", "sft_relative_update_norm"),
    ("cka.json", "cka_permutation_baseline"),
)
SHARES = ("graft_attn_share", "graft_mlp_share", "graft_attn_mlp_share")  # where RLVR's gain lives (grafting.json)


@dataclass(frozen=True)
class Design:
    """Who is read against whom: each treatment's kind, the known answers, which controls are full-parameter, and
    which treatments carry the same update direction (a rescaled copy). `from_registry(cfg)` on a run."""

    kinds: Mapping[str, str]  # treatment -> its kind (registry.Kind)
    expected: Mapping[str, str] = field(default_factory=dict)  # treatment -> the reading it must get
    full: frozenset[str] = frozenset()  # controls whose other components moved too
    roots: Mapping[str, str] = field(default_factory=dict)  # treatment -> the update it rescales (itself if none)
    scope: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # control -> the row groups it calibrates

    @classmethod
    def from_registry(cls, cfg) -> "Design":
        everything = registry.all(cfg)
        return cls({t.name: t.kind for t in everything}, registry.expected(cfg),
                   frozenset(t.name for t in everything if t.full),
                   {t.name: t.rescales or t.name for t in everything},
                   {t.name: t.calibrates for t in everything if t.calibrates is not None})

    def expected_in(self, group: str) -> dict[str, str]:
        """The known answers that hold for a row group (a planted feature calibrates the feature rows only)."""
        return {t: a for t, a in self.expected.items() if group in self.scope.get(t, (group,))}

    @property
    def treatments(self) -> list[str]:
        return list(self.kinds)

    def of_kind(self, *kinds: str) -> list[str]:
        return [t for t, k in self.kinds.items() if k in kinds]

    def references(self, treatment: str) -> tuple[list[str], list[str]]:
        """(placebos, weaker references) a treatment is read against: never itself nor its own rescaled copy."""
        root = self.roots.get(treatment, treatment)
        others = [t for t in self.of_kind(*registry.REFERENCE_KINDS) if self.roots.get(t, t) != root and t != treatment]
        return [t for t in others if self.kinds[t] == "placebo"], [t for t in others if self.kinds[t] != "placebo"]


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
    null_mean: float | None  # the placebos' mean (the references' when fewer than two placebos)
    envelope: tuple[float, float] | None  # the union of every reference's interval
    effect: float | None  # signed distance from that mean, in the row's effect units


def read_signal(signal: Signal, value, placebos: list, others: list, params) -> SignalReading:
    """Whether one treatment's (value, ci) lies beyond every reference's interval and far enough from the
    placebos' mean. `placebos`, `others`: the references' (value, ci) pairs."""
    references = placebos + others
    if value is None or value[1] is None or len(references) < 2:
        return SignalReading(False, value and value[0], value and value[1], None, None, None)
    x, (lo, hi) = value
    yardstick = np.array([n[0] for n in (placebos if len(placebos) >= 2 else references)])
    envelope = (min(n[1][0] if n[1] else n[0] for n in references),
                max(n[1][1] if n[1] else n[0] for n in references))
    mean = float(yardstick.mean())
    if signal.effect == "relative":
        scale = float(np.abs(yardstick).mean() + yardstick.std(ddof=1))
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


def _reading(rule: Rule, fired: set[str], measured: bool, shares, params) -> str:
    """The row's reading from which sides fired; both sides are one reading, never a rule's order."""
    if fired >= {ROUTING, REPRESENTATION}:
        if rule.redundant and all(s is not None and s[0] >= params.redundant_share for s in shares):
            return REDUNDANT
        return BOTH
    if fired:
        return next(iter(fired))
    return NO_EVIDENCE if measured else NOT_MEASURED


def read_rule(rule: Rule, metrics: Mapping[str, dict], treatment: str, design: Design, params) -> dict:
    """One row for one treatment: its reading and, per signal, the value, interval, reference envelope and
    effect."""
    placebo_names, other_names = design.references(treatment)
    signals = []
    for signal in rule.signals:
        def values(names):
            return [v for v in (variant_value(metrics, rule.file, n, signal.key) for n in names) if v is not None]
        placebos, others = values(placebo_names), values(other_names)
        signals.append((signal, read_signal(signal, variant_value(metrics, rule.file, treatment, signal.key),
                                            placebos, others, params), len(placebos), len(others)))
    measured = all(r.ci is not None and p + o >= 2 for _, r, p, o in signals)
    fired = {s.supports for s, r, _, _ in signals if r.fired}
    shares = [variant_value(metrics, rule.file, treatment, k) for k in rule.redundant or ()]
    return {"reading": _reading(rule, fired, measured, shares, params), "signals": [
        {"key": s.key, "direction": s.direction, "supports": s.supports, "value": r.value,
         "ci": list(r.ci) if r.ci else None, "null_mean": r.null_mean,
         "null_envelope": list(r.envelope) if r.envelope else None, "effect": r.effect, "fired": r.fired,
         "n_placebos": p, "n_nulls": o} for s, r, p, o in signals]}


def calibration(rule: Rule, readings: Mapping[str, str], design: Design) -> str:
    """'counts', or why the row does not: a treatment with a known answer misread (a control read as anything
    but its side, a placebo, a null or the identical model read as evidence), or a control or placebos
    missing."""
    sides = {s.supports for s in rule.signals}
    expected = design.expected_in(rule.group)
    problems = []
    for answer in (ROUTING, REPRESENTATION):
        known = [t for t, a in expected.items() if a == answer and t not in design.scope]
        if not [t for t in known if t not in design.full]:
            problems.append(f"no frozen control with a known {answer} answer in this run")
        if not [t for t in known if t in design.full]:
            problems.append(f"no full-parameter control with a known {answer} answer in this run "
                            "(variants.hybrids)")
    if len(design.of_kind("placebo")) < 2:
        problems.append("fewer than 2 placebo runs (variants.placebos): a random update is no yardstick for a "
                        "trained one")
    for control, answer in expected.items():
        if answer not in (ROUTING, REPRESENTATION):
            continue
        got = readings.get(control)
        wanted = answer if answer in sides else NO_EVIDENCE
        if got in (None, NOT_MEASURED):
            problems.append(f"control {control} not measured")
        elif got != wanted:
            problems.append(f"{control} reads {got}, expected {wanted}"
                            + ("" if answer in sides else f" (this row cannot support {answer})"))
    for name in [n for n, answer in expected.items() if answer == NO_EVIDENCE]:
        if readings.get(name) in DECIDED:
            problems.append(f"{name} reads {readings[name]}")
    if not rule.counted:
        problems.append(f"not counted: {rule.note}")
    return "counts" if not problems else "; ".join(problems)


def calibration_short(calibration: str) -> str:
    """A row's calibration in a few words, for per-seed tables."""
    if calibration == "counts":
        return "counts"
    return "not counted by design" if calibration.startswith("not counted") else "fails calibration"


def evidence(metrics: Mapping[str, dict], design: Design, params) -> pd.DataFrame:
    """One row per rule: each treatment's reading, RLVR's signals, and whether the row counts."""
    rows = []
    for rule in RULES:
        per = {t: read_rule(rule, metrics, t, design, params) for t in design.treatments}
        readings = {t: r["reading"] for t, r in per.items()}
        rows.append({"measurement": rule.measurement, "file": rule.file, "group": rule.group,
                     "routing_predicts": rule.routing_predicts, "representation_predicts": rule.representation_predicts,
                     "note": rule.note, "readings": readings, "rlvr": readings.get(registry.STUDY, NOT_MEASURED),
                     "signals": per.get(registry.STUDY, {}).get("signals", []),
                     "calibration": calibration(rule, readings, design)})
    return pd.DataFrame(rows)


def combine(readings: list[str]) -> str:
    """Several readings of one treatment as one, without an order: the one label they share; 'redundant' only
    when every decided reading says so; 'both' when the decided readings support both sides; no evidence when
    none is decided."""
    decided = {r for r in readings if r in DECIDED}
    if not decided:
        return NO_EVIDENCE if NO_EVIDENCE in readings else NOT_MEASURED
    if len(decided) == 1:
        return decided.pop()
    return BOTH


def tally(table: pd.DataFrame, treatment: str = registry.STUDY, counted_only: bool = True,
          groups: tuple[str, ...] | None = None) -> dict[str, int]:
    """How many measurement groups (all, or those in `groups`) read each label for a treatment (a group's counted
    rows combined: one vote)."""
    rows = table[table["calibration"] == "counts"] if counted_only else table
    rows = rows if groups is None else rows[rows["group"].isin(groups)]
    groups: dict[str, list[str]] = {}
    for _, row in rows.iterrows():
        groups.setdefault(row["group"], []).append(row["readings"].get(treatment, NOT_MEASURED))
    votes = [combine(readings) for readings in groups.values()]
    return {label: votes.count(label) for label in (*DECIDED, NO_EVIDENCE, NOT_MEASURED)}


def overall(counts: Mapping[str, int], params) -> str:
    """The verdict from the counted groups' votes, in no order: inconclusive with fewer than
    `min_decided_rows` decided groups (and 'neither' when at least that many groups counted and none decided);
    otherwise the one label they share, 'redundant' when all say so, else 'both'."""
    decided = sum(counts.get(label, 0) for label in DECIDED)
    if decided < params.min_decided_rows:
        counted = decided + counts.get(NO_EVIDENCE, 0)
        return NEITHER if decided == 0 and counted >= params.min_decided_rows else INCONCLUSIVE
    return combine([label for label in DECIDED for _ in range(counts.get(label, 0))])


# --- replication over seeds ------------------------------------------------------------------------------
replicate_dirs, replicate = replication.replicate_dirs, replication.replicate


def outside_inputs(cfg) -> dict[str, str | None]:
    """Files outside this run that the verdict reads (the replicate seeds'), with their content digests: the
    runner re-runs the verdict chapter when one changes."""
    return {str(folder / name): artifacts.digest(folder / name) for seed, folder in replicate_dirs(cfg).items()
            if seed != cfg.seed for name in ("verdict.json", "variants.json")}


# --- the whole chapter's result -----------------------------------------------------------------------------
def build(cfg) -> dict:
    """Everything the verdict chapter writes to metrics/verdict.json: rows with every treatment's reading and RLVR's
    signals, the calibration of each row, the verdict per treatment, replication, context and caveats."""
    metrics = load_metrics(cfg.path("metrics"))
    design = Design.from_registry(cfg)
    table = evidence(metrics, design, cfg.verdict)
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
    verdicts = {t: overall(tally(table, t, groups=design.scope.get(t)), cfg.verdict) for t in design.treatments}
    counts = tally(table)
    counted = table[table["calibration"] == "counts"]
    return {
        "summary": {
            "rows_counted": {"value": float(len(counted)), "ci": None,
                             "description": "evidence rows that pass their calibration (controls, placebos, nulls, "
                                            "seeds)"},
            "groups_counted": {"value": float(counted["group"].nunique()), "ci": None,
                               "description": "measurements with a counted row (each votes once)"},
            **{f"groups_{_slug(label)}": {"value": float(counts[label]), "ci": None,
                                          "description": f"counted measurements on which RLVR reads {label}"}
               for label in (*DECIDED, NO_EVIDENCE)},
            **{key: {**value, "description": f"share of RLVR's accuracy gain over SFT recovered by "
                                             f"{key.removeprefix('graft_').removesuffix('_share').replace('_', ' + ')} "
                                             "alone (grafting, paired bootstrap)"}
               for key in SHARES if (value := metrics.get("grafting.json", {}).get("variants", {})
                                     .get(registry.STUDY, {}).get(key))},
        },
        "verdict": verdicts.get(registry.STUDY, INCONCLUSIVE),
        "verdicts": verdicts,
        "tally": counts,
        "rows": _records(table),
        "single_seed": {"rows": _records(single_seed)},
        "seeds": [cfg.seed, *others],
        "per_seed": per_seed,
        "gains": _gains(cfg.path("metrics")),
        "context": context(metrics, registry.names(cfg, "control")),
        "thresholds": cfg.verdict.model_dump(),
        "caveats": limits.caveats(cfg, summary_value(metrics, "eval.json", "rlvr_minus_sft_accuracy"), table,
                                  list(others)),
    }


def _slug(label: str) -> str:
    return label.lower().replace(" ", "_")


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
        rows.append({"measurement": key, "source": file, "observed": fmt.observed(*(observed or (None, None))),
                     "description": entry.get("description", "") if isinstance(entry, dict) else ""})
    return rows


# --- showing ---------------------------------------------------------------------------------------
def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()} for rec in df.to_dict("records")]
