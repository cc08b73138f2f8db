"""Typed experiment parameters: the schema of a params file, one section per stage or instrument, every field
with its default and description (the book's Parameters page is generated from them).

Every field's default is the embedded model-organism experiment (`params/default.yaml`), so a params
file only has to say what differs. Loading and the checks across sections live in rlvr_utils.core.config.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from rlvr_utils.core import hub
from rlvr_utils.core.paths import looks_local, resolve
from rlvr_utils.core.params_evidence import ElicitationParams, Section, VariantParams, VerdictParams
from rlvr_utils.core.params_launch import LaunchParams

ORGANISM = "organism"  # `model.base` value that builds the embedded model organism



class ParamsError(ValueError):
    """A params file is wrong; the message names the file, the key, the value and what is allowed."""


class ModelParams(Section):
    base: str = Field(ORGANISM, description="'organism' builds the embedded model; else a hub id or local folder")
    sft: str | None = Field(None, description="existing SFT checkpoint (hub id or folder): skips SFT training. It is "
                            "the reference every treatment is read against, so with given checkpoints it must be "
                            "the one RL started from (e.g. a DPO checkpoint when RL followed DPO)")
    rlvr: str | None = Field(None, description="existing RL-trained checkpoint: skips GRPO training")
    trust_remote_code: bool = Field(False, description="let from_pretrained run a hub model's own Python code (off: "
                                                       "safetensors and known architectures only)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype the checkpoints are "
                                                                                    "loaded in for evaluation and analysis")
    chat_template: Literal["none", "auto"] = Field("none", description="'auto': where a checkpoint's tokenizer has a "
                                                   "chat template, every prompt it is given (evaluation, SFT, GRPO, "
                                                   "the extraction's token cache) is the question as one user turn "
                                                   "through tokenizer.apply_chat_template(add_generation_prompt=True); "
                                                   "'none': the prompt_template text as it is (the organism)")

    @property
    def analyze_only(self) -> bool:
        return self.sft is not None and self.rlvr is not None


class OrganismParams(Section):
    """The ~1M-parameter Qwen2-architecture model organism and its pretraining on narrative arithmetic."""

    hidden_size: int = Field(128, gt=0, description="model width (d_model) of the embedded Qwen2-architecture "
                                                    "organism")
    intermediate_size: int = Field(512, gt=0, description="MLP hidden width of the organism")
    num_layers: int = Field(4, gt=0, description="transformer blocks of the organism")
    num_heads: int = Field(4, gt=0, description="attention heads per block (must divide hidden_size)")
    vocab_size: int = Field(400, ge=64, description="byte-level BPE size; digits are always single tokens")
    corpus_documents: int = Field(40_000, gt=0, description="synthetic arithmetic documents in the pretraining "
                                                            "corpus")
    pretrain_steps: int = Field(350, gt=0, description="optimizer steps of base pretraining; organism: twice as many "
                                "made base nearly as good as RLVR in an earlier run (benchmarks/README.md)")
    pretrain_batch_size: int = Field(32, gt=0, description="sequences per pretraining step")
    pretrain_seq_len: int = Field(64, ge=16, description="tokens per pretraining sequence")
    pretrain_lr: float = Field(3e-3, gt=0, description="peak learning rate of pretraining (cosine schedule)")
    warmup_steps: int = Field(50, ge=0, description="linear warmup steps of pretraining")

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        return self


class DataParams(Section):
    """Where problems come from. 'synthetic' is the organism's arithmetic; the others load real data sets."""

    sft_source: Literal["synthetic", "numina_cot", "gsm8k"] = Field("synthetic", description="SFT data: synthetic "
                                                                                             "stories (organism), NuminaMath-CoT or GSM8K solutions (real scale)")
    sft_path: str | None = Field(None, description="hub id or local .jsonl/.parquet for a real sft_source")
    grpo_source: Literal["synthetic", "gsm8k"] = Field("synthetic", description="GRPO and evaluation problems: "
                                                                                "synthetic (organism) or GSM8K (real scale)")
    grpo_path: str | None = Field(None, description="hub id or local .jsonl/.parquet of GSM8K train when grpo_source "
                                                    "is gsm8k")
    eval_path: str | None = Field(None, description="GSM8K test split (hub id or file) when grpo_source is gsm8k")
    prompt_template: str = Field("{question}", description="what the model sees; '{question}' is replaced. "
                                 "The organism reads its story straight into the working; hub models do better "
                                 "with 'Question: {question}\\nAnswer:'")
    min_steps: int = Field(2, ge=1, le=3, description="arithmetic steps per synthetic problem (difficulty)")
    max_steps: int = Field(2, ge=1, le=3, description="most arithmetic steps per synthetic problem (with min_steps: "
                                                      "the difficulty)")
    max_start: int = Field(20, ge=1, description="largest starting quantity of a synthetic story")
    max_operand: int = Field(9, ge=1, description="largest number added or taken away in one step")
    max_value: int = Field(40, ge=1, description="running values stay in 0..max_value")
    sft_min_steps: int = Field(1, ge=1, le=3, description="steps per synthetic SFT problem: SFT's own "
                               "distribution, easier and shorter than the evaluation's, as NuminaMath is not GSM8K")
    sft_max_steps: int = Field(2, ge=1, le=3, description="most steps per synthetic SFT problem")
    sft_verbs: Literal["old", "new", "new3"] = Field("old", description="wording of SFT problems' events (data.VERBS)")
    rl_verbs: Literal["old", "new", "new3"] = Field("new", description="wording of the evaluation, validation and GRPO "
                                            "problems: the wording shift from SFT's data ('new': six verbs per operation; 'new3': the first three)")
    corpus_new_verbs: float = Field(0.5, ge=0, le=1, description="share of the corpus's worked-as-it-happens "
                                    "stories told with the new verbs: base meets them, never in the eval template. "
                                    "Without it GRPO gained nothing significant (benchmarks/README.md)")
    n_sft: int = Field(4000, gt=0, description="SFT training examples")
    n_grpo: int = Field(4000, gt=0, description="GRPO training prompts")
    n_eval: int = Field(500, gt=0, description="held-out test problems (read once, by the final evaluation)")
    n_validation: int = Field(500, gt=0, description="validation problems from the evaluation distribution, "
                              "disjoint from the test set: settings are chosen on them")
    max_rows: int | None = Field(None, gt=0, description="cap on rows read from a real data set")

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, value):
        if "{question}" not in value:
            raise ValueError("must contain '{question}'")
        return value

    @model_validator(mode="after")
    def _steps_ordered(self):
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps={self.min_steps} must be <= max_steps={self.max_steps}")
        if self.sft_min_steps > self.sft_max_steps:
            raise ValueError(f"sft_min_steps={self.sft_min_steps} must be <= sft_max_steps={self.sft_max_steps}")
        return self


