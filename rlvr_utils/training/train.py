"""The three training stages: pretraining of the organism (base), SFT and GRPO through TRL.

Each stage writes a standard Hugging Face folder atomically, resumes from the trainer's last checkpoint
after an interruption, and leaves its log history in metrics/train_<stage>.json for the notebooks.
Multi-process and DeepSpeed runs cannot start inside a notebook kernel: `launch_command` builds the
`accelerate launch` line that runs this same code as `python -m rlvr_utils train`.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import torch

from rlvr_utils.core import artifacts
from rlvr_utils.training import data, organism, rewards
from rlvr_utils.core.config import Params, resolve
from rlvr_utils.models import chat
from rlvr_utils.training.launch import launch_command, launched_here, needs_launcher

PARAMS = ("organism", "data", "sft", "grpo", "launch")
STAGE_SECTIONS = {  # the params a checkpoint depends on: change one and the stage re-runs
    "base": ("seed", "model", "organism", "data"),
    "sft": ("seed", "model", "organism", "data", "sft"),
    "rlvr": ("seed", "model", "organism", "data", "sft", "grpo"),
}


def fingerprint(cfg: Params, stage: str) -> str:
    """A trained treatment (a control) runs RLVR's recipe: it depends on what RLVR depends on."""
    return cfg.fingerprint(*STAGE_SECTIONS.get(stage, STAGE_SECTIONS["rlvr"]))


def inputs(cfg: Params, stage: str) -> list[str]:
    """Artifacts a stage's checkpoint is computed from: the checkpoint it starts from and local data files
    (their content is checked, so an edited input re-trains the stage and everything after it)."""
    start = {"base": [], "sft": [cfg.model_ref("base")]}.get(stage, [cfg.model_ref("sft")])
    path = cfg.data.sft_path if stage == "sft" else cfg.data.grpo_path if stage != "base" else None
    files = [str(resolve(path))] if path and resolve(path).is_file() else []
    return start + files


def is_trained(cfg: Params, stage: str) -> bool:
    return artifacts.is_current(cfg.path("models", stage), fingerprint(cfg, stage), inputs(cfg, stage))


def log_at_checkpoints():
    """A callback that logs at every step that saves a checkpoint: a resumed run then logs the same steps as an
    uninterrupted one, so its first loss after a resume averages the same steps (a checkpoint between two
    logging steps would otherwise start a shorter window)."""
    from transformers import TrainerCallback

    class LogAtCheckpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:
                control.should_log = True
            return control
    return LogAtCheckpoints()


def _common_args(cfg: Params, stage: str) -> dict:
    on_gpu = torch.cuda.is_available()
    # memory settings of the stage's section; pretraining (the organism's) has none; controls run GRPO's recipe
    section = None if stage == "base" else cfg.sft if stage == "sft" else cfg.grpo
    return dict(output_dir=str(_trainer_dir(cfg, stage)), seed=cfg.seed, data_seed=cfg.seed,
                use_cpu=not on_gpu, report_to="none", logging_first_step=True, dataloader_num_workers=0,
                save_total_limit=section.save_total_limit if section else None,
                activation_checkpointing=section.gradient_checkpointing if section else False)


def _trainer_dir(cfg: Params, stage: str) -> Path:
    """Trainer checkpoints of one stage under one set of params: a resumed run never picks up another's."""
    return cfg.path("trainer", f"{stage}-{fingerprint(cfg, stage)}")


SESSION = "session.json"  # in a stage's trainer folder: when this session began, what the run had done before


def _last_checkpoint(output_dir: str) -> str | None:
    """The checkpoint to resume from (None: start afresh). Called as a session starts, it also notes in
    output_dir/session.json the step and the seconds the run had reached at that checkpoint, so that
    `_finish` reports time over the whole run rather than the resumed part."""
    checkpoints = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last = str(checkpoints[-1]) if checkpoints else None
    session_file = Path(output_dir) / SESSION
    before = {"step": 0, "seconds": 0.0}
    if last is not None:
        state_file = Path(last) / "trainer_state.json"
        step = json.loads(state_file.read_text())["global_step"]
        previous = json.loads(session_file.read_text()) if session_file.exists() else None
        seconds = 0.0
        if previous is not None:  # the session that wrote `last` (one at a time: the run's lock)
            seconds = previous["before"]["seconds"]
            if previous["before"]["step"] != step:
                seconds += max(0.0, state_file.stat().st_mtime - previous["started"])
        before = {"step": step, "seconds": seconds}
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch, one process keeps the record
        artifacts.write_json(session_file, {"started": time.time(), "before": before})
    return last


