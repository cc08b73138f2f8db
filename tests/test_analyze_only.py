"""Analyze-only: three existing checkpoints named by params skip training and go through every notebook."""
import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import run_book
from rlvr_utils.core import config, params
from rlvr_utils.training import data, organism
from rlvr_utils.models import loading as models

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)


def _checkpoints(tmp_path, hidden=64, vocab_docs=300, seed=0):
    """base, sft, rlvr folders of one tiny Qwen2 model: sft and rlvr are small perturbations of base."""
    cfg = config.Params()
    corpus = data.pretraining_corpus(cfg.data, vocab_docs, seed=seed) + [
        p["prompt"] + p["answer"] for p in data.synthetic_problems(cfg.data, 50, seed=1)]
    tokenizer = organism.build_tokenizer(corpus, 300)
    org = params.OrganismParams(hidden_size=hidden, intermediate_size=4 * hidden, num_layers=2, num_heads=4)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(organism.model_config(org, tokenizer))
    folders = {}
    for stage in ("base", "sft", "rlvr"):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folders[stage] = tmp_path / stage
        model.save_pretrained(folders[stage])
        tokenizer.save_pretrained(folders[stage])
    return folders


def test_incompatible_checkpoints_are_named(tmp_path):
    good = _checkpoints(tmp_path / "a")
    other = _checkpoints(tmp_path / "b", hidden=32)
    cfg = config.Params(model={"base": str(good["base"]), "sft": str(good["sft"]), "rlvr": str(other["rlvr"])})
    with pytest.raises(ValueError, match=r"hidden_size: base=64 but rlvr=32"):
        models.check_compatible(cfg)
    models.check_compatible(config.Params(model={k: str(v) for k, v in good.items()}))


def test_analyze_only_runs_every_notebook_on_local_checkpoints(tmp_path):
    folders = _checkpoints(tmp_path)
    raw = yaml.safe_load((config.PROJECT_ROOT / "params" / "ci.yaml").read_text())
    # controls would train GRPO from the given SFT model: off here, so nothing is trained at all
    raw.update(name="analyze-only", runs_dir=str(tmp_path / "runs"), model={k: str(v) for k, v in folders.items()},
               variants={"controls": [], "nulls": 2, "planted": False})
    params = tmp_path / "analyze.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = run_book(params, tmp_path / "site", "--no-book")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run = tmp_path / "runs" / "analyze-only"
    assert sorted(p.name for p in (run / "models").iterdir()) == ["identical", "null_0", "null_1"], \
        "analyze-only trains nothing: only the weight-built variants are written"
    summary = json.loads((run / "metrics" / "eval.json").read_text())["summary"]
    assert {"accuracy_base", "accuracy_sft", "accuracy_rlvr"} <= set(summary)
    result = json.loads((run / "metrics" / "verdict.json").read_text())
    assert result["verdict"] == "inconclusive"  # no row is calibrated without the controls
    assert all("no frozen control with a known Routing answer" in row["calibration"] for row in result["rows"])
    assert all("fewer than 2 placebo runs" in row["calibration"] for row in result["rows"])  # none for given checkpoints