class SFTParams(Section):
    steps: int = Field(1000, gt=0, description="most optimizer steps; training stops earlier when the stopping "
                       "rule says SFT has converged on its own distribution")
    stop_metric: Literal["loss", "mean_token_accuracy"] | None = Field(
        "mean_token_accuracy", description="the stopping rule's measure on held-out problems of SFT's own distribution "
        "(None: train all `steps`). The checkpoint with the best value is kept")
    eval_steps: int = Field(50, gt=0, description="steps between two measurements of the stopping rule")
    patience: int = Field(3, gt=0, description="stop after this many measurements without improvement")
    min_delta: float = Field(0.001, ge=0, description="smaller improvements than this do not count (a tenth of a "
                             "point of token accuracy)")
    n_validation: int = Field(200, gt=0, description="held-out problems of SFT's distribution for the stopping rule")
    batch_size: int = Field(32, gt=0, description="sequences per device per SFT step")
    learning_rate: float = Field(1e-3, gt=0, description="peak SFT learning rate")
    max_length: int = Field(128, gt=0, description="tokens per SFT sequence (longer ones are cut)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of SFT steps spent warming up the learning rate")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    num_processes: int = Field(1, gt=0, description=">1 launches through accelerate")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config file (launches through accelerate)")
    bf16: bool = Field(False, description="train in bfloat16 (GPUs)")
    gradient_checkpointing: bool = Field(False, description="recompute each block's activations in the backward pass "
                                         "instead of keeping them (transformers' activation_checkpointing): ~1/3 more "
                                         "compute, activations fall to one d-vector per layer and token. Organism: off "
                                         "(a few kB per token); real scale: on (Qwen2.5-1.5B keeps ~3 MB per token)")
    save_total_limit: int | None = Field(None, gt=0, description="trainer checkpoints kept on disk while training "
                                         "(older ones deleted; the stopping rule's best is kept too). None keeps all: "
                                         "organism (MBs each); real scale: 2 (one with ZeRO-2 Adam state is ~16 bytes "
                                         "per parameter, ~23 GiB for 1.5B)")
    logging_steps: int = Field(5, gt=0, description="steps between two logged losses")


