"""Activation patching: identities that must hold exactly, a naive hook written here as the reference,
and the target/corruption helpers on the organism's real tokenizer."""
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from rlvr_utils import architecture, config, data, grafting, organism, patching

VOCAB = 64

SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")


def _model(family: str, seed: int):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, **common)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, **common)
    else:
        cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family]
        cfg = cls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, **common)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _batch(seed: int = 0, rows: int = 4, seq: int = 12) -> patching.PatchBatch:
    """Random right-padded sequences; targets inside each row; correct tokens random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, seq), generator=g)
    lengths = torch.tensor([seq, seq - 3, seq - 1, seq - 5])[:rows]
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    target = lengths - 2
    correct = torch.randint(1, VOCAB, (rows,), generator=g)
    return patching.PatchBatch(ids, mask, target, correct, problem_ids=list(range(rows)))


def _with_changed_blocks(model, layers, part=None, seed=7):
    """A copy of `model` whose blocks `layers` (only their attention or MLP when `part` is given) differ."""
    other = _model(model.config.model_type, 0)
    other.load_state_dict(model.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            b = architecture.blocks(other)[layer]
            module = {None: b.block, "attn": b.attn_out, "mlp": b.mlp_out}[part]
            for p in module.parameters():
                p.add_(0.5 * torch.randn_like(p))
    return other


FAMILIES = ["qwen2", "llama", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_model_with_its_own_activations_changes_nothing(family):
    model = _model(family, 0)
    patches = patching.layer_patches(3, SITES, positions=("all", "target"), all_layers=True)
    result = patching.sweep(model, model, [_batch(0), _batch(1)], patches, patches_per_forward=5, progress=False)
    np.testing.assert_allclose(result.patched, np.repeat(result.receiver[:, None], len(patches), 1), atol=1e-5)
    np.testing.assert_allclose(result.donor, result.receiver, atol=1e-5)
    # normalised against another model's behaviour, the self-patch effect is 0
    other = _model(family, 1)
    donor_ld = patching.sweep(model, other, [_batch(0), _batch(1)], patches[:1], progress=False).donor
    effects = patching.normalised_effect(result.patched, result.receiver[:, None], donor_ld[:, None], 1e-3)
    np.testing.assert_allclose(effects, 0.0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [1, 2])
def test_resid_pre_patch_after_the_changed_blocks_reproduces_the_donor(family, layer):
    receiver = _model(family, 0)
    donor = _with_changed_blocks(receiver, range(layer))
    batch = _batch(2).trimmed()
    acts, donor_logits = patching.record(donor, batch.input_ids, batch.attention_mask,
                                         [(layer, "hook_resid_pre")], batch.target)
    patched = patching.run_patched(receiver, batch, [patching.Patch("hook_resid_pre", (layer,))], acts)[0]
    torch.testing.assert_close(patched, donor_logits)
    result = patching.sweep(receiver, donor, [batch], [patching.Patch("hook_resid_pre", (layer,))], progress=False)
    np.testing.assert_allclose(result.normalised_effects(1e-3), 1.0, atol=1e-4)
    # before the changed blocks the donor's residual stream is the receiver's: nothing moves
    early = patching.sweep(receiver, donor, [batch], [patching.Patch("hook_resid_pre", (0,))], progress=False)
    np.testing.assert_allclose(early.normalised_effects(1e-3), 0.0, atol=1e-4)


@pytest.mark.parametrize("part,site", [("attn", "hook_attn_out"), ("mlp", "hook_mlp_out")])
def test_component_patch_reproduces_a_donor_that_differs_only_there(part, site):
    receiver = _model("qwen2", 0)
    donor = _with_changed_blocks(receiver, [1], part=part)
    batch = _batch(3)
    patches = [patching.Patch(site, (1,)), patching.Patch(site, (0,))]
    effects = patching.sweep(receiver, donor, [batch], patches, progress=False).normalised_effects(1e-3)
    np.testing.assert_allclose(effects[:, 0], 1.0, atol=1e-4)  # the changed component carries everything
    np.testing.assert_allclose(effects[:, 1], 0.0, atol=1e-4)  # an unchanged one carries nothing


def test_single_position_patch_matches_a_naive_hook():
    receiver, donor = _model("qwen2", 0), _model("qwen2", 1)
    batch = _batch(4).trimmed()
    layer, position = 1, 3
    mlp = architecture.blocks(receiver)[layer].mlp_out
    captured = {}
    handle = architecture.blocks(donor)[layer].mlp_out.register_forward_hook(lambda m, a, o: captured.update(out=o))
    with torch.no_grad():
        donor(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()

    def naive(_module, _args, output):
        output = output.clone()
        output[:, position] = captured["out"][:, position]
        return output

    handle = mlp.register_forward_hook(naive)
    with torch.no_grad():
        logits = receiver(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    handle.remove()
    expected = logits[torch.arange(4), batch.target]

    at = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    at[:, position] = True
    batch.positions = {"third": at}
    acts, _ = patching.record(donor, batch.input_ids, batch.attention_mask, [(layer, "hook_mlp_out")])
    got = patching.run_patched(receiver, batch, [patching.Patch("hook_mlp_out", (layer,), "third")], acts)[0]
    torch.testing.assert_close(got, expected)


def test_batching_patches_together_equals_one_at_a_time():
    receiver, donor = _model("gpt2", 0), _model("gpt2", 1)
    patches = patching.layer_patches(3, SITES, positions=("all", "target"))
    one = patching.sweep(receiver, donor, [_batch(5)], patches, patches_per_forward=1, progress=False)
    many = patching.sweep(receiver, donor, [_batch(5)], patches, patches_per_forward=7, progress=False)
    np.testing.assert_allclose(one.patched, many.patched, atol=1e-5)


def test_foil_is_the_receivers_top_wrong_token_and_logit_difference():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 4.0, 0.0]])
    correct = torch.tensor([1, 2])
    foil = patching.top_wrong_token(logits, correct)
    assert foil.tolist() == [3, 0]
    assert patching.logit_difference(logits, correct, foil).tolist() == [1.0, -1.0]


def test_normalised_effect_known_values_and_guard():
    effects = patching.normalised_effect([1.0, 2.0, 5.0], [0.0, 0.0, 5.0], [2.0, 2.0, 5.05], min_gap=0.1)
    assert effects[:2].tolist() == [0.5, 1.0] and np.isnan(effects[2])
    with pytest.raises(ValueError, match="min_gap"):
        patching.normalised_effect([1.0], [0.0], [1.0], min_gap=-1)


def test_summaries_average_per_problem_then_bootstrap():
    patches = [patching.Patch("hook_attn_out", (0,)), patching.Patch("hook_attn_out", (1,)),
               patching.Patch("hook_mlp_out", (0,))]
    result = patching.SweepResult(patches, receiver=np.zeros(3), donor=np.array([2.0, 4.0, 0.0]),
                                  patched=np.array([[1.0, 2.0, 0.0], [4.0, 0.0, 4.0], [9.0, 9.0, 9.0]]),
                                  problem_ids=[0, 1, 2])
    attn = patching.mean_effect(result, lambda p: p.site == "hook_attn_out", min_gap=0.1, n_bootstrap=50)
    assert attn["value"] == pytest.approx(np.mean([0.75, 0.5]))  # problem 2 has no gap: left out
    rows = patching.summarize(result, min_gap=0.1, n_bootstrap=50)
    assert [r["value"] for r in rows] == pytest.approx([0.75, 0.5, 0.5])
    assert all(r["n_kept"] == 2 for r in rows)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="site"):
        patching.Patch("hook_attn", (0,))
    b = _batch(0)
    with pytest.raises(ValueError, match="target"):
        patching.PatchBatch(b.input_ids, b.attention_mask, b.target + 100, b.correct)
    with pytest.raises(ValueError, match="same token count"):
        patching.PatchBatch(b.input_ids, b.attention_mask, b.target, b.correct, donor_input_ids=b.input_ids[:, :-1])
    with pytest.raises(ValueError, match="positions"):
        b.position_mask("corrupted")
    with pytest.raises(ValueError, match="out of range"):
        patching.sweep(_model("qwen2", 0), _model("qwen2", 1), [b], [patching.Patch("hook_mlp_out", (9,))],
                       progress=False)


# --- targets and corruptions on the organism's tokenizer -------------------------------------------
@pytest.fixture(scope="module")
def problems_and_tokenizer():
    rows = data.synthetic_problems(config.Params().data, 40, seed=3)
    tokenizer = organism.build_tokenizer([r["prompt"] + r["answer"] for r in rows], 300)
    return rows, tokenizer


def _encode(rows, tokenizer):
    prompts = [tokenizer.encode(r["prompt"]) for r in rows]
    seqs = [p + tokenizer.encode(r["answer"]) for p, r in zip(prompts, rows)]
    return seqs, [len(p) for p in prompts]


def test_answer_target_predicts_the_first_digit_of_the_final_answer(problems_and_tokenizer):
    rows, tokenizer = problems_and_tokenizer
    seqs, plens = _encode(rows, tokenizer)
    texts = patching._token_texts(tokenizer, seqs)
    for seq, plen, row in zip(seqs, plens, rows):
        target = patching.answer_target(seq, plen, texts)
        assert tokenizer.decode(seq[:target + 1]).endswith("#### ")
        assert tokenizer.decode([seq[target + 1]]) == row["final"][0]
    without = tokenizer.encode(rows[0]["prompt"] + " 3 + 4 = 7.")
    assert patching.answer_target(without, plens[0], texts | patching._token_texts(tokenizer, [without])) is None

    batches = patching.answer_batches(seqs, plens, [r["id"] for r in rows], tokenizer, tokenizer.pad_token_id,
                                      batch_size=16, finals={r["id"]: "9" + r["final"] for r in rows}, limit=20)
    assert [len(b.target) for b in batches] == [16, 4]
    assert (batches[0].correct == patching.digit_token(tokenizer, "9")).all()  # gold digits when given


def test_corrupted_prompt_changes_one_digit_and_targets_its_copy(problems_and_tokenizer):
    rows, tokenizer = problems_and_tokenizer
    seqs, plens = _encode(rows, tokenizer)
    texts = patching._token_texts(tokenizer, seqs)
    digits = {str(d): patching.digit_token(tokenizer, str(d)) for d in range(10)}
    rng = random.Random(0)
    for seq, plen, row in zip(seqs, plens, rows):
        c = patching.corrupt_number(seq, plen, texts, digits, which=-1, rng=rng)
        assert c is not None  # the last operand is always copied into the working
        changed = [i for i, (a, b) in enumerate(zip(seq, c["corrupted"])) if a != b]
        assert changed == [c["changed"]] and c["changed"] < plen and len(c["corrupted"]) == len(seq)
        assert tokenizer.decode([c["corrupt_token"]]).isdigit() and c["corrupt_token"] != c["clean_token"]
        assert c["target"] >= plen - 1 and seq[c["target"] + 1] == c["clean_token"]
        assert tokenizer.decode([c["corrupt_token"]]) != "0" or tokenizer.decode([seq[c["changed"] - 1]]).isdigit()
    batches = patching.corrupted_batches(seqs, plens, [r["id"] for r in rows], tokenizer, tokenizer.pad_token_id,
                                         batch_size=64)
    b = batches[0]
    assert b.positions["corrupted"].sum(1).tolist() == [1] * len(rows)
    assert ((b.input_ids != b.donor_input_ids) == b.positions["corrupted"]).all()


def test_run_writes_every_summary_key_and_skips_when_current(tmp_path, problems_and_tokenizer):
    from rlvr_utils import activations, artifacts

    rows, tokenizer = problems_and_tokenizer
    cfg = config.Params(name="t", runs_dir=str(tmp_path), patching=dict(
        n_problems=12, batch_size=8, graft_problems=10, n_bootstrap=50, graft_ranges=["all", "first_half"]))
    for stage, seed in (("sft", 0), ("rlvr", 1)):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
        model.save_pretrained(cfg.model_ref(stage))
        tokenizer.save_pretrained(cfg.model_ref(stage))
    data.write_jsonl(cfg.path("data", "eval.jsonl"), rows)
    activations.build_token_cache(tokenizer, rows, None, "gold").save(cfg.path("tokens"))

    rlvr_q = AutoModelForCausalLM.from_pretrained(cfg.model_ref("rlvr")).model.layers[0].self_attn.q_proj.weight

    def evaluate(model):  # stub: RLVR's layer-0 attention makes problems 0-5 right, the rest stay wrong
        donor_attn = torch.equal(model.model.layers[0].self_attn.q_proj.weight, rlvr_q)
        return [donor_attn and i < 6 for i in range(10)]

    assert "wrote" in patching.run(cfg, progress=False, evaluate=evaluate)
    out = artifacts.read_json(cfg.path("metrics", "patching.json"))
    for key in ("graft_attn_share", "graft_mlp_share", "patch_attn_out_effect_rlvr_into_sft",
                "patch_mlp_out_effect_rlvr_into_sft", "patch_attn_out_effect_sft_into_rlvr",
                "patch_mlp_out_effect_sft_into_rlvr"):
        assert set(out["summary"][key]) == {"value", "ci", "description"}
    assert out["summary"]["graft_attn_share"]["value"] == pytest.approx(1.0)
    assert out["summary"]["graft_mlp_share"]["value"] == pytest.approx(0.0)
    assert out["cross_model"]["rlvr_into_sft"]["n_problems"] == 12
    assert set(out["within_model"]) == {"sft", "rlvr"}
    assert "up to date" in patching.run(cfg, progress=False, evaluate=evaluate)
    assert "recovers a share **1.00**" in patching.reading(out)
    import matplotlib.pyplot as plt

    fig = patching.plot_heatmaps(out["within_model"], {"sft": "SFT"})
    assert [ax.get_ylabel() for ax in fig.axes[:2]] == ["layer", "layer"] and fig.axes[0].get_title().startswith("SFT")
    plt.close(fig)
    fig = grafting.plot_shares(out["grafting"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["attention", "MLP", "attention (first half)",
                                                                      "MLP (first half)", "attention + MLP"]
    plt.close(fig)
