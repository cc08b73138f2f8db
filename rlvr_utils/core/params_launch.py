"""Params of the machines a launched training stage spans (multi-node): a schema section of its own, beside
rlvr_utils.core.params, because where a stage runs is not what it computes (checkpoints' fingerprints leave it out).
"""
from __future__ import annotations

from pydantic import Field, model_validator

from rlvr_utils.core.params_evidence import Section


class LaunchParams(Section):
    """The machines (nodes) that SFT, GRPO and the trained controls run on when they go through `accelerate launch`.
    Every machine starts the same command with its own rank (`python -m rlvr_utils launch --params FILE
    --machine-rank R`); the run folder must be on a filesystem that every machine shares (DeepSpeed writes each
    rank's optimizer shards into the trainer checkpoints, and the main machine writes the models every machine
    reads next)."""

    num_machines: int = Field(1, gt=0, description="machines a launched stage spans; sft.num_processes and "
                              "grpo.num_processes count the processes of all machines together and must be a "
                              "multiple of it (one process per GPU)")
    machine_rank: int = Field(0, ge=0, description="this machine's rank, 0 to num_machines - 1; 0 is the main machine, "
                              "which runs the book and writes the checkpoints. `launch --machine-rank R` overrides it, "
                              "so every machine can read one params file")
    main_process_ip: str | None = Field(None, description="address of machine 0 that every machine can reach; "
                                        "needed with num_machines > 1")
    main_process_port: int | None = Field(None, ge=1, le=65535, description="port on machine 0 where the machines "
                                          "meet; needed with num_machines > 1 (None on one machine: a free port)")

    @model_validator(mode="after")
    def _machines_can_meet(self):
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank={self.machine_rank} must be < num_machines={self.num_machines} "
                             "(ranks count from 0)")
        if self.num_machines > 1 and (self.main_process_ip is None or self.main_process_port is None):
            raise ValueError(f"num_machines={self.num_machines} needs main_process_ip and main_process_port: the "
                             "address and port of machine 0 where every machine meets (got "
                             f"{self.main_process_ip!r} and {self.main_process_port!r})")
        return self
