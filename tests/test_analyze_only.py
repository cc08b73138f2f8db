"""Analyze-only: three existing checkpoints named by params skip training and go through every notebook."""
import json

import pytest
import torch
import yaml
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import hub_cache, run_book
from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.core import config, params
from rlvr_utils.instruments.weights import checkpoints
from rlvr_utils.training import data, organism
from rlvr_utils.models import loading as models

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)


def _checkpoints(tmp_path, hidden=64, vocab_docs=300, seed=0, dtype=None, max_shard_size="50GB", chat_template=None):
    """base, sft, rlvr folders of one tiny Qwen2 model: sft and rlvr are small perturbations of base (saved in
    `dtype`, in shards of `max_shard_size`; sft's and rlvr's tokenizers carry `chat_template`, base's none)."""
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
        (model.to(dtype) if dtype else model).save_pretrained(folders[stage], max_shard_size=max_shard_size)
        tokenizer.chat_template = chat_template if stage != "base" else None
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


CHAT = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"


def test_analyze_only_runs_on_sharded_bf16_hub_checkpoints_with_nulls_and_controls(tmp_path, monkeypatch):
    """Three published-style checkpoints named by hub id, found in the local Hugging Face cache only (offline):
    sharded bf16 safetensors with chat templates; the nulls, the identical copy and the GRPO controls are built
    from them, every analysis chapter runs."""
    folders = _checkpoints(tmp_path / "saved", dtype=torch.bfloat16, max_shard_size="100KB", chat_template=CHAT)
    assert all(len(list(f.glob("model-*.safetensors"))) >= 2 for f in folders.values())
    ids = {stage: f"tiny-org/{stage}" for stage in folders}
    (folders["rlvr"] / "README.md").write_text("---\nbase_model: tiny-org/sft\n---\nRL from tiny-org/sft\n")
    cache = hub_cache(tmp_path / "hub", {ids[s]: f for s, f in folders.items()})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # the run's processes
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # this one (huggingface_hub read it at import)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    raw = yaml.safe_load((config.PROJECT_ROOT / "params" / "ci.yaml").read_text())
    raw.update(name="hub", runs_dir=str(tmp_path / "runs"),
               model={**ids, "dtype": "bfloat16", "chat_template": "auto"},
               variants={"controls": ["attn_only", "mlp_only"], "nulls": 2, "planted": False})
    raw["grpo"].update(steps=4, save_steps=2)  # the controls' GRPO: the recipe, at a few steps
    raw["crosscoder"] = {"seeds": 1, "steps": 200}  # ci's 3 x 1000 steps took 218 of this run's 649 s
    params = tmp_path / "hub.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = run_book(params, tmp_path / "site", "--no-book")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run = tmp_path / "runs" / "hub"
    built = sorted(p.name for p in (run / "models").iterdir())
    assert built == ["attn_only", "identical", "mlp_only", "null_0", "null_1"]
    sft = config.load(params).model_dir("sft")
    for name in ("identical", "null_0", "null_1"):  # SFT's shard layout, bf16 kept
        assert sorted(p.name for p in (run / "models" / name).glob("*.safetensors")) == \
            sorted(p.name for p in sft.glob("*.safetensors"))
        files = checkpoints.tensor_files(run / "models" / name)
        assert {checkpoints.tensor_dtype(f, t) for t, f in files.items()} == {"BF16"}
    executed = {p.name[:2] for p in (tmp_path / "site").rglob("*.ipynb")}
    assert {f"{n:02d}" for n in range(3, 11)} <= executed
    assert {"train_attn_only.json", "train_mlp_only.json", "weights.json", "verdict.json"} <= \
        {p.name for p in (run / "metrics").iterdir()}
    tokens = TokenCache.load(run / "tokens")  # SFT's chat-formatted prompts, the same tokens for every model
    prompt = AutoTokenizer.from_pretrained(sft).decode(tokens.sequences[0][: tokens.prompt_lengths[0]])
    assert prompt.startswith("User: ") and prompt.endswith("Assistant:")
