"""Component grafting: the component map covers every parameter, so grafting everything gives the donor
and grafting nothing the receiver; partial grafts take exactly the named weights; shares are right."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Olmo2Config, Qwen2Config

from rlvr_utils.core import captions
from rlvr_utils.instruments.patching import figures, grafting, swap
from rlvr_utils.models import families

VOCAB = 96



def _config(family: str, tied: bool = False):
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             tie_word_embeddings=tied, **common)
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig, "olmo2": Olmo2Config}[family]
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, tie_word_embeddings=tied, **common)


def _pair(family: str, tied: bool = False):
    """Two models of one architecture with different random weights (norms too)."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_config(family, tied)).eval()
        with torch.no_grad():  # norms start at 1/0 in both: randomise them so a missed norm would show
            for name, p in model.named_parameters():
                if "norm" in name or "ln_" in name:
                    p.add_(0.1 * torch.randn_like(p))
        models.append(model)
    return models


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


FAMILIES = [("qwen2", True), ("llama", False), ("gpt2", True), ("gpt_neox", False), ("olmo2", False)]


@pytest.mark.parametrize("family,tied", FAMILIES)
def test_map_covers_every_parameter_and_grafting_all_or_nothing(family, tied):
    receiver, donor = _pair(family, tied)
    cmap = families.component_map(receiver)
    names = [n for n, _ in receiver.named_parameters(remove_duplicate=False)]
    assert set(cmap) == set(names)
    for layer in range(2):  # every layer has an attention, an MLP and a norm component (norms are their own)
        assert {c for c, l in cmap.values() if l == layer} == {"attn", "mlp", "norm"}
    assert {c for c, l in cmap.values() if l is None} >= {"embed", "final_norm"}

    ids = torch.randint(0, VOCAB, (2, 9))
    everything = swap.graft(receiver, donor, families.COMPONENTS)
    nothing = swap.graft(receiver, donor, [])
    for name, p in everything.state_dict().items():
        torch.testing.assert_close(p, donor.state_dict()[name], rtol=0, atol=0)
    torch.testing.assert_close(_logits(everything, ids), _logits(donor, ids), rtol=0, atol=0)
    torch.testing.assert_close(_logits(nothing, ids), _logits(receiver, ids), rtol=0, atol=0)
    assert not torch.equal(_logits(receiver, ids), _logits(donor, ids))


@pytest.mark.parametrize("family,tied", FAMILIES)
def test_partial_graft_takes_exactly_the_named_weights(family, tied):
    receiver, donor = _pair(family, tied)
    before = {n: p.clone() for n, p in receiver.state_dict().items()}
    hybrid = swap.graft(receiver, donor, ["attn"], layers=[1])
    cmap = families.component_map(receiver)
    donor_params = dict(donor.named_parameters(remove_duplicate=False))
    receiver_params = dict(receiver.named_parameters(remove_duplicate=False))
    for name, p in hybrid.named_parameters(remove_duplicate=False):
        expected = donor_params if cmap[name] == ("attn", 1) else receiver_params
        assert torch.equal(p, expected[name]), name
    for name, p in receiver.state_dict().items():  # the receiver itself is untouched
        assert torch.equal(p, before[name])


def test_tied_unembedding_belongs_to_the_embedding():
    receiver, _ = _pair("qwen2", tied=True)
    cmap = families.component_map(receiver)
    assert cmap["lm_head.weight"] == ("embed", None) == cmap["model.embed_tokens.weight"]
    untied, _ = _pair("llama", tied=False)
    assert families.component_map(untied)["lm_head.weight"] == ("unembed", None)


def test_bad_arguments_are_named():
    receiver, donor = _pair("qwen2")
    with pytest.raises(ValueError, match="attention"):
        swap.graft(receiver, donor, ["attention"])
    with pytest.raises(ValueError, match="out of range"):
        swap.graft(receiver, donor, ["attn"], layers=[5])
    with pytest.raises(ValueError, match="layer range"):
        grafting.layer_range(4, "middle")
    other = AutoModelForCausalLM.from_config(_config("llama"))
    other.config.model_type = "unknown"
    with pytest.raises(ValueError, match="not supported"):
        families.component_map(other)


def test_layer_ranges_and_standard_grafts():
    assert grafting.layer_range(4, "first_half") == (0, 1)
    assert grafting.layer_range(5, "second_half") == (2, 3, 4)
    grafts = grafting.standard_grafts(4, ["all", "first_half"])
    assert [g.name for g in grafts] == ["attention", "MLP", "attention (first half)", "MLP (first half)",
                                        "attention + MLP"]


