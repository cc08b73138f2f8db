"""Verdict rules on synthetic per-variant metrics: a row reads a treatment against the nulls, counts only when
it classifies the controls and leaves the nulls and the identical model at "no evidence", and never decides
without an interval."""
import numpy as np

from rlvr_utils.core import config, params
from rlvr_utils.evidence import verdict

NULLS = [f"null_{k}" for k in range(5)]
TREATMENTS = ["rlvr", "attn_only", "mlp_only", "identical", *NULLS]
# the known answers that calibrate each row (the registry gives these on a run)
EXPECTED = {"attn_only": verdict.ROUTING, "mlp_only": verdict.REPRESENTATION, "identical": verdict.NO_EVIDENCE,
            **{n: verdict.NO_EVIDENCE for n in NULLS}}
PARAMS = params.VerdictParams()


def entry(value, half=0.01):
    return {"value": value, "ci": None if half is None else [value - half, value + half]}


def change_row(attn: dict, mlp: dict, seed: int = 0) -> dict:
    """A same-input-style file: nulls change both components by ~0.01, the identical model by 0."""
    rng = np.random.default_rng(seed)
    out = {t: {"attn_change": entry(a), "mlp_change": entry(m)} for t, a, m in
           ((t, attn[t], mlp[t]) for t in attn)}
    for n in NULLS:
        out[n] = {"attn_change": entry(0.01 + 0.002 * rng.standard_normal(), 0.003),
                  "mlp_change": entry(0.01 + 0.002 * rng.standard_normal(), 0.003)}
    out["identical"] = {"attn_change": entry(0.0, 0.0), "mlp_change": entry(0.0, 0.0)}
    return {"variants": out}


def calibrated_metrics(rlvr_attn=0.2, rlvr_mlp=0.01):
    return {"same_input.json": change_row({"rlvr": rlvr_attn, "attn_only": 0.3, "mlp_only": 0.01},
                                          {"rlvr": rlvr_mlp, "attn_only": 0.0, "mlp_only": 0.3})}


def row(table, file):
    return table[table["file"] == file].iloc[0]


def test_controls_are_classified_and_nulls_read_no_evidence_so_the_row_counts():
    table = verdict.evidence(calibrated_metrics(), TREATMENTS, NULLS, PARAMS, EXPECTED)
    r = row(table, "same_input.json")
    assert r["readings"]["attn_only"] == verdict.ROUTING
    assert r["readings"]["mlp_only"] == verdict.REPRESENTATION
    assert all(r["readings"][n] == verdict.NO_EVIDENCE for n in [*NULLS, "identical"])
    assert r["calibration"] == "counts"
    assert r["rlvr"] == verdict.ROUTING


def test_mlp_change_beyond_random_reads_representation_learning():
    table = verdict.evidence(calibrated_metrics(rlvr_attn=0.2, rlvr_mlp=0.25), TREATMENTS, NULLS, PARAMS, EXPECTED)
    assert row(table, "same_input.json")["rlvr"] == verdict.REPRESENTATION


def test_a_change_the_size_of_the_nulls_is_no_evidence():
    table = verdict.evidence(calibrated_metrics(rlvr_attn=0.012, rlvr_mlp=0.011), TREATMENTS, NULLS, PARAMS, EXPECTED)
    assert row(table, "same_input.json")["rlvr"] == verdict.NO_EVIDENCE


def test_beyond_the_envelope_but_below_the_effect_size_is_no_evidence():
    # just past every null's interval, but not twice the random update's change
    table = verdict.evidence(calibrated_metrics(rlvr_attn=0.0185), TREATMENTS, NULLS, PARAMS, EXPECTED)
    signal = next(s for s in row(table, "same_input.json")["signals"] if s["key"] == "attn_change")
    assert signal["ci"][0] > signal["null_envelope"][1] - 0.02 and not signal["fired"]


def test_a_row_is_never_decided_without_an_interval():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["rlvr"]["attn_change"] = entry(0.5, half=None)
    metrics["same_input.json"]["variants"]["rlvr"]["mlp_change"] = entry(0.5, half=None)
    assert row(verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED), "same_input.json")["rlvr"] == verdict.NOT_MEASURED


def test_a_misread_control_stops_the_row_from_counting():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["attn_only"]["mlp_change"] = entry(0.3)  # the MLP moved with its input
    r = row(verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED), "same_input.json")
    assert r["readings"]["attn_only"] == verdict.REPRESENTATION
    assert "attn_only reads Representation learning" in r["calibration"]
    table = verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED)
    assert verdict.tally(table)[verdict.ROUTING] == 0


def test_a_null_that_reads_as_evidence_stops_the_row_from_counting():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["null_3"]["mlp_change"] = entry(0.5)
    r = row(verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED), "same_input.json")
    assert "null_3 reads Representation learning" in r["calibration"]


