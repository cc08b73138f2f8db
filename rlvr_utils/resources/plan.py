"""A run's resource plan: per stage, peak GPU memory, host memory, disk written and compute, from the model's
shape and the params; and the refusal of a run that cannot fit the machine before any work starts.

Stages, in the order a run reaches them: pretraining (the organism's), sft, rlvr (GRPO), every trained treatment
of the registry (controls, placebos), variants (treatments built by weight arithmetic), evaluation, extraction,
analyses. Formulas and their sources are in rlvr_utils.resources.memory; the assumptions about data lengths are
below. Estimates are upper bounds where the data decide (sequences as long as the params allow, completions that
fill their token budget) unless the run's token cache already exists, which gives the extracted token counts.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field

from rlvr_utils.core.params import ORGANISM, ParamsError
from rlvr_utils.resources import architecture, machine as machines, memory as mem
from rlvr_utils.resources.memory import BYTES, GiB
from rlvr_utils.treatments import registry

PARAMS = ("model", "organism", "data", "sft", "grpo", "evaluation", "extract", "cka", "variants")

# Tokens of a prompt (question in the template) and of a worked example (question + solution, in few-shot
# prompts), per data source. Synthetic: the default run's token cache has prompts of at most 48 tokens and gold
# solutions of at most 40. GSM8K: the longest test question has 848 characters, a question + solution 530 on
# average (tests/data/gsm8k), at ~4 characters per BPE token.
PROMPT_TOKENS = {"synthetic": 64, "gsm8k": 256}
SOLVED_TOKENS = {"synthetic": 96, "gsm8k": 192}
VLLM_EVAL_SHARE = 0.9  # vLLM's default gpu_memory_utilization (vllm.EngineArgs), what evaluation's LLM() takes


class ResourceError(ParamsError):
    """The run cannot fit the machine; the message has the numbers and the params to change."""


@dataclass
class Stage:
    name: str
    device: str  # "gpu" or "cpu": where its tensors live
    processes: int = 1
    gpu: float = 0.0  # peak bytes per GPU (device "gpu")
    gpu_budget: float = 1.0  # share of each GPU's memory this stage may use (vLLM colocated takes the rest)
    host: float = 0.0  # peak host bytes, all processes
    disk_kept: float = 0.0  # bytes still there when the stage ends
    disk_peak: float = 0.0  # bytes it holds at its peak (trainer checkpoints before they are removed)
    tokens: float = 0.0
    flops: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # what the memory peak is made of
    change: list[str] = field(default_factory=list)  # params that lower it
    notes: list[str] = field(default_factory=list)
    needs_gpu: str | None = None  # why it cannot run without a GPU


def _gpu_machine(m) -> bool:
    return m.gpus > 0


def _training(m, arch, name: str, section, trainer: str, n_trainable: int, weight_bytes: int,
              micro_tokens: float, logit_tokens: float, steps_tokens: float, flops: float, saves: int,
              kept: int, extra_kept: float, extra_gpu: dict, budget: float = 1.0) -> Stage:
    """One training stage (pretraining, SFT, GRPO or a trained treatment) on `section.num_processes` processes."""
    on_gpu = _gpu_machine(m)
    processes = getattr(section, "num_processes", 1)
    ds_stage, offload = mem.zero_stage(getattr(section, "deepspeed", None))
    bf16 = getattr(section, "bf16", False)
    mixed = bool(bf16 and ds_stage is not None)
    act_bytes = 2 if bf16 or weight_bytes == 2 else 4
    states = mem.model_states(arch.n_params, n_trainable, weight_bytes, mixed, ds_stage, processes)
    ckpt = getattr(section, "gradient_checkpointing", False)
    acts = micro_tokens * mem.activations_per_token(arch, act_bytes, ckpt)
    logits = logit_tokens * mem.logits_per_token(arch, act_bytes, trainer, on_gpu)
    parts = {"weights": states.weights, "gradients": states.gradients,
             "optimizer": 0.0 if offload else states.optimizer, "activations": acts, "logits": logits, **extra_gpu}
    stage = Stage(name, "gpu" if on_gpu else "cpu", processes, tokens=steps_tokens, flops=flops, parts=parts,
                  notes=[states.rule, f"{micro_tokens:,.0f} tokens per micro-batch"
                         + (", activation checkpointing" if ckpt else "")])
    stage.change = {"pretrain": ["organism.pretrain_batch_size", "organism.pretrain_seq_len"],
                    "sft": ["sft.gradient_checkpointing", "sft.batch_size", "sft.max_length", "sft.deepspeed (ZeRO stage)",
                            "sft.num_processes"],
                    "grpo": ["grpo.gradient_checkpointing", "grpo.per_device_train_batch_size",
                             "grpo.max_completion_length", "grpo.deepspeed (ZeRO stage)", "grpo.num_processes"]}[trainer]
    if on_gpu:
        stage.gpu = sum(parts.values()) + mem.CUDA_GPU_OVERHEAD
        stage.gpu_budget = budget
        # each process loads the whole checkpoint in host memory before it moves (DeepSpeed ZeRO-3 included)
        stage.host = processes * (mem.RUNTIME_HOST + mem.CUDA_HOST + arch.n_params * weight_bytes)
        if offload:
            stage.host += states.optimizer * processes
    else:
        stage.host = processes * (mem.RUNTIME_HOST + sum(parts.values()) + states.optimizer * offload)
    ckpt_bytes = mem.checkpoint_bytes(arch.n_params, n_trainable, 2 if mixed else weight_bytes, ds_stage, mixed)
    final = arch.n_params * (2 if mixed else weight_bytes)
    stage.disk_kept = final + extra_kept
    stage.disk_peak = final + extra_kept + kept * ckpt_bytes
    stage.notes.append(f"{saves} trainer checkpoint(s) of {ckpt_bytes / GiB:.2f} GiB, {kept} kept at a time")
    return stage


def _kept(saves: int, limit: int | None, tracks_best: bool) -> int:
    """Checkpoints on disk at once: transformers deletes the oldest beyond save_total_limit but never the best
    one of load_best_model_at_end (with a limit of 1 it keeps 2)."""
    if limit is None:
        return saves
    return min(saves, max(limit, 2 if tracks_best else 1))


def pretraining(cfg, m, arch) -> Stage:
    o = cfg.organism
    tokens = o.pretrain_steps * o.pretrain_batch_size * o.pretrain_seq_len
    saves = o.pretrain_steps // max(1, o.pretrain_steps // 4)  # train.pretrain_base saves 4 times
    return _training(m, arch, "pretraining", o, "pretrain", arch.n_params, 4,
                     o.pretrain_batch_size * o.pretrain_seq_len, o.pretrain_batch_size * o.pretrain_seq_len, tokens,
                     3 * tokens * mem.forward_flops_per_token(arch, o.pretrain_seq_len), saves, saves, 0.0, {})


def sft(cfg, m, arch) -> Stage:
    s = cfg.sft
    micro = s.batch_size * s.max_length  # upper bound: sequences padded to max_length
    tokens = s.steps * micro * s.gradient_accumulation_steps * s.num_processes
    per_token = mem.forward_flops_per_token(arch, s.max_length)
    save_every = s.eval_steps if s.stop_metric else max(1, s.steps // 2)
    evals = (s.steps // s.eval_steps) * s.n_validation * s.max_length if s.stop_metric else 0
    flops = (4 if s.gradient_checkpointing else 3) * tokens * per_token + evals * per_token
    saves = s.steps // save_every
    stage = _training(m, arch, "sft", s, "sft", arch.n_params, BYTES[cfg.model.dtype], micro, micro,
                      tokens + evals, flops, saves, _kept(saves, s.save_total_limit, s.stop_metric is not None),
                      0.0, {})
    stage.change += ["sft.save_total_limit"]
    return stage


def grpo_sizes(cfg) -> dict:
    g = cfg.grpo
    prompt = PROMPT_TOKENS[cfg.data.grpo_source]
    seq = prompt + g.max_completion_length
    per_step = g.per_device_train_batch_size * g.gradient_accumulation_steps * g.num_processes  # completions
    return {"prompt": prompt, "seq": seq, "completions": g.steps * per_step, "per_process": per_step // g.num_processes}


def grpo(cfg, m, arch, name: str = "rlvr", n_trainable: int | None = None, weight_bytes: int = 4) -> Stage:
    """RLVR's recipe (and a trained treatment's: same recipe, other trainable set or reward). TRL loads a
    model given by name in float32 (GRPOConfig.model_init_kwargs' default)."""
    g, z = cfg.grpo, grpo_sizes(cfg)
    on_gpu = _gpu_machine(m)
    micro = g.per_device_train_batch_size * z["seq"]
    tokens = z["completions"] * z["seq"]
    per_token = mem.forward_flops_per_token(arch, z["seq"])
    train_passes = (4 if g.gradient_checkpointing else 3) + (1 if g.beta > 0 else 0)
    flops = tokens * per_token * (1 + train_passes)  # generation's forward passes, then training's
    extra, budget, stage_notes, needs = {}, 1.0, [], None
    if g.beta > 0:
        extra["reference model"] = arch.n_params * weight_bytes
    gen_tokens = z["per_process"] * z["seq"]  # one generation batch per process
    if g.use_vllm:
        needs = "grpo.use_vllm: vLLM needs a CUDA GPU"
        if g.vllm_mode == "colocate":
            from trl import GRPOConfig

            share = GRPOConfig.__dataclass_fields__["vllm_gpu_memory_utilization"].default
            budget = 1 - share
            vllm_need = arch.n_params * 2 + z["seq"] * mem.kv_cache_per_token(arch, 2)
            stage_notes.append(f"vLLM colocated reserves {share:.0%} of each GPU (TRL's vllm_gpu_memory_utilization); "
                               f"it needs >= {vllm_need / GiB:.1f} GiB (bf16 weights + one sequence's KV cache)")
            if on_gpu and vllm_need > share * m.gpu_memory:
                stage_notes.append(f"PROBLEM vLLM's share {share * m.gpu_memory / GiB:.1f} GiB < {vllm_need / GiB:.1f} GiB")
    else:
        act = 2 if g.bf16 else weight_bytes
        extra["generation KV cache"] = gen_tokens * mem.kv_cache_per_token(arch, act)
    saves = g.steps // g.save_steps
    kept = _kept(saves, g.save_total_limit, False)
    final_w = 2 if (g.bf16 and g.deepspeed) else weight_bytes
    dynamics = kept * arch.n_params * final_w if name == registry.STUDY else 0.0  # models/rlvr_checkpoints
    stage = _training(m, arch, name, g, "grpo", arch.n_params if n_trainable is None else n_trainable,
                      weight_bytes, micro, g.per_device_train_batch_size * g.max_completion_length, tokens, flops,
                      saves, kept, dynamics, extra, budget)
    stage.notes += stage_notes
    stage.needs_gpu = needs
    stage.change += ["grpo.save_total_limit", "grpo.save_steps"]
    return stage


def trained_treatments(cfg, m, arch) -> list[Stage]:
    from rlvr_utils.treatments.controls import CONTROLS

    component = {"attn": arch.attn_params, "mlp": arch.mlp_params}
    out = []
    for name in registry.trained(cfg):
        if name in CONTROLS:  # loaded as TRL loads RLVR's model (float32), one component trainable
            out.append(grpo(cfg, m, arch, name, component[CONTROLS[name][0]]))
        else:
            out.append(grpo(cfg, m, arch, name))
    return out


def variants(cfg, m, arch) -> Stage:
    """Treatments built by weight arithmetic (nulls, the identical copy, hybrids): each a checkpoint on disk;
    building one holds the reference, RLVR and the new weights."""
    built = registry.built(cfg)
    w = BYTES[cfg.model.dtype]  # loaded and saved in model.dtype
    return Stage("variants", "cpu", host=mem.RUNTIME_HOST + 3 * arch.n_params * w, disk_kept=len(built) * arch.n_params * w,
                 disk_peak=len(built) * arch.n_params * w, notes=[f"{len(built)} built treatment(s)"],
                 change=["variants.nulls", "variants.identical", "variants.hybrids"])


def _vllm_eval(cfg, m) -> bool:
    backend = cfg.evaluation.backend
    return backend == "vllm" or (backend == "auto" and _gpu_machine(m) and importlib.util.find_spec("vllm") is not None)


def evaluation(cfg, m, arch) -> Stage:
    ev, src = cfg.evaluation, cfg.data.grpo_source
    w = BYTES[cfg.model.dtype]
    prompt = PROMPT_TOKENS[src]
    few_shot_prompt = prompt + ev.few_shot * SOLVED_TOKENS[src]
    seq = few_shot_prompt + ev.max_new_tokens  # the longest: base's few-shot prompts
    others = len([n for n in registry.names(cfg) if n != registry.STUDY])
    # base, SFT and RLVR: greedy and pass@k (the organism's base also greedy few-shot); the other treatments greedy
    greedy = (3 + others + (src == "synthetic" and ev.few_shot > 0)) * ev.n_problems
    tokens = (greedy + 3 * min(ev.pass_problems, ev.n_problems) * ev.n_samples) * (prompt + ev.max_new_tokens)
    flops = tokens * mem.forward_flops_per_token(arch, prompt + ev.max_new_tokens)
    stage = Stage("evaluation", "gpu" if _gpu_machine(m) else "cpu", tokens=tokens, flops=flops,
                  disk_kept=(3 + others) * ev.n_problems * (200 + 4 * ev.max_new_tokens),
                  change=["evaluation.batch_size", "evaluation.max_new_tokens", "evaluation.few_shot"])
    stage.disk_peak = stage.disk_kept
    weights = arch.n_params * w
    if _vllm_eval(cfg, m):
        stage.needs_gpu = "evaluation.backend 'vllm' needs a CUDA GPU" if ev.backend == "vllm" else None
        need = weights + seq * mem.kv_cache_per_token(arch, w) + mem.CUDA_GPU_OVERHEAD
        stage.parts = {"vLLM reservation": VLLM_EVAL_SHARE * m.gpu_memory, "of which weights": weights}
        stage.gpu = max(need, VLLM_EVAL_SHARE * m.gpu_memory)
        stage.notes.append(f"vLLM takes {VLLM_EVAL_SHARE:.0%} of the GPU; it needs {need / GiB:.1f} GiB "
                           "(weights + one sequence's KV cache)")
        stage.host = mem.RUNTIME_HOST + mem.CUDA_HOST + weights
        return stage
    # sequences at once (evaluate.generate): greedy, up to batch_size problems with the longest (few-shot) prompts;
    # pass@k, batch_size // n prompts with their n samples each (a hub base model's prompts are few-shot too)
    greedy = min(ev.batch_size, ev.n_problems)
    sampled = min(max(1, ev.batch_size // ev.n_samples), ev.pass_problems) * ev.n_samples
    sampled_prompt = few_shot_prompt if src != "synthetic" else prompt
    batch, tokens_at_once, prompt_at_once = max(
        (greedy, greedy * seq, greedy * few_shot_prompt),
        (sampled, sampled * (sampled_prompt + ev.max_new_tokens), sampled * sampled_prompt), key=lambda t: t[1])
    stage.parts = {"weights": weights, "KV cache": tokens_at_once * mem.kv_cache_per_token(arch, w),
                   "last-token logits": batch * arch.vocab * 4,
                   "forward workspace": mem.inference_workspace(arch, prompt_at_once, w)}
    stage.notes.append(f"transformers generate, {batch} sequences of <= {tokens_at_once // batch} tokens")
    if _gpu_machine(m):
        stage.gpu = sum(stage.parts.values()) + mem.CUDA_GPU_OVERHEAD
        stage.host = mem.RUNTIME_HOST + mem.CUDA_HOST + weights
    else:
        stage.host = mem.RUNTIME_HOST + sum(stage.parts.values())
    return stage


def extracted_rows(cfg) -> tuple[float, float, str]:
    """(completion tokens, problems) of the token cache, and where they come from: the run's own token cache
    when it exists, else the bound n_problems x evaluation.max_new_tokens."""
    e = cfg.extract
    tokens_file = cfg.path("tokens", "tokens.json")
    if tokens_file.is_file():
        cache = json.loads(tokens_file.read_text())
        completion = sum(len(s) - p for s, p in zip(cache["sequences"], cache["prompt_lengths"]))
        return float(completion), float(len(cache["sequences"])), f"measured: {tokens_file}"
    bound = e.n_problems * cfg.evaluation.max_new_tokens
    return float(bound), float(e.n_problems), "bound: completions fill evaluation.max_new_tokens"


def _selection_rows(positions, completion: float, problems: float) -> float:
    return sum(completion if p == "completion" else problems for p in positions)


def store_bytes_per_model(cfg, arch) -> tuple[float, float, int, int]:
    """(bytes of one model's activation store, rows per site, layers, element size): rows of every position
    selection x sites x layers x d x the stored dtype's size (activations.store writes plain arrays)."""
    e = cfg.extract
    element = {"float32": 4, "float16": 2, "bfloat16": 2}.get(str(e.dtype), 4)
    completion, problems, _ = extracted_rows(cfg)
    layers = len(e.layers) if e.layers else arch.layers
    rows = _selection_rows(e.positions, completion, problems)
    return rows * len(e.sites) * layers * arch.hidden * element, rows, layers, element


def extraction(cfg, m, arch) -> Stage:
    e = cfg.extract
    completion, problems, basis = extracted_rows(cfg)
    per_model, rows, layers, store_bytes = store_bytes_per_model(cfg, arch)
    models = ["base", "sft", *registry.names(cfg)]
    g = cfg.grpo
    dynamics = 0 if cfg.model.rlvr else _kept(g.steps // g.save_steps, g.save_total_limit, False)
    per_dynamics = (_selection_rows([cfg.cka.position], completion, problems) * len(cfg.cka.sites) * layers
                    * arch.hidden * store_bytes)
    w = BYTES[cfg.model.dtype]
    seq_tokens = completion + problems * PROMPT_TOKENS[cfg.data.grpo_source]
    batch_tokens = e.batch_size * (PROMPT_TOKENS[cfg.data.grpo_source] + cfg.evaluation.max_new_tokens)
    shard = e.shard_size / max(problems, 1) * rows * len(e.sites) * layers * arch.hidden * 4
    stage = Stage("extraction", "gpu" if _gpu_machine(m) else "cpu",
                  tokens=seq_tokens * (len(models) + dynamics),
                  flops=seq_tokens * (len(models) + dynamics) * mem.forward_flops_per_token(arch, seq_tokens / problems),
                  disk_kept=len(models) * per_model + dynamics * per_dynamics,
                  notes=[f"{len(models)} models + {dynamics} GRPO checkpoint(s); {rows:,.0f} rows x {len(e.sites)} "
                         f"sites x {layers} layers x d={arch.hidden} x {store_bytes} B = {per_model / GiB:.2f} GiB "
                         f"per model; tokens {basis}"],
                  change=["extract.dtype", "extract.sites", "extract.layers", "extract.positions", "extract.n_problems"])
    stage.disk_peak = stage.disk_kept + per_model  # a model's shards before they are joined
    parts = {"weights": arch.n_params * w, "forward workspace": mem.inference_workspace(arch, batch_tokens, w),
             "logits": batch_tokens * arch.vocab * w}
    stage.parts = {**parts, "one shard's activations (host)": shard}
    if _gpu_machine(m):
        stage.gpu = sum(parts.values()) + mem.CUDA_GPU_OVERHEAD
        stage.host = mem.RUNTIME_HOST + mem.CUDA_HOST + arch.n_params * w + shard
    else:
        stage.host = mem.RUNTIME_HOST + sum(stage.parts.values())
    return stage


def analyses(cfg, m, arch) -> Stage:
    """CKA dominates: it holds two extracted layers in float64 at a time (instruments.cka.maths.cka_matrix reads the
    cross-layer matrix's layers one pair at a time) plus the per-problem d x d statistics of the bootstrap (at most
    instruments.cka.maths.GROUPED_BYTES, 2 GiB), on the run's device. Compute per cell: three n x d^2 products,
    again per permutation; the bootstrap's per-problem products (n d^2) and, when they do not fit the 2 GiB, their
    problem x problem Gram (P^2 d^2) once, then O(n d) per resample (instruments.cka.problems)."""
    e, c = cfg.extract, cfg.cka
    completion, problems, _ = extracted_rows(cfg)
    n = _selection_rows([c.position], completion, problems)
    layers = len(e.layers) if e.layers else arch.layers
    d = arch.hidden
    grouped = problems * 3 * d * d * 8
    pair = 2 * n * d * 8
    cells = (len(registry.names(cfg)) + 3) * len(c.sites) * layers
    per_cell = 6 * n * d * d * (1 + c.n_permutations) + 6 * n * d * d + (
        6 * problems * problems * d * d + c.n_bootstrap * 6 * n * d if grouped > 2 * GiB else 0)
    cross_layer = 2 * n * d * d * (layers * layers + 2 * layers)  # one X'Y per layer pair, self sums per layer
    parts = {"CKA two layers (float64)": pair, "CKA grouped statistics": min(grouped, 2 * GiB)}
    stage = Stage("analyses", "gpu" if _gpu_machine(m) else "cpu", tokens=0,
                  flops=cells * per_cell + 3 * len(c.sites) * cross_layer, parts=parts,
                  notes=[f"CKA on {n:,.0f} rows x d={d}, {cells} cells, on the run's device"],
                  change=["extract.n_problems", "extract.layers", "cka.n_bootstrap", "cka.position"])
    if _gpu_machine(m):
        stage.gpu = sum(parts.values()) + mem.CUDA_GPU_OVERHEAD
        stage.host = mem.RUNTIME_HOST + mem.CUDA_HOST + pair
    else:
        stage.host = mem.RUNTIME_HOST + sum(parts.values())
    return stage


def estimate(cfg, machine) -> list[Stage]:
    """Every stage this run will execute, with its estimates on `machine`."""
    arch = architecture.of_run(cfg)
    stages = []
    if cfg.model.base == ORGANISM and not cfg.model.analyze_only:
        stages.append(pretraining(cfg, machine, arch))
    if cfg.model.sft is None:
        stages.append(sft(cfg, machine, arch))
    if cfg.model.rlvr is None:
        stages.append(grpo(cfg, machine, arch))
    stages += trained_treatments(cfg, machine, arch)
    stages += [variants(cfg, machine, arch), evaluation(cfg, machine, arch), extraction(cfg, machine, arch),
               analyses(cfg, machine, arch)]
    return stages


def check(cfg, machine) -> list[str]:
    """What does not fit `machine`, one line per problem with the numbers and the params to change."""
    problems, disk_used = [], 0.0
    for s in estimate(cfg, machine):
        change = f"; change: {', '.join(s.change)}" if s.change else ""
        if s.needs_gpu and not _gpu_machine(machine):
            problems.append(f"{s.name}: {s.needs_gpu}, and the machine has none")
        if _gpu_machine(machine) and s.processes > machine.gpus and s.device == "gpu":
            problems.append(f"{s.name}: {s.processes} processes (num_processes) but {machine.gpus} GPU(s); "
                            f"change: num_processes of its section")
        if _gpu_machine(machine) and s.device == "gpu" and s.gpu > s.gpu_budget * machine.gpu_memory:
            share = f" ({s.gpu_budget:.0%} of it; vLLM colocated holds the rest)" if s.gpu_budget < 1 else ""
            problems.append(f"{s.name}: needs {s.gpu / GiB:.1f} GiB per GPU, the machine has "
                            f"{machine.gpu_memory / GiB:.1f} GiB{share}{change}")
        problems += [f"{s.name}: {note[8:]}" for note in s.notes if note.startswith("PROBLEM ")]
        if s.host > machine.host_memory:
            problems.append(f"{s.name}: needs {s.host / GiB:.1f} GiB of host memory, the machine has "
                            f"{machine.host_memory / GiB:.1f} GiB{change}")
        if s.disk_peak and disk_used + s.disk_peak > machine.disk:  # named where the stage that writes it runs
            problems.append(f"{s.name}: the run's disk reaches {(disk_used + s.disk_peak) / GiB:.1f} GiB here, "
                            f"{machine.disk / GiB:.1f} GiB are free{change}")
        disk_used += s.disk_kept
    return problems


def refuse_if_impossible(cfg, machine=None) -> None:
    """Raise ResourceError before any work when the plan says the run cannot fit this machine (or `machine`).
    A model whose shape cannot be found offline is not refused here (the run itself may download it)."""
    machine = machine or machines.detect(cfg.run_dir)
    try:
        problems = check(cfg, machine)
    except architecture.UnknownArchitecture as err:
        print(f"resource plan skipped: {err}", flush=True)
        return
    if problems:
        raise ResourceError("\n".join([f"Run '{cfg.name}' ({cfg.source}) cannot fit this machine: "
                                       f"{machine.describe()}.", *(f"  - {p}" for p in problems),
                                       f"See every stage's numbers: python -m rlvr_utils plan {cfg.source}"]))
