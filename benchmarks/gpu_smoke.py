"""GPU smoke test: will the real study run on this machine? About 10 minutes on one GPU node, no hub access.

    python benchmarks/gpu_smoke.py [--out DIR] [--stages preflight,build,...] [--keep-checkpoints] [--dry]

Stages (each in its own process, its output in DIR/logs/<stage>.log; a failing stage is recorded and the next
one runs; the end prints a table of stage, status, seconds and peak GPU memory against the plan's estimate and
writes it, with the preflight, to benchmarks/gpu_smoke.md):
  preflight  versions (Python, torch, CUDA, driver, transformers, TRL, accelerate, DeepSpeed, vLLM), `pip check`,
             free disk; fails on no GPU, a broken environment or < 40 GiB free
  build      a randomly initialised Qwen2.5-1.5B-shaped bf16 checkpoint (28 layers, d 1536, 151,936 tokens) with the
             rehearsal's local tokenizer, and long NuminaMath-schema rows that fill the real sequence length
  plan       `python -m rlvr_utils plan` of the smoke's params on this machine: the estimates the table compares with
  sft_step   one SFT step of params/qwen2.5-1.5b.yaml's recipe at its sequence length (2048), micro-batch, DeepSpeed,
             activation checkpointing and bf16, one process per GPU
  grpo_step  one GRPO step at the real generation length (2000 tokens), batch and group, vLLM colocated
  vllm_eval  two models evaluated through vLLM in one process (one engine at a time, memory given back between)
  chapters   chapters 00-03 through the runner (`python -m rlvr_utils run --only 00 01 02 03`) on smoke-sized steps:
             GRPO, evaluation, the variants chapter's nulls and its two trained controls
No checkpoint is kept unless --keep-checkpoints: the trainers write no intermediate one (save_steps above the
steps) and each stage deletes its final weights. The weights are random: only "it runs", time and memory mean
something here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1024 ** 3
QWEN_VOCAB = 151_936  # Qwen2.5-1.5B's embedding rows
MIN_FREE_DISK_GIB = 40  # base (3 GiB) + the GRPO stage's DeepSpeed state in memory spills + runs, with room
STAGES = ("preflight", "build", "plan", "sft_step", "grpo_step", "vllm_eval", "chapters")
TIMEOUTS = {"preflight": 120, "build": 180, "plan": 120, "sft_step": 300, "grpo_step": 420, "vllm_eval": 300,
            "chapters": 900}
PLAN_STAGE = {"sft_step": "sft", "grpo_step": "rlvr", "vllm_eval": "evaluation"}  # whose estimate each one checks


# --- running stages ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    stage: str
    status: str  # ok, failed (exit N), timeout after N s, not run
    seconds: float
    peak_mib: float | None  # largest GPU memory used on any GPU while it ran (nvidia-smi), None without GPUs
    log: Path
    tail: list[str] = field(default_factory=list)


class MemorySampler:
    """nvidia-smi's memory.used on every GPU every `interval` s in a thread; `peak()` since the last `reset()`."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.largest, self.available = interval, 0.0, shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _loop(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                used = [float(x) for x in out.split()]
                self.largest = max([self.largest, *used])
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.interval)

    def reset(self):
        self.largest = 0.0

    def peak(self) -> float | None:
        return self.largest if self.available else None


