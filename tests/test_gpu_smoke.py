"""The GPU smoke's driver on CPU (benchmarks/gpu_smoke.py): stages in their own processes with their logs, a failing or
hanging stage recorded and the next one run, the table and benchmarks/gpu_smoke.md, the preflight, and params that
keep the real recipe's memory settings. Its GPU stages run only on a GPU machine."""
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from rlvr_utils.core import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failing_or_hanging_stage_is_recorded_and_the_next_one_runs(smoke, tmp_path):
    sampler = smoke.MemorySampler()
    py = sys.executable
    stages = [("fine", [py, "-c", "print('done')"], 30), ("broken", [py, "-c", "raise SystemExit('boom: 3')"], 30),
              ("hangs", [py, "-c", "import time; time.sleep(30)"], 1), ("after", [py, "-c", "print('still ran')"], 30)]
    results = [smoke.run_stage(name, cmd, tmp_path / "logs" / f"{name}.log", limit, sampler)
               for name, cmd, limit in stages]
    assert [r.status for r in results] == ["ok", "failed (exit 1)", "timeout after 1 s", "ok"]
    assert "still ran" in (tmp_path / "logs" / "after.log").read_text()
    assert results[1].tail[-1] == "boom: 3" and results[0].tail == []
    assert results[2].seconds < 10
    (tmp_path / "plan.json").write_text('{"sft": 32212254720}')
    results[0].stage = "sft_step"  # its estimate is the plan's 'sft' stage
    text = smoke.report(results, tmp_path, tmp_path / "gpu_smoke.md")
    assert (tmp_path / "gpu_smoke.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| stage | status | seconds | peak GPU memory (GiB) | plan's estimate (GiB) |"
    assert rows[2].startswith("| sft_step | ok |") and rows[2].endswith("| - | 30.0 |")  # no GPU here: no peak
    assert "## broken: failed (exit 1)" in text and "boom: 3" in text


def test_the_preflight_on_a_machine_without_a_gpu_fails_and_says_why(smoke, tmp_path, capsys):
    report = tmp_path / "gpu_smoke.md"
    assert smoke.main(["--out", str(tmp_path / "out"), "--stages", "preflight", "--report", str(report)]) == 1
    text = report.read_text()
    assert "| preflight | failed (exit 1) |" in text
    assert "PREFLIGHT: no CUDA GPU" in text
    for fact in ("torch", "trl", "transformers", "pip check", "free disk (GiB)", "driver"):
        assert f"- {fact}: " in text
    assert "| preflight |" in capsys.readouterr().out  # the table is printed too


def test_dry_lists_every_stage_and_writes_params_with_the_real_memory_settings(smoke, tmp_path, capsys):
    out = tmp_path / "out"
    assert smoke.main(["--out", str(out), "--dry"]) == 0
    printed = capsys.readouterr().out
    assert [line.split(" ")[0] for line in printed.splitlines()] == list(smoke.STAGES)
    assert "rlvr_utils run --params" in printed and "--only 00 01 02 03 --no-book" in printed
    real = yaml.safe_load((ROOT / "params" / "qwen2.5-1.5b.yaml").read_text())
    (out / "base").mkdir()  # what the build stage writes: the checkpoint and the long SFT rows
    (out / "base" / "config.json").write_text('{"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 1536}')
    (out / "long_numina.jsonl").write_text((ROOT / "tests/data/numina/gsm8k_numina_cot.jsonl").read_text())
    for name in ("smoke", "sft", "chapters"):
        config.load(out / f"{name}.yaml", machine=False)  # valid params
    steps = yaml.safe_load((out / "smoke.yaml").read_text())
    for section, keys in (("sft", ("max_length", "batch_size", "deepspeed", "bf16")),
                          ("grpo", ("max_completion_length", "per_device_train_batch_size", "num_generations",
                                    "use_vllm", "vllm_mode", "deepspeed", "bf16"))):
        for key in keys:
            assert steps[section][key] == real[section][key], f"{section}.{key}"
    assert steps["sft"]["steps"] == steps["grpo"]["steps"] == 1
    assert steps["grpo"]["save_steps"] > steps["grpo"]["steps"]  # no trainer checkpoint is written
    assert "sft" not in yaml.safe_load((out / "sft.yaml").read_text())["model"]  # SFT is trained, not given


def test_an_unknown_stage_is_refused(smoke, tmp_path):
    with pytest.raises(SystemExit):
        smoke.main(["--out", str(tmp_path), "--stages", "preflight,warp"])