def whole_run_history(history: list[dict], resume_step: int) -> list[dict]:
    """Log history of a run resumed at `resume_step`, with counters over the whole run: token counts that
    restarted at the resume (TRL's SFT num_tokens and eval_num_tokens) continue from the checkpoint's, and the closing
    train_loss averages every step, not only the resumed ones (each logged loss is the mean over the
    steps since the previous log; steps between the last log and the checkpoint take that log's mean)."""
    if resume_step <= 0:
        return history
    history = [dict(e) for e in history]
    before = [e for e in history if e.get("step", 0) <= resume_step]
    after = [e for e in history if e.get("step", 0) > resume_step]
    counters = {k for e in history for k in e if k.endswith("num_tokens")}  # num_tokens, eval_num_tokens
    for key in counters:
        tokens = [e[key] for e in before if key in e]
        later = [e for e in after if key in e]
        if tokens and later and later[0][key] < tokens[-1]:
            for e in later:
                e[key] += tokens[-1]
    loss_sum, last_step, last_loss = 0.0, 0, None
    for e in before:
        if "loss" in e:
            loss_sum += e["loss"] * (e["step"] - last_step)
            last_step, last_loss = e["step"], e["loss"]
    if last_loss is not None:
        loss_sum += last_loss * (resume_step - last_step)
    for e in after:
        if "train_loss" in e:
            final_step = e["step"]
            e["session_train_loss"] = e["train_loss"]
            e["train_loss"] = (loss_sum + e["train_loss"] * (final_step - resume_step)) / max(final_step, 1)
    return history


def recipe(trainer) -> dict:
    """How a stage was run, as its metrics record it: a control or placebo must show RLVR's (same launcher,
    processes, machines, DeepSpeed config, precision and batches, GRPO's generation batch included)."""
    args, n = trainer.args, trainer.accelerator.num_processes
    out = {"launcher": "accelerate launch" if launched_here() else "one process", "num_processes": n,
           "num_machines": n // int(os.environ.get("LOCAL_WORLD_SIZE", n)),
           "distributed_type": trainer.accelerator.distributed_type.value,
           "deepspeed": Path(args.deepspeed).name if args.deepspeed else None, "bf16": bool(args.bf16),
           "per_device_train_batch_size": args.per_device_train_batch_size,
           "gradient_accumulation_steps": args.gradient_accumulation_steps,
           "train_batch_size": args.per_device_train_batch_size * n * args.gradient_accumulation_steps}
    if getattr(args, "generation_batch_size", None) is not None:  # GRPO: completions generated per step, all ranks
        out["generation_batch_size"] = args.generation_batch_size
    return out


def _processes(trainer) -> list[dict]:
    """Every process of the stage (a collective: each one reports itself), so the metrics show that each rank of
    each machine took part. torchrun's GROUP_RANK is the machine's rank."""
    from accelerate.utils import gather_object

    me = {"rank": trainer.accelerator.process_index, "machine_rank": int(os.environ.get("GROUP_RANK", 0)),
          "host": socket.gethostname()}
    return sorted(gather_object([me]), key=lambda p: p["rank"]) if trainer.accelerator.num_processes > 1 else [me]


def _finish(cfg: Params, stage: str, trainer, tokenizer, seconds: float) -> list[dict]:
    processes = _processes(trainer)
    if not trainer.is_world_process_zero():  # other processes of a launch: only join DeepSpeed's gather
        trainer.save_model(str(_trainer_dir(cfg, stage)))  # writes nothing off the main process
        return trainer.state.log_history
    with artifacts.atomic_dir(cfg.path("models", stage)) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    session_file = _trainer_dir(cfg, stage) / SESSION
    before = (json.loads(session_file.read_text())["before"] if session_file.exists()
              else {"step": 0, "seconds": 0.0})
    history = whole_run_history(trainer.state.log_history, before["step"])
    session_seconds, seconds = seconds, before["seconds"] + seconds
    for e in history:
        if "train_runtime" in e:
            e["session_train_runtime"], e["train_runtime"] = e["train_runtime"], seconds
    metrics = cfg.path("metrics", f"train_{stage}.json")
    artifacts.write_json(metrics, {"seconds": seconds, "session_seconds": session_seconds,
                                   "resumed_from_step": before["step"],
                                   "num_processes": trainer.accelerator.num_processes, "recipe": recipe(trainer),
                                   "processes": processes, "log_history": history})
    artifacts.stamp(cfg.path("models", stage), fingerprint(cfg, stage), inputs(cfg, stage), seconds=seconds)
    if stage == "rlvr":
        _keep_intermediate_checkpoints(cfg, tokenizer)
    shutil.rmtree(_trainer_dir(cfg, stage), ignore_errors=True)  # optimizer states: only needed to resume
    return history