def run_stage(name: str, command: list[str], log: Path, timeout: float, sampler: MemorySampler,
              env: dict | None = None) -> Result:
    """Run one stage's command with its output in `log`; never raises for the stage's own failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sampler.reset()
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        try:
            rc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                                env=env).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    tail = log.read_text(errors="replace").splitlines()[-8:]
    return Result(name, status, seconds, sampler.peak(), log, tail if status != "ok" else [])


def table(results: list[Result], plan: dict[str, float]) -> str:
    """Markdown table of stage, status, seconds, peak GPU memory and the plan's estimate for that stage."""
    lines = ["| stage | status | seconds | peak GPU memory (GiB) | plan's estimate (GiB) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in results:
        peak = "-" if r.peak_mib is None else f"{r.peak_mib / 1024:.1f}"
        estimate = plan.get(PLAN_STAGE.get(r.stage, ""), None)
        lines.append(f"| {r.stage} | {r.status} | {r.seconds:.0f} | {peak} | "
                     f"{'-' if estimate is None else f'{estimate / GiB:.1f}'} |")
    return "\n".join(lines)


def report(results: list[Result], out: Path, report_path: Path) -> str:
    """benchmarks/gpu_smoke.md: the table, the preflight's facts and the tail of every failed stage's log."""
    plan = _read_json(out / "plan.json")
    pre = _read_json(out / "preflight.json")
    when = time.strftime("%Y-%m-%d %H:%M")
    parts = ["# GPU smoke test", "", f"Written by `python benchmarks/gpu_smoke.py` on {when} "
             f"(logs in `{out}/logs/`). Random weights: only whether each stage runs, its time and its memory mean "
             "something.", "", table(results, plan), ""]
    if pre:
        parts += ["## Preflight", ""] + [f"- {k}: {v}" for k, v in pre.items()] + [""]
    for r in results:
        if r.tail:
            parts += [f"## {r.stage}: {r.status}", "", "```", *r.tail, "```", ""]
    text = "\n".join(parts)
    report_path.write_text(text)
    return text


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# --- the smoke's params -------------------------------------------------------------------------------------------
def smoke_params(out: Path, gpus: int) -> dict[str, Path]:
    """params/qwen2.5-1.5b.yaml with the local random model and data, and only the steps changed: the memory
    settings (lengths, batches, DeepSpeed, activation checkpointing, bf16, vLLM) stay the real ones."""
    import yaml

    raw = yaml.safe_load((ROOT / "params" / "qwen2.5-1.5b.yaml").read_text())
    base = str(out / "base")
    raw.update(name="gpu-smoke", runs_dir=str(out / "runs"))
    raw["model"].update(base=base, sft=base)  # GRPO starts from the random base: no SFT checkpoint needed
    raw["data"].update(sft_path=str(out / "long_numina.jsonl"),
                       grpo_path=str(ROOT / "tests/data/gsm8k/train_sample.jsonl"),
                       eval_path=str(ROOT / "tests/data/gsm8k/test.jsonl"), max_rows=300)
    raw["sft"].update(steps=1, stop_metric=None, num_processes=gpus, logging_steps=1)
    raw["grpo"].update(steps=1, num_processes=gpus, save_steps=100, logging_steps=1)
    raw["evaluation"].update(backend="vllm", n_problems=64, pass_problems=8, pass_k=[1, 8])
    raw["extract"].update(n_problems=32, completions_from="gold")
    paths = {"steps": out / "smoke.yaml", "sft": out / "sft.yaml", "chapters": out / "chapters.yaml"}
    paths["steps"].write_text(yaml.safe_dump(raw, sort_keys=False))
    sft = json.loads(json.dumps(raw))  # SFT trained from the random base (the launched processes read this file)
    sft["model"].pop("sft")
    paths["sft"].write_text(yaml.safe_dump(sft, sort_keys=False))
    chapters = json.loads(json.dumps(raw))  # smoke-sized: a few short steps, small evaluations, few variants
    chapters.update(name="gpu-smoke-chapters")
    chapters["grpo"].update(steps=2, max_completion_length=256)
    chapters["evaluation"].update(n_problems=32, max_new_tokens=256, pass_problems=4)
    chapters["variants"] = {"nulls": 2, "placebos": 0, "hybrids": False, "planted": False}  # the controls train
    paths["chapters"].write_text(yaml.safe_dump(chapters, sort_keys=False))
    return paths


def stage_commands(out: Path, gpus: int, gpu_memory_gib: float, keep: bool) -> dict[str, list[str]]:
    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(out)] + (["--keep-checkpoints"] if keep else [])
    commands = {name: me + ["--body", name, "--gpus", str(gpus), "--gpu-memory", str(gpu_memory_gib)]
                for name in STAGES}
    commands["chapters"] = [sys.executable, "-m", "rlvr_utils", "run", "--params", str(out / "chapters.yaml"),
                            "--only", "00", "01", "02", "03", "--no-book"]
    return commands


