"""Real-scale params on this CPU machine: they validate, and the launch line and TRL configs are what they say."""
import json
import types
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


# --- launching: several machines, controls as RLVR, ZeRO-3 ------------------------------------------
TWO_MACHINES = {"num_machines": 2, "main_process_ip": "10.0.0.1", "main_process_port": 29511}


def _accelerate_args(cmd: list[str]):
    """The line as accelerate's own parser reads it: every flag we pass must be one it knows."""
    from accelerate.commands.launch import launch_command_parser

    program = cmd.index("-m", 3)  # the program after the launcher's flags: -m rlvr_utils ...
    return launch_command_parser().parse_args(cmd[3:program] + ["--module", "rlvr_utils"])


def test_each_machine_gets_the_same_launch_line_with_its_rank(real):
    cfg = real.model_copy(update={"launch": real.launch.model_copy(update=TWO_MACHINES)})
    for rank in (0, 1):
        cmd = train.launch_command(cfg, "sft", str(REAL), machine_rank=rank)
        args = _accelerate_args(cmd)
        assert (args.num_machines, args.machine_rank, args.num_processes) == (2, rank, 8)
        assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29511)
        # DeepSpeed's default multi-node launcher logs into the other machines over ssh (pdsh): every machine
        # starts its own line instead, through torchrun
        assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
    lines = [train.launch_command(cfg, "rlvr", str(REAL), machine_rank=r) for r in (0, 1)]
    assert [x for x in lines[0] if x != "0"] == [x for x in lines[1] if x != "1"]  # only the rank differs
    with pytest.raises(ValueError, match=r"machine rank \(got 2\): expected 0 to 1"):
        train.launch_command(cfg, "sft", str(REAL), machine_rank=2)
    one = _accelerate_args(train.launch_command(real, "sft", str(REAL)))
    assert one.num_machines == 1 and one.machine_rank is None and one.main_process_ip is None


def test_multi_node_without_deepspeed_spawns_through_torchrun():
    cfg = config.from_dict({"sft": {"num_processes": 2}, "grpo": {"num_processes": 2}, "launch": TWO_MACHINES})
    assert train.needs_launcher(cfg, "sft") and train.needs_launcher(cfg, "rlvr")
    args = _accelerate_args(train.launch_command(cfg, "sft", "p.yaml", machine_rank=1))
    assert args.multi_gpu and not args.use_deepspeed and (args.num_machines, args.machine_rank) == (2, 1)


@pytest.mark.parametrize("launch, sections, message", [
    ({"num_machines": 2}, {}, r"num_machines=2 needs main_process_ip and main_process_port"),
    ({**TWO_MACHINES, "machine_rank": 2}, {}, r"machine_rank=2 must be < num_machines=2"),
    (TWO_MACHINES, {"grpo": {"num_processes": 2}}, r"sft.num_processes \(got 1\): must be a multiple of "
                                                  r"launch.num_machines=2"),
    ({"main_process_port": 70000}, {}, r"launch.main_process_port \(got 70000\)"),
])
def test_bad_machine_params_fail_with_the_key_named(launch, sections, message):
    with pytest.raises(config.ParamsError, match=message):
        config.from_dict({"launch": launch, **sections})


def test_controls_and_placebos_launch_exactly_as_rlvr(real):
    for name in ("attn_only", "mlp_only", "placebo_0"):
        assert train.needs_launcher(real, name)
        flags = train.launch_command(real, name, str(REAL))
        rlvr = train.launch_command(real, "rlvr", str(REAL))
        port = flags.index("--main_process_port") + 1
        assert flags[:port] + flags[port + 1:-3] == rlvr[:port] + rlvr[port + 1:-3]  # all but the port and stage
        assert flags[-4:] == ["--stage", name, "--params", str(REAL)]
    assert not train.needs_launcher(config.Params(), "attn_only")  # the organism's RLVR: one process, so they too


def test_zero3_trainer_config_exists_before_any_weight_loads(monkeypatch, tmp_path):
    """transformers partitions weights as they load (zero.Init) only while a TrainingArguments with a ZeRO-3 file is
    alive: SFT and the controls make theirs before they load the model."""
    import trl.trainer.utils

    from rlvr_utils.models import loading
    from rlvr_utils.treatments import controls

    events = []

    class Loaded(Exception):
        pass

    def config_of(make):
        def wrapped(*a, **k):
            events.append("config")
            events.append(made := make(*a, **k))
            return made
        return wrapped

    def loads(*a, **k):
        events.append("load")
        raise Loaded  # the test ends at the first load

    cfg = config.Params(runs_dir=str(tmp_path), sft={"stop_metric": None})
    made = types.SimpleNamespace(trust_remote_code=False, model_init_kwargs=None)  # what the loaders read of it
    monkeypatch.setattr(train, "sft_config", config_of(lambda c: made))
    monkeypatch.setattr(train, "grpo_config", config_of(lambda c, stage="rlvr": made))
    monkeypatch.setattr(loading, "load", loads)
    monkeypatch.setattr(trl.trainer.utils, "create_model_from_path", loads)
    monkeypatch.setattr(train.data, "sft_problems", lambda c, held_out: [])
    for run in (lambda: train.train_sft(cfg), lambda: controls.train_control(cfg, "attn_only")):
        events.clear()
        with pytest.raises(Loaded):
            run()
        assert events == ["config", made, "load"]