class RewardWeights(Section):
    accuracy: float = Field(1.0, ge=0, description="weight of R_accuracy (+1 for a correct answer)")
    format: float = Field(0.01, ge=0, description="weight of R_format (+1 for the required format)")

    @model_validator(mode="after")
    def _something_rewarded(self):
        if self.accuracy == 0 and self.format == 0:
            raise ValueError("accuracy and format are both 0: GRPO would train on no signal; give one a weight > 0")
        return self


class GRPOParams(Section):
    steps: int = Field(100, gt=0, description="GRPO optimizer steps (the RLVR model is the last one); organism: "
                       "chosen on validation (benchmarks/grpo_sweep.py)")
    learning_rate: float = Field(2e-5, gt=0, description="organism: five times higher without warmup lowered "
                                                         "greedy accuracy in an earlier sweep (benchmarks/README.md)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of GRPO steps spent warming up the learning rate")
    per_device_train_batch_size: int = Field(64, gt=0, description="completions per device per step")
    num_generations: int = Field(8, ge=2, description="completions per prompt (the GRPO group)")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_completion_length: int = Field(56, gt=0, description="most generated tokens per completion during GRPO")
    temperature: float = Field(0.5, gt=0, description="sampling temperature of the groups; organism: at 0.8 "
                                                      "GRPO rewards cancelling errors and lowers greedy accuracy")
    beta: float = Field(0.0, ge=0, description="KL coefficient; >0 loads a reference model")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field("dapo", description="TRL's GRPO loss normalisation "
                                                                                      "(GRPOConfig.loss_type)")
    scale_rewards: Literal["group", "batch", "none"] = Field("none", description="advantage scaling by the reward "
                                                                                 "std of the group, the batch or none (TRL)")
    reward_weights: RewardWeights = Field(RewardWeights(), description="R = accuracy x R_accuracy + format x "
                                                                       "R_format")
    use_vllm: bool = Field(False, description="generate GRPO's completions with vLLM (GPU extra only)")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM inside the training processes "
                                                                             "(colocate) or as a separate server")
    num_processes: int = Field(1, gt=0, description=">1 launches GRPO through accelerate (one process per GPU)")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config file (launches through accelerate)")
    bf16: bool = Field(False, description="train in bfloat16 (GPUs)")
    save_steps: int = Field(25, gt=0, description="intermediate checkpoints for training dynamics")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (see "
                                         "sft.gradient_checkpointing). Organism: off; real scale: on (16 completions "
                                         "of 2000 tokens keep ~100 GB of activations without it)")
    save_total_limit: int | None = Field(None, gt=0, description="trainer checkpoints kept while training; only "
                                         "those kept become models/rlvr_checkpoints (training dynamics). None keeps "
                                         "all: organism; real scale: 2 (~23 GiB each with ZeRO-2 state)")
    logging_steps: int = Field(5, gt=0, description="steps between two logged rewards and losses")

    @model_validator(mode="after")
    def _batch_is_whole_groups(self):
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                f"num_generations={self.num_generations} (it counts completions, whole groups per step)"
            )
        return self


