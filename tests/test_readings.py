"""The chapters' readings, the evidence as data and the limitations box, all from the verdict's own rules:
- a chapter's summary says what each of its rows reads on RLVR, the controls and the references, in the
  verdict's words, and never reads a hypothesis from a row that does not count or from an interval containing 0;
- evidence.csv / evidence.json hold one column per field, one record per row, treatment and signal, with the
  values the verdict read;
- the caveats become a warning box at the top of the verdict chapter and in the abstract."""
from __future__ import annotations

import csv
import json

from rlvr_utils.core import config, fmt
from rlvr_utils.evidence import export, limits, readings, verdict
from rlvr_utils.evidence.verdict import NO_EVIDENCE, REPRESENTATION, ROUTING
from rlvr_utils.publish import pages
from tests.test_verdict import DESIGN, KINDS, PARAMS, calibrated_metrics, change_row


def _row(metrics, file="same_input.json"):
    table = verdict.evidence(metrics, DESIGN, PARAMS)
    return table[table["file"] == file].iloc[0].to_dict()


def test_a_counted_row_says_rlvrs_reading_the_controls_and_the_references_in_the_verdicts_words():
    text = readings.row_summary(_row(calibrated_metrics()), KINDS)
    assert f"RLVR reads **{ROUTING}**" in text
    assert f"The controls read {ROUTING} on `attn_only`" in text and f"{REPRESENTATION} on `mlp_only`" in text
    assert f"The placebos read {NO_EVIDENCE} on `placebo_0`" in text
    assert f"random-direction nulls read {NO_EVIDENCE}" in text and f"The identical copy reads {NO_EVIDENCE}" in text
    assert "**counts** toward the verdict" in text
    assert f"`attn_change` {fmt.interval(0.3, [0.29, 0.31])}" in text  # RLVR's value with its interval
    assert "references' intervals span" in text


def test_a_row_that_does_not_count_claims_no_hypothesis_from_rlvrs_reading():
    metrics = calibrated_metrics()
    metrics["same_input.json"]["variants"]["mlp_only"]["mlp_change"] = {"value": 0.1, "ci": [0.09, 0.11]}
    row = _row(metrics)  # the MLP-only control now reads no evidence: the row fails its calibration
    assert row["calibration"] != "counts" and row["rlvr"] == ROUTING
    text = readings.row_summary(row, KINDS)
    assert "**does not count**" in text and "no evidence for either hypothesis" in text


def test_an_interval_containing_the_references_reads_no_evidence_in_the_summary():
    text = readings.row_summary(_row({"same_input.json": change_row((0.1, 0.1))}), KINDS)
    assert f"RLVR reads **{NO_EVIDENCE}**" in text
    assert "Routing predicts" not in text and "Representation learning predicts" not in text


def test_a_control_outside_a_rows_scope_is_not_listed():
    scope = {"attn_only": ("behaviour",)}  # calibrates another row group only
    text = readings.row_summary(_row(calibrated_metrics()), KINDS, scope)
    assert "`attn_only`" not in text and "`mlp_only`" in text


def test_a_chapter_summary_reads_the_runs_metrics_with_the_verdicts_rules(tmp_path):
    cfg = config.from_dict({"name": "r", "runs_dir": str(tmp_path)})
    cfg.path("metrics").mkdir(parents=True)
    (cfg.path("metrics") / "same_input.json").write_text(json.dumps(calibrated_metrics()["same_input.json"]))
    text = readings.chapter_summary(cfg, "same_input.json")
    assert text.count("\n- **") == 2  # the CKA row and the relative-change row of same_input.json
    assert f"RLVR reads **{ROUTING}**" in text and "`planted_feature`" not in text  # feature rows only
    assert "not counted: the same outputs as the CKA row" in text  # the second row is shown, never counted
    try:
        readings.chapter_summary(cfg, "nothing.json")
    except ValueError as err:
        assert "nothing.json" in str(err)
    else:
        raise AssertionError("an unknown metrics file must be refused")


def test_the_evidence_as_data_has_one_column_per_field_and_the_verdicts_values(tmp_path):
    metrics = calibrated_metrics()
    rows = verdict.evidence(metrics, DESIGN, PARAMS).to_dict("records")
    records = export.records(metrics, DESIGN, PARAMS, rows)
    csv_path, json_path = export.write(tmp_path, records, "r")
    with csv_path.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(export.COLUMNS)
    for field in ("row", "treatment", "value", "ci_low", "ci_high", "null_low", "null_high", "reading", "counts"):
        assert field in export.COLUMNS
    rlvr = [r for r in table if r["treatment"] == "rlvr" and r["signal"] == "attn_change"]
    assert len(rlvr) == 1 and float(rlvr[0]["value"]) == 0.3 and float(rlvr[0]["ci_low"]) == 0.29
    assert rlvr[0]["reading"] == ROUTING and rlvr[0]["counts"] == "True" and rlvr[0]["fired"] == "True"
    assert float(rlvr[0]["null_high"]) < float(rlvr[0]["ci_low"])  # it fired: beyond every reference
    ident = [r for r in table if r["treatment"] == "identical" and r["signal"] == "attn_change"][0]
    assert ident["reading"] == NO_EVIDENCE and ident["kind"] == "identical"
    twin = json.loads(json_path.read_text())
    assert twin["columns"] == export.COLUMNS and len(twin["records"]) == len(table)
    assert twin["records"][0].keys() == export.COLUMNS.keys()


def test_the_caveats_become_a_warning_box_in_the_abstract(tmp_path):
    assert limits.box(["Scale: tiny.", "Seeds: one."]) == (
        "```{admonition} Limitations of this run's answer\n:class: warning\n\n- Scale: tiny.\n- Seeds: one.\n```\n")
    cfg = config.from_dict({"name": "r", "runs_dir": str(tmp_path)})
    cfg.path("metrics").mkdir(parents=True)
    result = verdict.build(cfg)
    (cfg.path("metrics") / "verdict.json").write_text(json.dumps(result))
    text = pages.abstract(cfg)
    assert "```{admonition} Limitations" in text and ":class: warning" in text
    assert all(c in text for c in result["caveats"]) and result["caveats"]


def test_problems_every_row_of_a_chapter_shares_are_said_once(tmp_path):
    cfg = config.from_dict({"name": "r", "runs_dir": str(tmp_path), "variants": {"placebos": 0}})
    cfg.path("metrics").mkdir(parents=True)
    (cfg.path("metrics") / "same_input.json").write_text(json.dumps(calibrated_metrics()["same_input.json"]))
    text = readings.chapter_summary(cfg, "same_input.json")
    assert text.count("fewer than 2 placebo runs") == 1  # in the head, not in each row
    assert "No row of this chapter counts on this run, for reasons they share" in text
