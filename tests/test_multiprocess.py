"""Multi-process runs on CPU: `accelerate launch` with two processes (gloo) trains SFT with the same artifact
layout as one process, resumes after the launcher is killed, reports its processes; data-parallel
extraction writes the store a single process writes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlvr_utils import activations
from rlvr_utils.core import config, lock
from rlvr_utils.training import rehearsal, train

pytestmark = pytest.mark.slow  # end-to-end: minutes (make test-fast leaves it out)

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, base: Path, name: str, **sft) -> Path:
    raw = yaml.safe_load((ROOT / "params" / "rehearsal.yaml").read_text())
    raw.update(name=name, runs_dir=str(tmp_path / "runs"))
    raw["model"]["base"] = str(base)
    raw["sft"].update(steps=6, eval_steps=2, patience=5, batch_size=2, max_length=128, logging_steps=1, **sft)
    raw["data"]["max_rows"] = 60
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _layout(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_two_process_sft_resumes_after_a_kill_and_matches_one_process(tmp_path):
    base = tmp_path / "base"
    rehearsal.build(base, pretrain_steps=0)  # weights do not matter here; the path does
    two = config.load(_params(tmp_path, base, "two", num_processes=2))
    cmd = train.launch_command(two, "sft", two.source)
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"

    # Kill the whole launch (launcher, torchrun and both workers) once the first trainer checkpoint exists.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    trainer_dir = train._trainer_dir(two, "sft")
    deadline = time.time() + 300
    while not list(trainer_dir.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.5)
    killed = proc.poll() is None
    # SIGTERM to the launcher's group: torchrun's agent then ends its workers, which run in sessions of their
    # own (a SIGKILLed launcher would leave them training).
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert killed, proc.stdout.read().decode()[-3000:]
    while subprocess.run(["pgrep", "-f", str(two.source)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "workers of the killed launch still run"
        time.sleep(0.5)
    assert not train.is_trained(two, "sft")

    message = train.run_stage(two, "sft")  # the same launch again: resumes from the trainer checkpoint
    assert message.startswith("trained sft")
    record = json.loads(two.path("metrics", "train_sft.json").read_text())
    assert record["resumed_from_step"] >= 2 and record["num_processes"] == 2
    assert record["stopping"]["max_steps"] == 6

    one = config.load(_params(tmp_path, base, "one", num_processes=1))
    assert not train.needs_launcher(one, "sft")
    train.run_stage(one, "sft")
    assert _layout(one.path("models", "sft")) == _layout(two.path("models", "sft"))
    one_record = json.loads(one.path("metrics", "train_sft.json").read_text())
    assert set(one_record) == set(record) and one_record["num_processes"] == 1
    assert sorted(p.name for p in one.path("metrics").iterdir()) == sorted(p.name for p in two.path("metrics").iterdir())
    assert not two.path("trainer").exists() or not any(two.path("trainer").glob("sft-*"))  # scratch removed


def test_data_parallel_extraction_equals_one_process(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_utils.training.organism import build_tokenizer

    raw = {"name": "dp", "runs_dir": str(tmp_path / "runs"),
           "organism": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2},
           "extract": {"num_processes": 2, "shard_size": 3, "batch_size": 2, "positions": ["last_prompt", "completion", "frac:0.5"]}}
    cfg = config.from_dict(raw)
    lock.claim(cfg.run_dir)  # a run folder this package made: the launch locks it
    tokenizer = build_tokenizer(["Ida had 3 apples. 3 + 4 = 7."] * 4, 300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(rehearsal.model_config(tokenizer, hidden_size=32, num_layers=2, num_heads=2,
                                                                    num_kv_heads=1, intermediate_size=64))
    ref = cfg.path("models", "sft")
    model.save_pretrained(str(ref))
    tokenizer.save_pretrained(str(ref))
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 14, size=11)
    cache = activations.TokenCache([rng.integers(1, 250, size=n).tolist() for n in lengths],
                                   [int(rng.integers(1, n)) for n in lengths], list(range(11)), "gold",
                                   tokenizer.pad_token_id)
    cache.save(cfg.path("tokens"))

    output = activations.launch_extract(cfg, "sft")  # 4 shards over 2 processes
    assert "process 0 of 2" in output and "process 1 of 2" in output, output[-2000:]
    joined = activations.ActivationStore(cfg.path("activations"))
    assert joined.models() == ["sft"]
    assert activations.run_extract(cfg, "sft", cache) is not None  # up to date now: no second launch

    e = cfg.extract
    single = activations.extract(model.eval(), cache, tmp_path / "single", "sft", sites=e.sites, layers=e.layers,
                                 positions=e.positions, batch_size=e.batch_size, shard_size=e.shard_size)
    meta_joined, meta_single = joined.meta("sft"), single.meta("sft")
    assert meta_joined == meta_single
    for name in meta_single["site_names"]:
        for sel in e.positions:
            a, rows_a = joined.read("sft", name, sel)
            b, rows_b = single.read("sft", name, sel)
            assert np.array_equal(rows_a, rows_b)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not (cfg.path("activations", "sft", "shards")).exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_localhost_train_sft_together_and_write_it_once(tmp_path):
    """The multi-node path on one host: two `python -m rlvr_utils launch` (machine ranks 0 and 1, one process each)
    meet at 127.0.0.1 and train SFT as one 2-process job; machine 0 writes the model, machine 1 waits to see it."""
    base = tmp_path / "base"
    rehearsal.build(base, pretrain_steps=0)
    raw = yaml.safe_load(_params(tmp_path, base, "nodes", num_processes=2).read_text())
    raw["sft"].update(steps=2, eval_steps=2)
    raw["grpo"]["num_processes"] = 2
    raw["model"]["rlvr"] = str(base)  # RLVR given and no controls or placebos: SFT is the one stage to train
    raw["variants"].update(controls=[], placebos=0, hybrids=False)
    raw["launch"] = {"num_machines": 2, "main_process_ip": "127.0.0.1", "main_process_port": _free_port()}
    params = tmp_path / "nodes.yaml"
    params.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    machines = [subprocess.Popen([sys.executable, "-m", "rlvr_utils", "launch", "--params", str(params),
                                  "--machine-rank", str(rank)], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in (0, 1)]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-3000:] + "\n-----\n" + outputs[1][-3000:]
    assert "--machine_rank 1" in outputs[1] and "sft: trained with machine 0" in outputs[1]

    cfg = config.load(params)
    record = json.loads(cfg.path("metrics", "train_sft.json").read_text())
    recipe = record["recipe"]
    assert (recipe["launcher"], recipe["num_processes"], recipe["num_machines"]) == ("accelerate launch", 2, 2)
    assert [(p["rank"], p["machine_rank"]) for p in record["processes"]] == [(0, 0), (1, 1)]  # both took part
    assert max(h["step"] for h in record["log_history"]) == 2
    written = sorted(p.relative_to(cfg.run_dir).as_posix() for p in cfg.run_dir.rglob("*.safetensors"))
    assert written == ["models/sft/model.safetensors"]  # once, by machine 0; the trainer's scratch removed
    assert not [p for p in cfg.run_dir.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert train.is_trained(cfg, "sft")


@pytest.mark.slow
def test_controls_and_placebos_run_rlvrs_recipe_with_two_processes(tmp_path):
    """RLVR, a frozen control and a placebo on the rehearsal, each through `accelerate launch` with GRPO's two
    processes: their metrics record the same launcher, processes, machines and generation batch."""
    from rlvr_utils.treatments import launch, registry

    base = tmp_path / "base"
    rehearsal.build(base, pretrain_steps=0)
    raw = yaml.safe_load(_params(tmp_path, base, "recipe").read_text())
    raw["model"]["sft"] = str(base)  # GRPO from the base: the recipe, not the weights, is under test
    raw["grpo"].update(steps=1, max_completion_length=8, save_steps=1)
    raw["variants"].update(controls=["attn_only"], placebos=1, hybrids=False, planted=False)
    params = tmp_path / "recipe.yaml"
    params.write_text(yaml.safe_dump(raw))
    cfg = config.load(params)
    lock.claim(cfg.run_dir)
    train.run_stage(cfg, "rlvr")
    assert registry.trained(cfg) == ["attn_only", "placebo_0"]
    messages = launch.train_in_processes(cfg, registry.trained(cfg))
    assert "one after the other through accelerate launch" in messages[-1], messages
    recipes = {n: json.loads(cfg.path("metrics", f"train_{n}.json").read_text())["recipe"]
               for n in ("rlvr", "attn_only", "placebo_0")}
    assert recipes["rlvr"]["launcher"] == "accelerate launch" and recipes["rlvr"]["num_processes"] == 2
    assert recipes["rlvr"]["generation_batch_size"] == 2 * cfg.grpo.per_device_train_batch_size
    assert recipes["attn_only"] == recipes["rlvr"] == recipes["placebo_0"]