class EvalParams(Section):
    n_problems: int = Field(500, gt=0, description="held-out problems for greedy accuracy")
    max_new_tokens: int = Field(64, gt=0, description="most generated tokens per evaluated answer")
    few_shot: int = Field(3, ge=0, description="worked examples in the base model's prompt")
    pass_k: list[Annotated[int, Field(ge=1)]] = Field([1, 2, 4, 8, 16, 32, 64], min_length=1,
                                                      description="k of pass@k, each >= 1")
    pass_problems: int = Field(100, gt=0, description="problems sampled for pass@k (max(pass_k) samples each)")
    temperature: float = Field(0.8, gt=0, description="sampling temperature of the pass@k samples (greedy accuracy "
                                                      "uses none)")
    batch_size: int = Field(1024, gt=0, description="sequences generated at once (samples of one prompt count)")
    n_bootstrap: int = Field(2000, gt=0, description="bootstrap resamples of problems for accuracy intervals")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="what generates: 'hf' (transformers generate), 'vllm' (GPU extra and a GPU), 'auto' "
        "(vllm when both are present, else hf); how they differ: README, 'Real scale'")

    @property
    def n_samples(self) -> int:
        return max(self.pass_k)


class ExtractParams(Section):
    completions_from: Literal["rlvr", "sft", "base", "gold"] = Field("rlvr", description="whose greedy completions "
                                                                                         "fill the shared token cache ('gold': the worked solutions)")
    n_problems: int = Field(256, gt=0, description="held-out problems replayed through every model")
    positions: list[str] = Field(
        ["last_prompt", "completion"], min_length=1,
        description="'last_prompt', 'completion' (every completion token) or 'frac:0.25' style fractions",
    )
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = Field(
        ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"], min_length=1, description="hook sites stored per layer (TransformerLens names)")
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="None = every layer; else layer indices 0..num_layers-1")
    batch_size: int = Field(32, gt=0, description="sequences per forward pass")
    shard_size: int = Field(64, gt=0, description="problems per stored shard")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="stored activations: bfloat16 keeps a bf16 model's activations bit for bit at half "
        "float32's disk (real scale); float16 halves disk too but overflows above 65504; analyses read float32")
    num_processes: int = Field(1, gt=0, description=">1: the token cache's shards are split across this many "
                               "processes (accelerate launch, one model copy each) and joined into one store")

    @field_validator("positions")
    @classmethod
    def _known_positions(cls, value):
        for p in value:
            ok = p in ("last_prompt", "completion")
            if p.startswith("frac:"):
                try:
                    ok = 0.0 <= float(p[5:]) <= 1.0
                except ValueError:
                    ok = False
            if not ok:
                raise ValueError(f"position {p!r} is not one of 'last_prompt', 'completion', 'frac:<0..1>'")
        if len(set(value)) < len(value):
            raise ValueError(f"positions {value} name one position twice")
        return value

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value):
        if value is not None and len(set(value)) < len(value):
            raise ValueError(f"layers {value} name one layer twice")
        return value


class CKAParams(Section):
    position: str = Field("completion", description="which extracted position set CKA compares")
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = Field(
        ["hook_attn_out", "hook_mlp_out", "hook_resid_post"], min_length=1,
        description="components compared (each must have been extracted)")
    debiased: bool = Field(True, description="unbiased HSIC (Song et al. 2012); False reproduces the inflated "
                                             "estimator")
    n_bootstrap: int = Field(200, gt=0, description="resamples of problems for confidence intervals")
    n_permutations: int = Field(20, gt=0, description="row shuffles per layer and component for the chance baseline")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the bootstrap intervals")


