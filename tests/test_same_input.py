"""Same-input component comparison on tiny Qwen2 models with planted changes: the component whose weights
changed is the one that reads as changed, whatever happened upstream."""
import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils import activations as act
from rlvr_utils.instruments import base
from rlvr_utils.instruments.cka import figures, maths, same_input
from rlvr_utils.models import hooks

N_LAYERS = 3
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def tiny_config(vocab=64):
    return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                       num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def sft():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config()).eval()


@pytest.fixture(scope="module")
def cache():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 64, size=int(rng.integers(10, 16))).tolist() for _ in range(24)]
    return act.TokenCache(seqs, [4] * 24, list(range(24)), "gold", 0)


def planted(model, modules, rank=2, size=0.5, seed=1, norms=True):
    """A copy with a rank-`rank` update of relative Frobenius size `size` in the named projections of every
    layer (and, with `norms`, a change of the layer norm in front of them)."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in out.model.layers:
            for name, p in layer.named_parameters():
                if p.ndim == 2 and name.split(".")[-2] in modules:
                    delta = torch.randn(p.shape[0], rank, generator=g) @ torch.randn(rank, p.shape[1], generator=g)
                    p += delta * size * p.norm() / delta.norm()
            if norms:
                norm = layer.input_layernorm if modules is ATTN else layer.post_attention_layernorm
                norm.weight += 0.3 * torch.randn(norm.weight.shape, generator=g)
    return out


def random_update(model, size=0.3, seed=1):
    """SFT plus a random-direction update of relative size `size` in every weight matrix: a null."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                r = torch.randn(p.shape, generator=g)
                p += r * size * p.norm() / r.norm()
    return out


def end_to_end_change(reference, treatment, cache, site):
    """1 - debiased CKA of the two models' own outputs at one site, mean over layers (today's comparison)."""
    store = {}
    for model in (reference, treatment):
        rows = []
        for seq in cache.sequences:
            with torch.inference_mode(), hooks.capture(model, [site]) as captured:
                model(input_ids=torch.tensor([seq]))
            rows.append({k: v[0, 3:len(seq) - 1] for k, v in captured.items()})  # the 'completion' positions
        store[id(model)] = {k: torch.cat([r[k] for r in rows]).numpy() for k in rows[0]}
    a, b = store[id(reference)], store[id(treatment)]
    return float(np.mean([1 - maths.linear_cka(a[k], b[k], debiased=True) for k in a]))