# --- stage bodies (run in the stage's own process) -------------------------------------------------------------
def preflight(out: Path) -> int:
    import importlib.metadata

    import torch

    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "torch CUDA": torch.version.cuda,
             "CUDA available": torch.cuda.is_available(), "GPUs": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts["GPU"] = f"{props.name}, {props.total_memory / GiB:.0f} GiB"
    for package in ("transformers", "trl", "accelerate", "deepspeed", "vllm", "safetensors", "datasets"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = "not installed"
    smi = shutil.which("nvidia-smi")
    facts["driver"] = (subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                      text=True).stdout.strip().splitlines() or ["?"])[0] if smi else "no nvidia-smi"
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    facts["pip check"] = "ok" if check.returncode == 0 else check.stdout.strip().replace("\n", "; ")
    out.mkdir(parents=True, exist_ok=True)
    facts["free disk (GiB)"] = round(shutil.disk_usage(out).free / GiB, 1)
    (out / "preflight.json").write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    problems = [why for bad, why in ((not facts["CUDA available"], "no CUDA GPU"),
                                     (check.returncode != 0, "pip check reports broken requirements"),
                                     (facts["free disk (GiB)"] < MIN_FREE_DISK_GIB, f"< {MIN_FREE_DISK_GIB} GiB free"),
                                     (facts["vllm"] == "not installed",
                                      "vLLM is not installed (pip install -e '.[gpu]')"))
                if bad]
    for why in problems:
        print("PREFLIGHT:", why)
    return 1 if problems else 0


def build(out: Path) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_utils.training import rehearsal

    tok = rehearsal.build_tokenizer(rehearsal.corpus())
    # a random model samples every id of its 151,936 rows: give each one a token (Qwen2.5's padding rows are never
    # sampled by a trained model, but would make vLLM's and the trainer's decoding fail here)
    tok.add_tokens([f"<|r{i}|>" for i in range(len(tok), QWEN_VOCAB)])
    cfg = rehearsal.model_config(tok, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                                 intermediate_size=8960, vocab_size=QWEN_VOCAB)
    cfg.max_position_embeddings = 4096
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters -> {out / 'base'}")
    # NuminaMath-schema rows whose solutions are longer than sft.max_length: every SFT sequence is cut there
    rows = [json.loads(line) for line in (ROOT / "tests/data/numina/gsm8k_numina_cot.jsonl").read_text().splitlines()]
    with open(out / "long_numina.jsonl", "w") as handle:
        for row in rows[:300]:
            solution = (row["solution"] + "\n") * 60
            handle.write(json.dumps({**row, "solution": solution,
                                     "messages": [{"role": "user", "content": row["problem"]},
                                                  {"role": "assistant", "content": solution}]}) + "\n")
    return 0


def plan(out: Path, gpus: int, gpu_memory_gib: float) -> int:
    from rlvr_utils.core import config
    from rlvr_utils.resources import machine, plan as planning

    cfg = config.load(out / "smoke.yaml", machine=False)
    here = machine.Machine(gpus, gpu_memory_gib * GiB, machine.host_memory(), shutil.disk_usage(out).free)
    stages = planning.estimate(cfg, here)
    estimates = {s.name: s.gpu for s in stages}
    (out / "plan.json").write_text(json.dumps(estimates))
    for s in stages:
        print(f"{s.name:12s} GPU {s.gpu / GiB:7.1f} GiB   host {s.host / GiB:7.1f} GiB")
    return 0


