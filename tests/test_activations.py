"""Hook sites, token cache, position selections and the streamed activation store, on tiny random models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from rlvr_utils import activations as act
from rlvr_utils.activations import figures as act_figures
from rlvr_utils.activations import extraction
from rlvr_utils.models import hooks
from rlvr_utils.models.families import SITES, final_norm, site_name
from rlvr_utils.training import organism

VOCAB = 300  # the organism's byte-level tokenizer: 256 bytes, its special token, a few merges
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": SMALL,
    "qwen2": SMALL,
    "mistral": SMALL,
    "olmo2": SMALL,
    "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "gpt_neox": dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64),
}



def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, **FAMILIES[family])
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Ida had 19 apples. Ida found 2 more apples. How many apples did Ida have?",
              " 19 + 2 = 21. 21 + 6 = 27.\n#### 27", "0 1 2 3 4 5 6 7 8 9 - ?"] * 20
    return organism.build_tokenizer(corpus, VOCAB)


def problems(n: int = 6):
    out = []
    for i in range(n):
        a, b, c = 3 + i, 1 + i % 5, 2 + i % 3
        out.append({"id": 100 + i, "question": "", "prompt": f"Ida had {a} apples. Ida found {b} more apples.",
                    "answer": f" {a} + {b} = {a + b}. {a + b} + {c} = {a + b + c}.\n#### {a + b + c}",
                    "final": str(a + b + c), "intermediates": [a + b, a + b + c]})
    return out


def random_cache(n: int = 7, seed: int = 0) -> act.TokenCache:
    rng = np.random.default_rng(seed)
    seqs, plens = [], []
    for i in range(n):
        p, c = int(rng.integers(2, 6)), 0 if i == 3 else int(rng.integers(1, 6))  # row 3: empty completion
        seqs.append(rng.integers(2, VOCAB, size=p + c).tolist())
        plens.append(p)
    return act.TokenCache(seqs, plens, list(range(10, 10 + n)), "gold", 0)


# --- hook decomposition ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_hooks_decompose_the_residual_stream(family):
    model = tiny_model(family)
    ids = torch.randint(2, VOCAB, (2, 9))
    with torch.no_grad(), hooks.capture(model) as acts:
        out = model(input_ids=ids, output_hidden_states=True)
    n = model.config.num_hidden_layers
    assert set(acts) == {site_name(l, s) for l in range(n) for s in SITES}
    for l in range(n):
        pre, attn, mlp, post = (acts[site_name(l, s)] for s in SITES)
        torch.testing.assert_close(post, pre + attn + mlp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pre, out.hidden_states[l], atol=1e-6, rtol=1e-6)
        assert attn.abs().sum() > 0 and mlp.abs().sum() > 0  # real sublayer outputs, not zeros
    with torch.no_grad():
        last = final_norm(model)(acts[site_name(n - 1, "hook_resid_post")])
    torch.testing.assert_close(last, out.hidden_states[-1], atol=1e-5, rtol=1e-5)


def test_capture_keeps_only_requested_sites_and_removes_hooks():
    model = tiny_model("qwen2")
    ids = torch.randint(2, VOCAB, (1, 5))
    with torch.no_grad(), hooks.capture(model, sites=["hook_mlp_out"], layers=[1]) as acts:
        model(input_ids=ids)
    assert list(acts) == ["blocks.1.hook_mlp_out"]
    acts.clear()
    with torch.no_grad():
        model(input_ids=ids)
    assert acts == {}  # hooks are gone after the context
    with pytest.raises(ValueError, match="layers"):
        with hooks.capture(model, layers=[2]):
            pass
    with pytest.raises(ValueError, match="sites"):
        with hooks.capture(model, sites=["hook_q"]):
            pass


# --- token cache ------------------------------------------------------------------------------------
def test_build_token_cache_gold_and_completions(tokenizer):
    probs = problems(4)
    cache = act.build_token_cache(tokenizer, probs, None, "gold")
    for seq, plen, prob in zip(cache.sequences, cache.prompt_lengths, probs):
        assert seq[:plen] == tokenizer(prob["prompt"])["input_ids"]
        assert tokenizer.decode(seq) == prob["prompt"] + prob["answer"]
    comps = {p["id"]: " 1 + 1 = 2.\n#### 2" for p in probs}
    other = act.build_token_cache(tokenizer, probs, comps, "rlvr")
    assert other.prompt_lengths == cache.prompt_lengths
    assert tokenizer.decode(other.sequences[0][other.prompt_lengths[0]:]) == comps[probs[0]["id"]]
    assert other.fingerprint != cache.fingerprint
    with pytest.raises(ValueError, match="no entry for problem ids"):
        act.build_token_cache(tokenizer, probs, {}, "rlvr")


def test_boundary_merge_falls_back_or_raises(tokenizer):
    # "ap" + "ples" merges into one token when tokenised together: the prompt's last token changes
    prob = dict(problems(1)[0], prompt="Ida had 3 ap", answer="ples.")
    with pytest.raises(ValueError, match="boundary"):
        act.build_token_cache(tokenizer, [prob], None, "gold", strict=True)
    cache = act.build_token_cache(tokenizer, [prob], None, "gold")
    assert cache.sequences[0][: cache.prompt_lengths[0]] == tokenizer("Ida had 3 ap")["input_ids"]


def test_token_cache_round_trip(tmp_path):
    cache = random_cache()
    cache.save(tmp_path / "tokens")
    again = act.TokenCache.load(tmp_path / "tokens")
    assert again == cache and again.fingerprint == cache.fingerprint
    with pytest.raises(ValueError, match="prompt_lengths"):
        act.TokenCache([[1, 2]], [3], [0], "gold", 0)
    with pytest.raises(ValueError, match="empty"):
        act.extract(tiny_model("qwen2"), act.TokenCache([], [], [], "gold", 0), tmp_path, "m")


def test_iter_batches_pads_right_and_covers_every_row():
    cache = random_cache()
    seen = []
    for rows, ids, mask in act.iter_batches(cache, 3):
        for i, r in enumerate(rows):
            n = len(cache.sequences[r])
            assert ids[i, :n].tolist() == cache.sequences[r]
            assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
            assert (ids[i, n:] == cache.pad_token_id).all()
        seen += rows
    assert seen == list(range(len(cache)))


def test_select_positions():
    cache = random_cache()
    last = act.select_positions(cache, "last_prompt")
    assert last == [(r, p - 1) for r, p in enumerate(cache.prompt_lengths)]
    comp = act.select_positions(cache, "completion")
    naive = [(r, q) for r, s in enumerate(cache.sequences) for q in range(len(s) - 1)
             if q + 1 >= cache.prompt_lengths[r]]  # positions whose next token is a completion token
    assert comp == naive
    assert act.select_positions(cache, "frac:0") == [(r, p - 1) for r, (p, c) in
                                                     enumerate(zip(cache.prompt_lengths, cache.completion_lengths)) if c]
    assert act.select_positions(cache, "frac:1") == [(r, len(s) - 2) for r, s in enumerate(cache.sequences)
                                                     if len(s) > cache.prompt_lengths[r]]
    for r, p in act.select_positions(cache, "frac:0.5"):
        assert (r, p) in comp
    with pytest.raises(ValueError, match="frac"):
        act.select_positions(cache, "frac:1.5")


# --- extraction ------------------------------------------------------------------------------------------
def reference_activations(model, cache, selection, name):
    """Each sequence alone (no padding), full capture, then index: what the store must hold."""
    rows = []
    for r, p in act.select_positions(cache, selection):
        with torch.no_grad(), hooks.capture(model) as acts:
            model(input_ids=torch.tensor([cache.sequences[r]]))
        rows.append(acts[name][0, p].numpy())
    return np.array(rows)


def test_extract_matches_unbatched_reference(tmp_path):
    model, cache = tiny_model("qwen2"), random_cache()
    store = act.extract(model, cache, tmp_path, "sft", positions=["last_prompt", "completion", "frac:0.5"],
                        batch_size=2, shard_size=3)
    for sel in ("last_prompt", "completion", "frac:0.5"):
        pairs = act.select_positions(cache, sel)
        assert store.index("sft", sel).tolist() == [list(p) for p in pairs]
        for name in ("blocks.0.hook_attn_out", "blocks.1.hook_resid_post"):
            data, rows = store.read("sft", name, sel)
            assert isinstance(data, np.memmap) and data.shape == (len(pairs), 32)
            assert rows.tolist() == [r for r, _ in pairs]
            np.testing.assert_allclose(data, reference_activations(model, cache, sel, name), atol=1e-5)
    meta = store.meta("sft")
    assert meta["token_cache"] == cache.fingerprint and meta["counts"]["last_prompt"] == len(cache)
    assert not (tmp_path / "sft" / "shards").exists()
    norms = act_figures.describe_store(store, "completion")
    assert len(norms) == 2 * 4
    data, _ = store.read("sft", "blocks.1.hook_mlp_out", "completion")
    row = norms[(norms.layer == 1) & (norms.site == "mlp_out")].iloc[0]
    assert row.norm == pytest.approx(np.linalg.norm(data, axis=1).mean(), rel=1e-5) and row.n == len(data)


def test_extract_keeps_only_requested_sites_layers_and_skips_when_current(tmp_path):
    model, cache = tiny_model("llama"), random_cache()
    act.extract(model, cache, tmp_path, "base", positions=["last_prompt", "completion"])  # everything, then less:
    store = act.extract(model, cache, tmp_path, "base", sites=["hook_mlp_out"], layers=[1], positions=["last_prompt"])
    assert store.meta("base")["site_names"] == ["blocks.1.hook_mlp_out"]
    assert sorted(p.name for p in (tmp_path / "base").glob("*.npy")) == [
        "blocks.1.hook_mlp_out__last_prompt.npy", "index__last_prompt.npy"]
    with pytest.raises(ValueError, match="not extracted"):
        store.read("base", "blocks.0.hook_mlp_out", "last_prompt")
    target = tmp_path / "base" / "blocks.1.hook_mlp_out__last_prompt.npy"
    before = target.stat().st_mtime_ns
    act.extract(model, cache, tmp_path, "base", sites=["hook_mlp_out"], layers=[1], positions=["last_prompt"])
    assert target.stat().st_mtime_ns == before  # up to date: nothing rewritten
    act.extract(model, cache, tmp_path, "base", sites=["hook_mlp_out"], layers=[1], positions=["last_prompt"],
                fingerprint="new weights")
    assert target.stat().st_mtime_ns != before


def test_extract_resumes_from_finished_shards(tmp_path, monkeypatch):
    model, cache = tiny_model("gpt2"), random_cache()
    kwargs = dict(sites=["hook_resid_post"], positions=["completion"], batch_size=2, shard_size=2)
    calls = []
    real = extraction._extract_rows

    def interrupted(*args, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(extraction, "_extract_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        act.extract(model, cache, tmp_path, "rlvr", **kwargs)
    shards = sorted((tmp_path / "rlvr" / "shards").glob("shard-*.safetensors"))
    assert [p.name for p in shards] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with safe_open(str(shards[0]), framework="np") as f:
        meta = f.metadata()
    assert meta["model"] == "rlvr" and meta["token_cache"] == cache.fingerprint
    assert json.loads(meta["sites"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]

    resumed = []
    monkeypatch.setattr(extraction, "_extract_rows", lambda *a, **k: resumed.append(a[2]) or real(*a, **k))
    store = act.extract(model, cache, tmp_path, "rlvr", **kwargs)
    assert resumed == [[4, 5], [6]]  # only the shards that were not finished
    data, _ = store.read("rlvr", "blocks.1.hook_resid_post", "completion")
    np.testing.assert_allclose(data, reference_activations(model, cache, "completion", "blocks.1.hook_resid_post"),
                               atol=1e-5)


def test_store_reports_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="04_extract"):
        act.ActivationStore(tmp_path).read("sft", "blocks.0.hook_mlp_out", "completion")


# --- one run, as the extraction chapter drives it ---------------------------------------------------------------
def test_run_token_cache_and_extract_skip_when_current(tmp_path, tokenizer, monkeypatch):
    from rlvr_utils.core import config
    from rlvr_utils.models import loading as models

    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path),
                            "extract": {"n_problems": 4, "positions": ["completion"], "batch_size": 2, "shard_size": 2}})
    probs = problems(6)
    for stage, seed in (("base", 0), ("sft", 1), ("rlvr", 2)):
        tiny_model("qwen2", seed).save_pretrained(cfg.model_dir(stage))
        tokenizer.save_pretrained(cfg.model_dir(stage))
    cfg.path("data").mkdir(parents=True)
    cfg.path("data", "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probs))
    cfg.path("eval").mkdir()
    greedy = [{"id": p["id"], "completion": f" 1 + {i} = {1 + i}.\n#### {1 + i}", "correct": False, "formatted": True}
              for i, p in enumerate(probs[:3])]  # evaluation covered 3 of the 4 problems asked for
    cfg.path("eval", "rlvr_greedy.jsonl").write_text("".join(json.dumps(g) + "\n" for g in greedy))

    cache = act.run_token_cache(cfg)
    assert cache.problem_ids == [p["id"] for p in probs[:3]] and cache.source == "rlvr"
    assert tokenizer.decode(cache.sequences[1][cache.prompt_lengths[1]:]) == greedy[1]["completion"]
    assert act.run_token_cache(cfg) == cache  # loaded, not rebuilt
    for stage in ("base", "sft", "rlvr"):
        act.run_extract(cfg, stage, cache)
    store = act.ActivationStore(cfg.path("activations"))
    assert store.models() == ["base", "rlvr", "sft"]
    data, rows = store.read("sft", "blocks.1.hook_mlp_out", "completion")
    assert data.shape == (sum(cache.completion_lengths), 32)

    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("an up-to-date store must not load the model"))
    act.run_extract(cfg, "sft", cache)
    tiny_model("qwen2", 3).save_pretrained(cfg.model_dir("sft"))  # new weights: extraction must run again
    with pytest.raises(pytest.fail.Exception, match="must not load"):
        act.run_extract(cfg, "sft", cache)


def test_a_bfloat16_store_keeps_a_bf16_model_activations_bit_for_bit_and_reads_as_float32(tmp_path):
    """extract.dtype 'bfloat16' (real scale): half float32's disk, exactly what a bf16 model computed, and every
    reader (np.asarray, row indexing, chunks, CKA) gets float32 arrays."""
    from rlvr_utils.instruments.cka.maths import linear_cka

    model, cache = tiny_model("qwen2").to(torch.bfloat16), random_cache()
    store = act.extract(model, cache, tmp_path / "bf16", "sft", dtype="bfloat16", positions=["completion"])
    wide = act.extract(model, cache, tmp_path / "fp32", "sft", dtype="float32", positions=["completion"])
    name = "blocks.1.hook_resid_post"
    data, rows = store.read("sft", name, "completion")
    full, rows32 = wide.read("sft", name, "completion")
    assert store.meta("sft")["dtype"] == "bfloat16" and rows.tolist() == rows32.tolist()
    assert (tmp_path / "bf16" / "sft" / f"{name}__completion.npy").stat().st_size < \
        0.6 * (tmp_path / "fp32" / "sft" / f"{name}__completion.npy").stat().st_size
    as_array = np.asarray(data)
    assert as_array.dtype == np.float32 and as_array.shape == full.shape
    np.testing.assert_array_equal(as_array, np.asarray(full))  # the model's bf16 values, widened exactly
    np.testing.assert_array_equal(data[[2, 0]], np.asarray(full)[[2, 0]])
    np.testing.assert_array_equal(np.concatenate(list(store.iter_chunks("sft", name, "completion", 3))), full)
    assert np.asarray(data, dtype=np.float64).dtype == np.float64
    assert linear_cka(data, full, debiased=True) == pytest.approx(1.0)


def test_a_float32_model_stored_in_bfloat16_is_rounded_to_bfloat16():
    from rlvr_utils.activations.store import BFloat16Array

    t = torch.tensor([[1.0, 1 + 2 ** -10, 3e5, -0.1]])
    stored = extraction.to_stored(t, "bfloat16")
    assert stored.dtype == np.uint16
    decoded = BFloat16Array(stored)[:]
    np.testing.assert_array_equal(decoded, t.to(torch.bfloat16).float().numpy())
    assert decoded[0, 2] == pytest.approx(3e5, rel=1e-2)  # beyond float16's range