# --- the hooked single pass equals a naive per-layer construction ------------------------------------------------
FAMILY_CONFIGS = {
    "qwen2": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2),
    "olmo2": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(vocab_size=64, n_embd=32, n_layer=N_LAYERS, n_head=4),
}
# each component's version: the modules a hybrid takes from the treatment (norms included)
COMPONENT_MODULES = {
    "qwen2": {"attn": ("input_layernorm", "self_attn"), "mlp": ("post_attention_layernorm", "mlp")},
    "olmo2": {"attn": ("self_attn", "post_attention_layernorm"), "mlp": ("mlp", "post_feedforward_layernorm")},
    "gpt2": {"attn": ("ln_1", "attn"), "mlp": ("ln_2", "mlp")},
}


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_one_hooked_pass_equals_naive_per_layer_hybrids(family, cache):
    from transformers import AutoConfig

    from rlvr_utils.models.families import blocks

    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **FAMILY_CONFIGS[family])).eval()
    treatment = random_update(reference, 0.5, seed=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # norms are part of each component's version: change them too
        for name, p in treatment.named_parameters():
            if p.ndim == 1:
                p += 0.2 * torch.randn(p.shape, generator=g)
    _, input_ids, mask = next(act.iter_batches(cache, 8))
    got = same_input.same_input_outputs(reference, treatment, input_ids, mask)
    assert sorted(got) == sorted(f"blocks.{l}.hook_{c}_out" for l in range(N_LAYERS) for c in ("attn", "mlp"))
    with torch.inference_mode(), hooks.capture(reference, ["hook_attn_out", "hook_mlp_out"]) as plain:
        reference(input_ids=input_ids, attention_mask=mask)
    real = mask.bool()  # padded positions are never compared
    for l in range(N_LAYERS):
        for component, modules in COMPONENT_MODULES[family].items():
            # the reference with layer l's component (and its norm) taken from the treatment: everything upstream is
            # the reference's, so its layer-l output is the treatment's component on the reference's input
            hybrid = copy.deepcopy(reference)
            for module in modules:
                setattr(blocks(hybrid)[l].block, module, copy.deepcopy(getattr(blocks(treatment)[l].block, module)))
            site = f"hook_{component}_out"
            with torch.inference_mode(), hooks.capture(hybrid, [site], [l]) as naive:
                hybrid(input_ids=input_ids, attention_mask=mask)
            ref, treat = got[f"blocks.{l}.{site}"]
            torch.testing.assert_close(ref[real], plain[f"blocks.{l}.{site}"][real], rtol=0, atol=0)
            torch.testing.assert_close(treat[real], naive[f"blocks.{l}.{site}"][real], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(ref[real], treat[real], atol=1e-4)


def test_collect_uses_the_store_positions(sft, cache):
    outputs, rows = same_input.collect(sft, sft, cache, "completion", batch_size=5)
    expected = act.select_positions(cache, "completion")
    assert rows.tolist() == [r for r, _ in expected]
    X, Y = outputs["blocks.1.hook_mlp_out"]
    assert X.shape == (len(expected), 32) and np.array_equal(X, Y)
    with torch.inference_mode(), hooks.capture(sft, ["hook_mlp_out"], [1]) as captured:
        sft(input_ids=torch.tensor([cache.sequences[2]]))
    start = sum(1 for r, _ in expected if r < 2)
    positions = [p for r, p in expected if r == 2]
    np.testing.assert_allclose(X[start:start + len(positions)], captured["blocks.1.hook_mlp_out"][0, positions].numpy(),
                               rtol=1e-5, atol=1e-6)


# --- planted changes are credited to the component that changed ------------------------------------------------
def test_attention_only_update_reads_as_attention(sft, cache):
    treatment = planted(sft, ATTN)
    out = same_input.compare(sft, treatment, cache, n_bootstrap=30)
    s = out["summary"]
    assert s["mlp_change"].value == pytest.approx(0.0, abs=1e-12)  # MLP weights untouched: exactly no change
    assert s["mlp_change"].ci == pytest.approx([0.0, 0.0], abs=1e-12)
    assert s["mlp_relative_change"].value == 0.0
    assert s["attn_change"].ci[0] > 0.01 and s["attn_relative_change"].ci[0] > 0.1
    for row in out["rows"]:
        assert (row["change"] > 0.01) == (row["component"] == "attn")
    # the end-to-end comparison credits the untouched MLPs (their inputs moved): what this module fixes
    assert end_to_end_change(sft, treatment, cache, "hook_mlp_out") > 0.01


def test_mlp_only_update_reads_as_mlp(sft, cache):
    treatment = planted(sft, MLP)
    s = same_input.compare(sft, treatment, cache, n_bootstrap=30)["summary"]
    assert s["attn_change"].value == pytest.approx(0.0, abs=1e-12)
    assert s["attn_relative_change"].value == 0.0
    assert s["mlp_change"].ci[0] > 0.01 and s["mlp_relative_change"].ci[0] > 0.1
    assert end_to_end_change(sft, treatment, cache, "hook_attn_out") > 1e-4  # later attention sees moved inputs


def test_layers_in_groups_give_the_same_result(sft, cache):
    treatment = random_update(sft, 0.3, seed=4)
    whole = same_input.compare(sft, treatment, cache, n_bootstrap=10)
    grouped = same_input.compare(sft, treatment, cache, n_bootstrap=10, max_bytes=1)  # one layer per pass
    assert sorted(whole["rows"], key=str) == sorted(grouped["rows"], key=str)
    assert whole["summary"] == grouped["summary"]


def test_identical_model_reads_exactly_zero(sft, cache):
    s = same_input.compare(sft, copy.deepcopy(sft), cache, n_bootstrap=20)["summary"]
    for key in same_input.MEASURES:
        assert s[key].value == pytest.approx(0.0, abs=1e-12)
        assert s[key].ci == pytest.approx([0.0, 0.0], abs=1e-12)


def test_a_null_reads_like_another_null(sft, cache):
    """Random updates of one size: a draw lies within the spread of other draws (widened by 2x), so a null can
    never stand out from the nulls; and both components move, so no null credits one component."""
    draws = [same_input.compare(sft, random_update(sft, 0.3, seed), cache, n_bootstrap=20)["summary"]
             for seed in range(1, 6)]
    first, others = draws[0], draws[1:]
    for key in same_input.MEASURES:
        values = [d[key].value for d in others]
        assert min(values) / 2 <= first[key].value <= 2 * max(values), (key, first[key].value, values)
        assert first[key].ci[0] > 0


def test_relative_change_bootstrap_matches_resampled_problems(cache):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 3)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    assert same_input.relative_change(X, X) == 0.0
    assert same_input.relative_change(X, 2 * X) == pytest.approx(1.0)
    samples = same_input.bootstrap_relative_change(X, Y, groups, 5, seed=3)
    counts, index = maths.problem_counts(groups, 5, seed=3)
    for k in range(5):
        rows = np.concatenate([np.flatnonzero(index == p) for p in range(10) for _ in range(int(counts[k, p]))])
        assert samples[k] == pytest.approx(same_input.relative_change(X[rows], Y[rows]))


def test_unsupported_family_is_a_clear_error():
    from transformers import GPTNeoXConfig

    neox = AutoModelForCausalLM.from_config(GPTNeoXConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                                          intermediate_size=32, vocab_size=32))
    with pytest.raises(ValueError, match="model_type 'gpt_neox'"):
        same_input.same_input_outputs(neox, neox, torch.zeros((1, 4), dtype=torch.long))


