"""Replication over seeds on ci-sized models: `python -m rlvr_utils replicate` trains another seed's study in
its own run folder, and the main run's verdict chapter then reads both seeds. (Named so that it runs after the
other tests of the shared ci book: it re-executes that run's verdict chapter.)"""
import pytest
import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, assert_models_learn

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)


def test_a_second_seed_replicates_the_ci_study(built_book):
    params, book_root, _ = built_book
    runs = Path(yaml.safe_load(params.read_text())["runs_dir"])
    main, seed_run = runs / "ci", runs / "ci-seed1"
    before = json.loads((main / "executed_notebooks.json").read_text())

    result = subprocess.run([sys.executable, "-m", "rlvr_utils", "replicate", "--params", str(params), "--seeds", "1",
                             "--book-root", str(book_root)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    # Another study: its own seed, base model and held-out problems, and models that learn as ci's do.
    assert yaml.safe_load((seed_run / "params.yaml").read_text())["seed"] == 1
    assert (seed_run / "models" / "base" / "model.safetensors").read_bytes() != \
        (main / "models" / "base" / "model.safetensors").read_bytes()
    assert (seed_run / "data" / "eval.jsonl").read_text() != (main / "data" / "eval.jsonl").read_text()
    assert_models_learn(seed_run)

    # The main run re-ran only its verdict chapter, which now reads both seeds.
    after = json.loads((main / "executed_notebooks.json").read_text())
    assert {k: v for k, v in after.items() if not k.startswith("10_")} == \
        {k: v for k, v in before.items() if not k.startswith("10_")}
    verdict = json.loads((main / "metrics" / "verdict.json").read_text())
    single = json.loads((seed_run / "metrics" / "verdict.json").read_text())["single_seed"]["rows"]
    assert verdict["seeds"] == [0, 1] and set(verdict["per_seed"]) == {"0", "1"}
    assert all("rlvr" in s["gains"] for s in verdict["per_seed"].values())
    for row, alone in zip(verdict["rows"], single):
        assert row["measurement"] == alone["measurement"]
        assert set(row["seeds"]) == {"seed 0", "seed 1"}
        assert row["seeds"]["seed 1"] == {"rlvr": alone["rlvr"], "calibration": alone["calibration"]}
        if row["calibration"] == "counts":  # counts only where both seeds count with one reading
            assert alone["calibration"] == "counts" and alone["rlvr"] == row["rlvr"], row
    html = (book_root / "_build" / "html" / "book" / "executed" / "10_verdict.html").read_text()
    assert "seed 1" in html and "verdict on this seed alone" in html
