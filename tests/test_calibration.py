"""The instrument test of the verdict on tiny models: a planted attention-only change must read Routing, a
planted MLP-only change Representation learning, the same planted changes with a placebo's update of every other
weight (full-parameter controls, raw and at RLVR's norm) their own side, and placebo-*trained* updates (Adam on
targets that ignore the input), random updates of the same size and the identical model "no evidence", on the rows
computed from real forward passes and real weights.

The planted updates are low-rank and aligned with the component's input activations, as gradient updates are
(an update is a sum of outer products of errors and inputs); the nulls are `treatments.nulls.random_update` of the
planted RLVR, exactly as notebook 03 builds them.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils.instruments.cka import same_input
from rlvr_utils.models.families import family_of
from rlvr_utils.treatments import hybrids, nulls, weights
from rlvr_utils.evidence import verdict
from rlvr_utils.core.estimate import estimates_json
from rlvr_utils.instruments.weights import measures, updates
from rlvr_utils.activations.tokens import TokenCache

NULLS = [f"null_{k}" for k in range(3)]
PLACEBOS = [f"placebo_{k}" for k in range(3)]
HYBRIDS = [f"{h}{s}" for h in hybrids.HYBRIDS for s in ("", "_matched")]
REFERENCES = [*PLACEBOS, *(f"{p}_matched" for p in PLACEBOS), "identical", *NULLS]
# the design a run's registry gives: kinds, known answers, full-parameter controls, rescaled copies
DESIGN = verdict.Design(
    {"rlvr": "study", "attn_only": "control", "mlp_only": "control", **{h: "control" for h in HYBRIDS},
     **{p: "placebo" for p in REFERENCES if p.startswith("placebo")}, "identical": "identical",
     **{n: "null" for n in NULLS}},
    {"attn_only": verdict.ROUTING, "mlp_only": verdict.REPRESENTATION,
     **{h: hybrids.HYBRIDS[h.removesuffix("_matched")][2] for h in HYBRIDS}, **{r: verdict.NO_EVIDENCE for r in REFERENCES}},
    frozenset(HYBRIDS), {r: r.removesuffix("_matched") for r in [*REFERENCES, *HYBRIDS]})


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


def placebo_trained(sft, cache, seed: int, steps: int = 40, lr: float = 3e-4) -> dict[str, torch.Tensor]:
    """A *trained* update without task signal: Adam on next-token targets drawn at random (independent of the
    inputs), every weight trainable. Its updates are sums of outer products of errors and inputs, like a task
    update's, so a "how structured is the change" measure cannot tell them apart by kind."""
    model = tiny_model()
    model.load_state_dict(sft.state_dict())
    model.train()
    g = torch.Generator().manual_seed(seed)
    inputs = torch.tensor(cache.sequences)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        targets = torch.randint(0, 64, inputs.shape, generator=g)
        loss = torch.nn.functional.cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
    for k, name in enumerate(PLACEBOS):
        states[name] = placebo_trained(sft, cache, seed=200 + k)
        states[f"{name}_matched"] = weights.rescaled(sft_state, states[name], rlvr)
    component_of = family_of("qwen2").component_of
    for name, (component, carrier, _) in hybrids.HYBRIDS.items():
        states[name] = hybrids.hybrid(sft_state, states[carrier], states["placebo_0"], component, component_of)
        states[f"{name}_matched"] = weights.rescaled(sft_state, states[name], rlvr)
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


def row_of(table, measurement: str):
    return table[table["measurement"].str.startswith(measurement)].iloc[0]


def test_no_row_reads_a_placebo_trained_update_a_null_or_the_identical_model_as_evidence(metrics):
    table = verdict.evidence(metrics, DESIGN, verdict_params())
    for _, row in table.iterrows():
        for name in REFERENCES:
            assert row["readings"][name] in (verdict.NO_EVIDENCE, verdict.NOT_MEASURED), (row["measurement"], name)


def test_structured_energy_credits_the_planted_component_also_when_every_other_weight_moved(metrics):
    """The full-parameter controls carry a placebo-trained update of every weight outside the planted component
    (raw, and rescaled to RLVR's norm per tensor): the row must still credit the planted side only."""
    row = row_of(verdict.evidence(metrics, DESIGN, verdict_params()), "Structured (top-k) energy")
    for name, answer in DESIGN.expected.items():
        assert row["readings"][name] == answer, (name, row["readings"][name])
    assert row["calibration"] == "counts"
    assert row["rlvr"] == verdict.BOTH  # the planted RLVR changed attention and MLPs, and neither wins by order


@pytest.mark.parametrize("measurement", ["MLP share", "Same-input change"])
def test_a_row_that_reads_the_size_of_an_update_does_not_count_against_norm_matched_controls(metrics, measurement):
    """The MLP share and 1 - CKA of a component's function grow with the update's size: at RLVR's norms a planted
    change and a placebo-trained one look alike, so the norm-matched full-parameter controls are misread and the
    row is kept out of the verdict (with random nulls only, both rows used to count)."""
    row = row_of(verdict.evidence(metrics, DESIGN, verdict_params()), measurement)
    assert row["calibration"] != "counts"
    assert "_matched reads no evidence" in row["calibration"]


def test_placebos_nulls_and_the_identical_model_get_the_verdict_neither(metrics):
    params = verdict_params()
    table = verdict.evidence(metrics, DESIGN, params)
    for name in REFERENCES:
        assert verdict.overall(verdict.tally(table, name), params) == verdict.NEITHER, name
    assert verdict.overall(verdict.tally(table, "rlvr"), params) == verdict.BOTH


def verdict_params():
    from rlvr_utils.core.params import VerdictParams

    return VerdictParams(min_decided_rows=1)
