"""Feature-level controls (rlvr_utils.treatments.planted): built from a tiny Qwen2 checkpoint, the planted control
changes one neuron (one row of gate and up, one column of down: a rank-1 write of a direction SFT's residual stream
does not use, firing on the chosen share of tokens, mostly where the problem property holds), the removed control
projects one direction out of down_proj (rank 1) so the block's MLP writes nothing along it, and both are
registered as Representation controls for the feature rows only."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils.core import config
from rlvr_utils.training import organism
from rlvr_utils.training.data import write_jsonl
from rlvr_utils.treatments import planted, registry
from rlvr_utils.treatments.registry import REPRESENTATION

LAYER = 1


def _problems(n=60, seed=0):
    g = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = int(g.integers(1, 30)), int(g.integers(1, 9))
        rows.append({"id": i, "question": f"Ann had {a} apples. Ann found {b} more apples.",
                     "prompt": f"Ann had {a} apples. Ann found {b} more apples.",
                     "answer": f" {a} + {b} = {a + b}.\n#### {a + b}", "final": str(a + b), "intermediates": [a + b]})
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with a tiny SFT checkpoint (3 layers, crosscoder.layer 1) and validation problems."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config.from_dict({"runs_dir": str(root), "crosscoder": {"layer": LAYER}, "variants": {"planted_layer": LAYER}})
    problems = _problems()
    tokenizer = organism.build_tokenizer([p["prompt"] + p["answer"] for p in problems], 300)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(cfg.model_dir("sft"))
    tokenizer.save_pretrained(cfg.model_dir("sft"))
    write_jsonl(cfg.path("data", "validation.jsonl"), problems)
    return cfg


def _tensors(cfg, name):
    return load_file(next(cfg.model_dir(name).glob("*.safetensors")))


def _record(line: str) -> dict:
    return json.loads(line[line.index("(") + 1: line.rindex(")")])


def test_planted_feature_is_one_neuron_writing_a_new_direction_where_the_gate_fires(run):
    line = registry.build(run, planted.PLANTED)
    record = _record(line)
    before, after = _tensors(run, "sft"), _tensors(run, planted.PLANTED)
    prefix = f"model.layers.{LAYER}.mlp."
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert sorted(changed) == sorted(prefix + p + ".weight" for p in ("gate_proj", "up_proj", "down_proj"))
    i = record["neuron"]
    for p in ("gate_proj", "up_proj"):  # one row each
        diff = (after[prefix + p + ".weight"] - before[prefix + p + ".weight"]).abs().sum(1)
        assert torch.nonzero(diff).flatten().tolist() == [i]
    delta = after[prefix + "down_proj.weight"].double() - before[prefix + "down_proj.weight"].double()
    assert torch.nonzero(delta.abs().sum(0)).flatten().tolist() == [i]  # one column of down_proj
    assert torch.linalg.matrix_rank(delta).item() == 1
    # measured on the built model: the neuron fires on the chosen share, mostly where the property holds, and
    # writes the lowest-variance direction of SFT's residual stream after the block
    from rlvr_utils.models.loading import load
    from rlvr_utils.training.data import read_jsonl
    problems = read_jsonl(run.path("data", "validation.jsonl"))
    sft_model, tokenizer = load(str(run.model_dir("sft")))
    new_model, _ = load(str(run.model_dir(planted.PLANTED)))
    acts_sft = planted.activations(sft_model, tokenizer, problems, LAYER)
    acts_new = planted.activations(new_model, tokenizer, problems, LAYER)
    fires = acts_new["x"] @ after[prefix + "gate_proj.weight"][i].double().numpy() > 0  # the gate is open
    h = acts_new["h"][:, i]
    assert h[~fires].max() < 0.05 * h[fires].max()  # and the neuron is near 0 elsewhere
    assert abs(fires.mean() - planted.FIRING_RATE) < 0.06, fires.mean()
    assert acts_new["y"][fires].mean() > acts_new["y"].mean() + 0.2  # gated on the problem property
    # only this block's MLP changed: the difference is the new write minus the re-purposed neuron's old one
    old = np.outer(acts_sft["h"][:, i], before[prefix + "down_proj.weight"][:, i].double().numpy())
    written = acts_new["resid"] - acts_sft["resid"] + old
    v = planted.low_variance_direction(acts_sft["resid"])
    cos = np.abs(written[fires] @ v) / np.linalg.norm(written[fires], axis=1)
    assert (cos > 0.999).all()
    rms = np.sqrt((acts_sft["resid"][fires] ** 2).sum(1).mean())
    assert np.sqrt((written[fires] ** 2).sum(1).mean()) / rms == pytest.approx(planted.PLANTED_STRENGTH, rel=0.05)
    assert record["old_write_share"] < 1e-2  # the re-purposed neuron was (nearly) unused
    # a new direction: SFT's residual has almost none of its variance there
    assert record["direction_variance_share"] < 1e-2


def test_removed_feature_projects_one_direction_out_of_the_mlp(run):
    record = _record(registry.build(run, planted.REMOVED))
    before, after = _tensors(run, "sft"), _tensors(run, planted.REMOVED)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    name = f"model.layers.{LAYER}.mlp.down_proj.weight"
    assert changed == [name]
    w0, w1 = before[name].double(), after[name].double()
    assert torch.linalg.matrix_rank(w1 - w0, atol=1e-5).item() == 1  # (float32 storage rounds the rest)
    w = w0[:, record["neuron"]] / w0[:, record["neuron"]].norm()
    assert (w @ w1).abs().max() < 1e-5  # the MLP writes nothing along the removed direction
    assert ((w1 - w0) + torch.outer(w, w @ w0)).abs().max() < 1e-5  # and only that is removed
    assert record["removed_share"] > 0


def test_plans_are_exact_on_synthetic_activations():
    """plant() on known activations: the neuron chosen is the least used, the gate fires on `rate` of the tokens,
    and the write has the asked strength; remove() takes the strongest neuron's direction."""
    g = np.random.default_rng(0)
    n, d, m = 4000, 16, 24
    x = g.normal(size=(n, d)) + 3.0  # a positive offset: c.x ~ 1 exists
    y = x[:, 0] > 3.0
    gate, up, down = g.normal(size=(m, d)), g.normal(size=(m, d)), g.normal(size=(d, m))
    h = g.normal(size=(n, m))
    h[:, 5] *= 1e-4
    h[:, 7] *= 10
    resid = g.normal(size=(n, d)) * np.linspace(0.1, 3, d)
    new, record = planted.plant(gate, up, down, {"x": x, "h": h, "resid": resid, "y": y}, rate=0.2, strength=0.5)
    assert record["neuron"] == 5
    assert record["firing_rate"] == pytest.approx(0.2, abs=0.01)
    assert record["property_rate_where_firing"] > 0.9
    assert np.abs(new["down"][:, 5] / np.linalg.norm(new["down"][:, 5]) @ np.eye(d)[0]) > 0.99  # lowest variance
    down2, rec2 = planted.remove(down, {"h": h, "resid": resid})
    assert rec2["neuron"] == 7
    with pytest.raises(ValueError, match="all or none"):
        planted.plant(gate, up, down, {"x": x, "h": h, "resid": resid, "y": np.ones(n, bool)})


