"""Training the trained treatments (controls, placebos) with RLVR's recipe, and every training stage of a run on
one machine of several (`python -m rlvr_utils launch`).

A trained treatment is launched as RLVR is. When RLVR's stage goes through `accelerate launch` (several processes or
machines, DeepSpeed), each treatment does too, with GRPO's processes, DeepSpeed file and generation batch, one after
the other: they would share the GPUs, and each loads its own colocated vLLM. When RLVR trains in one process
without DeepSpeed (the organism on a CPU), each treatment is a process of its own (`python -m rlvr_utils train
--stage NAME`), one at a time on a GPU machine, else as many at once as the machine has cores, one thread each. On
the organism that is about as fast as one after the other with every thread, not faster: on 2 cores RLVR alone with
two threads trained in 120 s, and five treatments two at a time took 168-222 s each, 591 s in all.
Either way each treatment runs RLVR's recipe, and its metrics (`recipe`) say so."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from rlvr_utils.core import artifacts, lock
from rlvr_utils.treatments import registry

PARAMS = ("grpo", "launch")
WAIT_SECONDS = 1800  # how long another machine waits to see a checkpoint that machine 0 writes


def train_in_processes(cfg, names: list[str], force: bool = False, parallel: int | None = None) -> list[str]:
    """Train the named treatments that are not up to date; returns what was done, for the notebook."""
    import torch

    from rlvr_utils.training import train

    todo = [n for n in names if force or not train.is_trained(cfg, n)]
    messages = [f"{n}: checkpoint is up to date ({cfg.path('models', n)}): skipped" for n in names if n not in todo]
    if not todo:
        return messages
    for name in todo:
        registry.get(cfg, name)  # a name the registry does not know fails here, before any training
    start = time.time()
    params_file = artifacts.write_json(cfg.path("trainer", "treatments-params.json"), cfg.model_dump(mode="json"))
    launched = train.needs_launcher(cfg, "rlvr")
    parallel = 1 if launched or torch.cuda.is_available() else max(1, min(parallel or os.cpu_count() or 1, len(todo)))
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if parallel > 1 else {})}
    with lock.run_lock(cfg.run_dir):  # the children see that this process holds the run's lock
        env[lock.LOCK_ENV] = os.environ[lock.LOCK_ENV]
        if launched:
            for name in todo:
                train.run_launched(cfg, name, str(params_file), env=env)
            how = f"one after the other through accelerate launch, as RLVR ({cfg.grpo.num_processes} processes)"
        else:
            _plain_processes(todo, params_file, parallel, env)
            how = f"{parallel} at a time, one process each, as RLVR"
    return messages + [f"trained {', '.join(todo)} in {time.time() - start:.0f} s ({how})"]


def _plain_processes(todo: list[str], params_file, parallel: int, env: dict) -> None:
    waiting, running = list(todo), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            running[name] = subprocess.Popen(
                [sys.executable, "-m", "rlvr_utils", "train", "--stage", name, "--params", str(params_file)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        name = next(iter(running))
        output, _ = running[name].communicate()
        if running.pop(name).returncode:
            for proc in running.values():
                proc.kill()
            raise RuntimeError(f"treatment {name} failed to train:\n{output[-3000:]}")


def machine_rank(cfg, given: int | None, key: str = "machine_rank") -> int:
    """This machine's rank: `given` (the command line's) or launch.machine_rank, checked against launch.num_machines."""
    rank = cfg.launch.machine_rank if given is None else given
    if not 0 <= rank < cfg.launch.num_machines:
        raise ValueError(f"{key} (got {rank}): expected 0 to {cfg.launch.num_machines - 1} "
                         f"(launch.num_machines={cfg.launch.num_machines})")
    return rank


def train_on_this_machine(cfg, params_file: str, rank: int | None = None) -> list[str]:
    """Every training stage of the run in the book's order (base, SFT, RLVR, the controls and placebos) on this
    machine: what each machine of a multi-node run starts, with its own rank. Stages up to date are skipped; the run
    folder is shared, so every machine skips the same ones. Each launched stage starts when every machine has
    joined it. Machine 0 trains as the book would (it may run the book instead, which launches the same stages);
    another machine joins each launched stage, then waits until it sees the checkpoint machine 0 wrote before it
    joins the next, which also proves that the run folder is shared."""
    from rlvr_utils.training import train

    rank = machine_rank(cfg, rank)
    cfg = cfg.model_copy(update={"launch": cfg.launch.model_copy(update={"machine_rank": rank})})  # not fingerprinted
    stages, treatments = ["base", "sft", "rlvr"], registry.trained(cfg)
    if rank == 0:
        with lock.run_lock(cfg.run_dir):
            return [train.run_stage(cfg, s) for s in stages] + train_in_processes(cfg, treatments)
    done = []
    for stage in stages + treatments:
        if train.is_given(cfg, stage) or train.is_trained(cfg, stage):
            done.append(f"{stage}: given or up to date: skipped")
            continue
        if train.needs_launcher(cfg, stage):
            train.run_launched(cfg, stage, params_file, rank)
        _wait_for(cfg, stage, rank)
        done.append(f"{stage}: trained with machine 0")
    return done


def _wait_for(cfg, stage: str, rank: int) -> None:
    from rlvr_utils.training import train

    deadline = time.time() + WAIT_SECONDS
    while not train.is_trained(cfg, stage):
        if time.time() > deadline:
            raise RuntimeError(f"machine {rank}: the {stage} checkpoint that machine 0 writes ({cfg.path('models', stage)}) "
                               f"is not here after {WAIT_SECONDS} s. The run folder ({cfg.run_dir}) must be on a "
                               "filesystem that every machine shares, and machine 0 must run the same stages "
                               "(`python -m rlvr_utils launch --machine-rank 0`, or the book)")
        time.sleep(2)
