"""Verdict rules on synthetic per-treatment metrics: a row reads a treatment against the placebo runs (trained
updates without task signal) and the random nulls, counts only when it reads the frozen and the full-parameter
controls right and every placebo, null and the identical model as "no evidence", says "both" or "redundant"
instead of letting one side win by the order of the rules, and never decides without an interval."""
import itertools

import numpy as np
import pytest

from rlvr_utils.core import config, params
from rlvr_utils.evidence import verdict
from rlvr_utils.evidence.verdict import BOTH, NO_EVIDENCE, NOT_MEASURED, REDUNDANT, REPRESENTATION, ROUTING

NULLS = [f"null_{k}" for k in range(3)]
RAW = [f"placebo_{k}" for k in range(3)]
MATCHED = [f"{p}_matched" for p in RAW]
HYBRIDS = ["routing_hybrid", "routing_hybrid_matched", "representation_hybrid", "representation_hybrid_matched"]
KINDS = {"rlvr": "study", "attn_only": "control", "mlp_only": "control", **{h: "control" for h in HYBRIDS},
         **{p: "placebo" for p in RAW + MATCHED}, "identical": "identical", **{n: "null" for n in NULLS}}
EXPECTED = {"attn_only": ROUTING, "mlp_only": REPRESENTATION, "routing_hybrid": ROUTING,
            "routing_hybrid_matched": ROUTING, "representation_hybrid": REPRESENTATION,
            "representation_hybrid_matched": REPRESENTATION,
            **{t: NO_EVIDENCE for t, k in KINDS.items() if k in ("placebo", "null", "identical")}}
ROOTS = {**{m: m.removesuffix("_matched") for m in MATCHED}, "routing_hybrid_matched": "routing_hybrid",
         "representation_hybrid_matched": "representation_hybrid"}
DESIGN = verdict.Design(KINDS, EXPECTED, frozenset(HYBRIDS), ROOTS)
PARAMS = params.VerdictParams()


def entry(value, half=0.01):
    return {"value": value, "ci": None if half is None else [value - half, value + half]}


def change_row(rlvr: tuple[float, float], seed: int = 0, keys=("attn_change", "mlp_change")) -> dict:
    """A same-input-style file. Trained updates without task signal (placebos) change both components by
    ~0.1, random nulls by ~0.01, the identical model by 0; the frozen controls change their side by 0.3 and the
    other by 0; the full-parameter controls change their side by 0.3 and the other side exactly as placebo_0."""
    rng = np.random.default_rng(seed)
    values = {"rlvr": rlvr, "attn_only": (0.3, 0.0), "mlp_only": (0.0, 0.3), "identical": (0.0, 0.0)}
    for p in RAW + MATCHED:
        values[p] = tuple(0.1 + 0.005 * rng.standard_normal(2))
    for n in NULLS:
        values[n] = tuple(0.01 + 0.002 * rng.standard_normal(2))
    for suffix in ("", "_matched"):
        values[f"routing_hybrid{suffix}"] = (0.3, values["placebo_0"][1])
        values[f"representation_hybrid{suffix}"] = (values["placebo_0"][0], 0.3)
    return {"variants": {t: {keys[0]: entry(a, 0.0 if t == "identical" else 0.01),
                             keys[1]: entry(m, 0.0 if t == "identical" else 0.01)} for t, (a, m) in values.items()}}


def calibrated_metrics(rlvr_attn=0.3, rlvr_mlp=0.1):
    return {"same_input.json": change_row((rlvr_attn, rlvr_mlp))}


def row(table, file):
    return table[table["file"] == file].iloc[0]


def test_frozen_and_full_parameter_controls_are_classified_and_references_read_no_evidence_so_the_row_counts():
    r = row(verdict.evidence(calibrated_metrics(), DESIGN, PARAMS), "same_input.json")
    for control, answer in EXPECTED.items():
        assert r["readings"][control] == answer, (control, r["readings"][control])
    assert r["calibration"] == "counts"
    assert r["rlvr"] == ROUTING  # attention beyond every placebo, MLPs moved like a placebo's


def test_a_change_the_size_of_a_placebos_is_no_evidence_although_it_is_far_beyond_random():
    r = row(verdict.evidence(calibrated_metrics(rlvr_attn=0.1, rlvr_mlp=0.1), DESIGN, PARAMS), "same_input.json")
    assert r["rlvr"] == NO_EVIDENCE
    assert all(s["ci"][0] > 0.05 for s in r["signals"])  # ten times a random update's change, on both sides


def test_both_sides_beyond_the_placebos_read_both_whatever_the_order_of_the_signals():
    metrics = calibrated_metrics(rlvr_attn=0.3, rlvr_mlp=0.3)
    rule = next(r for r in verdict.RULES if r.file == "same_input.json" and r.counted)
    readings = {verdict.read_rule(verdict.Rule(rule.measurement, rule.file, signals, "", "", "g"), metrics, "rlvr",
                                  DESIGN, PARAMS)["reading"] for signals in itertools.permutations(rule.signals)}
    assert readings == {BOTH}


def test_random_nulls_alone_are_no_yardstick_a_full_parameter_control_then_reads_both():
    """Read against random updates only, the MLP side of the Routing hybrid (a placebo's update) fires: a row
    that only asks "which side moved beyond random" misreads it, and does not count."""
    design = verdict.Design({t: k for t, k in KINDS.items() if k != "placebo"},
                            {t: a for t, a in EXPECTED.items() if KINDS[t] != "placebo"}, frozenset(HYBRIDS), ROOTS)
    r = row(verdict.evidence(calibrated_metrics(), design, PARAMS), "same_input.json")
    assert r["readings"]["routing_hybrid"] == BOTH
    assert "routing_hybrid reads both, expected Routing" in r["calibration"]
    assert "fewer than 2 placebo runs" in r["calibration"]


def test_a_placebo_is_not_read_against_its_own_rescaled_copy():
    placebos, others = DESIGN.references("placebo_1")
    assert "placebo_1" not in placebos and "placebo_1_matched" not in placebos
    assert set(placebos) == {"placebo_0", "placebo_2", "placebo_0_matched", "placebo_2_matched"}
    assert set(others) == {"identical", *NULLS}
    assert "routing_hybrid" not in DESIGN.references("routing_hybrid_matched")[0] + DESIGN.references(
        "routing_hybrid_matched")[1]


def test_a_placebo_that_reads_as_evidence_stops_the_row_from_counting():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["placebo_2"]["mlp_change"] = entry(0.5)
    r = row(verdict.evidence(metrics, DESIGN, PARAMS), "same_input.json")
    assert "placebo_2 reads Representation learning" in r["calibration"]


def test_a_misread_full_parameter_control_stops_the_row_from_counting():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["representation_hybrid_matched"]["mlp_change"] = entry(0.1)
    r = row(verdict.evidence(metrics, DESIGN, PARAMS), "same_input.json")
    assert "representation_hybrid_matched reads no evidence, expected Representation learning" in r["calibration"]
    assert verdict.tally(verdict.evidence(metrics, DESIGN, PARAMS))[ROUTING] == 0


def test_beyond_the_envelope_but_below_the_effect_size_is_no_evidence():
    # just past every placebo's interval, but not twice a placebo's change
    r = row(verdict.evidence(calibrated_metrics(rlvr_attn=0.14), DESIGN, PARAMS), "same_input.json")
    signal = next(s for s in r["signals"] if s["key"] == "attn_change")
    assert signal["ci"][0] > signal["null_envelope"][1] and not signal["fired"]


def test_a_row_is_never_decided_without_an_interval():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["rlvr"]["attn_change"] = entry(0.5, half=None)
    metrics["same_input.json"]["variants"]["rlvr"]["mlp_change"] = entry(0.5, half=None)
    assert row(verdict.evidence(metrics, DESIGN, PARAMS), "same_input.json")["rlvr"] == NOT_MEASURED


def behaviour(attn_gain: float, mlp_gain: float, gain: float) -> dict:
    """grafting.json's variants: placebos' grafts lose accuracy, the controls' own side carries their gain."""
    rng = np.random.default_rng(3)
    rows = {"rlvr": (attn_gain, mlp_gain, gain), "attn_only": (0.18, 0.0, 0.19), "mlp_only": (0.0, 0.15, 0.16),
            "identical": (0.0, 0.0, 0.0)}
    for p in RAW + MATCHED:
        rows[p] = (-0.05 + 0.01 * rng.standard_normal(), -0.04 + 0.01 * rng.standard_normal(), -0.12)
    for n in NULLS:
        rows[n] = (-0.01, -0.01, -0.02)
    for suffix in ("", "_matched"):
        rows[f"routing_hybrid{suffix}"] = (0.18, rows["placebo_0"][1], 0.12)
        rows[f"representation_hybrid{suffix}"] = (rows["placebo_0"][0], 0.15, 0.10)
    half = {"identical": 0.0}
    return {"grafting.json": {"variants": {t: {
        "attn_graft_gain": entry(a, half.get(t, 0.03)), "mlp_graft_gain": entry(m, half.get(t, 0.03)),
        "graft_attn_share": entry(a / g if g else 0.0, 0.1), "graft_mlp_share": entry(m / g if g else 0.0, 0.1)}
        for t, (a, m, g) in rows.items()}}}


def test_the_behavioural_row_reads_redundant_when_each_update_alone_recovers_most_of_the_gain():
    table = verdict.evidence(behaviour(0.16, 0.14, 0.20), DESIGN, PARAMS)
    r = row(table, "grafting.json")
    assert r["calibration"] == "counts", r["calibration"]
    assert r["rlvr"] == REDUNDANT
    assert row(verdict.evidence(behaviour(0.08, 0.07, 0.20), DESIGN, PARAMS), "grafting.json")["rlvr"] == BOTH
    assert row(verdict.evidence(behaviour(0.16, -0.02, 0.20), DESIGN, PARAMS), "grafting.json")["rlvr"] == ROUTING


def test_a_graft_that_helps_less_than_nothing_is_not_evidence_even_beyond_harmful_placebos():
    # every placebo's graft loses ~5 points; a graft that loses nothing is not a gain
    r = row(verdict.evidence(behaviour(0.0, 0.0, 0.2), DESIGN, PARAMS), "grafting.json")
    assert r["rlvr"] == NO_EVIDENCE


@pytest.mark.parametrize("readings, expected", [
    ([ROUTING, ROUTING, NO_EVIDENCE], ROUTING), ([REPRESENTATION], REPRESENTATION), ([ROUTING, REPRESENTATION], BOTH),
    ([REDUNDANT, REDUNDANT], REDUNDANT), ([REDUNDANT, ROUTING], BOTH), ([NO_EVIDENCE, NO_EVIDENCE], NO_EVIDENCE),
    ([NOT_MEASURED], NOT_MEASURED)])
def test_combining_readings_does_not_depend_on_their_order(readings, expected):
    for order in itertools.permutations(readings):
        assert verdict.combine(list(order)) == expected


def test_the_verdict_of_the_counted_measurements_in_any_order():
    p = params.VerdictParams(min_decided_rows=2)
    assert verdict.overall({ROUTING: 1, REPRESENTATION: 1}, p) == BOTH
    assert verdict.overall({ROUTING: 2, NO_EVIDENCE: 3}, p) == ROUTING
    assert verdict.overall({ROUTING: 1, NO_EVIDENCE: 3}, p) == verdict.INCONCLUSIVE
    assert verdict.overall({NO_EVIDENCE: 3}, p) == verdict.NEITHER
    assert verdict.overall({NO_EVIDENCE: 1}, p) == verdict.INCONCLUSIVE


