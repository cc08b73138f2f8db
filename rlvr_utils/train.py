"""The three training stages: pretraining of the organism (base), SFT and GRPO through TRL.

Each stage writes a standard Hugging Face folder atomically, resumes from the trainer's last checkpoint
after an interruption, and leaves its log history in metrics/train_<stage>.json for the notebooks.
Multi-process and DeepSpeed runs cannot start inside a notebook kernel: `launch_command` builds the
`accelerate launch` line that runs this same code as `python -m rlvr_utils train`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import artifacts, data, organism, rewards
from .config import Params, resolve

STAGE_SECTIONS = {  # the params an artifact depends on: change one and the stage re-runs
    "base": ("seed", "model", "organism", "data"),
    "sft": ("seed", "model", "organism", "data", "sft"),
    "rlvr": ("seed", "model", "organism", "data", "sft", "grpo"),
}


def fingerprint(cfg: Params, stage: str) -> str:
    return cfg.fingerprint(*STAGE_SECTIONS[stage])


def is_trained(cfg: Params, stage: str) -> bool:
    return artifacts.is_current(cfg.path("models", stage), fingerprint(cfg, stage))


def _common_args(cfg: Params, stage: str) -> dict:
    on_gpu = torch.cuda.is_available()
    return dict(output_dir=str(_trainer_dir(cfg, stage)), seed=cfg.seed, data_seed=cfg.seed,
                use_cpu=not on_gpu, report_to="none", save_total_limit=None, logging_first_step=True,
                activation_checkpointing=False, dataloader_num_workers=0)


def _trainer_dir(cfg: Params, stage: str) -> Path:
    """Trainer checkpoints of one stage under one set of params: a resumed run never picks up another's."""
    return cfg.path("trainer", f"{stage}-{fingerprint(cfg, stage)}")


def _last_checkpoint(output_dir: str) -> str | None:
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(checkpoints[-1]) if checkpoints else None


def _finish(cfg: Params, stage: str, trainer, tokenizer, seconds: float) -> list[dict]:
    with artifacts.atomic_dir(cfg.path("models", stage)) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    history = trainer.state.log_history
    artifacts.write_json(cfg.path("metrics", f"train_{stage}.json"), {"seconds": seconds, "log_history": history})
    artifacts.stamp(cfg.path("models", stage), fingerprint(cfg, stage), seconds=seconds)
    if stage == "rlvr":
        _keep_intermediate_checkpoints(cfg, tokenizer)
    shutil.rmtree(_trainer_dir(cfg, stage), ignore_errors=True)  # optimizer states: only needed to resume
    return history


