"""Training the trained treatments (controls, placebos) with RLVR's recipe, each in a process of its own, as many
at once as the machine has cores: the organism's steps are too small to use two cores in one process, so two
single-threaded runs take the time of one. Each process is `python -m rlvr_utils train --stage NAME`."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from rlvr_utils.core import artifacts, lock
from rlvr_utils.treatments import registry


def train_in_processes(cfg, names: list[str], force: bool = False, parallel: int | None = None) -> list[str]:
    """Train the named treatments that are not up to date; returns what was done, for the notebook."""
    from rlvr_utils.training import train

    todo = [n for n in names if force or not train.is_trained(cfg, n)]
    messages = [f"{n}: checkpoint is up to date ({cfg.path('models', n)}): skipped" for n in names if n not in todo]
    if not todo:
        return messages
    for name in todo:
        registry.get(cfg, name)  # a name the registry does not know fails here, before any training
    parallel = max(1, min(parallel or os.cpu_count() or 1, len(todo)))
    start = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if parallel > 1 else {})}
    params_file = artifacts.write_json(cfg.path("trainer", "treatments-params.json"), cfg.model_dump(mode="json"))
    with lock.run_lock(cfg.run_dir):  # the children see that this process holds the run's lock
        env[lock.LOCK_ENV] = os.environ[lock.LOCK_ENV]
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
    return messages + [f"trained {', '.join(todo)} in {time.time() - start:.0f} s ({parallel} at a time)"]