def train_step(out: Path, stage: str, keep: bool) -> int:
    from rlvr_utils.core import artifacts, config
    from rlvr_utils.training import train

    cfg = config.load(out / ("sft.yaml" if stage == "sft" else "smoke.yaml"))
    print(train.run_stage(cfg, stage, force=True))
    log = artifacts.read_json(cfg.path("metrics", f"train_{stage}.json"))
    tokens = max((e.get("num_tokens", 0) for e in log.get("log_history", [])), default=0)
    print(f"{stage}: {tokens:.0f} tokens in {log.get('seconds', float('nan')):.1f} s, {log.get('num_processes')} "
          "process(es)")
    if not keep:
        shutil.rmtree(cfg.path("models", stage), ignore_errors=True)
        shutil.rmtree(cfg.path("trainer"), ignore_errors=True)
    return 0


def vllm_eval(out: Path) -> int:
    import torch

    from rlvr_utils.core import config
    from rlvr_utils.evaluation import evaluate

    cfg = config.load(out / "smoke.yaml")
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"rlvr": cfg.model.base})})
    for stage in ("sft", "rlvr"):  # two engines, one after the other, in this one process
        started = time.perf_counter()
        print(evaluate.run(cfg, stage, force=True), f"({time.perf_counter() - started:.0f} s)")
        free, total = torch.cuda.mem_get_info()
        print(f"after {stage}: {len(evaluate.VLLMModel.open_engines)} engine(s) open, GPU free "
              f"{free / GiB:.1f} of {total / GiB:.1f} GiB")
        if evaluate.VLLMModel.open_engines or free < 0.5 * total:
            print(f"the engine of {stage} still holds the GPU")
            return 1
    return 0


def body(name: str, args) -> int:
    out = Path(args.out)
    if name == "preflight":
        return preflight(out)
    if name == "build":
        return build(out)
    if name == "plan":
        return plan(out, args.gpus, args.gpu_memory)
    if name in ("sft_step", "grpo_step"):
        return train_step(out, "sft" if name == "sft_step" else "rlvr", args.keep_checkpoints)
    if name == "vllm_eval":
        return vllm_eval(out)
    raise SystemExit(f"no stage body {name!r}")


# --- the driver --------------------------------------------------------------------------------------------------
def detected_gpus() -> tuple[int, float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return len(out), min(float(x) for x in out) / 1024
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0, 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "gpu_smoke"))
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the trained weights (deleted otherwise)")
    parser.add_argument("--dry", action="store_true", help="write the params and print each stage's command only")
    parser.add_argument("--report", default=str(ROOT / "benchmarks" / "gpu_smoke.md"))
    parser.add_argument("--body", help=argparse.SUPPRESS)  # a stage's own process
    parser.add_argument("--gpus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gpu-memory", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.body:
        return body(args.body, args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        parser.error(f"--stages: {unknown} are not stages; choose from {', '.join(STAGES)}")
    gpus, memory = detected_gpus()
    smoke_params(out, max(gpus, 1))
    commands = stage_commands(out, max(gpus, 1), memory or 80.0, args.keep_checkpoints)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if args.dry:
        for name in chosen:
            print(f"{name} (limit {TIMEOUTS[name]} s): {' '.join(commands[name])}")
        return 0
    results = []
    with MemorySampler() as sampler:
        for name in chosen:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            result = run_stage(name, commands[name], out / "logs" / f"{name}.log", TIMEOUTS[name], sampler, env)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {result.status} in {result.seconds:.0f} s", flush=True)
            results.append(result)
    if not args.keep_checkpoints:
        shutil.rmtree(out / "runs", ignore_errors=True)
    report(results, out, Path(args.report))
    print("\n" + table(results, _read_json(out / "plan.json")))
    print(f"\nwritten: {args.report}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