class ProbeParams(Section):
    """Linear probes with Hewitt & Liang control tasks, and the logit lens (the probes chapter)."""

    targets: list[Literal["intermediate", "answer_last_digit", "correct"]] = Field([
        "intermediate", "answer_last_digit", "correct",
    ], min_length=1, description="what the probes decode: the intermediate result, the answer's last digit, whether "
                                 "the answer is correct")
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = Field(
        ["hook_attn_out", "hook_mlp_out", "hook_resid_post"], min_length=1,
        description="sites probed (must be extracted); resid_pre of layer l is resid_post of layer l-1")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of problems in each cross-fitting test fold: "
                                 "round(1 / test_fraction) folds, each the test set once, so every example is scored "
                                 "by probes that never saw its problem (a single held-out split scores a fraction of "
                                 "the examples that the folds score together)")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of problems on which each fold chooses "
                                       "the L2 strengths and the layer, before its probes are refitted on train + "
                                       "validation and its test problems are scored once")
    Cs: list[float] = Field([0.01, 0.1, 1.0], min_length=1,
                            description="inverse L2 strengths tried, chosen on validation for the task probe and, "
                                        "separately, for the control probe (features are standardised). The grid "
                                        "bounds the probes' capacity: up to 100, the control memorises the types and "
                                        "a value planted at layer 1 of the default run is no longer found")
    max_iter: int = Field(200, gt=0, description="lbfgs iterations per probe fit")
    tol: float = Field(1e-3, gt=0, description="lbfgs tolerance; 1e-3 halves the time of 1e-4 at equal test accuracy")
    n_bootstrap: int = Field(200, gt=0, description="bootstrap resamples of problems (validation and test together)")
    intermediate_label: Literal["value", "last_digit"] = Field(
        "value", description="decode the whole intermediate value, or only its last digit (many distinct values)")
    decodable_margin: float = Field(0.2, gt=0, lt=1, description="the answer is decodable from the first layer whose "
                                    "accuracy beats the majority class by more than this (lower interval bound)")
    lens_agreement: float = Field(0.5, gt=0, le=1, description="lens answer layer: first layer whose top-1 at the "
                                  "answer position matches the model's final top-1 on this share of problems")
    lens_batch_size: int = Field(16, gt=0, description="sequences per forward pass of the logit lens")

    @field_validator("Cs")
    @classmethod
    def _positive_cs(cls, value):
        if any(c <= 0 for c in value):
            raise ValueError(f"every C must be > 0, got {value}")
        return value


class PatchingParams(Section):
    """Cross-model and clean/corrupted activation patching, and component grafting (the patching chapter)."""

    n_problems: int = Field(64, gt=0, description="problems patched: the first token-cache sequences with a final "
                                                  "answer")
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out"]] = Field([
        "hook_resid_pre", "hook_attn_out", "hook_mlp_out",
    ], description="sites patched across models (per layer)")
    positions: list[Literal["all", "target"]] = Field(
        ["all"], min_length=1,
        description="cross-model: patch every position up to the answer ('all') and/or only the answer position")
    answer_marker: str = Field("=", min_length=1, description=(
        "the patched answer is the first number after this marker's last occurrence: '=' is the last equation's "
        "result, where the final value is computed; '####' is where it is copied again (mostly a copy task)"))
    within_model: bool = Field(True, description="also clean/corrupted patching inside SFT and RLVR")
    corrupt_number: int = Field(-1, description="which number of the prompt to corrupt (python index; -1 = last)")
    batch_size: int = Field(16, gt=0, description="problems per forward pass")
    patches_per_forward: int = Field(
        2, gt=0, description="patches run side by side in one forward pass (each copies the batch): raise it on a "
                             "GPU; on a CPU ~32 rows per pass was fastest (benchmarks/patching_batching.py)")
    graft_problems: int = Field(500, gt=0, description=(
        "held-out problems each grafted model is evaluated on (the behavioural row's n): every problem of the default "
        "test set (evaluation.n_problems), for power, since the row's yardstick is the union of the intervals of "
        "every placebo, null and identical copy (book/methods.md, 'The behavioural row')"))
    graft_ranges: list[Literal["all", "first_half", "second_half"]] = Field(
        ["all"], min_length=1,
        description="layer ranges of attention-/MLP-only grafts (each range costs two greedy evaluations)")
    n_bootstrap: int = Field(1000, gt=0, description="bootstrap resamples of problems for intervals")