# --- base: the organism's pretraining ---------------------------------------------------------------
def pretrain_base(cfg: Params) -> list[dict]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    org = cfg.organism
    held_out = data.held_out_questions(cfg)
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
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[log_at_checkpoints()])
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(args.output_dir))
    return _finish(cfg, "base", trainer, tokenizer, time.time() - start)


def record_given(cfg: Params, stage: str) -> None:
    """A checkpoint named by params (hub id or folder) is not trained: record which one it is."""
    artifacts.write_json(cfg.path("metrics", f"train_{stage}.json"), {"seconds": 0.0, "log_history": [],
                                                                      "model": cfg.model_ref(stage)})


# --- SFT --------------------------------------------------------------------------------------------
def sft_args(cfg: Params) -> dict:
    """Keyword arguments of TRL's SFTConfig, from params. With a stopping rule, the held-out loss (or token
    accuracy) of SFT's own distribution is measured every `eval_steps`, and the best checkpoint is kept."""
    s = cfg.sft
    stopping = {}
    if s.stop_metric is not None:
        stopping = dict(eval_strategy="steps", eval_steps=s.eval_steps, per_device_eval_batch_size=s.batch_size,
                        load_best_model_at_end=True, metric_for_best_model=f"eval_{s.stop_metric}",
                        greater_is_better=s.stop_metric != "loss")
    return dict(
        max_steps=s.steps, per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
        gradient_accumulation_steps=s.gradient_accumulation_steps, warmup_steps=int(s.warmup_ratio * s.steps),
        lr_scheduler_type="cosine", max_length=s.max_length, completion_only_loss=True, bf16=s.bf16,
        deepspeed=str(resolve(s.deepspeed)) if s.deepspeed else None, logging_steps=s.logging_steps,
        save_strategy="steps", save_steps=s.eval_steps if stopping else max(1, s.steps // 2),
        **stopping, **_common_args(cfg, "sft"))


def sft_config(cfg: Params):
    from trl import SFTConfig

    return SFTConfig(**sft_args(cfg))


def train_sft(cfg: Params) -> list[dict]:
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    from rlvr_utils.models.loading import load

    held_out = data.eval_problems(cfg)
    problems = data.sft_problems(cfg, held_out=held_out)

    def pairs(rows):  # prompts as the model is asked them (its chat template with model.chat_template: auto)
        prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in rows])
        return Dataset.from_list([{"prompt": q, "completion": p["answer"]} for q, p in zip(prompts, rows)])

    # The config first: with a ZeRO-3 DeepSpeed file it registers DeepSpeed's config (transformers' HfDeepSpeedConfig,
    # alive as long as `args`), so from_pretrained loads each weight partitioned across the ranks (zero.Init)
    # instead of the whole model on every rank. GRPO's trainer and the controls keep the same order.
    args = sft_config(cfg)
    model, tokenizer = load(cfg.model_ref("base"), cfg)
    model.train()
    s, callbacks, eval_dataset = cfg.sft, [log_at_checkpoints()], None
    if s.stop_metric is not None:
        eval_dataset = pairs(data.sft_validation_problems(cfg, held_out))
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=s.patience, early_stopping_threshold=s.min_delta))
    trainer = SFTTrainer(model=model, args=args, train_dataset=pairs(problems), eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=callbacks)
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(trainer.args.output_dir))
    state = trainer.state
    history = _finish(cfg, "sft", trainer, tokenizer, time.time() - start)
    if s.stop_metric is not None and trainer.is_world_process_zero():  # what the stopping rule decided
        best = state.best_model_checkpoint
        record = artifacts.read_json(cfg.path("metrics", "train_sft.json"))
        record["stopping"] = {"metric": f"eval_{s.stop_metric}", "best_value": state.best_metric,
                              "best_step": int(best.rsplit("-", 1)[1]) if best else None,
                              "stopped_at_step": state.global_step, "max_steps": s.steps,
                              "converged": state.global_step < s.steps}
        artifacts.write_json(cfg.path("metrics", "train_sft.json"), record)
    return history


# --- GRPO -------------------------------------------------------------------------------------------
def grpo_args(cfg: Params, stage: str = "rlvr") -> dict:
    """Keyword arguments of TRL's GRPOConfig, from params: every GRPO knob the study names (`stage`: RLVR or
    a control, which differ only in where they keep their checkpoints)."""
    g = cfg.grpo
    return dict(
        max_steps=g.steps, learning_rate=g.learning_rate, warmup_steps=int(g.warmup_ratio * g.steps),
        per_device_train_batch_size=g.per_device_train_batch_size,
        num_generations=g.num_generations, gradient_accumulation_steps=g.gradient_accumulation_steps,
        max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
        loss_type=g.loss_type, scale_rewards=g.scale_rewards, reward_weights=rewards.reward_weights(cfg),
        use_vllm=g.use_vllm, vllm_mode=g.vllm_mode, bf16=g.bf16, trust_remote_code=cfg.model.trust_remote_code,
        deepspeed=str(resolve(g.deepspeed)) if g.deepspeed else None, logging_steps=g.logging_steps,
        save_strategy="steps", save_steps=g.save_steps, **_common_args(cfg, stage))