# --- a run: every available treatment, stamped, beside the end-to-end comparison ---------------------------------
def test_run_writes_variants_and_skips_when_current(sft, cache, tmp_path, monkeypatch):
    from rlvr_utils.core import config
    from rlvr_utils.training import organism

    cfg = config.from_dict({"name": "t", "runs_dir": str(tmp_path), "cka": {"n_bootstrap": 10},
                            "variants": {"nulls": 2, "controls": ["attn_only", "mlp_only"], "identical": True}})
    tokenizer = organism.build_tokenizer(["0 1 2 3 4 5 6 7 8 9 apples + - = ####"] * 5, 64)
    for name, model in (("sft", sft), ("rlvr", random_update(sft, 0.3, 9)), ("attn_only", planted(sft, ATTN)),
                        ("identical", sft), ("null_0", random_update(sft, 0.3, 1))):  # no mlp_only, no null_1
        model.save_pretrained(cfg.model_dir(name))
        tokenizer.save_pretrained(cfg.model_dir(name))
    with pytest.raises(FileNotFoundError, match="04_extract"):
        base.run(cfg, same_input.SameInput(), progress=False)
    cache.save(cfg.path("tokens"))
    result = base.run(cfg, same_input.SameInput(), progress=False)
    saved = json.loads(cfg.path("metrics", "same_input.json").read_text())
    assert saved == result and result["reference"] == "sft"
    assert list(saved["variants"]) == ["rlvr", "attn_only", "identical", "null_0"]
    for name, measures in saved["variants"].items():
        assert set(measures) == set(same_input.MEASURES)
        for entry in measures.values():
            assert set(entry) == {"value", "ci", "interval", "n"} and entry["interval"] == "bootstrap"
            assert entry["ci"][0] <= entry["value"] + 1e-12 <= entry["ci"][1] + 2e-12 and entry["n"] == len(cache)
    assert saved["variants"]["identical"]["attn_change"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert saved["variants"]["attn_only"]["mlp_change"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert len(saved["rows"]) == 4 * N_LAYERS * 2

    monkeypatch.setattr(same_input, "compare", lambda *a, **k: pytest.fail("up to date: must not recompute"))
    assert base.run(cfg, same_input.SameInput(), progress=False) == saved
    random_update(sft, 0.3, 2).save_pretrained(cfg.model_dir("null_1"))  # a new checkpoint: out of date
    tokenizer.save_pretrained(cfg.model_dir("null_1"))
    with pytest.raises(pytest.fail.Exception):
        base.run(cfg, same_input.SameInput(), progress=False)


def test_figure_and_table_show_both_measures(sft, cache):
    import matplotlib

    from rlvr_utils.core import config

    matplotlib.use("Agg")  # tests only; notebooks show figures inline
    rows, variants, cells, end = [], {}, [], {}
    for name, model in (("rlvr", planted(sft, ATTN)), ("identical", sft), ("null_0", random_update(sft)),
                        ("null_1", random_update(sft, seed=2))):
        out = same_input.compare(sft, model, cache, n_bootstrap=5)
        rows += [{"variant": name, **r} for r in out["rows"]]
        variants[name] = {key: estimate.to_json() for key, estimate in out["summary"].items()}  # as in the file
        cells += [{"variant": name, "component": r["component"], "layer": r["layer"], "change": 2 * r["change"],
                   "change_ci": [0, 1]} for r in out["rows"]]
        end[name] = {"attn_change_end_to_end": {"value": 0.5, "ci": [0.4, 0.6]}}
    result, cka_result = {"rows": rows, "variants": variants}, {"variant_cells": cells, "variants": end}
    fig = figures.plot_comparison(config.from_dict({"name": "t"}), result, cka_result)
    assert fig._suptitle is not None and len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert any("same input" in t for t in titles) and any("end to end" in t for t in titles)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    table = figures.summary_table(result, cka_result)  # long: a row per measure and treatment, four columns
    assert list(table.columns) == ["measure", "treatment", "attention [95% CI]", "MLP [95% CI]"]
    same = table[table.measure == figures.SUMMARY_MEASURES[0][0]]
    assert list(same.treatment) == ["rlvr", "identical", "null_0", "null_1"]
    end_row = table[(table.measure == figures.SUMMARY_MEASURES[2][0]) & (table.treatment == "rlvr")].iloc[0]
    assert end_row["attention [95% CI]"] == "0.50 [0.40, 0.60]" and end_row["MLP [95% CI]"] == "not measured"
    assert same[same.treatment == "identical"].iloc[0]["MLP [95% CI]"] == "0"  # exactly unchanged, not '0.00e+00 [...]'
    assert not any("e+" in v or "e-" in v for v in table.stack().astype(str))