def test_registered_as_feature_row_controls_and_switchable(tmp_path):
    cfg = config.from_dict({"runs_dir": str(tmp_path)})
    by_name = {t.name: t for t in registry.all(cfg)}
    for name in (planted.PLANTED, planted.REMOVED):
        t = by_name[name]
        assert (t.kind, t.answer, t.calibrates, t.trained) == ("control", REPRESENTATION, planted.FEATURE_ROWS, False)
    # the feature rows are verdict groups: renaming a group cannot silently drop these controls from its calibration
    from rlvr_utils.evidence import verdict
    assert set(planted.FEATURE_ROWS) <= {rule.group for rule in verdict.RULES}
    assert planted.PLANTED in registry.built(cfg)
    off = config.from_dict({"runs_dir": str(tmp_path), "variants": {"planted": False}})
    assert planted.PLANTED not in registry.names(off)


def test_a_model_without_a_gated_mlp_is_refused_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="gated MLP"):
        planted.mlp_parts(model, 0)


def test_the_planted_block_must_be_where_the_crosscoder_looks():
    with pytest.raises(config.ParamsError, match="variants.planted_layer .*crosscoder.layer=1"):
        config.from_dict({"crosscoder": {"layer": 1}})  # the organism's 4 blocks: planted at block 2 by default
    assert config.from_dict({"crosscoder": {"layer": 2}}).variants.planted_layer is None  # block 2 either way


def test_planted_controls_are_the_organisms_only():
    assert config.from_dict({}).variants.planted and registry.names(config.from_dict({}), "control")[-2:] == [
        "planted_feature", "removed_feature"]
    rehearsal = config.from_dict({"model": {"base": "Qwen/Qwen2.5-0.5B"}}, machine=False)
    assert not [n for n in registry.names(rehearsal) if n.endswith("_feature")]  # the gate reads organism problems