def grpo_config(cfg: Params, stage: str = "rlvr"):
    from trl import GRPOConfig

    return GRPOConfig(**grpo_args(cfg, stage))


def train_grpo(cfg: Params) -> list[dict]:
    return grpo(cfg, "rlvr", cfg.model_ref("sft"))


def grpo(cfg: Params, stage: str, model, reward_funcs=None, args=None) -> list[dict]:
    """GRPO from the SFT model (`model`: its reference, or the model itself with some weights frozen), paid by
    the study's verifiable rewards unless `reward_funcs` replaces them (a placebo's). `args`: the stage's
    GRPOConfig when the caller made it before loading `model` (ZeRO-3, see train_sft)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    problems = data.grpo_problems(cfg, held_out=data.eval_problems(cfg))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_ref("sft"), trust_remote_code=cfg.model.trust_remote_code)
    prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in problems])  # as evaluation asks them
    dataset = Dataset.from_list([{"prompt": q, "final": p["final"]} for q, p in zip(prompts, problems)])
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs or rewards.REWARD_FUNCS,
                          args=args if args is not None else grpo_config(cfg, stage),
                          callbacks=[log_at_checkpoints()],
                          train_dataset=dataset, processing_class=tokenizer)
    start = time.time()
    trainer.train(resume_from_checkpoint=_last_checkpoint(trainer.args.output_dir))
    history = _finish(cfg, stage, trainer, tokenizer, time.time() - start)
    # TRL's colocated vLLM engine (grpo.vllm_mode: colocate) lives as long as the trainer: in a notebook kernel it
    # would keep its share of the GPU through the evaluations that follow
    if getattr(trainer, "llm", None) is not None:
        from rlvr_utils.core.device import shutdown

        llm, trainer.llm = trainer.llm, None
        shutdown(llm)
    return history


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
TRAINERS = {"base": pretrain_base, "sft": train_sft, "rlvr": train_grpo}  # trained treatments: rlvr_utils.treatments


def is_given(cfg: Params, stage: str) -> bool:
    """Whether params name the stage's checkpoint (a hub id or folder), so that it is not trained."""
    return {"base": cfg.model.base != "organism", "sft": cfg.model.sft is not None,
            "rlvr": cfg.model.rlvr is not None}.get(stage, False)


def run_stage(cfg: Params, stage: str, force: bool = False) -> str:
    """Train one stage unless its checkpoint is up to date; returns what was done, for the notebook."""
    if is_given(cfg, stage):
        record_given(cfg, stage)
        return f"{stage} checkpoint given by params ({cfg.model_ref(stage)}): nothing to train"
    if is_trained(cfg, stage) and not force:
        return f"{stage} checkpoint is up to date ({cfg.path('models', stage)}): skipped"
    if cfg.launch.machine_rank != 0:
        raise ValueError(f"launch.machine_rank (got {cfg.launch.machine_rank}): the book and its stages run on machine 0; "
                         f"on this machine run `python -m rlvr_utils launch --params {cfg.source} --machine-rank "
                         f"{cfg.launch.machine_rank}`")
    start = time.time()
    if needs_launcher(cfg, stage):
        run_launched(cfg, stage, cfg.source)
    else:
        TRAINERS[stage](cfg)
    return f"trained {stage} in {time.time() - start:.0f} s -> {cfg.path('models', stage)}"


def run_launched(cfg: Params, stage: str, params_file: str, machine_rank: int | None = None, env=None) -> None:
    """One stage under `accelerate launch` on this machine, its log streamed here (into the notebook). The main
    machine's (rank 0) launch waits until every other machine has started the same stage."""
    machines, rank = cfg.launch, cfg.launch.machine_rank if machine_rank is None else machine_rank
    cmd = launch_command(cfg, stage, params_file, rank)
    print("launching:", " ".join(cmd), flush=True)
    if machines.num_machines > 1:
        print(f"machine {rank} of {machines.num_machines}: the stage starts when every machine has joined at "
              f"{machines.main_process_ip}:{machines.main_process_port}; on each other machine run "
              f"`python -m rlvr_utils launch --params {params_file} --machine-rank R` (run folder on a shared "
              "filesystem)", flush=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:  # stream the launcher's log
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"{stage} training failed under accelerate launch (exit {proc.returncode})")
