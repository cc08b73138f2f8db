"""Activation patching and direct effects: identities that must hold exactly, a naive hook as the reference,
planted changes whose component is known (and Gaussian nulls of the same size), and targets that are the
actual next tokens for a digit-level and a digit-merging BPE tokenizer."""
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from rlvr_utils.models import families as architecture
from rlvr_utils.core import captions, config, fmt
from rlvr_utils.training import data, organism
from rlvr_utils.instruments import base
from rlvr_utils.instruments.patching import batches as batching
from rlvr_utils.instruments.patching import core, effects, figures, grafting, swap
from rlvr_utils.instruments.patching.instrument import Patching
from rlvr_utils.treatments import registry

VOCAB = 64
SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out")
GSM8K = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"


def _model(family: str, seed: int, n_layers: int = 3):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=64, **common)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                            **common)
    else:
        cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[family]
        cfg = cls(hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, **common)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _batch(seed: int = 0, rows: int = 4, seq: int = 12) -> batching.PatchBatch:
    """Random right-padded sequences, each scoring its last two real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, seq), generator=g)
    lengths = torch.tensor([seq, seq - 3, seq - 1, seq - 5])[:rows]
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    index = torch.arange(seq)[None, :]
    score = (index >= lengths[:, None] - 3) & (index <= lengths[:, None] - 2)
    return batching.PatchBatch(ids, mask, score, problem_ids=list(range(rows)))


def _copy(model):
    other = _model(model.config.model_type, 0, len(architecture.blocks(model)))
    other.load_state_dict(model.state_dict())
    return other


def _with_changed_blocks(model, layers, part=None, seed=7, scale=0.5):
    """A copy of `model` whose blocks `layers` (only their attention or MLP when `part` is given) differ."""
    other = _copy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            b = architecture.blocks(other)[layer]
            module = {None: b.block, "attn": b.attn_out, "mlp": b.mlp_out}[part]
            for p in module.parameters():
                p.add_(scale * torch.randn_like(p))
    return other


def _gaussian_null(model, planted, seed):
    """`model` plus a Gaussian change of every tensor with the planted change's total Frobenius norm."""
    norm = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(planted.parameters(), model.parameters())))
    other = _copy(model)
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(p.shape, generator=g) for p in other.parameters()]
    scale = norm / torch.sqrt(sum((x ** 2).sum() for x in noise))
    with torch.no_grad():
        for p, x in zip(other.parameters(), noise):
            p.add_(scale * x)
    return other


FAMILIES = ["qwen2", "llama", "gpt2", "gpt_neox"]


# --- the engine ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_patching_a_model_with_its_own_activations_changes_nothing(family):
    model = _model(family, 0)
    patches = core.layer_patches(3, SITES, positions=("all", "target"), all_layers=True)
    result = core.sweep(model, model, [_batch(0), _batch(1)], patches, patches_per_forward=5, progress=False)
    np.testing.assert_allclose(result.patched, np.repeat(result.receiver[:, None], len(patches), 1), atol=1e-5)
    np.testing.assert_allclose(result.donor, result.receiver, atol=1e-5)
    direct = core.direct_effects(model, model, [_batch(0)], progress=False)
    np.testing.assert_allclose(direct.direct, 0, atol=1e-6)
    np.testing.assert_allclose(direct.graft, direct.receiver[:, None].repeat(6, 1), atol=1e-5)


def test_metric_is_the_teacher_forced_log_probability_of_the_tokens_that_follow():
    model, batch = _model("qwen2", 0), _batch(2)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    expected = [np.mean([float(logp[b, p, batch.input_ids[b, p + 1]]) for p in torch.nonzero(batch.score[b])[:, 0]])
                for b in range(4)]
    result = core.sweep(model, model, [batch], [], progress=False)
    np.testing.assert_allclose(result.receiver, expected, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [1, 2])
