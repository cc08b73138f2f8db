"""`compare` sets runs side by side from their metrics files."""
import json

import pytest

from rlvr_utils.evidence import compare


def fake_run(root, name, gain, reading):
    metrics = root / name / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "eval.json").write_text(json.dumps({"summary": {
        "rlvr_minus_sft_accuracy": {"value": gain, "ci": [gain - 0.02, gain + 0.02]}}}))
    (metrics / "verdict.json").write_text(json.dumps({"verdict": reading, "rows": [
        {"measurement": "same-input change", "rlvr": reading, "calibration": "counts"}]}))
    return str(root / name)


def test_two_runs_side_by_side_as_markdown_and_csv(tmp_path):
    a = fake_run(tmp_path, "seed0", 0.10, "Routing")
    b = fake_run(tmp_path, "seed1", 0.06, "no evidence")
    frame = compare.table([a, b])
    assert list(frame.columns) == ["measurement", "seed0", "seed1"]
    row = frame.set_index("measurement")
    assert row.loc["rlvr_minus_sft_accuracy", "seed0"] == "0.100 [0.080, 0.120]"  # at its interval's precision
    assert row.loc["same-input change", "seed1"] == "no evidence (counts)"
    assert row.loc["verdict", "seed0"] == "Routing"
    md, csv = compare.write(frame, tmp_path / "out" / "compare")
    assert md.read_text().startswith("| measurement | seed0 | seed1 |")
    assert "seed1" in csv.read_text().splitlines()[0]


def test_an_unknown_run_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        compare.table([str(tmp_path / "no-such-run")])
