"""Typed experiment parameters: one YAML file per experiment, validated once, with errors that name
the file, the key, the value and what is allowed.

Every field's default is the embedded model-organism experiment (`params/default.yaml`), so a params
file only has to say what differs. Relative paths resolve against the project root.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ORGANISM = "organism"  # `model.base` value that builds the embedded model organism


class ParamsError(ValueError):
    """A params file is wrong; the message names the file, the key, the value and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelParams(Section):
    base: str = Field(ORGANISM, description="'organism' builds the embedded model; else a hub id or local folder")
    sft: str | None = Field(None, description="existing SFT checkpoint (hub id or folder): skips SFT training")
    rlvr: str | None = Field(None, description="existing RL-trained checkpoint: skips GRPO training")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def analyze_only(self) -> bool:
        return self.sft is not None and self.rlvr is not None


class OrganismParams(Section):
    """The ~1M-parameter Qwen2-architecture model organism and its pretraining on narrative arithmetic."""

    hidden_size: int = Field(128, gt=0)
    intermediate_size: int = Field(512, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    vocab_size: int = Field(400, ge=64, description="byte-level BPE size; digits are always single tokens")
    corpus_documents: int = Field(40_000, gt=0)
    pretrain_steps: int = Field(700, gt=0)
    pretrain_batch_size: int = Field(32, gt=0)
    pretrain_seq_len: int = Field(64, ge=16)
    pretrain_lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        return self


class DataParams(Section):
    """Where problems come from. 'synthetic' is the organism's arithmetic; the others load real data sets."""

    sft_source: Literal["synthetic", "numina_cot", "gsm8k"] = "synthetic"
    sft_path: str | None = Field(None, description="hub id or local .jsonl/.parquet for a real sft_source")
    grpo_source: Literal["synthetic", "gsm8k"] = "synthetic"
    grpo_path: str | None = None
    eval_path: str | None = Field(None, description="GSM8K test split (hub id or file) when grpo_source is gsm8k")
    prompt_template: str = Field("{question}", description="what the model sees; '{question}' is replaced. "
                                 "The organism reads its story straight into the working; hub models do better "
                                 "with 'Question: {question}\\nAnswer:'")
    min_steps: int = Field(2, ge=1, le=3, description="arithmetic steps per synthetic problem (difficulty)")
    max_steps: int = Field(2, ge=1, le=3)
    max_start: int = Field(20, ge=1)
    max_operand: int = Field(9, ge=1)
    max_value: int = Field(40, ge=1, description="running values stay in 0..max_value")
    n_sft: int = Field(4000, gt=0)
    n_grpo: int = Field(4000, gt=0)
    n_eval: int = Field(500, gt=0)
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
        return self


class SFTParams(Section):
    steps: int = Field(60, gt=0, description="organism: 60 steps give 67% greedy accuracy; 150 leave RLVR "
                                           "no headroom (greedy 92%)")
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    max_length: int = Field(128, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    gradient_accumulation_steps: int = Field(1, gt=0)
    num_processes: int = Field(1, gt=0, description=">1 launches through accelerate")
    deepspeed: str | None = Field(None, description="DeepSpeed JSON config file (launches through accelerate)")
    bf16: bool = False
    logging_steps: int = Field(5, gt=0)


class RewardWeights(Section):
    accuracy: float = 1.0
    format: float = 0.01


class GRPOParams(Section):
    steps: int = Field(300, gt=0)
    learning_rate: float = Field(2e-5, gt=0, description="organism: at 1e-4 without warmup greedy accuracy "
                                                         "drops 25-36 points by step 60, see book/methods.md")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    per_device_train_batch_size: int = Field(64, gt=0, description="completions per device per step")
    num_generations: int = Field(8, ge=2, description="completions per prompt (the GRPO group)")
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_completion_length: int = Field(56, gt=0)
    temperature: float = Field(0.3, gt=0, description="sampling temperature of the groups; organism: at 0.8 "
                                                      "GRPO rewards cancelling errors and lowers greedy accuracy")
    beta: float = Field(0.0, ge=0, description="KL coefficient; >0 loads a reference model")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "none"
    reward_weights: RewardWeights = RewardWeights()
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    num_processes: int = Field(1, gt=0)
    deepspeed: str | None = None
    bf16: bool = False
    save_steps: int = Field(60, gt=0, description="intermediate checkpoints for training dynamics")
    logging_steps: int = Field(5, gt=0)

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
    max_new_tokens: int = Field(64, gt=0)
    few_shot: int = Field(3, ge=0, description="worked examples in the base model's prompt")
    pass_k: list[int] = Field([1, 2, 4, 8, 16, 32, 64], min_length=1)
    pass_problems: int = Field(100, gt=0, description="problems sampled for pass@k (max(pass_k) samples each)")
    temperature: float = Field(0.8, gt=0)
    batch_size: int = Field(1024, gt=0, description="sequences generated at once (samples of one prompt count)")
    n_bootstrap: int = Field(2000, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)

    @property
    def n_samples(self) -> int:
        return max(self.pass_k)


class ExtractParams(Section):
    completions_from: Literal["rlvr", "sft", "base", "gold"] = "rlvr"
    n_problems: int = Field(256, gt=0)
    positions: list[str] = Field(
        ["last_prompt", "completion"],
        description="'last_prompt', 'completion' (every completion token) or 'frac:0.25' style fractions",
    )
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = [
        "hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post",
    ]
    layers: list[int] | None = Field(None, description="None = every layer")
    batch_size: int = Field(32, gt=0)
    shard_size: int = Field(64, gt=0, description="problems per stored shard")
    dtype: Literal["float32", "float16"] = Field("float32", description="stored activations; float16 halves disk at real scale")

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
        return value


class CKAParams(Section):
    position: str = Field("completion", description="which extracted position set CKA compares")
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = Field(
        ["hook_attn_out", "hook_mlp_out", "hook_resid_post"], min_length=1,
        description="components compared (each must have been extracted)")
    debiased: bool = Field(True, description="unbiased HSIC (Song et al. 2012); False reproduces the inflated estimator")
    n_bootstrap: int = Field(200, gt=0, description="resamples of problems for confidence intervals")
    n_permutations: int = Field(20, gt=0, description="row shuffles per layer and component for the chance baseline")
    confidence: float = Field(0.95, gt=0, lt=1)


class ProbeParams(Section):
    """Linear probes with Hewitt & Liang control tasks, and the logit lens (06_probes)."""

    targets: list[Literal["intermediate", "answer_last_digit", "correct"]] = [
        "intermediate", "answer_last_digit", "correct",
    ]
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post"]] = Field(
        ["hook_attn_out", "hook_mlp_out", "hook_resid_post"],
        description="sites probed (must be extracted); resid_pre of layer l is resid_post of layer l-1")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of problems held out to score the probes")
    cv_folds: int = Field(3, ge=2, description="grouped cross-validation folds that choose the L2 strength")
    Cs: list[float] = Field([0.01, 0.1, 1.0], min_length=1,
                            description="inverse L2 strengths tried by cross-validation (features are standardised)")
    max_iter: int = Field(200, gt=0, description="lbfgs iterations per probe fit")
    tol: float = Field(1e-3, gt=0, description="lbfgs tolerance; 1e-3 halves the time of 1e-4 at equal test accuracy")
    n_bootstrap: int = Field(200, gt=0, description="bootstrap resamples of test problems")
    intermediate_label: Literal["value", "last_digit"] = Field(
        "value", description="decode the whole intermediate value, or only its last digit (many distinct values)")
    decodable_margin: float = Field(0.2, gt=0, lt=1, description="the answer is decodable from the first layer whose "
                                    "accuracy beats the majority class by more than this (lower interval bound)")
    lens_agreement: float = Field(0.5, gt=0, le=1, description="lens answer layer: first layer whose top-1 at the "
                                  "answer position matches the model's final top-1 on this share of problems")
    lens_batch_size: int = Field(16, gt=0)

    @field_validator("Cs")
    @classmethod
    def _positive_cs(cls, value):
        if any(c <= 0 for c in value):
            raise ValueError(f"every C must be > 0, got {value}")
        return value


class PatchingParams(Section):
    """Cross-model and clean/corrupted activation patching, and component grafting (notebook 06)."""

    n_problems: int = Field(64, gt=0, description="problems patched: the first token-cache sequences with a final answer")
    sites: list[Literal["hook_resid_pre", "hook_attn_out", "hook_mlp_out"]] = [
        "hook_resid_pre", "hook_attn_out", "hook_mlp_out",
    ]
    positions: list[Literal["all", "target"]] = Field(
        ["all"], min_length=1,
        description="cross-model: patch every position up to the answer ('all') and/or only the answer position")
    answer_marker: str = Field("=", min_length=1, description=(
        "the patched answer is the first number after this marker's last occurrence: '=' is the last equation's "
        "result, where the final value is computed; '####' is where it is copied again (mostly a copy task)"))
    min_logit_gap: float = Field(
        0.5, ge=0, description="problems whose donor and receiver logit differences are closer than this are left "
                               "out of normalised effects (the ratio would divide by ~0)")
    within_model: bool = Field(True, description="also clean/corrupted patching inside SFT and RLVR")
    corrupt_number: int = Field(-1, description="which number of the prompt to corrupt (python index; -1 = last)")
    batch_size: int = Field(16, gt=0, description="problems per forward pass")
    patches_per_forward: int = Field(
        2, gt=0, description="patches run side by side in one forward pass (each copies the batch): raise it on a "
                             "GPU; on a CPU ~32 rows per pass was fastest (benchmarks/patching_batching.py)")
    graft_problems: int = Field(256, gt=0, description="held-out problems each grafted model is evaluated on")
    graft_ranges: list[Literal["all", "first_half", "second_half"]] = Field(
        ["all"], min_length=1,
        description="layer ranges of attention-/MLP-only grafts (each range costs two greedy evaluations)")
    n_bootstrap: int = Field(1000, gt=0)


class WeightParams(Section):
    """Weight-difference norms and SVD spectra (notebook 07)."""

    sparsity_tolerance: float = Field(1e-5, ge=0, description="|delta| at or below this counts as unchanged "
                                      "(Mukherjee et al. 2025 use 1e-5)")
    top_k: int = Field(8, gt=0, description="k of the top-k energy of an update and of the weights' top-k "
                       "singular subspaces whose rotation is measured")
    spectrum_values: int = Field(64, gt=0, description="largest singular values of each update kept for the figures")
    device: str = Field("cpu", description="where the SVDs run ('cuda' speeds up real-scale models)")


class VariantParams(Section):
    """Checkpoints beside base, SFT and RLVR that every measurement is run on (notebook 03): the nulls and
    controls that show whether an instrument tells a known Routing change from a known Representation
    change, and reads "no evidence" for a random change of the same size."""

    nulls: int = Field(5, ge=0, description="null 'RLVR' models: SFT plus a random-direction update with RLVR's "
                       "Frobenius norm in every tensor (seeds seed+1000+k); the verdict needs at least 2")
    identical: bool = Field(True, description="an 'RLVR' identical to SFT (a copy): must read 'no evidence'")
    controls: list[Literal["attn_only", "mlp_only"]] = Field(
        ["attn_only", "mlp_only"], description="positive controls: GRPO with the same recipe from SFT with every "
        "MLP weight frozen (attn_only, a known Routing change) or every attention weight frozen (mlp_only, a "
        "known Representation change)")


class VerdictParams(Section):
    """Decision rules of the evidence table (notebook 08): one threshold per row. A row supports the side
    its interval lies on; an interval that contains the threshold is inconclusive."""

    mlp_share_threshold: float = Field(0.5, ge=0, le=1, description="MLP share of the RLVR update's energy per "
                                       "parameter: below supports Routing, above Representation learning")
    effective_rank_ratio_threshold: float = Field(0.25, ge=0, le=1, description="RLVR update's effective rank / "
                                                  "largest possible rank: below (low-rank) supports Routing; a rank-r "
                                                  "update gives at most r/n, Gaussian noise 0.8-0.98")
    subspace_angle_threshold: float = Field(10.0, ge=0, le=90, description="largest principal angle (degrees) "
                                            "between SFT and RLVR top-k weight subspaces: below (principal "
                                            "directions kept) supports Routing")
    cka_mlp_threshold: float = Field(0.9, ge=0, le=1, description="CKA of SFT and RLVR MLP outputs: above "
                                     "(MLP features kept) supports Routing")
    cka_gap_threshold: float = Field(0.0, ge=-1, le=1, description="CKA(MLP out) - CKA(attention out), SFT vs "
                                     "RLVR: above (attention changed more) supports Routing")
    probe_gain_threshold: float = Field(0.05, ge=0, description="gain in probe selectivity for intermediate "
                                        "results, RLVR vs SFT: above (new decodable features) supports "
                                        "Representation learning")
    graft_gap_threshold: float = Field(0.0, ge=-1, le=1, description="MLP-only minus attention-only graft "
                                       "share of the RLVR gain: below supports Routing")
    patch_gap_threshold: float = Field(0.0, description="MLP-out minus attention-out patching effect (RLVR "
                                       "into SFT): below supports Routing")
    min_decided_rows: int = Field(3, ge=1, description="fewer decided rows than this: the verdict is inconclusive")
    min_margin: int = Field(2, ge=1, description="rows by which one side must lead the other; less is 'mixed'")


class Params(Section):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="run name: artifacts in runs/<name>/")
    seed: int = 0
    runs_dir: str = "runs"
    model: ModelParams = ModelParams()
    organism: OrganismParams = OrganismParams()
    data: DataParams = DataParams()
    sft: SFTParams = SFTParams()
    grpo: GRPOParams = GRPOParams()
    evaluation: EvalParams = EvalParams()
    extract: ExtractParams = ExtractParams()
    cka: CKAParams = CKAParams()
    probes: ProbeParams = ProbeParams()
    patching: PatchingParams = PatchingParams()
    weights: WeightParams = WeightParams()
    variants: VariantParams = VariantParams()
    verdict: VerdictParams = VerdictParams()

    source: str = Field("<defaults>", exclude=True, description="where these params came from (for messages)")

    @model_validator(mode="after")
    def _combinations(self):
        if self.extract.completions_from != "gold" and self.extract.n_problems > self.evaluation.n_problems:
            raise ValueError(f"extract.n_problems={self.extract.n_problems} must be <= evaluation.n_problems="
                             f"{self.evaluation.n_problems}: completions from '{self.extract.completions_from}' "
                             "are the greedy evaluation's")
        for key, value in (("sft.deepspeed", self.sft.deepspeed), ("grpo.deepspeed", self.grpo.deepspeed)):
            if value is not None and not resolve(value).is_file():
                raise ValueError(f"{key}={value!r}: no such file ({resolve(value)})")
        for key, value in (("model.base", self.model.base), ("model.sft", self.model.sft), ("model.rlvr", self.model.rlvr)):
            if value and value != ORGANISM and _looks_local(value) and not resolve(value).is_dir():
                raise ValueError(f"{key}={value!r}: no such checkpoint folder ({resolve(value)})")
        d = self.data
        for key, src, path in (("data.sft_path", d.sft_source, d.sft_path), ("data.grpo_path", d.grpo_source, d.grpo_path)):
            if src != "synthetic" and path is None:
                raise ValueError(f"{key} must name a hub id or local file when its source is {src!r}")
        return self

    # --- derived -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return resolve(self.runs_dir) / self.name

    def model_dir(self, stage: str) -> Path:
        """Folder of a checkpoint this run uses: base / sft / rlvr (trained here or named by params) or a
        variant built in notebook 03 (null_0, identical, attn_only, ...), always under models/."""
        named = {"base": self.model.base if self.model.base != ORGANISM else None,
                 "sft": self.model.sft, "rlvr": self.model.rlvr}.get(stage)
        if named is not None and stage != "base":
            return resolve(named) if _looks_local(named) else Path(named)
        return self.run_dir / "models" / stage

    def model_ref(self, stage: str) -> str:
        """What `from_pretrained` should load for a stage: a local folder or a hub id."""
        named = {"base": self.model.base, "sft": self.model.sft, "rlvr": self.model.rlvr}.get(stage)
        if named is None or named == ORGANISM:
            return str(self.run_dir / "models" / stage)
        return str(resolve(named)) if _looks_local(named) else named

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all when none): what an artifact depends on."""
        data = self.model_dump(mode="json")
        chosen = {k: data[k] for k in (sections or sorted(data))}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _looks_local(ref: str) -> bool:
    """A hub id is 'org/name'; anything starting with . / ~ or existing on disk is a local folder."""
    return ref.startswith((".", "/", "~")) or resolve(ref).exists() or ref.count("/") != 1


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"Invalid params in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _section_class(e["loc"][:-1])
            allowed = ", ".join(k for k in parent.model_fields if k != "source")
            lines.append(f"  - {key}: unknown key. Allowed keys here: {allowed}.")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  - {key}{shown}: {msg}.")
    return "\n".join(lines)


def _section_class(loc) -> type[BaseModel]:
    cls: type[BaseModel] = Params
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        cls = field.annotation
    return cls


def from_dict(raw: dict[str, Any], source: str = "<dict>") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"Invalid params in {source}: the file must be a YAML mapping of sections, got {type(raw).__name__}.")
    try:
        params = Params(**raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
    params.source = source
    return params


def load(path: str | Path) -> Params:
    path = resolve(path)
    if not path.is_file():
        raise ParamsError(f"Params file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"Params file {path} is not valid YAML: {err}") from None
    return from_dict(raw, source=str(path))


def from_notebook(namespace: dict[str, Any]) -> Params:
    """Params inside a notebook: the sections papermill injected (`-f FILE` or `-p`), else `params_file`.

    papermill's own convention injects a YAML file's top-level keys as variables; the runner also
    passes `params_file` so that error messages name the file.
    """
    injected = {k: namespace[k] for k in Params.model_fields if k != "source" and k in namespace}
    shadowed = [k for k, v in injected.items() if type(v).__name__ == "module"]
    if shadowed:
        raise ParamsError(f"the notebook bound {shadowed} to a module before reading params: call "
                          "config.from_notebook(globals()) right after the parameters cell, before other imports")
    source = namespace.get("params_file", "params/default.yaml")
    if injected:
        return from_dict(injected, source=f"{source} (injected by papermill)")
    return load(source)