def test_gain_share_matches_the_formula_and_is_nan_without_gain():
    receiver = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool)  # 20 %
    donor = np.array([1, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool)  # 60 %
    hybrid = np.array([1, 1, 0, 0, 0, 1, 1, 0, 0, 0], bool)  # 40 %
    out = grafting.gain_share(receiver, donor, hybrid, n_bootstrap=300)
    assert out["value"] == pytest.approx(0.5)
    assert out["ci"][0] <= 0.5 <= out["ci"][1]
    assert np.isnan(grafting.gain_share(receiver, receiver, hybrid, n_bootstrap=10)["value"])


def test_graft_table_with_a_stub_evaluation():
    receiver, donor = _pair("qwen2")

    def has_donor(model, part):
        name = {"attn": "model.layers.0.self_attn.q_proj.weight", "mlp": "model.layers.0.mlp.up_proj.weight"}[part]
        return torch.equal(model.state_dict()[name], donor.state_dict()[name])

    def evaluate(model):  # accuracy: receiver 2/10, donor 6/10, its attention alone 5/10, its MLP alone 3/10
        n = 2 + 3 * has_donor(model, "attn") + 1 * has_donor(model, "mlp")
        return [i < n for i in range(10)]

    grafts = grafting.standard_grafts(2)
    table = grafting.graft_table(receiver, donor, grafts, evaluate, n_bootstrap=100, log=lambda _: None)
    shares = {row["graft"]: row["share"]["value"] for row in table["rows"]}
    assert shares == pytest.approx({"attention": 0.75, "MLP": 0.25, "attention + MLP": 1.0})
    assert table["gain"]["value"] == pytest.approx(0.4)
    assert table["receiver"]["value"] == pytest.approx(0.2) and table["donor"]["value"] == pytest.approx(0.6)


def test_no_share_when_the_gain_is_not_distinguishable_from_zero():
    receiver = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], bool)
    donor = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1, 0], bool)  # one problem gained, one lost: gain 0 +- noise
    donor[0] = True  # +1 problem in 10: a gain whose interval still contains 0
    out = grafting.gain_share(receiver, donor, donor, n_bootstrap=300)
    assert np.isnan(out["value"]) and out["note"] == grafting.GAIN_NOTE


# --- captions of the grafting figures -------------------------------------------------------------------
def _est(value, lo, hi):
    return {"value": value, "ci": [lo, hi]}


def test_caption_shares_states_the_gain_and_each_share_or_why_none():
    gain = _est(0.2, 0.15, 0.25)
    grafts = {"n_problems": 128, "gain": gain, "rows": [
        {"graft": "attention", "share": _est(0.7, 0.55, 0.85)}, {"graft": "MLP", "share": _est(0.3, 0.1, 0.5)}]}
    text = figures.caption_shares(grafts)
    assert "128 problems" in text
    assert f"RLVR − SFT gain {captions.change(gain, scale=100, unit=' points')}" in text
    assert f"attention {captions.estimate(_est(0.7, 0.55, 0.85))}, MLP {captions.estimate(_est(0.3, 0.1, 0.5))}" in text
    grafts["gain"] = _est(0.02, -0.01, 0.05)
    text = figures.caption_shares(grafts)
    assert "no change detected (" in text and grafting.GAIN_NOTE in text and "attention" not in text
    assert "Not measured" in figures.caption_shares({"rows": []})


def test_caption_graft_gains_reads_rlvr_against_the_placebos_and_nulls():
    points = {"scale": 100, "unit": " points"}
    grafts = {"variants": {
        "rlvr": {"attn_graft_gain": _est(0.16, 0.11, 0.21), "mlp_graft_gain": _est(0.02, -0.02, 0.06)},
        "placebo_0": {"attn_graft_gain": _est(-0.18, -0.23, -0.13), "mlp_graft_gain": _est(0.03, -0.01, 0.07)},
        "null_0": {"attn_graft_gain": _est(0.0, -0.01, 0.01), "mlp_graft_gain": _est(0.0, 0.0, 0.0)}}}
    text = figures.caption_graft_gains(grafts, {"rlvr": "study", "placebo_0": "placebo", "null_0": "null"})
    assert f"attention alone {captions.change(_est(0.16, 0.11, 0.21), **points)}" in text
    assert "MLP alone no change detected (" in text
    assert "attention graft lies beyond every one of those intervals" in text
    assert "MLP graft lies within those spans" in text and "placebos and nulls" in text
    assert "not measured" in figures.caption_graft_gains({}, {})
