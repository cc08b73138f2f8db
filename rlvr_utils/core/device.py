"""The run's device: where every analysis loads its models and runs its heavy matrix work.

One answer for the whole run (`device` in the params, 'auto' by default), so that no instrument is left on the
CPU of a GPU machine because it asked torch on its own. 'auto' is the GPU of this process (`cuda:LOCAL_RANK`,
the one `accelerate launch` gives each process) when CUDA is present, else the CPU.

`device` is where a run computes, not what: like `runs_dir` it is in no artifact's fingerprint, so moving a run
to a GPU does not redo the CPU's finished work (the numbers agree up to the kernels' rounding).
"""
from __future__ import annotations

import os
import re

import torch

PARAMS = ()  # reads only `device`, which no fingerprint includes (above)

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"


def resolve(value: str) -> str:
    """A torch device string for a `device` value: 'auto' becomes `cuda:LOCAL_RANK` or 'cpu'."""
    if not re.fullmatch(DEVICE_PATTERN, value):
        raise ValueError(f"device (got {value!r}): expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if value != "auto":
        return value
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def run_device(cfg=None) -> str:
    """The device this run's analyses use (params `device`; 'auto' without params)."""
    return resolve(cfg.device if cfg is not None else "auto")


def problem(value: str) -> str | None:
    """What is wrong with `device` on this machine (a config-time check), or None."""
    if value.startswith("cuda") and not torch.cuda.is_available():
        return (f"device (got {value!r}): no CUDA device on this machine (use 'auto' or 'cpu', or check-params "
                "--other-machine for a file meant for a GPU machine)")
    if value.startswith("cuda:") and int(value[5:]) >= torch.cuda.device_count():
        return f"device (got {value!r}): this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def release_gpu_memory() -> None:
    """Give freed GPU memory back: vLLM's documented cleanup when vLLM is installed (model-parallel groups, the
    process group, garbage, the CUDA cache), else garbage collection and the CUDA cache."""
    import gc

    try:
        from vllm.distributed import cleanup_dist_env_and_memory
    except ImportError:
        cleanup_dist_env_and_memory = None
    gc.collect()
    if cleanup_dist_env_and_memory is not None:
        cleanup_dist_env_and_memory()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def shutdown(llm) -> None:
    """Shut a vLLM `LLM` down (evaluation's engines, or TRL's colocated one after GRPO) and give its GPU memory
    back; None does nothing."""
    if llm is None:
        return
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if hasattr(core, "shutdown"):  # vLLM's V1 engine runs in its own process, which holds the KV cache
        core.shutdown()
    del llm, core
    release_gpu_memory()