def test_rows_reading_one_measurement_vote_once():
    metrics = calibrated_metrics()
    metrics["same_input.json"] = change_row((0.3, 0.1))
    for t, values in change_row((0.3, 0.1), keys=("attn_relative_change", "mlp_relative_change"))["variants"].items():
        metrics["same_input.json"]["variants"][t].update(values)
    table = verdict.evidence(metrics, DESIGN, PARAMS)
    table.loc[table["measurement"].str.startswith("Same-input relative"), "calibration"] = "counts"  # as if counted
    assert verdict.tally(table)[ROUTING] == 1


def test_nulls_placebos_and_the_identical_model_read_neither_and_controls_their_answer():
    metrics = {**calibrated_metrics(), **behaviour(0.16, -0.02, 0.2)}
    table = verdict.evidence(metrics, DESIGN, PARAMS)
    for name, answer in EXPECTED.items():
        want = verdict.NEITHER if answer == NO_EVIDENCE else answer
        assert verdict.overall(verdict.tally(table, name), PARAMS) == want, name
    assert verdict.overall(verdict.tally(table, "rlvr"), PARAMS) == ROUTING


def test_a_one_sided_row_counts_when_the_other_controls_read_no_evidence():
    rng = np.random.default_rng(0)
    gains = {"rlvr": 0.2, "attn_only": 0.0, "mlp_only": 0.3, "identical": 0.0, "routing_hybrid": 0.0,
             "routing_hybrid_matched": 0.0, "representation_hybrid": 0.3, "representation_hybrid_matched": 0.3,
             **{n: 0.01 * rng.standard_normal() for n in NULLS + RAW + MATCHED}}
    metrics = {"probes.json": {"variants": {t: {"selectivity_gain": entry(g, 0.02)} for t, g in gains.items()}}}
    r = row(verdict.evidence(metrics, DESIGN, PARAMS), "probes.json")
    assert r["readings"]["attn_only"] == NO_EVIDENCE and r["calibration"] == "counts"
    assert r["rlvr"] == REPRESENTATION


def test_rows_count_only_when_the_seeds_agree():
    table = verdict.evidence(calibrated_metrics(), DESIGN, PARAMS)
    agreeing = {"rows": verdict._records(table)}
    disagreeing = {"rows": verdict._records(verdict.evidence(calibrated_metrics(0.1, 0.1), DESIGN, PARAMS))}
    assert row(verdict.replicate(table, 0, {1: agreeing}), "same_input.json")["calibration"] == "counts"
    replicated = verdict.replicate(table, 0, {1: agreeing, 2: disagreeing})
    assert row(replicated, "same_input.json")["calibration"].startswith("seeds disagree")
    assert all(set(seeds) == {"seed 0", "seed 1", "seed 2"} for seeds in replicated["seeds"])


def test_missing_metrics_leave_every_row_not_measured_and_the_verdict_inconclusive(tmp_path):
    cfg = config.from_dict({"name": "empty", "runs_dir": str(tmp_path)})
    result = verdict.build(cfg)
    assert result["verdict"] == verdict.INCONCLUSIVE
    assert all(r["rlvr"] == NOT_MEASURED for r in result["rows"])


