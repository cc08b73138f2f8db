"""The treatment registry: every model compared with SFT, its kind and its known answer, from params."""
import pytest

from rlvr_utils.core import config
from rlvr_utils.treatments import registry


def test_the_default_treatments_in_the_order_the_book_shows_them():
    cfg = config.from_dict({})
    hybrids = ["routing_hybrid", "routing_hybrid_matched", "representation_hybrid", "representation_hybrid_matched"]
    placebos = ["placebo_0", "placebo_1", "placebo_2", "placebo_0_matched", "placebo_1_matched", "placebo_2_matched"]
    planted = ["planted_feature", "removed_feature"]
    assert registry.names(cfg) == ["rlvr", "attn_only", "mlp_only", *hybrids, *planted, *placebos, "identical",
                                   *(f"null_{k}" for k in range(3))]
    assert all(registry.get(cfg, p).calibrates == ("crosscoder", "dictionary transfer", "probes") for p in planted)  # feature rows only
    assert registry.names(cfg, "placebo") == placebos
    assert registry.names(cfg, "control", "identical") == ["attn_only", "mlp_only", *hybrids, *planted, "identical"]
    assert [t.name for t in registry.all(cfg) if t.full] == hybrids  # every weight moved in these controls
    assert registry.get(cfg, "placebo_1_matched").rescales == "placebo_1"  # the same update direction


def test_known_answers_calibrate_the_verdict():
    expected = registry.expected(config.from_dict({}))
    assert expected["attn_only"] == registry.ROUTING and expected["mlp_only"] == registry.REPRESENTATION
    assert {expected[n] for n in ("identical", "null_0", "null_2", "placebo_0", "placebo_2_matched")} == {
        registry.NO_EVIDENCE}
    assert expected["routing_hybrid_matched"] == registry.ROUTING
    assert expected["representation_hybrid"] == registry.REPRESENTATION
    assert "rlvr" not in expected  # the study's answer is what the book asks


def test_params_choose_the_treatments():
    cfg = config.from_dict({"variants": {"nulls": 2, "identical": False, "controls": ["mlp_only"], "placebos": 0,
                                         "planted": False}})
    assert registry.names(cfg) == ["rlvr", "mlp_only", "null_0", "null_1"]
    assert registry.get(cfg, "mlp_only").kind == "control" and registry.get(cfg, "mlp_only").trained
    with pytest.raises(KeyError, match="attn_only.*it has: rlvr, mlp_only, null_0, null_1"):
        registry.get(cfg, "attn_only")


def test_one_rule_says_which_checkpoints_exist(tmp_path):
    cfg = config.from_dict({"runs_dir": str(tmp_path), "variants": {"nulls": 2}})
    for name in ("rlvr", "null_1"):
        cfg.model_dir(name).mkdir(parents=True)
        (cfg.model_dir(name) / "config.json").write_text("{}")
    cfg.model_dir("null_0").mkdir(parents=True)  # a folder without a checkpoint in it (an interrupted build)
    assert registry.available(cfg) == ["rlvr", "null_1"]
    assert registry.has_checkpoint("Qwen/Qwen2.5-1.5B")  # a hub id: checked when it is loaded


def test_placebo_rewards_ignore_the_completion_and_pay_rlvrs_means():
    from rlvr_utils.treatments import placebos

    accuracy, fmt = placebos.placebo_rewards((0.7, 0.99), seed=3)
    right, wrong = ["#### 7"] * 20_000, ["nonsense"] * 20_000
    paid_right, paid_wrong = accuracy(right, final=["7"] * 20_000), accuracy(wrong, final=["7"] * 20_000)
    assert abs(sum(paid_right) / 20_000 - 0.7) < 0.02 and abs(sum(paid_wrong) / 20_000 - 0.7) < 0.02
    assert abs(sum(fmt(wrong)) / 20_000 - 0.99) < 0.01
    again, _ = placebos.placebo_rewards((0.7, 0.99), seed=3)
    assert again(right[:50]) == placebos.placebo_rewards((0.7, 0.99), 3)[0](wrong[:50])  # seeded, blind to the text
    # each process of a launched run draws its own stream; rank 0 is the one-process stream
    by_rank = [placebos.placebo_rewards((0.5, 0.5), seed=3, rank=r)[0](wrong[:200]) for r in (0, 1, 2)]
    assert by_rank[0] == placebos.placebo_rewards((0.5, 0.5), seed=3)[0](wrong[:200])
    assert by_rank[0] != by_rank[1] != by_rank[2] != by_rank[0]


def test_placebos_are_trained_treatments_with_no_task_signal():
    cfg = config.from_dict({"variants": {"placebos": 2, "norm_matched": False}})
    assert registry.names(cfg, "placebo") == ["placebo_0", "placebo_1"]
    assert all(registry.get(cfg, n).trained and registry.expected(cfg)[n] == registry.NO_EVIDENCE
               for n in ("placebo_0", "placebo_1"))
    assert registry.trained(cfg) == ["attn_only", "mlp_only", "placebo_0", "placebo_1"]
    off = config.from_dict({"variants": {"placebos": 0}})
    assert registry.names(off, "placebo") == [] and not [t for t in registry.all(off) if t.full]  # hybrids need one


