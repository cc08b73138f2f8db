"""The resource plan (rlvr_utils.resources): it runs on every shipped params file, its formulas hold the identities a
user relies on, its estimates agree with what the code really allocates and writes (measured here, on small
models), and an impossible run is refused before any work, by `plan` and by `run`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr_utils.__main__ import main
from rlvr_utils.core.config import load
from rlvr_utils.resources import architecture, machine as machines, memory, plan

ROOT = Path(__file__).resolve().parents[1]
PARAMS = sorted((ROOT / "params").glob("*.yaml"))
GiB = 2 ** 30
BIG = ["--gpus", "8", "--gpu-memory", "80", "--host-memory", "2000", "--disk", "100000"]


def _qwen_like(d=64, layers=2, heads=4, kv=2, inter=176, vocab=300, tied=True):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
                      max_position_embeddings=256, use_cache=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg), architecture.from_config(cfg.to_dict(), "test")


@pytest.fixture(scope="module")
def rehearsal_base(tmp_path_factory):
    """The rehearsal's base checkpoint at its real shape, untrained (a fresh clone has none until
    `python -m rlvr_utils.training.rehearsal` builds it, and params/rehearsal.yaml names it)."""
    from rlvr_utils.training import rehearsal

    base = tmp_path_factory.mktemp("rehearsal") / "rehearsal-base"
    rehearsal.build(base, pretrain_steps=0)
    return base


def _loadable(path: Path, base: Path, tmp: Path) -> Path:
    """A shipped params file as this machine can load it: the rehearsal's base is the one built above."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    if str(raw.get("model", {}).get("base", "")).endswith("runs/rehearsal-base"):
        raw["model"]["base"] = str(base)
        path = tmp / path.name
        path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_plan_runs_on_every_shipped_params_file(path, capsys, rehearsal_base, tmp_path):
    path = _loadable(path, rehearsal_base, tmp_path)
    rc = main(["plan", str(path), *BIG])
    out, err = capsys.readouterr()
    assert rc in (0, 1), err  # 2 would be an error before any estimate
    cfg = load(path, machine=False)
    for stage in (["sft"] if cfg.model.sft is None else []) + ["evaluation", "extraction", "analyses"]:
        assert f"\n{stage} " in out, f"no row for {stage} in:\n{out}"
    assert "parameters" in out and "FLOPs" in out


@pytest.mark.parametrize("name", ["default.yaml", "ci.yaml", "rehearsal.yaml"])
def test_the_cpu_runs_fit_a_small_cpu_machine(name, rehearsal_base, tmp_path):
    """What the project runs on its 2-core, CPU-only machine is not refused (host memory and disk only)."""
    cfg = load(_loadable(ROOT / "params" / name, rehearsal_base, tmp_path), machine=False)
    small = machines.Machine(gpus=0, gpu_memory=0, host_memory=8 * GiB, disk=20 * GiB)
    assert plan.check(cfg, small) == []


@pytest.mark.parametrize("tied", [True, False])
def test_the_parameter_count_is_the_models_own(tied):
    model, arch = _qwen_like(tied=tied)
    assert arch.n_params == sum(p.numel() for p in model.parameters())


def test_the_shipped_table_gives_the_published_sizes():
    qwen = architecture.of_checkpoint("Qwen/Qwen2.5-1.5B")
    assert abs(qwen.n_params / 1.54e9 - 1) < 0.01  # the model card's 1.54B
    olmo = architecture.of_checkpoint("allenai/OLMo-2-0425-1B-Instruct")
    assert olmo.hidden == 2048 and not olmo.tied and abs(olmo.n_params / 1.48e9 - 1) < 0.01
    with pytest.raises(architecture.UnknownArchitecture, match="download someone/unknown-model config.json"):
        architecture.of_checkpoint("someone/unknown-model")