class WeightParams(Section):
    """Weight-difference norms and SVD spectra (the weights chapter)."""

    sparsity_tolerance: float = Field(1e-5, ge=0, description="|delta| at or below this, or below the stored "
                                      "dtype's round-off of the weight, counts as unchanged (Mukherjee et al. 2025 "
                                      "use 1e-5)")
    top_k: int = Field(8, gt=0, description="k of the top-k (structured) energy of an update, and the largest k "
                       "considered for the spectral gap at which the rotation of the weights' subspace is measured")
    n_bootstrap: int = Field(1000, gt=0, description="resamples of matrices (layers for the MLP share) for intervals")
    spectrum_values: int = Field(64, gt=0, description="largest singular values of each update kept for the figures")
    device: str | None = Field(None, description="where the SVDs run: None follows the run's `device`; else "
                               "'cpu', 'cuda', 'cuda:N' or 'mps'")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value):
        if value is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
            raise ValueError("expected None (the run's device), 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value


class CrosscoderParams(Section):
    """BatchTopK crosscoders between the reference (SFT) and each treatment, with Latent Scaling and a causal
    test (the crosscoder chapter)."""

    layer: int | None = Field(None, description="block whose activations are diffed; None = the middle block "
                              "(num_layers // 2)")
    site: Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"] = Field(
        "hook_resid_post", description="site diffed (must be extracted)")
    position: str = Field("completion", description="extracted position selection the crosscoder trains on")
    expansion: int = Field(2, gt=0, description="latents per model dimension (hidden 128 -> 256 latents)")
    k: int = Field(8, gt=0, description="active latents per token on average (BatchTopK over the batch)")
    steps: int = Field(1000, gt=0, description="Adam steps per crosscoder (its cost: the Reproducibility page)")
    batch_size: int = Field(256, gt=0, description="tokens per step (BatchTopK keeps k x batch_size activations)")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of the crosscoder")
    seeds: int = Field(2, ge=1, description="crosscoders per pair (seeds seed, seed+1, ...): intervals over seeds")
    specific_threshold: float = Field(5 / 6, gt=0.5, lt=1, description="relative decoder norm r = ||d_T|| / (||d_SFT|| "
                                      "+ ||d_T||) above which a latent is a candidate T-only latent (below 1 - it: "
                                      "SFT-only); 5/6 is Minder et al.'s Δnorm > 0.9 (Δnorm = 1 - (1 - r) / (2r))")
    presence_threshold: float = Field(0.3, gt=0, lt=1, description="Latent Scaling: a candidate counts as "
                                      "T-specific only when SFT's error explains less than this share of it")
    treatments: list[str] | None = Field(None, description="treatments diffed against SFT; None = rlvr, the controls, user "
                                           "treatments and the placebos (the nulls when there are no placebos)")
    causal_treatments: list[str] = Field(["rlvr"], description="treatments whose specific latents are ablated and "
                                         "transplanted in greedy generation (each costs ~4 greedy passes per seed)")
    causal_seeds: int = Field(1, ge=1, description="crosscoder seeds whose latents the causal test edits (each "
                              "costs up to 8 greedy passes over causal_problems)")
    causal_top: int = Field(8, ge=1, description="sensitivity set of the causal test: the live latents with the "
                            "highest relative decoder norm, edited even when none passes the specific thresholds")
    causal_problems: int = Field(244, gt=0, description="held-out problems of the causal test: eval.jsonl rows after "
                                 "the extract.n_problems the crosscoders trained on")
    top_latents: int = Field(4, gt=0, description="top specific and top shared latents read out in the chapter")
    n_bootstrap: int = Field(1000, gt=0, description="bootstrap resamples for intervals")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")


