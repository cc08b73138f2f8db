"""Memory and compute formulas of training and inference, each with where it comes from. Pure arithmetic on an
Architecture (rlvr_utils.resources.architecture) and a few settings; rlvr_utils.resources.plan applies them to
the stages of a run. All sizes in bytes, all counts per token unless named otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from rlvr_utils.core.paths import resolve

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GiB = 2 ** 30

# Host memory of one Python process once torch 2.13, transformers 5.24, trl 1.16 and datasets are imported:
# 471 MiB ru_maxrss, measured on this project's CPU machine (one thread; `python -c "import torch, transformers,
# datasets; from trl import SFTTrainer, GRPOTrainer; import resource; print(resource.getrusage(...).ru_maxrss)"`),
# rounded up for the trainer's own objects and the data set.
RUNTIME_HOST = 0.5 * GiB
# CUDA's libraries and context in host memory, per process on a GPU machine: NOT measured here (no GPU);
# commonly 1-3 GB with torch's CUDA wheels. The GPU smoke (benchmarks/gpu_smoke.py) measures it.
CUDA_HOST = 2 * GiB
# What the CUDA context and allocator keep on each GPU beyond the tensors (measured values are ~0.5-1 GiB).
CUDA_GPU_OVERHEAD = 1 * GiB


@dataclass(frozen=True)
class ModelStates:
    weights: float
    gradients: float
    optimizer: float
    rule: str  # which rule gave them, for the table's notes

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def zero_stage(deepspeed_file: str | None) -> tuple[int | None, bool]:
    """(ZeRO stage, optimizer offloaded to the CPU) of a DeepSpeed JSON file; (None, False) without DeepSpeed."""
    if not deepspeed_file:
        return None, False
    path = resolve(deepspeed_file)
    try:
        zero = json.loads(path.read_text()).get("zero_optimization", {})
    except (OSError, ValueError) as err:
        raise ValueError(f"DeepSpeed config {deepspeed_file!r} cannot be read ({err}): the plan needs its ZeRO "
                         "stage") from err
    offload = str(zero.get("offload_optimizer", {}).get("device", "none")).lower() == "cpu"
    return int(zero.get("stage", 0)), offload


def model_states(n_params: int, n_trainable: int, weight_bytes: int, mixed: bool, stage: int | None,
                 gpus: int) -> ModelStates:
    """Per-process bytes of weights, gradients and Adam states.

    DeepSpeed with bf16/fp16 (`mixed`): the ZeRO paper's accounting (Rajbhandari et al. 2020, "ZeRO: Memory
    Optimizations Toward Training Trillion Parameter Models", sec. 3.1): 2 bytes of 16-bit weights, 2 of 16-bit
    gradients and K = 12 of optimizer state (fp32 master weights, momentum, variance) per parameter, 16 in all.
    Stage 1 divides the optimizer state by the data-parallel degree N_d, stage 2 also the gradients, stage 3
    also the weights (their Fig. 1). DeepSpeed in fp32: 4 + 4 + 8 (the weights are the master copy).
    Without DeepSpeed (Trainer/DDP): weights and gradients in the loaded dtype w, and torch.optim.AdamW keeps
    exp_avg and exp_avg_sq like the parameter: 4·w per parameter (16 in fp32), nothing sharded. Only trainable
    parameters have gradients and optimizer state (the positive controls freeze part of the model)."""
    if stage is None:
        w = weight_bytes
        return ModelStates(n_params * w, n_trainable * w, n_trainable * 2 * w,
                           f"Trainer/DDP, AdamW in {w}-byte parameters (4w bytes per trained parameter)")
    weights, grads, optim = (2, 2, 12) if mixed else (4, 4, 8)
    n = max(gpus, 1)
    shard = {0: (1, 1, 1), 1: (1, 1, n), 2: (1, n, n), 3: (n, n, n)}[min(stage, 3)]
    return ModelStates(n_params * weights / shard[0], n_trainable * grads / shard[1], n_trainable * optim / shard[2],
                       f"ZeRO-{stage} over {n} process(es), {weights}+{grads}+{optim} bytes per parameter "
                       "(Rajbhandari et al. 2020)")


def activations_per_token(arch, act_bytes: int, checkpointing: bool) -> float:
    """Bytes autograd keeps per token for the backward pass, all blocks.

    Per block, measured on transformers 5.24's Qwen2 decoder layer (SDPA attention, no dropout) with
    torch.autograd.graph.saved_tensors_hooks, which tests/test_plan.py re-measures: (6b + 8)·d + 2b·kv_dim + 4b·I
    with b the activation element size: the SwiGLU MLP keeps gate, up, silu(gate) and their product (4·I);
    attention keeps q, k, v after RoPE and its output (2·d + 2·kv_dim); the residual-stream inputs and the
    normalised outputs of the two RMSNorms, plus the float32 copy each RMSNorm makes of its input (transformers
    upcasts inside RMSNorm), make up the rest of the d terms. Flash/SDPA attention keeps no s x s score matrix
    (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", count 5·a·s/h
    bytes per token and layer for it without flash attention; not modelled here).
    With activation checkpointing each block keeps only its input (b·d) and one block's activations are
    recomputed at a time during the backward pass (the same paper, sec. 4: full recomputation)."""
    b = act_bytes
    per_layer = (6 * b + 8) * arch.hidden + 2 * b * arch.kv_dim + 4 * b * arch.intermediate
    if checkpointing:
        return arch.layers * b * arch.hidden + per_layer  # stored inputs + the block being recomputed
    return arch.layers * per_layer


def logits_per_token(arch, act_bytes: int, trainer: str, on_gpu: bool) -> float:
    """Peak bytes of the output layer per token of a training micro-batch.

    SFT (transformers' ForCausalLMLoss): the logits (b), the float32 log-softmax cross-entropy keeps (4), its
    float32 gradient (4) and that gradient cast back (b): V·(2b + 8). GRPO (TRL): logits exist for completion
    tokens only (TRL asks the model for `logits_to_keep`); on a GPU TRL's fused log-prob kernel
    (trl.trainer.utils.selective_log_softmax) needs the logits and their gradient (2b); elsewhere a
    temperature-scaled copy and a log-softmax too (4b)."""
    b = act_bytes
    if trainer == "grpo":
        return arch.vocab * (2 * b if on_gpu else 4 * b)
    return arch.vocab * (2 * b + 8)


def kv_cache_per_token(arch, dtype_bytes: int) -> float:
    """Key and value vectors of every block for one token of a generated sequence (what HF's and vLLM's caches
    hold): 2 · layers · kv_dim · bytes."""
    return 2 * arch.layers * arch.kv_dim * dtype_bytes


def inference_workspace(arch, tokens: int, dtype_bytes: int) -> float:
    """Transient activations of one block during a forward pass without gradients (the largest: the MLP's gate,
    up and product over all tokens, plus q, k, v and the residual): (3·I + 4·d) · b per token."""
    return tokens * (3 * arch.intermediate + 4 * arch.hidden) * dtype_bytes


def forward_flops_per_token(arch, context: float) -> float:
    """2·N FLOPs per token for the matmuls of the N non-embedding parameters, 2·d·V for the unembedding, and
    2·layers·context·d for the attention scores (Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
    Table 1: C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn). A training step costs 3x its forward pass (the backward
    pass is twice the forward), 4x with activation checkpointing (one more forward)."""
    return 2 * arch.non_embedding_params + 2 * arch.hidden * arch.vocab + 2 * arch.layers * context * arch.hidden


def checkpoint_bytes(n_params: int, n_trainable: int, weight_bytes: int, stage: int | None, mixed: bool) -> float:
    """One trainer checkpoint on disk: the model's safetensors in the trained dtype, plus the optimizer state
    (Trainer: optimizer.pt with AdamW's two moments, 2·w per trained parameter; DeepSpeed: its own copy of the
    16-bit module states (2) and the fp32 optimizer shards (12 per trained parameter, all ranks together))."""
    if stage is None:
        return n_params * weight_bytes + n_trainable * 2 * weight_bytes
    saved = 2 if mixed else 4
    return n_params * saved + n_params * saved + n_trainable * (12 if mixed else 8)
