"""The logit lens: the last layer's lens is the model's own logits, metrics match naive references,
batching does not change them, and the cross-model lens of identical weights is the plain lens."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils import lens
from rlvr_utils.activations import TokenCache

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


def test_cross_model_lens():
    a, b = tiny(seed=0), tiny(seed=1)
    twin = copy.deepcopy(a)
    c = cache()
    out = lens.logit_lens(a, {"a": lens.decoder(a), "twin": lens.decoder(twin), "b": lens.decoder(b)}, c, answers(c))
    for metric in lens.METRICS:  # identical weights read the code exactly as the model itself does
        assert np.allclose(out["a"][metric], out["twin"][metric], equal_nan=True)
    assert (out["b"]["kl"][-1] > 1e-3).all()  # another model's read-out does not

    results = {"a": out}
    table = lens.table(results, n_bootstrap=50)
    assert set(table.read_out) == {"a", "twin", "b"}
    kl_last = table[(table.read_out == "a") & (table.metric == "kl") & (table.layer == 1)]
    assert kl_last.value.iloc[0] == pytest.approx(0, abs=1e-5)
    answer_rows = table[(table.metric == "answer_prob")]
    assert (answer_rows.n_problems == len(c) - 1).all()  # the row without an answer is left out
    assert lens.answer_layer(table, "a", agreement=1.0) in (0, 1)
    summary = lens.summary(table, results, ["a"], agreement=0.5, cross_pairs=[("a", "b")], n_bootstrap=50)
    assert summary["lens_cross_kl_a_by_b"]["value"] == pytest.approx(out["b"]["kl"][-1].mean())
    assert summary["lens_answer_layer_a"]["value"] in (0.0, 1.0)


def test_answer_token_and_bad_batch_size():
    class Digits:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) for ch in text]}
    assert lens.answer_token(Digits(), " 27 ") == ord("2")
    with pytest.raises(ValueError, match="tokenises to nothing"):
        lens.answer_token(Digits(), "  ")
    model = tiny()
    with pytest.raises(ValueError, match="batch_size"):
        lens.logit_lens(model, {"own": lens.decoder(model)}, cache(), {}, batch_size=0)
