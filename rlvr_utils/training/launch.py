"""Launching a stage in processes of its own: `accelerate launch` for several processes or DeepSpeed, which
cannot start inside a notebook kernel. The launched program is this package's own command line
(`python -m rlvr_utils train|extract ...`), so the same code runs in one process or many."""
from __future__ import annotations

import sys

from rlvr_utils.core.config import resolve

PARAMS = ("sft", "grpo")  # params sections read here (rlvr_utils.core.deps)


def needs_launcher(cfg, stage: str) -> bool:
    section = {"sft": cfg.sft, "rlvr": cfg.grpo}.get(stage)
    return section is not None and (section.num_processes > 1 or section.deepspeed is not None)


def launch_command(cfg, stage: str, params_file: str) -> list[str]:
    """`accelerate launch` line that runs one stage in its own processes (DeepSpeed, several GPUs)."""
    section = {"sft": cfg.sft, "rlvr": cfg.grpo}[stage]
    return accelerate_command(section.num_processes, section.deepspeed, section.bf16) + [
        "-m", "rlvr_utils", "train", "--stage", stage, "--params", str(params_file)]


def accelerate_command(num_processes: int, deepspeed: str | None = None, bf16: bool = False) -> list[str]:
    """`accelerate launch` and its flags, without the program. Every flag is given so that no accelerate
    config file of the machine changes the run. Without a GPU, `--multi_gpu` only makes accelerate spawn
    the processes through torchrun: each joins a gloo group on the CPU (accelerate's MULTI_CPU)."""
    import socket

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "bf16" if bf16 else "no"]
    if deepspeed:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(resolve(deepspeed))]
    elif num_processes > 1:
        cmd += ["--multi_gpu"]
    if num_processes > 1:
        with socket.socket() as sock:  # a free port: two launches on one machine must not collide
            sock.bind(("127.0.0.1", 0))
            cmd += ["--main_process_port", str(sock.getsockname()[1])]
    return cmd