def test_resid_pre_patch_after_the_changed_blocks_reproduces_the_donor(family, layer):
    receiver = _model(family, 0)
    donor = _with_changed_blocks(receiver, range(layer))
    batch = _batch(2).trimmed()
    patch = core.Patch("hook_resid_pre", (layer,))
    result = core.sweep(receiver, donor, [batch], [patch, core.Patch("hook_resid_pre", (0,))], progress=False)
    np.testing.assert_allclose(result.patched[:, 0], result.donor, atol=1e-4)
    # before the changed blocks the donor's residual stream is the receiver's: nothing moves
    np.testing.assert_allclose(result.patched[:, 1], result.receiver, atol=1e-4)


def test_single_position_patch_matches_a_naive_hook():
    receiver, donor = _model("qwen2", 0), _model("qwen2", 1)
    batch = _batch(4).trimmed()
    layer, position = 1, 3
    captured = {}
    handle = architecture.blocks(donor)[layer].mlp_out.register_forward_hook(lambda m, a, o: captured.update(out=o))
    with torch.no_grad():
        donor(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    handle.remove()

    def naive(_module, _args, output):
        output = output.clone()
        output[:, position] = captured["out"][:, position]
        return output

    handle = architecture.blocks(receiver)[layer].mlp_out.register_forward_hook(naive)
    with torch.no_grad():
        logp = torch.log_softmax(receiver(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    handle.remove()
    expected = [np.mean([float(logp[b, p, batch.input_ids[b, p + 1]]) for p in torch.nonzero(batch.score[b])[:, 0]])
                for b in range(4)]
    at = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    at[:, position] = True
    batch.positions = {"third": at}
    acts, _ = core.record(donor, batch.input_ids, batch.attention_mask, [(layer, "hook_mlp_out")])
    got = core.run_patched(receiver, batch, [core.Patch("hook_mlp_out", (layer,), "third")], acts)[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_batching_patches_together_equals_one_at_a_time():
    receiver, donor = _model("gpt2", 0), _model("gpt2", 1)
    patches = core.layer_patches(3, SITES, positions=("all", "target"))
    one = core.sweep(receiver, donor, [_batch(5)], patches, patches_per_forward=1, progress=False)
    many = core.sweep(receiver, donor, [_batch(5)], patches, patches_per_forward=7, progress=False)
    np.testing.assert_allclose(one.patched, many.patched, atol=1e-5)


# --- direct effects credit the component that changed ----------------------------------------------------
def _greedy_batches(model, n=32, prompt=6, new=10):
    """The receiver's own greedy continuations, scored on the generated tokens: a change of the weights
    moves their log-probability away from the receiver's."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = model.generate(torch.randint(1, VOCAB, (n, prompt), generator=g), max_new_tokens=new, do_sample=False,
                             pad_token_id=0, attention_mask=torch.ones(n, prompt, dtype=torch.long))
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, prompt - 1:-1] = True
    return [batching.PatchBatch(ids[i:i + 16], torch.ones_like(ids[i:i + 16]), score[i:i + 16],
                                problem_ids=list(range(i, i + 16))) for i in range(0, n, 16)]


@pytest.fixture(scope="module")
def planted():
    """A 6-layer receiver, first-layer-MLP-only and layer-1-attention-only donors, Gaussian nulls of the same
    size as the MLP change, and their direct effects on the receiver's own continuations."""
    receiver = _model("qwen2", 0, n_layers=6)
    batches = _greedy_batches(receiver)
    donors = {"mlp0": _with_changed_blocks(receiver, [0], "mlp", scale=0.3),
              "attn1": _with_changed_blocks(receiver, [1], "attn", scale=0.3)}
    donors |= {f"null{k}": _gaussian_null(receiver, donors["mlp0"], k) for k in range(5)}
    results = {name: core.direct_effects(receiver, d, batches, progress=False) for name, d in donors.items()}
    return receiver, donors, batches, results


def _sums(result, key="direct"):
    values = getattr(result, key).mean(0)
    return {c: sum(v for (_, comp), v in zip(result.components, values) if comp == c) for c in ("attn", "mlp")}


def test_direct_effects_credit_a_first_layer_mlp_change_to_the_mlp(planted):
    _, _, _, results = planted
    r = results["mlp0"]
    same = r.direct.mean(0)
    for (layer, c), value in zip(r.components, same):
        if (layer, c) == (0, "mlp"):
            assert abs(value) > 0.05  # the changed component carries a direct effect
        else:
            assert value == 0.0  # unchanged weights on the same input: exactly no change
    totals = effects.component_totals(r, n_bootstrap=200)
    assert totals["attn_direct_effect"]["value"] == 0.0
    assert effects.distinguishable(totals["mlp_direct_effect"])
    # own-run donor outputs also credit later attention layers: their inputs moved, their weights did not
    own = r.direct_own_run.mean(0)
    later_attn = [abs(v) for (layer, c), v in zip(r.components, own) if c == "attn" and layer > 0]
    assert max(later_attn) > 1e-3
    # total effects (activation patching, later components recompute) read later attention too
    sweep = core.sweep(planted[0], planted[1]["mlp0"], planted[2],
                           [core.Patch("hook_attn_out", (layer,)) for layer in range(1, 6)], progress=False)
    assert np.abs((sweep.patched - sweep.receiver[:, None]).mean(0)).max() > 1e-3


def test_direct_effects_credit_an_attention_only_change_to_attention(planted):
    r = planted[3]["attn1"]
    for (layer, c), value in zip(r.components, r.direct.mean(0)):
        assert (abs(value) > 0.05) if (layer, c) == (1, "attn") else value == 0.0
    # the same-input graft of that one component is the same-input total effect: it moves SFT as far as
    # the whole donor does, since nothing else changed
    j = r.components.index((1, "attn"))
    np.testing.assert_allclose(r.graft[:, j], r.donor, atol=1e-4)


def test_a_gaussian_change_of_every_tensor_credits_neither_component(planted):
    """The planted changes lie outside the Gaussian nulls' spread of attention - MLP direct effect; one null
    lies inside the other nulls' spread."""
    results = planted[3]
    gap = {name: _sums(r)["attn"] - _sums(r)["mlp"] for name, r in results.items()}
    nulls = [gap[f"null{k}"] for k in range(1, 5)]
    spread = max(nulls) - min(nulls)
    assert min(nulls) - spread <= gap["null0"] <= max(nulls) + spread
    assert gap["mlp0"] > max(nulls) + spread  # attn - mlp > 0: the MLP lost more (log-prob falls)
    assert gap["attn1"] < min(nulls) - spread


def test_last_layer_direct_effect_equals_the_total_effect():
    receiver = _model("qwen2", 0)
    donor = _with_changed_blocks(receiver, [2], "mlp")
    r = core.direct_effects(receiver, donor, [_batch(1)], progress=False)
    j = r.components.index((2, "mlp"))
    np.testing.assert_allclose(r.direct[:, j], r.donor - r.receiver, atol=1e-4)
    np.testing.assert_allclose(r.direct_own_run[:, j], r.donor - r.receiver, atol=1e-4)


def test_swapped_restores_the_receiver():
    receiver, donor = _model("qwen2", 0), _model("qwen2", 1)
    before = {k: v.clone() for k, v in receiver.state_dict().items()}
    with swap.swapped(receiver, donor, ["mlp"], [1]):
        assert torch.equal(receiver.model.layers[1].mlp.up_proj.weight, donor.model.layers[1].mlp.up_proj.weight)
        assert torch.equal(receiver.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
    for k, v in receiver.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- normalisation ---------------------------------------------------------------------------------------
def test_normalisation_is_of_the_aggregate_and_needs_a_gap():
    receiver = np.array([0.0, 0.0, 0.0, 0.0])
    donor = np.array([1.0, 3.0, 1.0, 3.0])
    patched = np.array([1.0, 0.0, 1.0, 0.0])
    out = effects.normalised(patched, receiver, donor, n_bootstrap=200)
    assert out["value"] == pytest.approx(0.5 / 2.0)  # (mean patched - mean receiver) / (mean gap), not mean ratio
    flat = effects.normalised(patched, receiver, receiver + np.array([0.1, -0.1, 0.1, -0.1]), n_bootstrap=200)
    assert np.isnan(flat["value"]) and "not distinguishable" in flat["note"]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="site"):
        core.Patch("hook_attn", (0,))
    b = _batch(0)
    with pytest.raises(ValueError, match="score no position"):
        batching.PatchBatch(b.input_ids, b.attention_mask, torch.zeros_like(b.score))
    late = torch.zeros_like(b.score)
    late[:, -1] = True
    with pytest.raises(ValueError, match="next token"):
        batching.PatchBatch(b.input_ids, b.attention_mask, late)
    with pytest.raises(ValueError, match="same token count"):
        batching.PatchBatch(b.input_ids, b.attention_mask, b.score, donor_input_ids=b.input_ids[:, :-1])
    with pytest.raises(ValueError, match="positions"):
        b.position_mask("corrupted")
    with pytest.raises(ValueError, match="out of range"):
        core.sweep(_model("qwen2", 0), _model("qwen2", 1), [b], [core.Patch("hook_mlp_out", (9,))],
                       progress=False)


# --- targets on the organism's tokenizer and on a digit-merging BPE -------------------------------------
@pytest.fixture(scope="module")
def problems_and_tokenizer():
    rows = data.synthetic_problems(config.Params().data, 40, seed=3)
    tokenizer = organism.build_tokenizer([r["prompt"] + r["answer"] for r in rows], 300)
    return rows, tokenizer


def bpe_tokenizer():
    """A byte-level BPE trained here on GSM8K text: it merges digits (' 10', '000') as GPT-2 and Llama 3 do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows],
                            trainers.BpeTrainer(vocab_size=1500, special_tokens=["<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>"), rows


def _encode(rows, tokenizer, prompt="prompt", answer="answer"):
    prompts = [tokenizer(r[prompt])["input_ids"] for r in rows]
    seqs = [p + tokenizer(r[answer], add_special_tokens=False)["input_ids"] for p, r in zip(prompts, rows)]
    return seqs, [len(p) for p in prompts]


def _scored_text(batches, tokenizer):
    """Per row: the text of the tokens the batch scores (those that follow its scored positions)."""
    out = []
    for b in batches:
        for row in range(len(b.score)):
            pos = torch.nonzero(b.score[row])[:, 0]
            out.append(tokenizer.decode(b.input_ids[row, pos + 1].tolist()))
    return out


def test_answer_tokens_on_the_organism_tokenizer(problems_and_tokenizer):
    rows, tokenizer = problems_and_tokenizer
    seqs, plens = _encode(rows, tokenizer)
    batches = batching.answer_batches(seqs, plens, [r["id"] for r in rows], tokenizer, tokenizer.pad_token_id,
                                      batch_size=16, marker="####", limit=20)
    assert [len(b.score) for b in batches] == [16, 4]
    assert [t.strip() for t in _scored_text(batches, tokenizer)] == [r["final"] for r in rows[:20]]
    without = tokenizer.encode(rows[0]["prompt"] + " 3 + 4 = 7.")
    assert batching.answer_span(without, plens[0], tokenizer, "####") is None


def test_a_digit_merging_bpe_scores_exactly_the_answer_tokens_that_follow():
    tokenizer, rows = bpe_tokenizer()
    rows = rows[:64]
    assert len(tokenizer.encode(" 10")) == 1  # the tokenizer does merge digits (the case under test)
    for r in rows:
        r["prompt"], r["final"] = r["question"] + "\n", r["answer"].split("####")[-1].strip()
    seqs, plens = _encode(rows, tokenizer)
    batches = batching.answer_batches(seqs, plens, list(range(len(rows))), tokenizer, tokenizer.pad_token_id,
                                      batch_size=32, marker="####")
    texts = _scored_text(batches, tokenizer)
    assert len(texts) == 64
    mismatches = [(t, r["final"]) for t, r in zip(texts, rows) if t.strip() != r["final"]]
    assert mismatches == []
    # every scored token is the token that follows in the sequence, by construction of the metric
    for b in batches:
        rows_, pos = b.score.nonzero(as_tuple=True)
        assert (b.attention_mask[rows_, pos + 1] == 1).all()
    # clean/corrupted patching swaps single digit tokens: this tokenizer cannot, and says so
    with pytest.raises(ValueError, match="merges digits"):
        batching.corrupted_batches(seqs, plens, list(range(len(rows))), tokenizer, tokenizer.pad_token_id, 8)


def test_a_tokenizer_that_does_not_decode_its_text_is_refused():
    class Lossy:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) for ch in text.lower()]}

        def decode(self, ids, clean_up_tokenization_spaces=False):
            return "".join(chr(i) for i in ids if chr(i) != ",")
    with pytest.raises(ValueError, match="does not decode"):
        batching.check_tokenizer(Lossy())


def test_corrupted_prompt_changes_one_digit_and_targets_its_copy(problems_and_tokenizer):
    rows, tokenizer = problems_and_tokenizer
    seqs, plens = _encode(rows, tokenizer)
    texts = batching.token_texts(tokenizer, seqs)
    digits = {str(d): batching.digit_token(tokenizer, str(d)) for d in range(10)}
    rng = random.Random(0)
    for seq, plen in zip(seqs, plens):
        c = batching.corrupt_number(seq, plen, texts, digits, which=-1, rng=rng)
        assert c is not None  # the last operand is always copied into the working
        changed = [i for i, (a, b) in enumerate(zip(seq, c["corrupted"])) if a != b]
        assert changed == [c["changed"]] and c["changed"] < plen and len(c["corrupted"]) == len(seq)
        assert c["target"] >= plen - 1 and seq[c["target"] + 1] == c["clean_token"]
    batches = batching.corrupted_batches(seqs, plens, [r["id"] for r in rows], tokenizer, tokenizer.pad_token_id,
                                         batch_size=64)
    b = batches[0]
    assert b.positions["corrupted"].sum(1).tolist() == [1] * len(rows)
    assert ((b.input_ids != b.donor_input_ids) == b.positions["corrupted"]).all()
    model = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    result = core.sweep(model, model, batches, [core.Patch("hook_resid_pre", (0,), "corrupted")],
                            progress=False)
    np.testing.assert_allclose(result.patched[:, 0], result.donor, atol=1e-4)  # restoring the token = clean run


# --- the chapter's step: both instruments through the driver ------------------------------------------------
def test_run_writes_every_variant_and_summary_key(tmp_path, problems_and_tokenizer, caplog):
    from rlvr_utils import activations
    from rlvr_utils.core import artifacts

    rows, tokenizer = problems_and_tokenizer
    cfg = config.Params(name="t", runs_dir=str(tmp_path), variants=dict(nulls=1, controls=[], identical=True),
                        patching=dict(n_problems=12, batch_size=8, graft_problems=10, n_bootstrap=50,
                                      graft_ranges=["all", "first_half"]))
    null = registry.names(cfg, "null")[0]
    models = {}
    for stage, seed in ((registry.REFERENCE, 0), (registry.STUDY, 1), (null, 2)):
        torch.manual_seed(seed)
        models[stage] = AutoModelForCausalLM.from_config(Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
        models[stage].save_pretrained(cfg.model_ref(stage))
        tokenizer.save_pretrained(cfg.model_ref(stage))
    data.write_jsonl(cfg.path("data", "eval.jsonl"), rows)
    activations.build_token_cache(tokenizer, rows, None, "gold").save(cfg.path("tokens"))
    rlvr_q = models[registry.STUDY].model.layers[0].self_attn.q_proj.weight.detach().clone()

    def evaluate(model):  # stub: RLVR's layer-0 attention makes problems 0-5 right, the rest stay wrong
        donor_attn = torch.equal(model.model.layers[0].self_attn.q_proj.weight, rlvr_q)
        return [donor_attn and i < 6 for i in range(10)]

    out = base.run(cfg, Patching(progress=False), progress=False)
    grafts = base.run(cfg, grafting.Grafting(evaluate), progress=False)
    assert out == artifacts.read_json(cfg.path("metrics", "patching.json"))
    assert grafts == artifacts.read_json(cfg.path("metrics", "grafting.json"))
    assert set(out["variants"]) == {registry.STUDY, null}  # 'identical' has no checkpoint: left out
    for measures in out["variants"].values():
        assert set(measures) == {"attn_direct_effect", "mlp_direct_effect", "total_effect"}
        assert all(set(m) == {"value", "ci", "interval", "n"} and len(m["ci"]) == 2 for m in measures.values())
    report = out["cross_model"]["rlvr_into_sft"]
    assert report["n_problems"] == 12 and len(report["components"]) == 4
    assert report["total_effect"]["value"] == pytest.approx(report["donor_metric"]["value"]
                                                          - report["receiver_metric"]["value"])
    for key in ("patch_attn_out_effect_rlvr_into_sft", "patch_mlp_out_effect_rlvr_into_sft",
                "patch_attn_out_effect_sft_into_rlvr", "patch_mlp_out_effect_sft_into_rlvr"):
        assert set(out["summary"][key]) == {"value", "ci", "interval", "n", "description"}
    for key in ("graft_attn_share", "graft_mlp_share"):
        assert set(grafts["summary"][key]) == {"value", "ci", "interval", "n", "description"}
    assert grafts["summary"]["graft_attn_share"]["value"] == pytest.approx(1.0)
    assert grafts["summary"]["graft_mlp_share"]["value"] == pytest.approx(0.0)
    assert set(out["within_model"]) == {"sft", "rlvr"}
    with caplog.at_level("INFO", logger=base.__name__):
        base.run(cfg, Patching(progress=False), progress=False)
        base.run(cfg, grafting.Grafting(evaluate), progress=False)
    assert caplog.text.count("up to date") == 2
    assert re.search(r"recovers a share \*\*\+1(\.0+)?[ *]", figures.reading(out, grafts))
    import matplotlib.pyplot as plt

    from rlvr_utils.core import plots

    for fig in (figures.plot_layers(report, "RLVR into SFT"), figures.plot_variants(out),
                figures.plot_heatmaps(out["within_model"], {"sft": "SFT"}), figures.plot_shares(grafts)):
        assert fig.axes
        assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH and min(plots.text_sizes(fig)) >= plots.MIN_FONT
        plt.close(fig)


# --- captions: what each figure shows on this run, with its numbers from the metrics ----------------------
def _est(value, lo, hi):
    return {"value": value, "ci": [lo, hi]}


def _variants_results():
    def measures(attn, mlp, total):
        return {"attn_direct_effect": attn, "mlp_direct_effect": mlp, "total_effect": total}

    return {"cross_model": {"rlvr_into_sft": {"n_problems": 64}}, "variants": {
        "rlvr": measures(_est(0.004, 0.003, 0.005), _est(0.001, -0.001, 0.003), _est(0.02, 0.01, 0.03)),
        "attn_only": measures(_est(0.05, 0.04, 0.06), _est(0.0, 0.0, 0.0), _est(0.05, 0.04, 0.06)),
        "placebo_0": measures(_est(0.0005, 0.0, 0.001), _est(0.001, 0.0, 0.002), _est(-0.1, -0.2, 0.0)),
        "null_0": measures(_est(-0.0002, -0.0008, 0.0004), _est(0.0, -0.004, 0.004), _est(0.0, -0.01, 0.01)),
        "identical": measures(_est(0.0, 0.0, 0.0), _est(0.0, 0.0, 0.0), _est(0.0, 0.0, 0.0))}}


def test_caption_variants_states_rlvr_and_the_references_span():
    results = _variants_results()
    rlvr = results["variants"]["rlvr"]
    kinds = {"rlvr": "study", "attn_only": "control", "placebo_0": "placebo", "null_0": "null", "identical": "identical"}
    text = figures.caption_variants(results, kinds)
    assert "64 problems" in text
    for key in ("attn_direct_effect", "mlp_direct_effect", "total_effect"):
        assert captions.change(rlvr[key]) in text
    assert "MLP no change detected (" in text  # its interval holds 0
    # attention [0.003, 0.005] clears every reference's interval (up to 0.001); the MLP's [-0.001, 0.003] does not
    assert "attention effect lies beyond every one of those intervals" in text
    assert "MLP effect lies within those spans" in text
    assert "placebos, nulls and identical copy" in text
    # a run without RLVR or references never raises
    assert "not measured" in figures.caption_variants({"variants": {}, "cross_model": {}}, kinds)
    only = {"cross_model": {}, "variants": {"rlvr": results["variants"]["rlvr"]}}
    assert "No placebo or null was measured" in figures.caption_variants(only, kinds)


def test_caption_layers_names_the_gap_and_the_distinguishable_direct_effects():
    def patch(site, layer, value, lo, hi):
        return {"site": site, "layers": [layer], "positions": "all", "effect": _est(value, lo, hi)}

    report = {"donor": "rlvr", "receiver": "sft", "n_problems": 32, "total_effect": _est(0.02, 0.01, 0.03),
              "patches": [patch("hook_resid_pre", 0, 0.02, 0.01, 0.03), patch("hook_attn_out", 0, 0.004, 0.0, 0.008),
                          patch("hook_mlp_out", 1, -0.015, -0.02, -0.01)],
              "components": [{"layer": 0, "component": "attn", "direct": _est(0.0002, -0.0001, 0.0005),
                              "direct_own_run": _est(0.0002, -0.0001, 0.0005)},
                             {"layer": 1, "component": "mlp", "direct": _est(0.003, 0.002, 0.004),
                              "direct_own_run": _est(0.003, 0.002, 0.004)}]}
    text = figures.caption_layers(report)
    assert text.startswith("RLVR's components patched into SFT") and "32 problems" in text
    assert f"RLVR − SFT gap {captions.change(report['total_effect'])}" in text
    assert f"largest total effect at layer 1's MLP, {captions.change(_est(-0.015, -0.02, -0.01))}" in text
    assert f"distinguishable from zero: layer 1's MLP {captions.change(_est(0.003, 0.002, 0.004))}." in text
    assert "layer 0's attention" not in text  # its direct effect's interval holds 0
    report["components"][1]["direct"] = _est(0.003, -0.001, 0.007)
    assert "distinguishable from zero: none" in figures.caption_layers(report)
    assert "not measured" in figures.caption_layers({})


def test_caption_heatmaps_reads_the_strongest_copy_site_in_both_models():
    def patch(site, positions, value, lo, hi):
        return {"site": site, "layers": [2], "positions": positions, "normalised": _est(value, lo, hi)}

    within = {"sft": {"n_problems": 16, "patches": [patch("hook_resid_pre", "target", 1.0, 1.0, 1.0),
                                                    patch("hook_attn_out", "target", 0.8, 0.7, 0.9),
                                                    patch("hook_mlp_out", "target", 0.1, 0.0, 0.2)]},
              "rlvr": {"n_problems": 16, "patches": [patch("hook_resid_pre", "target", 1.0, 1.0, 1.0),
                                                     patch("hook_attn_out", "target", 0.6, 0.5, 0.7),
                                                     patch("hook_mlp_out", "target", 0.1, 0.0, 0.2)]}}
    text = figures.caption_heatmaps(within)
    assert f"layer 2's attn_out restores the most in SFT, {captions.estimate(_est(0.8, 0.7, 0.9))}" in text
    assert f"in RLVR {captions.estimate(_est(0.6, 0.5, 0.7))}" in text
    assert f"differ by at most {fmt.number(0.8 - 0.6)}" in text
    assert "Not measured" in figures.caption_heatmaps({"skipped": "no numbers"})
