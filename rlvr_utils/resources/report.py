"""`python -m rlvr_utils plan params/X.yaml [--gpus N --gpu-memory GiB --host-memory GiB --disk GiB]`: the plan of
every stage as a table, and exit status 1 with the problems when a stage cannot fit the machine."""
from __future__ import annotations

import sys

from rlvr_utils.resources import architecture, machine as machines, plan

GiB = machines.GiB


def size(n: float) -> str:
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def table(stages: list[plan.Stage], machine) -> str:
    head = ("stage", "on", "procs", "GPU peak/proc", "host peak", "disk kept", "disk peak", "tokens", "FLOPs")
    rows = []
    for s in stages:
        gpu = "-" if s.device != "gpu" else size(s.gpu) + (f" (<= {s.gpu_budget:.0%})" if s.gpu_budget < 1 else "")
        rows.append((s.name, s.device, str(s.processes), gpu, size(s.host), size(s.disk_kept), size(s.disk_peak),
                     count(s.tokens), f"{s.flops:.2e}"))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [line(head), line(tuple("-" * w for w in widths))]
    for s, r in zip(stages, rows):
        out.append(line(r))
        parts = ", ".join(f"{k} {size(v)}" for k, v in s.parts.items() if v)
        if parts:
            out.append(f"    memory: {parts}")
        out += [f"    {note}" for note in s.notes]
    total_disk = sum(s.disk_kept for s in stages)
    peak_disk = max(sum(x.disk_kept for x in stages[:i]) + s.disk_peak for i, s in enumerate(stages))
    out.append(f"disk: {size(total_disk)} at the end, {size(peak_disk)} at the peak; compute: "
               f"{sum(s.flops for s in stages):.2e} FLOPs over {count(sum(s.tokens for s in stages))} tokens")
    return "\n".join(out)


def main(params_file: str, gpus: int | None = None, gpu_memory: float | None = None,
         host_memory: float | None = None, disk: float | None = None) -> int:
    from rlvr_utils.publish.checks import checked

    cfg = checked(params_file, machine=False)  # a plan may be for another machine: vLLM need not be installed here
    try:
        machine = machines.with_overrides(machines.detect(cfg.run_dir), gpus, gpu_memory, host_memory, disk)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        stages = plan.estimate(cfg, machine)
    except architecture.UnknownArchitecture as err:
        print(f"{params_file}: {err}", file=sys.stderr)
        return 2
    arch = architecture.of_run(cfg)
    print(f"Resource plan of run '{cfg.name}' ({params_file})")
    print(f"model: {arch.n_params / 1e9:.3g}B parameters (d={arch.hidden}, {arch.layers} layers, {arch.heads} heads, "
          f"{arch.kv_heads} KV heads, MLP {arch.intermediate}, vocab {arch.vocab}); shape from {arch.source}")
    print(f"machine: {machine.describe()}\n")
    print(table(stages, machine))
    problems = plan.check(cfg, machine)
    if problems:
        print(f"\nDOES NOT FIT ({len(problems)} problem(s)):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print("\nfits: every stage fits this machine (estimates; see rlvr_utils/resources/memory.py for the rules)")
    return 0