def test_references_without_spread_read_no_evidence_and_a_planted_mlp_change_still_fires():
    """Counts such as the crosscoder's specific latents are exactly 0 on every reference (no spread, no width):
    a treatment equal to them reads no evidence, with a finite effect, and planted MLP changes still read
    Representation learning, so the row counts."""
    import warnings

    counts = {t: entry(0.0, 0.0) for t in KINDS}
    for t in ("mlp_only", "representation_hybrid", "representation_hybrid_matched"):
        counts[t] = entry(5.0, 2.0)
    metrics = {"crosscoder.json": {"variants": {t: {"specific_latents": e} for t, e in counts.items()}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 × inf would warn and give a NaN effect
        r = row(verdict.evidence(metrics, DESIGN, PARAMS), "crosscoder.json")
    assert r["readings"]["mlp_only"] == REPRESENTATION
    assert all(r["readings"][n] == NO_EVIDENCE for n in ["rlvr", "attn_only", "identical", *NULLS, *RAW])
    assert r["calibration"] == "counts"
    assert all(s["effect"] == 0.0 for s in r["signals"])


def test_a_row_never_counts_without_controls_of_both_known_answers_frozen_and_full():
    only_references = verdict.Design(KINDS, {t: a for t, a in EXPECTED.items() if a == NO_EVIDENCE})
    calibration = row(verdict.evidence(calibrated_metrics(), only_references, PARAMS), "same_input.json")["calibration"]
    for side in (ROUTING, REPRESENTATION):
        assert f"no frozen control with a known {side} answer" in calibration
        assert f"no full-parameter control with a known {side} answer" in calibration


def test_a_planted_feature_calibrates_the_feature_rows_only():
    """A control whose answer holds for some rows (a planted new feature: the crosscoder must find it) is demanded
    there and nowhere else."""
    design = verdict.Design({**KINDS, "planted_feature": "control"}, {**EXPECTED, "planted_feature": REPRESENTATION},
                            frozenset(HYBRIDS), ROOTS, {"planted_feature": ("crosscoder",)})
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["planted_feature"] = {"attn_change": entry(0.1), "mlp_change": entry(0.1)}
    counts = {t: entry(0.0, 0.0) for t in design.kinds}
    for t in ("mlp_only", "representation_hybrid", "representation_hybrid_matched"):
        counts[t] = entry(5.0, 2.0)
    metrics["crosscoder.json"] = {"variants": {t: {"specific_latents": e} for t, e in counts.items()}}
    table = verdict.evidence(metrics, design, PARAMS)
    assert row(table, "same_input.json")["calibration"] == "counts"  # not demanded here
    assert "planted_feature reads no evidence, expected Representation learning" in row(table, "crosscoder.json")[
        "calibration"]
    metrics["crosscoder.json"]["variants"]["planted_feature"]["specific_latents"] = entry(6.0, 1.0)
    table = verdict.evidence(metrics, design, PARAMS)
    assert row(table, "crosscoder.json")["calibration"] == "counts"
    # its own verdict reads its scope only (the same-input row, where it moved like a placebo, has no say)
    assert verdict.overall(verdict.tally(table, "planted_feature", groups=("crosscoder",)), PARAMS) == REPRESENTATION


def test_the_evidence_tables_on_the_page_are_narrow_and_agree_with_the_calibration():
    """The book shows the evidence as two tables of four columns (a column per treatment made it 1333 px
    wide): RLVR's value against its references with its reading, and how many treatments with a known answer
    read right, naming those that did not; both agree with the row's calibration."""
    from rlvr_utils.evidence import tables

    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["placebo_0"]["attn_change"] = {"value": 0.9, "ci": [0.85, 0.95]}
    table = verdict.evidence(metrics, DESIGN, PARAMS)
    shown, calibration = tables.rlvr_table(table), tables.calibration_table(table, DESIGN)
    assert len(shown.columns) == 4 and len(calibration.columns) == 4 and len(shown) == len(table)
    i = list(table["file"]).index("same_input.json")
    assert "attn_change: " in shown.iloc[i, 2] and "references " in shown.iloc[i, 2]
    assert shown.iloc[i, 3] == table.iloc[i]["rlvr"]
    assert "placebo_0 reads" in calibration.iloc[i]["References reading no evidence"]
    assert calibration.iloc[i]["Counts?"].startswith("no: ") and "placebo_0 reads" in calibration.iloc[i]["Counts?"]
    counted = [j for j, c in enumerate(table["calibration"]) if c == "counts"]
    for j in counted:
        controls, references = calibration.iloc[j, 1], calibration.iloc[j, 2]
        assert "(" not in controls and "(" not in references  # nothing misread on a counted row
