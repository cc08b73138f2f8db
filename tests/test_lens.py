"""The logit lens: the last layer's lens is the model's own logits, metrics match naive references,
batching does not change them, and the cross-model lens of identical weights is the plain lens."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils.activations.tokens import TokenCache
from rlvr_utils.instruments import base
from rlvr_utils.instruments.probes import figures, lens
from rlvr_utils.instruments.probes.lens_instrument import Lens
from tests.test_probes import small_tokenizer, tiny_run

VOCAB = 90
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {"qwen2": SMALL, "llama": SMALL, "olmo2": SMALL,
            "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
            "gpt_neox": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64)}



def tiny(family="qwen2", seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **FAMILIES[family])).eval()


def cache(n=5, seed=0) -> TokenCache:
    rng = np.random.default_rng(seed)
    seqs, plens = [], []
    for _ in range(n):
        length = int(rng.integers(6, 14))
        seqs.append(rng.integers(1, VOCAB, length).tolist())
        plens.append(int(rng.integers(2, length - 2)))
    return TokenCache(seqs, plens, list(range(n)), "test", pad_token_id=0)


def answers(c: TokenCache) -> dict[int, tuple[int, int]]:
    """Row 1 has no answer; the others' answer sits two tokens before the end."""
    return {r: (len(s) - 3, s[-2]) for r, s in enumerate(c.sequences) if r != 1}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_layer_lens_is_the_model_output(family):
    model = tiny(family)
    ids = torch.randint(1, VOCAB, (2, 9))
    resid, logits = lens.residuals(model, ids, torch.ones_like(ids))
    assert resid.shape == (2, 2, 9, 32)
    with torch.no_grad():
        assert torch.allclose(lens.decoder(model)(resid[-1]), logits, atol=1e-5)
        # an earlier layer decodes to something else: the check above can fail
        assert not torch.allclose(lens.decoder(model)(resid[0]), logits, atol=1e-3)


