"""BatchTopK crosscoder: planted dictionaries where the answer is known (k features only in model B), identical
models and a random change of the same size (must give no specific latent), Latent Scaling against least
squares, latent edits that remove a planted feature's effect, and lockstep greedy decoding against generate."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils.core import config
from rlvr_utils.core.estimate import Estimate, estimates_json
from rlvr_utils.instruments.crosscoder import causal, figures, instrument
from rlvr_utils.instruments.crosscoder.model import (REFERENCE_DELTA_NORM, Crosscoder, delta_norm, fit_pair,
                                                     latent_scaling, threshold_for_delta_norm)
from rlvr_utils.training import organism
from rlvr_utils.treatments import registry

D, SHARED, EXTRA = 24, 40, 3
TRAIN = dict(n_latents=96, k=4, steps=800, batch_size=256, lr=3e-3, progress=False)


def _unit(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def planted(n=6000, extra=EXTRA, seed=0):
    """Shared sparse features (each with its own direction in A and in B, as two models would have) and
    `extra` features present only in B. Returns (A, B, B's extra directions)."""
    g = np.random.default_rng(seed)
    dir_a = _unit(g.normal(size=(SHARED, D)))
    dir_b = _unit(dir_a + 0.3 * g.normal(size=(SHARED, D)))
    extra_dirs = _unit(g.normal(size=(max(extra, 1), D)))[:extra]
    coef = (g.random((n, SHARED)) < 0.06) * g.uniform(0.5, 1.5, (n, SHARED))
    extra_coef = (g.random((n, extra)) < 0.06) * g.uniform(1.0, 2.0, (n, extra))
    a = coef @ dir_a + 0.01 * g.normal(size=(n, D))
    b = coef @ dir_b + extra_coef @ extra_dirs + 0.01 * g.normal(size=(n, D))
    return a.astype(np.float32), b.astype(np.float32), extra_dirs


@pytest.fixture(scope="module")
def planted_fit():
    a, b, extra_dirs = planted()
    return fit_pair(a, b, seed=0, **TRAIN), a, b, extra_dirs


def test_planted_features_are_recovered_as_specific(planted_fit):
    fit, _, _, extra_dirs = planted_fit
    assert EXTRA - 1 <= len(fit.specific) <= EXTRA + 1, (fit.specific, fit.rel_norm[fit.specific])
    assert len(fit.reference_only) == 0  # B lost nothing
    dec = _unit(fit.crosscoder.W_dec[fit.specific, 1].detach().numpy())
    cos = np.abs(dec @ extra_dirs.T)  # [specific, planted]
    assert (cos.max(0) > 0.95).all(), cos  # every planted direction has a specific latent aligned with it
    assert (cos.max(1) > 0.95).all(), cos  # and no specific latent is something else
    # Latent Scaling confirms absence: SFT's own error holds none of these latents
    assert (np.abs(fit.scaling["nu_error"][fit.specific]) < 0.1).all()
    assert max(fit.info["fvu"]) < 0.1


def test_the_threshold_is_the_references_delta_norm():
    """Minder et al.: Δnorm = 1/2 ((|d_T| - |d_ref|) / max(|d_T|, |d_ref|) + 1) > 0.9 is 'target-only', < 0.1
    'reference-only'. A decoder 5x longer in the target is Δnorm 0.9 exactly: r = 5 / (5 + 1) = 5/6."""
    assert threshold_for_delta_norm(0.9) == pytest.approx(5 / 6)
    for a, b in ((5.0, 1.0), (1.0, 5.0), (2.0, 1.0), (1.0, 1.0), (3.0, 0.0)):
        paper = 0.5 * ((a - b) / max(a, b) + 1)
        assert delta_norm(a / (a + b)) == pytest.approx(paper)
    assert delta_norm(1 / 6) == pytest.approx(0.1)  # the mirror: reference-only below 1 - 5/6
    assert config.from_dict({}).crosscoder.specific_threshold == pytest.approx(threshold_for_delta_norm(
        REFERENCE_DELTA_NORM))
    with pytest.raises(ValueError, match="Δnorm"):
        threshold_for_delta_norm(0.3)


def test_specific_latents_are_ranked_by_latent_scaling(planted_fit):
    fit = planted_fit[0]
    nu = fit.scaling["nu_error"][fit.specific]
    assert len(nu) >= 2 and (np.diff(nu) >= 0).all()  # lowest nu_error (least present in SFT) first


def test_a_removed_feature_is_counted_reference_only():
    """The mirror of the planted test: B lacks features A has (B = the treatment lost them)."""
    a, b, extra_dirs = planted()
    fit = fit_pair(b, a, seed=0, **TRAIN)  # reference = the model with the extra features
    assert len(fit.specific) == 0, fit.rel_norm[fit.specific]
    assert EXTRA - 1 <= len(fit.reference_only) <= EXTRA + 1, fit.rel_norm[fit.reference_only]
    dec = _unit(fit.crosscoder.W_dec[fit.reference_only, 0].detach().numpy())
    assert (np.abs(dec @ extra_dirs.T).max(0) > 0.95).all()  # each lost feature has its latent
    assert (fit.rel_norm[fit.reference_only] < 1 / 6).all()
    assert (fit.reference_scaling["nu_error"][fit.reference_only] < 0.1).all()  # absent from the treatment


def test_identical_models_give_no_specific_latent():
    a, _, _ = planted(n=3000)
    fit = fit_pair(a, a.copy(), seed=1, **{**TRAIN, "steps": 300})
    assert len(fit.specific) == 0 and len(fit.reference_only) == 0
    np.testing.assert_allclose(fit.rel_norm, 0.5, atol=1e-6)


def test_random_change_of_the_same_size_gives_no_specific_latent():
    """B = A plus a random linear change whose size matches the planted features' share of B: the null."""
    a, b, _ = planted(n=4000)
    g = np.random.default_rng(5)
    change = g.normal(size=(D, D))
    b_null = a + a @ change * (np.linalg.norm(b - a) / np.linalg.norm(a @ change))
    fit = fit_pair(a, b_null.astype(np.float32), seed=0, **TRAIN)
    assert len(fit.specific) == 0, (fit.rel_norm[fit.specific], fit.scaling["nu_error"][fit.specific])
    assert len(fit.reference_only) == 0, fit.rel_norm[fit.reference_only]  # nor a "lost" one


def test_latent_scaling_matches_least_squares(planted_fit):
    fit, a, b, _ = planted_fit
    x = torch.from_numpy(np.stack([a, b], 1)) * fit.scales[None, :, None]
    scaling = latent_scaling(fit.crosscoder, x)
    cc = fit.crosscoder
    with torch.no_grad():
        f = cc.encode(x)
        recon = cc.decode(f)
    j = int(fit.specific[0]) if len(fit.specific) else int(np.argmax(scaling["count"]))
    d = cc.W_dec[j, 1].detach()
    for col, model in ((0, "reference"), (1, "target")):
        y = (x[:, col] - recon[:, col] + f[:, j:j + 1] * cc.W_dec[j, col].detach()).numpy()  # error target
        design = (f[:, j:j + 1] * d).numpy().reshape(-1, 1)
        beta = np.linalg.lstsq(design, y.reshape(-1), rcond=None)[0][0]
        assert scaling[f"beta_error_{model}"][j] == pytest.approx(beta, rel=1e-3, abs=1e-4)


def test_removing_specific_latents_removes_the_planted_effect(planted_fit):
    """A linear readout of B's first planted feature: removing B's specific latents takes it to ~0 where the
    feature is on; removing as many random latents leaves it; transplanting into A gives A the readout."""
    fit, a, b, extra_dirs = planted_fit
    readout = torch.from_numpy(extra_dirs[0].astype(np.float32))
    ha, hb = torch.from_numpy(a), torch.from_numpy(b)
    on = (hb @ readout - ha @ readout) > 0.5  # tokens where B's planted feature is active
    assert on.sum() > 50
    before = (hb @ readout)[on].mean()
    removed = causal.latent_edit(fit, fit.specific, driver=1, mode="remove")(hb, ha)
    others = np.setdiff1d(fit.alive, fit.specific)
    random = np.random.default_rng(0).choice(others, size=len(fit.specific), replace=False)
    removed_random = causal.latent_edit(fit, random, driver=1, mode="remove")(hb, ha)
    after, after_random = (removed @ readout)[on].mean(), (removed_random @ readout)[on].mean()
    base_a = (ha @ readout)[on].mean()
    assert abs(after - base_a) < 0.2 * abs(before - base_a), (before, after, base_a)
    assert abs(after_random - before) < 0.3 * abs(before - base_a), (before, after_random)
    transplanted = causal.latent_edit(fit, fit.specific, driver=0, mode="transplant")(ha, hb)
    assert abs((transplanted @ readout)[on].mean() - before) < 0.2 * abs(before - base_a)
    # an empty set edits nothing
    assert torch.equal(causal.latent_edit(fit, [], driver=1, mode="remove")(hb, ha), hb)


def test_encode_is_batch_topk_in_training_and_threshold_after(planted_fit):
    fit = planted_fit[0]
    x = torch.randn(64, 2, D)
    f = fit.crosscoder.encode(x, batch_topk=True)
    assert int((f > 0).sum()) <= fit.crosscoder.k * 64
    assert torch.equal(fit.crosscoder.encode(x[:8]), fit.crosscoder.encode(x)[:8])  # no batch dependence
    with pytest.raises(ValueError, match="threshold"):
        Crosscoder(D, 16, 2).encode(x)


def _tiny_pair():
    tokenizer = organism.build_tokenizer(["Ann had 3 apples. 3 + 4 = 7.\n#### 7"] * 20, 300)
    tokenizer.pad_token = tokenizer.eos_token
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        models.append(AutoModelForCausalLM.from_config(cfg).eval())
    return tokenizer, models


def test_paired_greedy_is_greedy_decoding_and_edits_reach_the_output():
    tokenizer, (driver, partner) = _tiny_pair()
    prompts = ["Ann had 3 apples.", "3 + 4 =", "Ann had 12 apples. 3 + 4"]
    ours = causal.paired_greedy(driver, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    ids = driver.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    identity = causal.paired_greedy(driver, tokenizer, prompts, 8, 2, partner=partner, layer=0,
                                        edit=lambda h, p: h)
    assert identity == ours
    # replacing the driver's stream by the partner's at every edited position changes the output
    swapped = causal.paired_greedy(driver, tokenizer, prompts, 8, 2, partner=partner, layer=1,
                                       edit=lambda h, p: 50 * p)
    assert swapped != ours
    with pytest.raises(ValueError, match="partner"):
        causal.paired_greedy(driver, tokenizer, prompts, 2, 2, edit=lambda h, p: h)


def test_params_are_validated():
    with pytest.raises(config.ParamsError, match="specific_threshold"):
        config.from_dict({"crosscoder": {"specific_threshold": 0.4}})
    assert config.from_dict({}).crosscoder.site == "hook_resid_post"


def test_seed_interval_and_accuracy_change():
    assert instrument.seed_interval([2, 4, 3]) == Estimate(3.0, (2.0, 4.0), "seeds", 3)
    before = np.array([1, 1, 0, 0] * 25, dtype=float)
    after = np.array([[0, 1, 0, 0] * 25, [1, 1, 0, 0] * 25], dtype=float)  # seed-averaged: -12.5 points
    out = causal.accuracy_change(before, after, n_bootstrap=200, confidence=0.95, seed=0).to_json()
    assert out["value"] == pytest.approx(-12.5)
    assert out["ci"][0] < -12.5 < out["ci"][1] < 0


NULL = registry.names(config.from_dict({}), "null")[0]


def _fake_result(rlvr_counts, null_counts, drop_ci, lost=0):
    """The report the instrument writes, with the driver's `variants` block (as JSON); `lost` reference-only
    latents per seed besides the target-only counts."""
    def pair(ref, tgt, counts, kind):
        seeds = [{"n_specific": n + lost, "n_target_only": n, "n_reference_only": lost, "fvu": [0.01, 0.01],
                  "max_rel_norm": 0.6, "min_rel_norm": 0.4} for n in counts]
        return {"reference": ref, "target": tgt, "kind": kind, "seeds": seeds}
    est = lambda v, lo, hi: {"value": v, "ci": [lo, hi], "interval": "bootstrap", "n": 100}  # noqa: E731
    causal = {"n_problems": 100, "leaning": {"latents_per_seed": [8]}, "specific": {"latents_per_seed": [3]}}
    for s in ("specific", "leaning"):
        causal[s].update(ablate_drop=est(sum(drop_ci) / 2, *drop_ci), ablate_random_drop=est(0.0, -1.0, 1.0),
                         transplant_gain=est(0.0, -1.0, 1.0), transplant_random_gain=est(0.0, -1.0, 1.0),
                         ablate_reference_drop=est(0.0, -1.0, 1.0))
    result = {"pairs": {"base->sft": pair("base", "sft", [5, 6, 7], instrument.YARDSTICK),
                        "sft->rlvr": pair("sft", "rlvr", rlvr_counts, "study"),
                        f"sft->{NULL}": pair("sft", NULL, null_counts, "null")}, "causal": {"rlvr": causal}}
    result["variants"] = estimates_json({p["target"]: instrument.measures(p, result["causal"].get(p["target"]))
                                         for p in result["pairs"].values() if p["reference"] == "sft"})
    result["summary"] = instrument.summary(result)
    return result


def test_metrics_schema_and_reading():
    result = _fake_result([4, 5, 6], [0, 1, 0], (3.0, 9.0))
    v = result["variants"]
    assert set(v) == {"rlvr", NULL}  # base->sft is the yardstick, not a treatment
    assert v["rlvr"]["specific_latents"] == {"value": 5.0, "ci": [4.0, 6.0], "interval": "seeds", "n": 3}
    assert v["rlvr"]["treatment_only_latents"]["value"] == 5.0 and v["rlvr"]["reference_only_latents"]["value"] == 0
    # the verdict's key counts both sides: a treatment that lost features has model-specific latents too
    both = _fake_result([1, 2, 3], [0, 0, 0], (3.0, 9.0), lost=2)["variants"]["rlvr"]
    assert both["specific_latents"]["value"] == 4.0 and both["specific_latents"]["ci"] == [3.0, 5.0]
    assert both["reference_only_latents"]["value"] == 2.0 and both["treatment_only_latents"]["value"] == 2.0
    assert v["rlvr"]["causal_effect"] == {"value": 6.0, "ci": [3.0, 9.0], "interval": "bootstrap", "n": 100}
    assert v[NULL]["causal_effect"] == {"value": None, "ci": [None, None], "interval": "none", "n": None}  # not run: null, not 0
    for key, entry in result["summary"].items():
        assert {"value", "ci", "description"} <= set(entry), key
    assert "costs more accuracy than ablating as many random ones" in figures.reading(result)
    # a count inside the nulls' range, or a drop not beyond the random control, is described as such; the reading
    # names no hypothesis (the verdict's row decides that, against the placebos)
    inside = figures.reading(_fake_result([0, 1, 1], [0, 1, 0], (3.0, 9.0)))
    no_drop = figures.reading(_fake_result([4, 5, 6], [0, 1, 0], (-1.0, 2.0)))
    assert "does not exceed what the references" in inside
    assert "costs no more accuracy than ablating as many random ones" in no_drop
    for text in (figures.reading(result), inside, no_drop):
        assert "Routing" not in text and "Representation" not in text


def test_treatments_are_those_with_a_checkpoint_and_listed_ones_must_exist(tmp_path):
    cfg = config.from_dict({"runs_dir": str(tmp_path)})
    listed = config.from_dict({"runs_dir": str(tmp_path), "crosscoder": {"treatments": ["rlvr", NULL]}})
    assert instrument.CrosscoderInstrument().treatments(cfg) == []
    for name in ("rlvr", *registry.names(cfg, "identical")):
        cfg.path("models", name).mkdir(parents=True)
        (cfg.path("models", name) / "config.json").write_text("{}")
    assert instrument.CrosscoderInstrument().treatments(cfg) == ["rlvr"]  # the study; not the identical copy
    with pytest.raises(FileNotFoundError, match=NULL):
        instrument.CrosscoderInstrument().treatments(listed)


def test_figures_fit_the_page_and_say_when_a_latent_set_is_empty():
    import matplotlib

    matplotlib.use("Agg")  # tests only; notebooks show figures inline
    import matplotlib.pyplot as plt

    from rlvr_utils.core import plots

    result = _fake_result([4, 5, 6], [0, 1, 0], (3.0, 9.0))
    result["causal"]["rlvr"]["specific"]["latents_per_seed"] = [0]  # no specific latent: nothing was measured
    fig = figures.plot_causal(result)
    specific = fig.axes[0]
    assert not specific.lines and not specific.collections  # no 'n=0' drawn as measured zeros
    assert "no specific latent" in " ".join(t.get_text() for t in specific.texts)
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH and min(plots.text_sizes(fig)) >= plots.MIN_FONT
    plt.close(fig)


# --- captions: the takeaway on this run, its numbers formatted from the data -----------------------------------
def _caption_pair(reference, target, kind, n_specific, rel=(0.45, 0.55), nu=(0.9, 0.9)):
    return {"reference": reference, "target": target, "kind": kind, "n_tokens": 10,
            "seeds": [{"n_specific": n, "n_target_only": n, "n_reference_only": 0, "min_rel_norm": rel[0],
                       "max_rel_norm": rel[1], "rel_norm": list(rel), "nu_error": list(nu), "count": [3, 3]}
                      for n in n_specific]}


def test_captions_state_counts_norms_and_causal_changes():
    from rlvr_utils.core import captions, fmt

    def est(v, lo, hi):
        return {"value": v, "ci": [lo, hi]}

    result = {"settings": {"specific_threshold": 5 / 6, "presence_threshold": 0.3, "seeds": 2},
              "pairs": {"base->sft": _caption_pair("base", "sft", "yardstick", [1, 3], rel=(0.15, 0.9), nu=(0.9, 0.1)),
                        "sft->rlvr": _caption_pair("sft", "rlvr", "study", [2, 4], rel=(0.45, 0.9), nu=(0.9, 0.5)),
                        "sft->placebo_0": _caption_pair("sft", "placebo_0", "placebo", [0, 1], rel=(0.4, 0.66))},
              "causal": {"rlvr": {"n_problems": 50,
                                  "specific": {"latents_per_seed": [0]},
                                  "leaning": {"latents_per_seed": [8], "ablate_drop": est(20.0, 12.0, 28.0),
                                              "ablate_random_drop": est(4.0, -1.0, 9.0),
                                              "ablate_reference_drop": est(5.0, 1.0, 9.0),
                                              "transplant_gain": est(-0.4, -2.9, 2.0)}}}}
    counts_text = figures.caption_counts(result)
    assert fmt.interval(3.0, [2, 4]) in counts_text and fmt.interval(2.0, [1, 3]) in counts_text
    assert f"above the references' highest count, {fmt.number(1)} (1 update without task signal)" in counts_text
    norms = figures.caption_relative_norms(result)
    assert f"span {captions.span([0.45, 0.9])}" in norms and captions.span([0.4, 0.66]) in norms
    assert fmt.number(5 / 6) in norms
    scaling = figures.caption_scaling(result)
    assert "rlvr 0 (and 1 beyond the norm threshold with a high ν_error)" in scaling
    causal_text = figures.caption_causal(result)
    leaning = result["causal"]["rlvr"]["leaning"]
    assert captions.change(leaning["ablate_drop"]) in causal_text and "above the random latents'" in causal_text
    assert captions.change(leaning["ablate_random_drop"]).startswith("no change detected")
    assert captions.change(leaning["ablate_random_drop"]) in causal_text
    assert f"no change detected ({captions.estimate(leaning['transplant_gain'], sign=True)})" in causal_text
    assert "No specific latents on this run" in causal_text
    for caption in (figures.caption_counts, figures.caption_relative_norms, figures.caption_scaling,
                    figures.caption_causal):
        assert "not measured" in caption({}).lower()