def _tiny_checkpoints(cfg, names):
    """A tiny Qwen2 checkpoint per name: SFT, and each other name SFT plus its own random update."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    sft = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    sft.save_pretrained(cfg.model_dir("sft"))
    for i, name in enumerate(names):
        other = Qwen2ForCausalLM(sft.config)
        other.load_state_dict(sft.state_dict())
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.01 * (i + 1) * torch.randn_like(p))
        other.save_pretrained(cfg.model_dir(name))


def test_hybrids_carry_one_components_trained_update_and_a_placebos_update_of_the_rest(tmp_path):
    import torch
    from safetensors.torch import load_file

    from rlvr_utils.models.families import family_of

    cfg = config.from_dict({"runs_dir": str(tmp_path), "variants": {"placebos": 1, "hybrids": True, "norm_matched": True,
                                                                     "planted": False}})
    assert registry.names(cfg, "control") == ["attn_only", "mlp_only", "routing_hybrid", "routing_hybrid_matched",
                                              "representation_hybrid", "representation_hybrid_matched"]
    assert registry.expected(cfg)["routing_hybrid_matched"] == registry.ROUTING
    _tiny_checkpoints(cfg, ["rlvr", "attn_only", "mlp_only", "placebo_0"])
    for name in registry.built(cfg):
        if name.startswith(("routing", "representation", "placebo")):
            registry.build(cfg, name)
    load = lambda n: load_file(str(cfg.model_dir(n) / "model.safetensors"))  # noqa: E731
    sft, rlvr, attn, placebo, hyb = (load(n) for n in ("sft", "rlvr", "attn_only", "placebo_0", "routing_hybrid"))
    component = family_of("qwen2").component_of
    assert all(torch.equal(hyb[k], (attn if component(k)[0] == "attn" else placebo)[k]) for k in sft)
    assert any(component(k)[0] == "attn" for k in sft) and any(component(k)[0] == "mlp" for k in sft)
    matched = load("routing_hybrid_matched")
    for k in sft:  # every tensor's update at RLVR's size, in the hybrid's direction
        want = (rlvr[k].double() - sft[k].double()).norm()
        assert torch.isclose((matched[k].double() - sft[k].double()).norm(), want, rtol=1e-4)
    placebo_matched = load("placebo_0_matched")
    k = next(iter(sft))
    d1, d2 = placebo_matched[k].double() - sft[k].double(), placebo[k].double() - sft[k].double()
    assert torch.nn.functional.cosine_similarity(d1.flatten(), d2.flatten(), dim=0) > 0.999


def test_a_user_checkpoint_is_a_treatment_read_like_rlvr(tmp_path):
    from rlvr_utils.evidence import verdict

    folder = tmp_path / "other_rl"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = config.from_dict({"runs_dir": str(tmp_path), "variants": {"user": {"other_rl": str(folder)}}})
    assert registry.names(cfg, "user") == ["other_rl"] and registry.names(cfg)[:2] == ["rlvr", "other_rl"]
    assert cfg.model_ref("other_rl") == str(folder) and registry.available(cfg, ["other_rl"]) == ["other_rl"]
    assert "other_rl" not in registry.expected(cfg)  # no known answer: it is read, it calibrates nothing
    design = verdict.Design.from_registry(cfg)
    assert "other_rl" not in design.references("rlvr")[0] + design.references("rlvr")[1]


def test_bad_user_treatments_are_refused_by_name(tmp_path):
    with pytest.raises(config.ParamsError, match="variants.user.other .*no checkpoint folder"):
        config.from_dict({"runs_dir": str(tmp_path), "variants": {"user": {"other": "./missing_checkpoint"}}})
    for bad in ("sft", "../x"):
        with pytest.raises(config.ParamsError, match="not folder names"):
            config.from_dict({"variants": {"user": {bad: "org/model"}}})
    with pytest.raises(ValueError, match="used twice"):
        # machine=False: this hub id is not downloaded here, which `run` refuses first (core.hub)
        registry.names(config.from_dict({"variants": {"user": {"null_0": "org/model"}}}, machine=False))


def test_given_checkpoints_have_no_placebos_nor_hybrids(tmp_path):
    """A placebo copies RLVR's logged rewards, which given checkpoints do not ship: analyze-only runs build none
    (and no hybrid, which carries a placebo's update), so the verdict can say why no row counts."""
    for stage in ("sft", "rlvr"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "config.json").write_text('{"num_hidden_layers": 4}')
    cfg = config.from_dict({"runs_dir": str(tmp_path), "model": {"sft": str(tmp_path / "sft"),
                                                                 "rlvr": str(tmp_path / "rlvr")}})
    assert cfg.model.analyze_only and cfg.variants.placebos == 3
    assert registry.names(cfg, "placebo") == [] and not [t for t in registry.all(cfg) if t.full]


def test_a_bad_user_checkpoint_is_named_once(tmp_path):
    with pytest.raises(config.ParamsError) as err:
        config.from_dict({"runs_dir": str(tmp_path), "variants": {"user": {"other": "./missing_checkpoint"}}})
    assert str(err.value).count("variants.user.other") == 1