class Params(Section):
    name: str = Field("default", description="run name, one folder name: artifacts in runs/<name>/")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds torch, numpy and data (numpy takes 0..2**32-1)")
    rehearsal: bool = Field(False, description="a rehearsal of the real-scale path on a toy model "
                            "(params/rehearsal.yaml): the book says its numbers mean nothing")
    runs_dir: str = Field("runs", description="folder of all runs (relative to the project, or absolute); this run's "
                                              "artifacts go to <runs_dir>/<name>")
    device: str = Field("auto", description="where the analyses load models and run their heavy matrix work: "
                        "'auto' (this process's GPU when CUDA is present, else the CPU), 'cpu', 'cuda', 'cuda:N' or "
                        "'mps'. Where a run computes, not what: in no fingerprint (rlvr_utils.core.device)")
    model: ModelParams = ModelParams()
    organism: OrganismParams = OrganismParams()
    data: DataParams = DataParams()
    sft: SFTParams = SFTParams()
    grpo: GRPOParams = GRPOParams()
    launch: LaunchParams = LaunchParams()
    evaluation: EvalParams = EvalParams()
    extract: ExtractParams = ExtractParams()
    cka: CKAParams = CKAParams()
    probes: ProbeParams = ProbeParams()
    patching: PatchingParams = PatchingParams()
    weights: WeightParams = WeightParams()
    variants: VariantParams = VariantParams()
    crosscoder: CrosscoderParams = CrosscoderParams()
    verdict: VerdictParams = VerdictParams()
    elicitation: ElicitationParams = ElicitationParams()

    source: str = Field("<defaults>", exclude=True, description="where these params came from (for messages)")

    @field_validator("device")
    @classmethod
    def _known_run_device(cls, value):
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, value):
        # '..' would put data/, models/, metrics/ into the project root
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", "..") or value.startswith("."):
            raise ValueError("a run name is one folder name: letters, digits, '_', '-' and '.', not starting "
                             "with '.', with no path separator ('.' and '..' are refused)")
        return value


    # --- derived -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return resolve(self.runs_dir) / self.name

    def model_dir(self, stage: str) -> Path:
        """Folder of a checkpoint this run uses: base / sft / rlvr (trained here or named by params), a user
        treatment (variants.user) or a treatment made by the variants chapter, always under models/."""
        named = {"base": self.model.base if self.model.base != ORGANISM else None,
                 "sft": self.model.sft, "rlvr": self.model.rlvr, **self.variants.user}.get(stage)
        if named is not None and stage != "base":
            return Path(self.model_ref(stage))
        return self.run_dir / "models" / stage

    def model_ref(self, stage: str) -> str:
        """What `from_pretrained` should load for a stage: a local folder; a hub id is its snapshot folder in the
        local Hugging Face cache (rlvr_utils.core.hub), or the id itself while it is not downloaded (the params
        check refuses that before any work)."""
        named = {"base": self.model.base, "sft": self.model.sft, "rlvr": self.model.rlvr, **self.variants.user}.get(stage)
        if named is None or named == ORGANISM:
            return str(self.run_dir / "models" / stage)
        if looks_local(named):
            return str(resolve(named))
        return str(hub.snapshot(named) or named)

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all when none): what an artifact depends on."""
        data = self.model_dump(mode="json")
        chosen = {k: data[k] for k in (sections or sorted(data))}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]
