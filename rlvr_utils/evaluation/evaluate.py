"""Evaluation of base, SFT and RLVR on held-out problems: greedy accuracy, format rate, unbiased pass@k.

Every number carries a bootstrap interval over problems. The base model never saw the
question / answer / '####' format, so it is asked with a few-shot prompt: that measures what it knows,
not its ignorance of the format.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from rlvr_utils.core import artifacts, deps, stats
from rlvr_utils.core.device import release_gpu_memory, run_device, shutdown
from rlvr_utils.models import chat
from rlvr_utils.training import data
from rlvr_utils.training.rewards import extract_answer, is_correct, is_formatted

PARAMS = ("evaluation", "data")  # params sections read here (rlvr_utils.core.deps)

STAGES = ("base", "sft", "rlvr")


FEW_SHOT_SEPARATOR = "\n\n"


def _cut(completion: str) -> str:
    """A few-shot base model goes on to invent the next example: keep only its answer."""
    return completion.split(FEW_SHOT_SEPARATOR)[0].rstrip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             num_samples: int = 1, temperature: float | None = None, seed: int = 0, desc: str = "generating",
             stop: str | None = None) -> list[list[str]]:
    """Completions per prompt: greedy when `temperature` is None, else `num_samples` samples each; a
    sequence also ends at `stop` (a few-shot prompt's separator, which a base model never ends on its own).
    A `VLLMModel` generates through vLLM instead, with the same output."""
    if isinstance(model, VLLMModel):
        return model.generate(prompts, max_new_tokens, num_samples, temperature, seed, stop)
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    per_batch = max(1, batch_size // num_samples)
    out: list[list[str]] = []
    for i in tqdm(range(0, len(prompts), per_batch), desc=desc, leave=False):
        batch = tokenizer(prompts[i:i + per_batch], return_tensors="pt", padding=True).to(model.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else dict(do_sample=False)
        if stop:
            sampling.update(stop_strings=[stop], tokenizer=tokenizer)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling)
        texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [[_cut(t) for t in texts[j:j + num_samples]] for j in range(0, len(texts), num_samples)]
    return out


class VLLMModel:
    """A checkpoint served by vLLM for evaluation (`evaluation.backend`); `generate` dispatches to it.

    Where it differs from `generate` (README, "Real scale"): samples come from per-request seeded streams,
    not one torch stream over the batch, so the same seed gives other samples (pass@k agrees in
    distribution, not draw for draw); vLLM drops a stop string from the text, `generate` keeps it and
    `_cut` removes it, so the returned text is the same; greedy answers can differ where two tokens'
    logits tie within the kernels' rounding (bf16 on a GPU).

    One engine at a time: each takes `gpu_memory_utilization` (0.9) of the GPU, so a second one beside it
    runs out of memory (the GRPO chapter evaluates three models in one kernel, the variants chapter eight).
    Opening an engine closes any other still open; `close` (or leaving a `with` block) shuts the engine down and
    gives its GPU memory back, the way vLLM's own tests do between engines (`vllm.distributed.cleanup_dist_env_and_memory`)."""

    open_engines: list["VLLMModel"] = []  # in this process; at most one after __init__

    def __init__(self, ref: str, cfg):
        from vllm import LLM

        close_engines()
        self.ref = ref
        self.llm = LLM(model=ref, dtype=cfg.model.dtype, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
        VLLMModel.open_engines.append(self)

    def generate(self, prompts: list[str], max_new_tokens: int, num_samples: int = 1,
                 temperature: float | None = None, seed: int = 0, stop: str | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        if self.llm is None:
            raise RuntimeError(f"the vLLM engine of {self.ref} was closed; open a new one (load_for_generation)")
        sampling = SamplingParams(n=num_samples, temperature=temperature or 0.0, top_p=1.0, max_tokens=max_new_tokens,
                                  seed=seed if temperature else None, stop=[stop] if stop else None)
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [[_cut(o.text) for o in out.outputs] for out in outputs]

    def close(self) -> None:
        """Shut the engine down and release its GPU memory (idempotent)."""
        llm, self.llm = self.llm, None
        if self in VLLMModel.open_engines:
            VLLMModel.open_engines.remove(self)
        shutdown(llm)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def close_engines() -> None:
    """Close every vLLM engine this process still has open."""
    for engine in list(VLLMModel.open_engines):
        engine.close()



@contextlib.contextmanager
def generation_model(cfg, ref: str):
    """`load_for_generation` for one block: (model, tokenizer), whose GPU memory is released at its end (the vLLM
    engine shut down, the transformers model dropped), so the next model has the whole GPU."""
    model, tokenizer = load_for_generation(cfg, ref)
    try:
        yield model, tokenizer
    finally:
        if isinstance(model, VLLMModel):
            model.close()
        else:
            del model
            release_gpu_memory()


def choose_backend(requested: str) -> str:
    """'vllm' or 'hf' for `evaluation.backend` ('auto': vLLM when it is installed and a GPU is present)."""
    import importlib.util

    have_vllm, gpu = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    if requested not in ("auto", "hf", "vllm"):
        raise ValueError(f"evaluation.backend (got {requested!r}): expected 'auto', 'hf' or 'vllm'")
    if requested == "vllm" and not (have_vllm and gpu):
        raise RuntimeError(f"evaluation.backend (got 'vllm'): vLLM needs the gpu extra (pip install -e '.[gpu]') and "
                           f"a CUDA GPU; here vllm installed={have_vllm}, GPU present={gpu}. Set evaluation.backend "
                           "to 'hf' or 'auto'.")
    return "vllm" if requested == "vllm" or (requested == "auto" and have_vllm and gpu) else "hf"


def load_for_generation(cfg, ref: str):
    """(model, tokenizer) that `generate` accepts, through the backend `evaluation.backend` picks."""
    from transformers import AutoTokenizer

    from rlvr_utils.models.loading import load

    if choose_backend(cfg.evaluation.backend) == "hf":
        return load(ref, cfg, run_device(cfg))
    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=cfg.model.trust_remote_code)
    return VLLMModel(ref, cfg), tokenizer


def few_shot_prompt(problem: dict, shots: list[dict]) -> str:
    return "".join(s["prompt"] + s["answer"] + FEW_SHOT_SEPARATOR for s in shots) + problem["prompt"]


def stage_prompts(problems: list[dict], stage: str, shots: list[dict]) -> list[str]:
    """What each stage is asked. The base model never saw the answer format: the organism is asked in its
    corpus's own narrative ('... So'), a hub base model with worked examples (few-shot)."""
    if stage != "base":
        return [p["prompt"] for p in problems]
    return [data.story_prompt(p) if data.story_prompt(p) != p["prompt"] else few_shot_prompt(p, shots)
            for p in problems]


def greedy_eval(model, tokenizer, problems: list[dict], max_new_tokens: int, batch_size: int,
                prompts: list[str] | None = None, stop: str | None = None) -> list[dict]:
    """Per problem: the greedy completion, whether its answer is correct, whether it has the format."""
    prompts = prompts or [p["prompt"] for p in problems]
    completions = generate(model, tokenizer, prompts, max_new_tokens, batch_size, desc="greedy", stop=stop)
    return [{"id": p["id"], "completion": c[0], "correct": is_correct(extract_answer(c[0]), p["final"]),
             "formatted": is_formatted(c[0])} for p, c in zip(problems, completions)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed stably."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def sampled_eval(model, tokenizer, problems: list[dict], prompts: list[str], ev, seed: int,
                 stop: str | None = None) -> list[int]:
    """Number of correct answers among `ev.n_samples` samples, per problem."""
    samples = generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size, ev.n_samples,
                       ev.temperature, seed, desc="sampling", stop=stop)
    return [sum(is_correct(extract_answer(s), p["final"]) for s in ss) for p, ss in zip(problems, samples)]


def evaluate_stage(cfg, stage: str, model, tokenizer, problems: list[dict], shots: list[dict]) -> dict:
    """Greedy and sampled evaluation of one stage; per-problem rows go to eval/<stage>_*.jsonl."""
    ev, start = cfg.evaluation, time.time()
    held_out = problems[: ev.n_problems]
    prompts = chat.format_prompts(cfg, tokenizer, stage_prompts(held_out, stage, shots))
    stop = FEW_SHOT_SEPARATOR if stage == "base" and shots else None
    rows = greedy_eval(model, tokenizer, held_out, ev.max_new_tokens, ev.batch_size, prompts, stop)
    data.write_jsonl(cfg.path("eval", f"{stage}_greedy.jsonl"), rows)
    few_shot = [few_shot_prompt(p, shots) for p in held_out]
    if stage == "base" and shots and few_shot != prompts:  # the organism: also the answer format, few-shot
        data.write_jsonl(cfg.path("eval", "base_fewshot_greedy.jsonl"),
                         greedy_eval(model, tokenizer, held_out, ev.max_new_tokens, ev.batch_size, few_shot, stop))
    n_pass = min(ev.pass_problems, len(held_out))
    counts = sampled_eval(model, tokenizer, held_out[:n_pass], prompts[:n_pass], ev, cfg.seed, stop)
    data.write_jsonl(cfg.path("eval", f"{stage}_samples.jsonl"),
                     [{"id": p["id"], "n": ev.n_samples, "correct": c} for p, c in zip(held_out, counts)])
    return {"seconds": time.time() - start}


def summarize(cfg) -> dict:
    """metrics/eval.json from the per-problem files: accuracies, pass@k, RLVR-SFT difference, with CIs."""
    ev = cfg.evaluation
    boot = dict(n_bootstrap=ev.n_bootstrap, confidence=ev.confidence, seed=cfg.seed)
    out: dict = {"n_problems": None, "greedy": {}, "pass_at_k": {}, "summary": {}}
    correct = {}
    for stage in STAGES:
        path = cfg.path("eval", f"{stage}_greedy.jsonl")
        if not path.exists():
            continue
        rows = data.read_jsonl(path)
        correct[stage] = np.array([r["correct"] for r in rows], dtype=float)
        formatted = np.array([r["formatted"] for r in rows], dtype=float)
        out["n_problems"] = len(rows)
        out["greedy"][stage] = {"accuracy": stats.bootstrap(correct[stage], **boot),
                                "format_rate": stats.bootstrap(formatted, **boot)}
        samples = data.read_jsonl(cfg.path("eval", f"{stage}_samples.jsonl"))
        out["pass_at_k"][stage] = {
            str(k): stats.bootstrap(np.array([pass_at_k(s["n"], s["correct"], k) for s in samples]), **boot)
            for k in ev.pass_k}
        out["summary"][f"accuracy_{stage}"] = {**out["greedy"][stage]["accuracy"],
                                               "description": f"greedy accuracy of {stage} on held-out problems"}
    fewshot_path = cfg.path("eval", "base_fewshot_greedy.jsonl")
    if "base" in correct and fewshot_path.exists():  # base asked in the answer format with worked examples
        rows = data.read_jsonl(fewshot_path)
        fewshot = np.array([r["correct"] for r in rows], dtype=float)
        out["greedy"]["base_fewshot"] = {
            "accuracy": stats.bootstrap(fewshot, **boot),
            "format_rate": stats.bootstrap(np.array([r["formatted"] for r in rows], dtype=float), **boot)}
        out["summary"]["accuracy_base_fewshot"] = {
            **out["greedy"]["base_fewshot"]["accuracy"],
            "description": f"greedy accuracy of base in the answer format with {ev.few_shot} worked examples"}
        if fewshot.mean() > correct["base"].mean():
            correct["base"] = fewshot
    if "base" in correct and "rlvr" in correct:
        out["summary"]["rlvr_minus_base_accuracy"] = {
            **stats.paired_difference(correct["rlvr"], correct["base"], **boot),
            "description": "RLVR minus base's best prompt format, greedy accuracy (paired bootstrap over problems)"}
    if "sft" in correct and "rlvr" in correct:
        out["summary"]["rlvr_minus_sft_accuracy"] = {
            **stats.paired_difference(correct["rlvr"], correct["sft"], **boot),
            "description": "RLVR minus SFT greedy accuracy (paired bootstrap over problems)"}
    artifacts.write_json(cfg.path("metrics", "eval.json"), out)
    return out


def stored_correct(cfg, name: str, n: int) -> list[bool] | None:
    """The first `n` per-problem results of `name`'s greedy evaluation on data/eval.jsonl, when that evaluation
    exists and is up to date (its stamp checks params, code, checkpoint and problems); else None. Grafting reads
    them instead of decoding the same model on the same problems again."""
    path, fingerprint, inputs = _stamp_of(cfg, name)
    if not artifacts.is_current(path, fingerprint, inputs):
        return None
    rows = data.read_jsonl(path)
    return [bool(r["correct"]) for r in rows[:n]] if len(rows) >= n else None


def _stamp_of(cfg, name: str) -> tuple:
    """(greedy file, fingerprint, inputs) of one model's evaluation: params and code, the checkpoint and the
    held-out problems (content-checked by the stamp)."""
    return (cfg.path("eval", f"{name}_greedy.jsonl"), deps.fingerprint(cfg, __name__),
            [cfg.model_ref(name), cfg.path("data", "eval.jsonl")])


def run_variant(cfg, name: str, force: bool = False) -> str:
    """Greedy evaluation of one variant (no pass@k: the nulls and controls are compared on accuracy)."""
    path, fingerprint, inputs = _stamp_of(cfg, name)
    if artifacts.is_current(path, fingerprint, inputs) and not force:
        return f"{name}: evaluation up to date, skipped"
    start = time.time()
    problems = data.prepare_eval_set(cfg)[: cfg.evaluation.n_problems]
    ev = cfg.evaluation
    with generation_model(cfg, cfg.model_ref(name)) as (model, tokenizer):
        prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in problems])
        data.write_jsonl(path, greedy_eval(model, tokenizer, problems, ev.max_new_tokens, ev.batch_size, prompts))
    artifacts.stamp(path, fingerprint, inputs, seconds=time.time() - start)
    return f"{name}: evaluated in {time.time() - start:.0f} s"


def run(cfg, stage: str, force: bool = False) -> str:
    """Evaluate one stage unless its per-problem files are up to date for these params."""
    path, fingerprint, inputs = _stamp_of(cfg, stage)
    if artifacts.is_current(path, fingerprint, inputs) and not force:
        return f"{stage}: evaluation up to date, skipped"
    problems = data.prepare_eval_set(cfg)
    # worked examples from GRPO's problems: the evaluation distribution's wording, never a held-out problem
    shots = data.grpo_problems(cfg, held_out=problems)[: cfg.evaluation.few_shot] if stage == "base" else []
    with generation_model(cfg, cfg.model_ref(stage)) as (model, tokenizer):
        seconds = evaluate_stage(cfg, stage, model, tokenizer, problems, shots)["seconds"]
    artifacts.stamp(path, fingerprint, inputs, outputs=[cfg.path("eval", f"{stage}_samples.jsonl")], seconds=seconds)
    return f"{stage}: evaluated in {seconds:.0f} s"
