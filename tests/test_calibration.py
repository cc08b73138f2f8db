"""The instrument test of the verdict on tiny models: a planted attention-only change must read Routing, a
planted MLP-only change Representation learning, and random updates of the same size and the identical model
"no evidence", on the rows computed from real forward passes and real weights.

The planted updates are low-rank and aligned with the component's input activations, as gradient updates are
(an update is a sum of outer products of errors and inputs); the nulls are `treatments.nulls.random_update` of the
planted RLVR, exactly as notebook 03 builds them.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils.instruments.cka import same_input
from rlvr_utils.treatments import nulls
from rlvr_utils.evidence import verdict
from rlvr_utils.core.estimate import estimates_json
from rlvr_utils.instruments.weights import measures, updates
from rlvr_utils.activations.tokens import TokenCache

NULLS = [f"null_{k}" for k in range(5)]
TREATMENTS = ["rlvr", "attn_only", "mlp_only", "identical", *NULLS]
# the known answers that calibrate each row (the registry gives these on a run)
EXPECTED = {"attn_only": verdict.ROUTING, "mlp_only": verdict.REPRESENTATION, "identical": verdict.NO_EVIDENCE,
            **{n: verdict.NO_EVIDENCE for n in NULLS}}


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # a trained model's activations live near a low-dimensional subspace; so do these
        g = torch.Generator().manual_seed(seed)
        embed = model.model.embed_tokens.weight
        embed.copy_(torch.randn(64, 4, generator=g) @ torch.randn(4, 32, generator=g) * 0.1 + 0.01 * embed)
    return model


def token_cache(n: int = 48, length: int = 14, prompt: int = 5) -> TokenCache:
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 64, (n, length), generator=g).tolist()
    return TokenCache(seqs, [prompt] * n, list(range(n)), "gold", 0)


def _inputs(model, cache) -> dict[str, torch.Tensor]:
    """Each projection's input activations (rows = tokens), to align planted updates with the data."""
    seen, handles = {}, []

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].reshape(-1, args[0].shape[-1])
        return hook

    for name, module in model.named_modules():
        if name.endswith(("proj",)):
            handles.append(module.register_forward_pre_hook(keep(name)))
    with torch.no_grad():
        model(torch.tensor(cache.sequences))
    for h in handles:
        h.remove()
    return seen


def planted(sft, cache, group: str, size: float = 0.5) -> dict[str, torch.Tensor]:
    """SFT's weights plus, in each of the group's projections, a rank-2 update along the top two principal
    directions of that projection's inputs, of Frobenius norm `size` times the weight's."""
    inputs, state = _inputs(sft, cache), {k: v.clone() for k, v in sft.state_dict().items()}
    suffixes = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}[group]
    g = torch.Generator().manual_seed(2)
    for module, x in inputs.items():
        if not module.endswith(suffixes):
            continue
        w = state[module + ".weight"]
        directions = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:2]  # (2, d_in)
        outputs = torch.linalg.qr(torch.randn(w.shape[0], 2, generator=g)).Q  # (d_out, 2)
        update = outputs @ directions
        state[module + ".weight"] = w + update * (size * w.norm() / update.norm())
    return state


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    cache = token_cache()
    sft = tiny_model()
    sft_state = sft.state_dict()
    states = {"attn_only": planted(sft, cache, "attention"), "mlp_only": planted(sft, cache, "mlp")}
    rlvr = {k: v.clone() for k, v in sft_state.items()}
    for group in states.values():
        for k, v in group.items():
            rlvr[k] = rlvr[k] + (v - sft_state[k])
    states["rlvr"] = rlvr
    states["identical"] = {k: v.clone() for k, v in sft_state.items()}
    for k, name in enumerate(NULLS):
        states[name] = nulls.random_update(sft_state, rlvr, seed=100 + k)
    out, folders = {}, {"sft": tmp_path_factory.mktemp("sft")}
    sft.save_pretrained(folders["sft"])
    for name, state in states.items():
        model = tiny_model()
        model.load_state_dict(state)
        out[name] = same_input.compare(sft, model.eval(), cache, n_bootstrap=100)["summary"]
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
    rows = updates.compare(folders, [(name, "sft") for name in states], progress=False)
    return {"same_input.json": {"variants": estimates_json(out)},
            "weights.json": {"variants": estimates_json(measures.variant_measures(rows, list(states), nulls=NULLS,
                                                                                 n_bootstrap=200))}}


def test_random_update_keeps_rlvrs_norm_in_every_tensor():
    sft = tiny_model().state_dict()
    rlvr = {k: v + 0.01 * torch.randn_like(v) * (i % 2) for i, (k, v) in enumerate(sft.items())}
    null = nulls.random_update(sft, rlvr, seed=0)
    for k in sft:
        assert torch.allclose((null[k] - sft[k]).norm(), (rlvr[k] - sft[k]).norm(), rtol=1e-5, atol=1e-7)
        if torch.equal(rlvr[k], sft[k]):
            assert torch.equal(null[k], sft[k])  # an untouched tensor stays untouched
    other = nulls.random_update(sft, rlvr, seed=1)
    assert not torch.equal(null["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])


def test_same_input_row_classifies_planted_controls_and_reads_nulls_as_no_evidence(metrics):
    table = verdict.evidence(metrics, TREATMENTS, NULLS, verdict_params(), EXPECTED)
    row = table[table["file"] == "same_input.json"].iloc[0]
    assert row["readings"]["attn_only"] == verdict.ROUTING
    assert row["readings"]["mlp_only"] == verdict.REPRESENTATION
    for name in [*NULLS, "identical"]:
        assert row["readings"][name] == verdict.NO_EVIDENCE, (name, row["readings"][name])
    assert row["calibration"] == "counts"
    assert row["rlvr"] == verdict.REPRESENTATION  # the planted RLVR changed its MLPs


@pytest.mark.parametrize("measurement", ["Structured (top-k) energy", "MLP share"])
def test_weight_rows_classify_planted_controls_and_read_nulls_as_no_evidence(metrics, measurement):
    table = verdict.evidence(metrics, TREATMENTS, NULLS, verdict_params(), EXPECTED)
    row = table[table["measurement"].str.startswith(measurement)].iloc[0]
    assert row["readings"]["attn_only"] == verdict.ROUTING, row["readings"]
    assert row["readings"]["mlp_only"] == verdict.REPRESENTATION, row["readings"]
    for name in [*NULLS, "identical"]:
        assert row["readings"][name] in (verdict.NO_EVIDENCE, verdict.NOT_MEASURED), (name, row["readings"][name])
    assert row["calibration"] == "counts"


def test_no_row_reads_a_null_or_the_identical_model_as_evidence(metrics):
    table = verdict.evidence(metrics, TREATMENTS, NULLS, verdict_params(), EXPECTED)
    for _, row in table.iterrows():
        for name in [*NULLS, "identical"]:
            assert row["readings"][name] in (verdict.NO_EVIDENCE, verdict.NOT_MEASURED), (row["measurement"], name)


def test_nulls_and_identical_model_get_an_inconclusive_verdict(metrics):
    params = verdict_params()
    table = verdict.evidence(metrics, TREATMENTS, NULLS, params, EXPECTED)
    for name in [*NULLS, "identical"]:
        assert verdict.overall(verdict.tally(table, name), params) == verdict.INCONCLUSIVE


def verdict_params():
    from rlvr_utils.core.params import VerdictParams

    return VerdictParams(min_decided_rows=1, min_margin=1)
