"""The treatment registry: every model compared with SFT, its kind and its known answer, from params."""
import pytest

from rlvr_utils.core import config
from rlvr_utils.treatments import registry


def test_the_default_treatments_in_the_order_the_book_shows_them():
    cfg = config.from_dict({})
    assert registry.names(cfg) == ["rlvr", "attn_only", "mlp_only", "identical", *(f"null_{k}" for k in range(5))]
    assert registry.names(cfg, "null") == [f"null_{k}" for k in range(5)]
    assert registry.names(cfg, "control", "identical") == ["attn_only", "mlp_only", "identical"]


def test_known_answers_calibrate_the_verdict():
    expected = registry.expected(config.from_dict({}))
    assert expected["attn_only"] == registry.ROUTING and expected["mlp_only"] == registry.REPRESENTATION
    assert {expected[n] for n in ("identical", "null_0", "null_4")} == {registry.NO_EVIDENCE}
    assert "rlvr" not in expected  # the study's answer is what the book asks


def test_params_choose_the_treatments():
    cfg = config.from_dict({"variants": {"nulls": 2, "identical": False, "controls": ["mlp_only"]}})
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


def test_placebos_are_trained_treatments_with_no_task_signal():
    cfg = config.from_dict({"variants": {"placebos": 2}})
    assert registry.names(cfg, "placebo") == ["placebo_0", "placebo_1"]
    assert all(registry.get(cfg, n).trained and registry.expected(cfg)[n] == registry.NO_EVIDENCE
               for n in ("placebo_0", "placebo_1"))
    assert registry.names(config.from_dict({}), "placebo") == []  # off unless asked for