# --- base: the organism's pretraining ---------------------------------------------------------------
def pretrain_base(cfg: Params) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    org = cfg.organism
    held_out = [p["question"] for p in data.eval_problems(cfg)]
    corpus = data.pretraining_corpus(cfg.data, org.corpus_documents, cfg.seed, exclude=held_out)
    tokenizer = organism.build_tokenizer(corpus, org.vocab_size)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(organism.model_config(org, tokenizer))
    rows = organism.pack_documents(corpus, tokenizer, org.pretrain_seq_len)
    pad = tokenizer.pad_token_id
    padded = [r + [pad] * (org.pretrain_seq_len - len(r)) for r in rows]
    dataset = Dataset.from_dict({
        "input_ids": padded,
        "attention_mask": [[1] * len(r) + [0] * (org.pretrain_seq_len - len(r)) for r in rows],
        "labels": [r + [-100] * (org.pretrain_seq_len - len(r)) for r in rows],
    })
    args = TrainingArguments(
        max_steps=org.pretrain_steps, per_device_train_batch_size=org.pretrain_batch_size,
        learning_rate=org.pretrain_lr, warmup_steps=org.warmup_steps, lr_scheduler_type="cosine",
        weight_decay=0.1, logging_steps=max(1, org.pretrain_steps // 50), save_strategy="steps",
        save_steps=max(1, org.pretrain_steps // 4), save_only_model=False, **_common_args(cfg, "base"))
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(args.output_dir))
    return _finish(cfg, "base", trainer, tokenizer, time.time() - start)


def record_given(cfg: Params, stage: str) -> None:
    """A checkpoint named by params (hub id or folder) is not trained: record which one it is."""
    artifacts.write_json(cfg.path("metrics", f"train_{stage}.json"), {"seconds": 0.0, "log_history": [],
                                                                      "model": cfg.model_ref(stage)})


# --- SFT --------------------------------------------------------------------------------------------
def sft_args(cfg: Params) -> dict:
    """Keyword arguments of TRL's SFTConfig, from params."""
    s = cfg.sft
    return dict(
        max_steps=s.steps, per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
        gradient_accumulation_steps=s.gradient_accumulation_steps, warmup_steps=int(s.warmup_ratio * s.steps),
        lr_scheduler_type="cosine", max_length=s.max_length, completion_only_loss=True, bf16=s.bf16,
        deepspeed=str(resolve(s.deepspeed)) if s.deepspeed else None, logging_steps=s.logging_steps,
        save_strategy="steps", save_steps=max(1, s.steps // 2), **_common_args(cfg, "sft"))


def sft_config(cfg: Params):
    from trl import SFTConfig

    return SFTConfig(**sft_args(cfg))


def train_sft(cfg: Params) -> list[dict]:
    from datasets import Dataset
    from trl import SFTTrainer

    from .models import load

    problems = data.sft_problems(cfg, held_out=data.eval_problems(cfg))
    dataset = Dataset.from_list([{"prompt": p["prompt"], "completion": p["answer"]} for p in problems])
    model, tokenizer = load(cfg.model_ref("base"), cfg)
    model.train()
    trainer = SFTTrainer(model=model, args=sft_config(cfg), train_dataset=dataset, processing_class=tokenizer)
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(trainer.args.output_dir))
    return _finish(cfg, "sft", trainer, tokenizer, time.time() - start)


# --- GRPO -------------------------------------------------------------------------------------------
def grpo_args(cfg: Params) -> dict:
    """Keyword arguments of TRL's GRPOConfig, from params: every GRPO knob the study names."""
    g = cfg.grpo
    return dict(
        max_steps=g.steps, learning_rate=g.learning_rate, warmup_steps=int(g.warmup_ratio * g.steps),
        per_device_train_batch_size=g.per_device_train_batch_size,
        num_generations=g.num_generations, gradient_accumulation_steps=g.gradient_accumulation_steps,
        max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
        loss_type=g.loss_type, scale_rewards=g.scale_rewards, reward_weights=rewards.reward_weights(cfg),
        use_vllm=g.use_vllm, vllm_mode=g.vllm_mode, bf16=g.bf16,
        deepspeed=str(resolve(g.deepspeed)) if g.deepspeed else None, logging_steps=g.logging_steps,
        save_strategy="steps", save_steps=g.save_steps, **_common_args(cfg, "rlvr"))


def grpo_config(cfg: Params):
    from trl import GRPOConfig

    return GRPOConfig(**grpo_args(cfg))


def train_grpo(cfg: Params) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    problems = data.grpo_problems(cfg, held_out=data.eval_problems(cfg))
    dataset = Dataset.from_list([{"prompt": p["prompt"], "final": p["final"]} for p in problems])
    sft_ref = cfg.model_ref("sft")
    tokenizer = AutoTokenizer.from_pretrained(sft_ref, trust_remote_code=cfg.model.trust_remote_code)
    trainer = GRPOTrainer(model=sft_ref, reward_funcs=rewards.REWARD_FUNCS, args=grpo_config(cfg),
                          train_dataset=dataset, processing_class=tokenizer)
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(trainer.args.output_dir))
    return _finish(cfg, "rlvr", trainer, tokenizer, time.time() - start)


def _keep_intermediate_checkpoints(cfg: Params, tokenizer) -> None:
    """Model weights of GRPO's periodic checkpoints (no optimizer state) for training-dynamics plots."""
    shutil.rmtree(cfg.path("models", "rlvr_checkpoints"), ignore_errors=True)
    for ckpt in _trainer_dir(cfg, "rlvr").glob("checkpoint-*"):
        step = int(ckpt.name.split("-")[1])
        with artifacts.atomic_dir(cfg.path("models", "rlvr_checkpoints", f"step-{step}")) as tmp:
            for f in ckpt.iterdir():
                if f.suffix in (".safetensors", ".json") and not f.name.startswith(("trainer_state", "rng")):
                    shutil.copy2(f, tmp / f.name)
            tokenizer.save_pretrained(str(tmp))


# --- launching ----------------------------------------------------------------------------------------
TRAINERS = {"base": pretrain_base, "sft": train_sft, "rlvr": train_grpo}


def needs_launcher(cfg: Params, stage: str) -> bool:
    section = {"sft": cfg.sft, "rlvr": cfg.grpo}.get(stage)
    return section is not None and (section.num_processes > 1 or section.deepspeed is not None)


def launch_command(cfg: Params, stage: str, params_file: str) -> list[str]:
    """`accelerate launch` line that runs one stage in its own processes (DeepSpeed, several GPUs)."""
    section = {"sft": cfg.sft, "rlvr": cfg.grpo}[stage]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(section.num_processes)]
    if section.deepspeed:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(resolve(section.deepspeed))]
    if section.bf16:
        cmd += ["--mixed_precision", "bf16"]
    return cmd + ["-m", "rlvr_utils", "train", "--stage", stage, "--params", str(params_file)]


def run_stage(cfg: Params, stage: str, force: bool = False) -> str:
    """Train one stage unless its checkpoint is up to date; returns what was done, for the notebook."""
    given = {"base": cfg.model.base != "organism", "sft": cfg.model.sft is not None,
             "rlvr": cfg.model.rlvr is not None}[stage]
    if given:
        record_given(cfg, stage)
        return f"{stage} checkpoint given by params ({cfg.model_ref(stage)}): nothing to train"
    if is_trained(cfg, stage) and not force:
        return f"{stage} checkpoint is up to date ({cfg.path('models', stage)}): skipped"
    start = time.time()
    if needs_launcher(cfg, stage):
        cmd = launch_command(cfg, stage, cfg.source)
        print("launching:", " ".join(cmd), flush=True)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:  # stream the launcher's log into the notebook
                print(line, end="", flush=True)
        if proc.returncode:
            raise RuntimeError(f"{stage} training failed under accelerate launch (exit {proc.returncode})")
    else:
        TRAINERS[stage](cfg)
    return f"trained {stage} in {time.time() - start:.0f} s -> {cfg.path('models', stage)}"
