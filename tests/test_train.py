"""Real-scale params on this CPU machine: they validate, and the launch line and TRL configs are what they say."""
import json
from pathlib import Path

import pytest

from rlvr_utils.core import config
from rlvr_utils.training import rewards, train

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "params" / "qwen2.5-1.5b.yaml"


@pytest.fixture(scope="module")
def real():
    return config.load(REAL, machine=False)  # a GPU machine's file: vLLM need not be installed here


def test_real_scale_is_the_studys_setting(real):
    assert real.model.base == "Qwen/Qwen2.5-1.5B"
    assert (real.data.sft_source, real.data.grpo_source) == ("numina_cot", "gsm8k")
    g = real.grpo
    assert (g.learning_rate, g.max_completion_length, g.use_vllm, g.vllm_mode) == (2e-6, 2000, True, "colocate")
    assert rewards.reward_weights(real) == [1.0, 0.01]


def test_grpo_config_carries_every_knob(real):
    from trl import GRPOConfig

    args = train.grpo_args(real)
    assert args["deepspeed"] == str(ROOT / "params" / "deepspeed" / "zero2.json")
    args["deepspeed"] = None  # building a DeepSpeed config needs the gpu extra; the path is checked above
    g = GRPOConfig(**args)
    p = real.grpo
    assert (g.learning_rate, g.max_completion_length, g.num_generations, g.per_device_train_batch_size) == (
        p.learning_rate, p.max_completion_length, p.num_generations, p.per_device_train_batch_size)
    assert (g.beta, g.loss_type, g.temperature, g.use_vllm, g.vllm_mode, g.reward_weights) == (
        p.beta, p.loss_type, p.temperature, p.use_vllm, p.vllm_mode, [1.0, 0.01])
    assert g.scale_rewards == "none" and g.bf16 and g.max_steps == p.steps
    assert g.get_warmup_steps(g.max_steps) == 50  # warmup_ratio 0.1 of 500 steps


def test_sft_config_is_completion_only(real):
    from trl import SFTConfig

    args = train.sft_args(real)
    args["deepspeed"] = None
    s = SFTConfig(**args)
    assert s.completion_only_loss and s.max_length == real.sft.max_length and s.learning_rate == real.sft.learning_rate


def test_multi_gpu_stages_launch_through_accelerate(real):
    assert train.needs_launcher(real, "sft") and train.needs_launcher(real, "rlvr")
    cmd = train.launch_command(real, "rlvr", str(REAL))
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[cmd.index("--deepspeed_config_file") + 1].endswith("params/deepspeed/zero2.json")
    assert cmd[-7:] == ["-m", "rlvr_utils", "train", "--stage", "rlvr", "--params", str(REAL)]


def test_default_trains_in_process():
    cfg = config.Params()
    assert not train.needs_launcher(cfg, "sft") and not train.needs_launcher(cfg, "rlvr")


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_are_valid_json(name):
    import json

    stage = json.loads((ROOT / "params" / "deepspeed" / name).read_text())["zero_optimization"]["stage"]
    assert stage == int(name[4])


@pytest.mark.slow  # trains every stage twice
def test_same_seed_gives_the_same_models_and_metrics(tmp_path):
    """All three stages and the evaluation, twice with one seed: bit-for-bit the same weights and metrics."""
    from rlvr_utils.evaluation import evaluate

    def run(runs_dir):
        cfg = config.Params(
            runs_dir=str(runs_dir), name="repeat",
            organism={"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 200,
                      "corpus_documents": 300, "pretrain_steps": 6, "pretrain_batch_size": 8, "warmup_steps": 1},
            data={"n_sft": 64, "n_grpo": 32, "n_eval": 8},
            sft={"steps": 3, "batch_size": 8}, grpo={"steps": 2, "per_device_train_batch_size": 8,
                                                     "num_generations": 4, "max_completion_length": 16},
            evaluation={"n_problems": 8, "pass_k": [1, 2], "pass_problems": 4, "max_new_tokens": 16, "n_bootstrap": 50},
            extract={"n_problems": 8})
        for stage in ("base", "sft", "rlvr"):
            train.run_stage(cfg, stage)
            evaluate.run(cfg, stage)
        return cfg, evaluate.summarize(cfg)

    first, metrics_a = run(tmp_path / "a")
    second, metrics_b = run(tmp_path / "b")
    for stage in ("base", "sft", "rlvr"):
        a = (first.path("models", stage) / "model.safetensors").read_bytes()
        assert a == (second.path("models", stage) / "model.safetensors").read_bytes(), stage
    assert metrics_a == metrics_b


def _tiny(runs_dir, **sft) -> config.Params:
    return config.Params(
        runs_dir=str(runs_dir), name="stop",
        organism={"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 200,
                  "corpus_documents": 300, "pretrain_steps": 4, "pretrain_batch_size": 8, "warmup_steps": 1},
        data={"n_sft": 64, "n_grpo": 16, "n_eval": 8, "n_validation": 8},
        sft={"batch_size": 8, "n_validation": 16, "eval_steps": 2, "patience": 2, "stop_metric": "loss", "min_delta": 0.0, **sft},
        evaluation={"n_problems": 8}, extract={"n_problems": 8})


def test_sft_stopping_rule_stops_when_held_out_loss_stops_improving(tmp_path):
    """Planted: a learning rate so small that the held-out loss cannot improve after the first measurement.
    The rule must stop after `patience` more measurements and keep the first; without a rule (the null),
    SFT runs every step; with a real learning rate the loss keeps falling and it also runs every step."""
    frozen = _tiny(tmp_path, steps=40, learning_rate=1e-12, min_delta=1e-3)
    train.run_stage(frozen, "base")
    train.run_stage(frozen, "sft")
    stop = json.loads(frozen.path("metrics", "train_sft.json").read_text())["stopping"]
    assert stop["metric"] == "eval_loss" and stop["best_step"] == 2
    assert stop["stopped_at_step"] == 2 * (1 + 2) and stop["converged"]

    base = str(frozen.path("models", "base"))
    no_rule = _tiny(tmp_path, steps=8, learning_rate=1e-12, stop_metric=None)
    no_rule.name, no_rule.model.base = "no-rule", base
    train.run_stage(no_rule, "sft")
    record = json.loads(no_rule.path("metrics", "train_sft.json").read_text())
    assert "stopping" not in record and max(h["step"] for h in record["log_history"]) == 8

    learning = _tiny(tmp_path, steps=8, learning_rate=3e-3)
    learning.name, learning.model.base = "learning", base
    train.run_stage(learning, "sft")
    stop = json.loads(learning.path("metrics", "train_sft.json").read_text())["stopping"]
    assert stop["stopped_at_step"] == 8 and not stop["converged"] and stop["best_step"] == 8