def test_model_state_identities():
    n = 1_000_000
    plain = memory.model_states(n, n, 2, mixed=False, stage=None, gpus=8)
    assert plain.weights == n * 2 and plain.gradients == n * 2 and plain.optimizer == n * 4  # nothing sharded
    assert memory.model_states(n, n, 4, False, None, 1).total == 16 * n  # fp32 Adam: 16 bytes per parameter
    z0 = memory.model_states(n, n, 2, mixed=True, stage=0, gpus=8)
    assert (z0.weights, z0.gradients, z0.optimizer) == (2 * n, 2 * n, 12 * n)  # ZeRO paper: 2 + 2 + 12
    z1, z2, z3 = (memory.model_states(n, n, 2, True, s, 8) for s in (1, 2, 3))
    assert z1.optimizer == 12 * n / 8 and z1.gradients == 2 * n
    assert z2.optimizer == 12 * n / 8 and z2.gradients == 2 * n / 8 and z2.weights == 2 * n
    assert z3.weights == 2 * n / 8
    frozen = memory.model_states(n, n // 10, 4, False, None, 1)  # a control trains a tenth of the model
    assert frozen.weights == 4 * n and frozen.optimizer == 8 * (n // 10)


def test_checkpointing_lowers_the_activation_estimate():
    qwen = architecture.of_checkpoint("Qwen/Qwen2.5-1.5B")
    full, ckpt = (memory.activations_per_token(qwen, 2, c) for c in (False, True))
    assert ckpt < full / 10
    assert 2.5e6 < full < 3.5e6  # ~3 MB per token in bf16 (issue 24's own estimate)
    cfg = load(ROOT / "params" / "qwen2.5-1.5b.yaml", machine=False)
    node = machines.Machine(8, 80 * GiB, 2000 * GiB, 100_000 * GiB)
    safe = plan.grpo(cfg, node, qwen)
    cfg.grpo.gradient_checkpointing = False
    unsafe = plan.grpo(cfg, node, qwen)
    assert safe.parts["activations"] < unsafe.parts["activations"] / 10 and safe.gpu < unsafe.gpu


@pytest.mark.parametrize("dtype,checkpointing", [(torch.float32, False), (torch.bfloat16, False),
                                                 (torch.float32, True)])
def test_the_activation_formula_matches_what_autograd_keeps(dtype, checkpointing):
    """Bytes saved for the backward pass per token and block, measured with saved_tensors_hooks (weights left out,
    each storage once) as the difference between a 3-block and a 1-block model: the formula's per-block part."""
    def saved(layers):
        model, arch = _qwen_like(d=128, layers=layers, heads=4, kv=2, inter=512)
        model = model.to(dtype).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr and ptr not in weights:
                seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
            return t
        ids = torch.randint(0, 300, (2, 64))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
        return sum(seen.values()) / ids.numel(), arch

    (one, arch1), (three, arch3) = saved(1), saved(3)
    measured = (three - one) / 2
    b = 2 if dtype == torch.bfloat16 else 4
    estimated = (memory.activations_per_token(arch3, b, checkpointing)
                 - memory.activations_per_token(arch1, b, checkpointing)) / 2
    assert 0.9 < estimated / measured < 1.1, (estimated, measured)


def test_an_impossible_machine_is_refused_by_the_cli(capsys):
    rc = main(["plan", str(ROOT / "params" / "qwen2.5-1.5b.yaml"), "--gpus", "8", "--gpu-memory", "1",
               "--host-memory", "2000", "--disk", "100000"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "DOES NOT FIT" in err
    line = next(x for x in err.splitlines() if x.strip().startswith("- sft:"))
    assert "GiB per GPU" in line and "1.0 GiB" in line and "sft.gradient_checkpointing" in line
    assert any(x.strip().startswith("- rlvr:") and "grpo.per_device_train_batch_size" in x for x in err.splitlines())


def test_too_many_processes_and_no_gpu_are_named():
    cfg = load(ROOT / "params" / "qwen2.5-1.5b.yaml", machine=False)
    one = plan.check(cfg, machines.Machine(1, 141 * GiB, 2000 * GiB, 100_000 * GiB))
    assert any("8 processes" in p and "1 GPU" in p for p in one)
    cpu = plan.check(cfg, machines.Machine(0, 0, 2000 * GiB, 100_000 * GiB))
    assert any("vLLM needs a CUDA GPU" in p for p in cpu)


def _tiny_run(tmp_path: Path) -> Path:
    text = (ROOT / "params" / "ci.yaml").read_text() + f"\nruns_dir: {tmp_path / 'runs'}\n"
    path = tmp_path / "ci.yaml"
    path.write_text(text)
    return path


def test_run_is_refused_before_any_notebook(tmp_path, monkeypatch, capsys):
    import papermill

    from rlvr_utils.publish import runner

    def never(*args, **kwargs):
        raise AssertionError("a notebook was executed")
    monkeypatch.setattr(papermill, "execute_notebook", never)
    monkeypatch.setattr(machines, "detect", lambda run_dir: machines.Machine(0, 0, 0.1 * GiB, 100 * GiB))
    params = _tiny_run(tmp_path)
    with pytest.raises(plan.ResourceError, match=r"pretraining: needs .* GiB of host memory"):
        runner.execute(str(params))
    assert not (tmp_path / "runs").exists()  # no lock, no record, no artifact
    assert main(["run", "--params", str(params)]) == 2
    assert "cannot fit this machine" in capsys.readouterr().err


def test_the_organisms_sft_memory_and_checkpoints_are_within_2x_of_measured(tmp_path):
    """A fresh one-thread process runs 4 real SFT steps of the default run (2 checkpoints) and reports its peak
    resident memory and the checkpoints' bytes next to the plan's estimates of both."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "rlvr_utils.resources.measure", str(ROOT / "params" / "default.yaml"),
                          "--steps", "4", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    measured, estimate = result["measured"], result["estimate"]
    assert measured["n_params"] == estimate["n_params"]
    assert len(measured["checkpoint_bytes"]) == 2
    for got in measured["checkpoint_bytes"]:
        assert 0.5 < estimate["checkpoint_bytes"] / got < 2
    assert 0.5 < estimate["host_peak_bytes_per_process"] / measured["host_peak_bytes"] < 2


def test_the_extraction_disk_estimate_is_the_stores_size(tmp_path):
    """Extract a small model over a token cache, then read the plan's bytes for that cache: they agree."""
    from rlvr_utils.activations import TokenCache, extract

    cfg = load(_tiny_run(tmp_path), machine=False)
    model, arch = _qwen_like(d=cfg.organism.hidden_size, layers=cfg.organism.num_layers, heads=cfg.organism.num_heads,
                             kv=cfg.organism.num_heads, inter=cfg.organism.intermediate_size, vocab=300)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 30, (cfg.extract.n_problems,), generator=g).tolist()
    cache = TokenCache([torch.randint(1, 300, (10 + n,), generator=g).tolist() for n in lengths],
                       [10] * len(lengths), list(range(len(lengths))), "gold", 0)
    cache.save(cfg.path("tokens"))
    e = cfg.extract
    extract(model.eval(), cache, cfg.path("activations"), "sft", sites=e.sites, layers=e.layers, positions=e.positions,
            batch_size=e.batch_size, shard_size=e.shard_size, dtype=e.dtype)
    written = machines.folder_bytes(cfg.path("activations", "sft"))
    estimated, rows, _, _ = plan.store_bytes_per_model(cfg, arch)
    assert rows == sum(lengths) + len(lengths)  # every completion token, and the last prompt token
    assert 0.9 < estimated / written < 1.1, (estimated, written)