def test_nulls_and_the_identical_model_get_an_inconclusive_verdict():
    metrics = calibrated_metrics()
    metrics["patching.json"] = change_row({"rlvr": 0.2, "attn_only": 0.3, "mlp_only": 0.01},
                                          {"rlvr": 0.01, "attn_only": 0.0, "mlp_only": 0.3}, seed=1)
    for t in metrics["patching.json"]["variants"].values():
        t["attn_direct_effect"], t["mlp_direct_effect"] = t.pop("attn_change"), t.pop("mlp_change")
    table = verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED)
    assert verdict.overall(verdict.tally(table, "rlvr"), PARAMS) == verdict.ROUTING
    assert verdict.overall(verdict.tally(table, "attn_only"), PARAMS) == verdict.ROUTING
    assert verdict.overall(verdict.tally(table, "mlp_only"), PARAMS) == verdict.REPRESENTATION
    for name in [*NULLS, "identical"]:
        assert verdict.overall(verdict.tally(table, name), PARAMS) == verdict.INCONCLUSIVE


def test_a_one_sided_row_counts_when_the_other_control_reads_no_evidence():
    rng = np.random.default_rng(0)
    gains = {"rlvr": 0.2, "attn_only": 0.0, "mlp_only": 0.3, "identical": 0.0,
             **{n: 0.01 * rng.standard_normal() for n in NULLS}}
    metrics = {"probes.json": {"variants": {t: {"selectivity_gain": entry(g, 0.02)} for t, g in gains.items()}}}
    r = row(verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED), "probes.json")
    assert r["readings"]["attn_only"] == verdict.NO_EVIDENCE and r["calibration"] == "counts"
    assert r["rlvr"] == verdict.REPRESENTATION


def test_rows_count_only_when_the_seeds_agree():
    table = verdict.evidence(calibrated_metrics(), TREATMENTS, NULLS, PARAMS, EXPECTED)
    agreeing = {"rows": verdict._records(table)}
    other = verdict.evidence(calibrated_metrics(rlvr_attn=0.012, rlvr_mlp=0.011), TREATMENTS, NULLS, PARAMS, EXPECTED)
    disagreeing = {"rows": verdict._records(other)}
    assert row(verdict.replicate(table, 0, {1: agreeing}), "same_input.json")["calibration"] == "counts"
    replicated = verdict.replicate(table, 0, {1: agreeing, 2: disagreeing})
    assert row(replicated, "same_input.json")["calibration"].startswith("seeds disagree")
    assert all(set(seeds) == {"seed 0", "seed 1", "seed 2"} for seeds in replicated["seeds"])


def test_missing_metrics_leave_every_row_not_measured_and_the_verdict_inconclusive(tmp_path):
    cfg = config.from_dict({"name": "empty", "runs_dir": str(tmp_path)})
    result = verdict.build(cfg)
    assert result["verdict"] == verdict.INCONCLUSIVE
    assert all(r["rlvr"] == verdict.NOT_MEASURED for r in result["rows"])


def test_nulls_without_spread_read_no_evidence_and_a_planted_mlp_change_still_fires():
    """Counts such as the crosscoder's specific latents are exactly 0 on every null (no spread, no width): a
    treatment equal to them reads no evidence, with a finite effect, and a planted MLP-only change still reads
    Representation learning, so the row counts."""
    import warnings

    counts = {"rlvr": entry(0.0, 0.0), "attn_only": entry(0.0, 0.0), "mlp_only": entry(5.0, 2.0),
              "identical": entry(0.0, 0.0), **{n: entry(0.0, 0.0) for n in NULLS}}
    metrics = {"crosscoder.json": {"variants": {t: {"specific_latents": e} for t, e in counts.items()}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 × inf would warn and give a NaN effect
        r = row(verdict.evidence(metrics, TREATMENTS, NULLS, PARAMS, EXPECTED), "crosscoder.json")
    assert r["readings"]["mlp_only"] == verdict.REPRESENTATION
    assert all(r["readings"][n] == verdict.NO_EVIDENCE for n in ["rlvr", "attn_only", "identical", *NULLS])
    assert r["calibration"] == "counts"
    assert all(s["effect"] == 0.0 for s in r["signals"])


def test_a_row_never_counts_without_controls_of_both_known_answers():
    only_nulls = {t: a for t, a in EXPECTED.items() if a == verdict.NO_EVIDENCE}
    table = verdict.evidence(calibrated_metrics(), TREATMENTS, NULLS, PARAMS, only_nulls)
    assert "no control with a known Routing answer" in row(table, "same_input.json")["calibration"]
    assert "no control with a known Representation learning answer" in row(table, "same_input.json")["calibration"]