def test_metrics_match_a_naive_reference():
    model, c = tiny(), cache()
    result = lens.logit_lens(model, {"own": lens.decoder(model)}, c, answers(c), batch_size=2)["own"]
    assert result["kl"].shape == (2, len(c))
    assert np.allclose(result["kl"][-1], 0, atol=1e-5)
    assert np.allclose(result["top1_agreement"][-1], 1)
    assert np.isnan(result["answer_prob"][:, 1]).all()
    read_out = lens.decoder(model)
    for r, seq in enumerate(c.sequences):
        with torch.no_grad():
            resid, logits = lens.residuals(model, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
            lens_logits = read_out(resid[0, 0])  # layer 0, the one row
        final = torch.softmax(logits[0], -1)
        mine = torch.softmax(lens_logits, -1)
        span = range(c.prompt_lengths[r] - 1, len(seq) - 1)
        kl = np.mean([sum(float(final[p, v] * (torch.log(final[p, v]) - torch.log(mine[p, v]))) for v in range(VOCAB))
                      for p in span])
        agree = np.mean([int(torch.argmax(mine[p]) == torch.argmax(final[p])) for p in span])
        assert result["kl"][0, r] == pytest.approx(kl, rel=1e-4, abs=1e-6)
        assert result["top1_agreement"][0, r] == pytest.approx(agree)
        if r == 1:
            continue
        pos, tok = answers(c)[r]
        order = torch.argsort(lens_logits[pos], descending=True).tolist()
        assert result["answer_rank"][0, r] == order.index(tok)
        assert result["answer_prob"][0, r] == pytest.approx(float(mine[pos, tok]), rel=1e-5)
        assert result["answer_agreement"][0, r] == int(order[0] == int(torch.argmax(final[pos])))


def test_batching_and_padding_do_not_change_the_lens():
    model, c = tiny(), cache(6, seed=1)
    one = lens.logit_lens(model, {"own": lens.decoder(model)}, c, answers(c), batch_size=1)["own"]
    many = lens.logit_lens(model, {"own": lens.decoder(model)}, c, answers(c), batch_size=4)["own"]
    for metric in lens.METRICS:
        assert np.allclose(one[metric], many[metric], atol=1e-4, equal_nan=True), metric


def test_plain_lens_table_and_summary():
    a = tiny(seed=0)
    c = cache()
    out = {"a": lens.logit_lens(a, {"a": lens.decoder(a)}, c, answers(c))}
    out["a"]["stitch:b"] = lens.stitched_lens(a, tiny(seed=1), c, answers(c))
    table = lens.table(out, n_bootstrap=50)
    assert set(table.read_out) == {"a", "stitch:b"}
    kl_last = table[(table.read_out == "a") & (table.metric == "kl") & (table.layer == 1)]
    assert kl_last.value.iloc[0] == pytest.approx(0, abs=1e-5)
    answer_rows = table[(table.metric == "answer_prob")]
    assert (answer_rows.n_problems == len(c) - 1).all()  # the row without an answer is left out
    assert lens.answer_layer(table, "a", agreement=1.0) in (0, 1)
    summary = lens.summary(table, out, ["a"], agreement=0.5, cross_pairs=[("a", "b")], n_bootstrap=50)
    assert summary["lens_cross_kl_a_by_b"]["value"] == pytest.approx(out["a"]["stitch:b"]["kl"][-1].mean())
    assert summary["lens_cross_kl_a_by_b"]["n_problems"] == len(c)
    assert summary["lens_answer_layer_a"]["value"] in (0.0, 1.0)
    import matplotlib.pyplot as plt
    plt.close(figures.cross_figure(table))


def _mlp_changed(model, layers, scale=0.5, seed=3):
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for p in other.model.layers[layer].mlp.parameters():
                p.add_(scale * torch.randn_like(p))
    return other


def test_stitched_lens_sees_an_mlp_only_change_and_where_it_lives():
    a, c = tiny(), cache()
    twin = lens.stitched_lens(a, copy.deepcopy(a), c, answers(c), batch_size=2)
    np.testing.assert_allclose(twin["kl"], 0, atol=1e-5)  # B's blocks read A's stream as their own
    np.testing.assert_allclose(twin["top1_agreement"], 1)
    every = _mlp_changed(a, [0, 1])
    # swapping only the final norm and unembedding cannot see an MLP-only change: exactly 0
    swap = lens.logit_lens(a, {"b": lens.decoder(every)}, c, answers(c))["b"]
    own = lens.logit_lens(a, {"a": lens.decoder(a)}, c, answers(c))["a"]
    np.testing.assert_allclose(swap["kl"], own["kl"], atol=1e-6)
    stitched = lens.stitched_lens(a, every, c, answers(c))
    assert (stitched["kl"][-1] > 1e-3).all()  # the stitch does
    # a change in layer 1's MLP only: A's stream after block 0 is B's own, after block 1 it is not
    late = lens.stitched_lens(a, _mlp_changed(a, [1]), c, answers(c))
    np.testing.assert_allclose(late["kl"][0], 0, atol=1e-5)
    assert (late["kl"][1] > 1e-3).all()


def test_stitched_logits_of_a_model_on_its_own_stream_are_its_logits():
    model = tiny("gpt2")
    ids = torch.randint(1, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    resid, logits = lens.residuals(model, ids, mask)
    torch.testing.assert_close(lens.stitched_logits(resid[0], model, ids, mask, 0), logits)


def test_answer_tokens_are_the_tokens_that_follow_with_merged_digits():
    from tests.test_patching import bpe_tokenizer

    tokenizer, rows = bpe_tokenizer()
    rows = rows[:64]
    problems = [{"id": i, "prompt": r["question"] + "\n", "answer": r["answer"],
                 "final": r["answer"].split("####")[-1].strip()} for i, r in enumerate(rows)]
    seqs = [tokenizer(p["prompt"])["input_ids"] + tokenizer(p["answer"], add_special_tokens=False)["input_ids"]
            for p in problems]
    c = TokenCache(seqs, [len(tokenizer(p["prompt"])["input_ids"]) for p in problems], list(range(64)), "gold", 0)
    got = lens.answers_for(c, tokenizer)
    assert len(got) == 64
    mismatches = [r for r, (pos, tok) in got.items() if tok != c.sequences[r][pos + 1]
                  or not problems[r]["final"].startswith(tokenizer.decode([tok]).strip())]
    assert mismatches == []
    # the first token of the answer written alone is another token wherever digits merge with a space
    alone = [tokenizer(p["final"], add_special_tokens=False)["input_ids"][0] for p in problems]
    assert sum(a != got[r][1] for r, a in enumerate(alone)) > 32


def test_bad_batch_size():
    model = tiny()
    with pytest.raises(ValueError, match="batch_size"):
        lens.logit_lens(model, {"own": lens.decoder(model)}, cache(), {}, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        lens.stitched_lens(model, model, cache(), {}, batch_size=0)


# --- the instrument through the driver -------------------------------------------------------------
@pytest.mark.parametrize("study_seed", [1, 2])
def test_the_lens_instrument_writes_lens_json(tmp_path, study_seed):
    cfg = tiny_run(tmp_path, small_tokenizer(), study_seed=study_seed)
    result = base.run(cfg, Lens(), progress=False)
    assert base.path(cfg, Lens()).name == "lens.json"
    assert set(result["variants"]) == {"rlvr"}  # the study only
    into, summary = result["variants"]["rlvr"]["stitch_kl_into_reference"], result["summary"]
    assert into["interval"] == "bootstrap" and into["n"] == 30
    assert into["value"] == summary["lens_stitch_kl_rlvr_into_sft"]["value"]
    assert result["variants"]["rlvr"]["stitch_kl_from_reference"]["value"] == \
        summary["lens_stitch_kl_sft_into_rlvr"]["value"]
    pairs = {"rlvr_by_sft", "sft_by_rlvr", "sft_by_base", "rlvr_by_base"}
    assert {f"lens_cross_kl_{p}" for p in pairs} <= set(summary)
    assert {f"lens_answer_layer_{m}" for m in ("base", "sft", "rlvr")} <= set(summary)
    table = pd.DataFrame(result["lens"])
    own = table[(table.model == table.read_out) & (table.metric == "kl") & (table.layer == 1)]
    assert set(own.model) == {"base", "sft", "rlvr"} and np.allclose(own.value, 0, atol=1e-5)
    if study_seed == 1:  # RLVR is SFT's weights: each reads the other's stream as its own
        assert into["value"] == pytest.approx(0, abs=1e-5)
        assert summary["lens_cross_kl_sft_by_rlvr"]["value"] == pytest.approx(0, abs=1e-5)
    else:
        assert into["ci"][0] > 1e-3
    assert summary["lens_cross_kl_sft_by_base"]["ci"][0] > 1e-3  # base differs from SFT


def test_lens_captions_state_the_answer_layers_and_the_stitched_kl():
    from rlvr_utils.core import fmt

    table = pd.DataFrame([{"model": m, "read_out": m, "layer": layer, "metric": "kl", "value": v, "ci_low": v - 0.02,
                           "ci_high": v + 0.02, "n_problems": 8}
                          for m, v0 in (("sft", 2.2), ("rlvr", 2.1)) for layer, v in ((0, v0), (1, 0.0))])
    summary = {"lens_answer_layer_sft": {"value": 1.0, "ci": None}, "lens_answer_layer_rlvr": {"value": float("nan")},
               "lens_stitch_kl_rlvr_into_sft": {"value": 0.058, "ci": [0.048, 0.069]},
               "lens_stitch_kl_sft_into_rlvr": {"value": 0.031, "ci": [0.025, 0.039]}}
    text = figures.caption_lens(table, summary)
    assert "from layer 1 (SFT)" in text and "(RLVR)" not in text.split("KL")[0]  # NaN: no answer layer
    assert fmt.interval(2.2, [2.18, 2.22]) in text and fmt.interval(2.1, [2.08, 2.12]) in text
    cross = figures.caption_cross(summary)
    assert f"SFT's later blocks on RLVR's {fmt.interval(0.058, [0.048, 0.069])}" in cross
    assert f"RLVR's on SFT's {fmt.interval(0.031, [0.025, 0.039])}" in cross and "base" not in cross.split("solid).")[1]
    assert "not measured" in figures.caption_cross({}).lower()
    assert "not measured" in figures.caption_lens(table.iloc[:0], {}).lower()
