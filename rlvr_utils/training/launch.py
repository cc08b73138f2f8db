"""Launching a stage in processes of its own: `accelerate launch` for several processes, several machines or
DeepSpeed, which cannot start inside a notebook kernel. The launched program is this package's own command line
(`python -m rlvr_utils train|extract ...`), so the same code runs in one process or many. A trained control or
placebo runs RLVR's recipe, so it is launched exactly as RLVR is (GRPO's section)."""
from __future__ import annotations

import os
import sys

from rlvr_utils.core.config import resolve
from rlvr_utils.core.params_launch import LaunchParams

PARAMS = ("sft", "grpo", "launch")  # params sections read here (rlvr_utils.core.deps)


def stage_section(cfg, stage: str):
    """The params section whose recipe a stage trains with: none for the organism's pretraining, SFT's for SFT,
    GRPO's for RLVR and for every trained treatment (controls and placebos run RLVR's recipe)."""
    return None if stage == "base" else cfg.sft if stage == "sft" else cfg.grpo


def needs_launcher(cfg, stage: str) -> bool:
    section = stage_section(cfg, stage)
    return section is not None and (section.num_processes > 1 or section.deepspeed is not None
                                    or cfg.launch.num_machines > 1)


def launch_command(cfg, stage: str, params_file: str, machine_rank: int | None = None) -> list[str]:
    """`accelerate launch` line that runs one stage in its own processes (DeepSpeed, several GPUs or machines);
    `machine_rank` overrides launch.machine_rank (each machine starts the same line with its own)."""
    section = stage_section(cfg, stage)
    if section is None:
        raise ValueError(f"stage {stage!r} trains in one process (the organism's pretraining): nothing to launch")
    return accelerate_command(section.num_processes, section.deepspeed, section.bf16, cfg.launch, machine_rank) + [
        "-m", "rlvr_utils", "train", "--stage", stage, "--params", str(params_file)]


def accelerate_command(num_processes: int, deepspeed: str | None = None, bf16: bool = False,
                       machines: LaunchParams | None = None, machine_rank: int | None = None) -> list[str]:
    """`accelerate launch` and its flags, without the program. Every flag is given so that no accelerate
    config file of the machine changes the run. Without a GPU, `--multi_gpu` only makes accelerate spawn
    the processes through torchrun: each joins a gloo group on the CPU (accelerate's MULTI_CPU).
    `num_processes` counts the processes of every machine (`machines`: launch params; default one machine)."""
    import socket

    machines = machines or LaunchParams()
    rank = machines.machine_rank if machine_rank is None else machine_rank
    if not 0 <= rank < machines.num_machines:
        raise ValueError(f"machine rank (got {rank}): expected 0 to {machines.num_machines - 1} "
                         f"(launch.num_machines={machines.num_machines})")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", str(machines.num_machines), "--dynamo_backend", "no",
           "--mixed_precision", "bf16" if bf16 else "no"]
    if deepspeed:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(resolve(deepspeed))]
        if machines.num_machines > 1:  # torchrun on every machine, started by hand: DeepSpeed's default is pdsh,
            cmd += ["--deepspeed_multinode_launcher", "standard"]  # which logs into the others over ssh itself
    elif num_processes > 1 or machines.num_machines > 1:
        cmd += ["--multi_gpu"]
    if machines.num_machines > 1:
        cmd += ["--machine_rank", str(rank), "--main_process_ip", str(machines.main_process_ip),
                "--main_process_port", str(machines.main_process_port)]
    elif num_processes > 1:
        port = machines.main_process_port
        if port is None:
            with socket.socket() as sock:  # a free port: two launches on one machine must not collide
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        cmd += ["--main_process_port", str(port)]
    return cmd


def launched_here() -> bool:
    """Whether this process was started by `accelerate launch` (every launcher of accelerate sets this variable)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ
