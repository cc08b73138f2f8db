"""What a machine has: GPUs and their memory, host memory, free disk where the run writes."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

GiB = 2 ** 30


@dataclass(frozen=True)
class Machine:
    gpus: int  # 0: CPU only (GPU memory is not checked; training and inference run in host memory)
    gpu_memory: float  # bytes per GPU (0 without GPUs)
    host_memory: float  # bytes
    disk: float  # bytes the run may write
    source: str = "given"

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU x {self.gpu_memory / GiB:.0f} GiB" if self.gpus else "no GPU (CPU only)"
        return (f"{gpus}, host memory {self.host_memory / GiB:.1f} GiB, disk {self.disk / GiB:.1f} GiB "
                f"({self.source})")


def host_memory() -> float:
    """Physical memory (not what is free now: other jobs come and go; a run needs the total to be enough)."""
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _existing(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist), as du counts them without links twice."""
    total, seen = 0, set()
    if not Path(path).exists():
        return 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def disk_for(run_dir: Path) -> float:
    """Free disk where the run writes, plus what its folder already holds: a re-run rewrites its own files in
    place, so they count as room (the plan's estimate is of everything the run writes)."""
    return float(shutil.disk_usage(_existing(run_dir)).free + folder_bytes(run_dir))


def gpus() -> tuple[int, float]:
    """(number of CUDA GPUs, memory of the smallest) as torch sees them; (0, 0) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0, 0.0
    n = torch.cuda.device_count()
    return n, float(min(torch.cuda.get_device_properties(i).total_memory for i in range(n)))


def detect(run_dir: Path) -> Machine:
    n, memory = gpus()
    return Machine(gpus=n, gpu_memory=memory, host_memory=host_memory(), disk=disk_for(run_dir),
                   source="detected on this machine")


def with_overrides(machine: Machine, gpus: int | None = None, gpu_memory_gib: float | None = None,
                   host_memory_gib: float | None = None, disk_gib: float | None = None) -> Machine:
    """The detected machine with what the user said instead (the machine the run is meant for)."""
    changes = {}
    if gpus is None and gpu_memory_gib is not None and not machine.gpus:
        gpus = 1  # a GPU size on a machine without GPUs: plan for one such GPU
    if gpus is not None:
        changes["gpus"] = gpus
        if gpus and gpu_memory_gib is None and not machine.gpu_memory:
            raise ValueError("--gpus without --gpu-memory on a machine with no GPU: say how much memory each GPU has "
                             "(e.g. --gpu-memory 80 for an H100, 141 for an H200)")
        if not gpus:
            changes["gpu_memory"] = 0.0
    if gpu_memory_gib is not None:
        changes["gpu_memory"] = gpu_memory_gib * GiB
    if host_memory_gib is not None:
        changes["host_memory"] = host_memory_gib * GiB
    if disk_gib is not None:
        changes["disk"] = disk_gib * GiB
    if changes:
        changes["source"] = "given: " + ", ".join(sorted(changes)) + "; the rest detected"
    return replace(machine, **changes)
