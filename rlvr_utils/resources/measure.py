"""Measure what the plan estimates on a few real steps: host peak memory and checkpoint size of a run's SFT stage.

    OMP_NUM_THREADS=1 python -m rlvr_utils.resources.measure params/default.yaml --steps 4 --out /tmp/measure

prints one JSON line (the last): the process's peak resident memory (ru_maxrss), the bytes of each trainer checkpoint written, and
the plan's estimates of both for this machine. Run it in a fresh process: ru_maxrss is the whole process's peak.
The organism's base is built untrained from its params (its shape and tokenizer are what memory depends on);
another run's base checkpoint must exist. One process: a launched stage's processes each hold as much.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from rlvr_utils.core.params import ORGANISM

PARAMS = ("model", "organism", "data", "sft")


def sft_steps(cfg, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from rlvr_utils.models.loading import load
    from rlvr_utils.resources.machine import folder_bytes
    from rlvr_utils.training import data, organism, train

    cfg = cfg.model_copy(deep=True)
    cfg.runs_dir = str(out)
    cfg.sft.steps = steps
    cfg.sft.eval_steps = max(1, steps // 2)  # two checkpoints: their size is measured
    torch.manual_seed(cfg.seed)
    held_out = data.eval_problems(cfg)
    if cfg.model.base == ORGANISM:
        corpus = data.pretraining_corpus(cfg.data, 2000, cfg.seed)
        tokenizer = organism.build_tokenizer(corpus, cfg.organism.vocab_size)
        model = AutoModelForCausalLM.from_config(organism.model_config(cfg.organism, tokenizer))
    else:
        model, tokenizer = load(cfg.model_ref("base"), cfg)
    model.train()

    def pairs(rows):
        return Dataset.from_list([{"prompt": p["prompt"], "completion": p["answer"]} for p in rows])

    eval_dataset = pairs(data.sft_validation_problems(cfg, held_out)) if cfg.sft.stop_metric else None
    trainer = SFTTrainer(model=model, args=train.sft_config(cfg), train_dataset=pairs(data.sft_problems(cfg, held_out)),
                         eval_dataset=eval_dataset, processing_class=tokenizer)
    trainer.train()
    checkpoints = sorted(Path(trainer.args.output_dir).glob("checkpoint-*"))
    return {"host_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
            "checkpoint_bytes": [folder_bytes(c) for c in checkpoints],
            "n_params": sum(p.numel() for p in model.parameters())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlvr_utils.resources.measure", description=__doc__)
    parser.add_argument("params", help="params YAML file whose SFT stage is measured, e.g. params/default.yaml")
    parser.add_argument("--steps", type=int, default=4, help="SFT steps to run (default: %(default)s; two checkpoints "
                        "are saved, whose size is measured)")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (the checkpoints go there)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlvr_utils.core.config import load
    from rlvr_utils.resources import architecture, machine, memory, plan

    args = build_parser().parse_args(argv)
    cfg = load(args.params, machine=False)
    measured = sft_steps(cfg, args.steps, args.out)
    here = machine.detect(args.out)
    stage = plan.sft(cfg, here, architecture.of_run(cfg))
    arch = architecture.of_run(cfg)
    ds_stage, _ = memory.zero_stage(cfg.sft.deepspeed)
    mixed = bool(cfg.sft.bf16 and ds_stage is not None)
    estimate = {"host_peak_bytes_per_process": stage.host / stage.processes,
                "checkpoint_bytes": memory.checkpoint_bytes(arch.n_params, arch.n_params, 2 if mixed else
                                                            memory.BYTES[cfg.model.dtype], ds_stage, mixed),
                "n_params": arch.n_params}
    # one line, last: the trainer prints its own logs on stdout before it
    print(json.dumps({"measured": measured, "estimate": estimate, "machine": here.describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
