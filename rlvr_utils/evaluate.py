"""Evaluation of base, SFT and RLVR on held-out problems: greedy accuracy, format rate, unbiased pass@k.

Every number carries a bootstrap interval over problems. The base model never saw the
question / answer / '####' format, so it is asked with a few-shot prompt: that measures what it knows,
not its ignorance of the format.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import artifacts, data, stats
from .rewards import extract_answer, is_correct, is_formatted

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
    sequence also ends at `stop` (a few-shot prompt's separator, which a base model never ends on its own)."""
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
    prompts = stage_prompts(held_out, stage, shots)
    stop = FEW_SHOT_SEPARATOR if stage == "base" and shots else None
    rows = greedy_eval(model, tokenizer, held_out, ev.max_new_tokens, ev.batch_size, prompts, stop)
    data.write_jsonl(cfg.path("eval", f"{stage}_greedy.jsonl"), rows)
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
    if "sft" in correct and "rlvr" in correct:
        out["summary"]["rlvr_minus_sft_accuracy"] = {
            **stats.paired_difference(correct["rlvr"], correct["sft"], **boot),
            "description": "RLVR minus SFT greedy accuracy (paired bootstrap over problems)"}
    artifacts.write_json(cfg.path("metrics", "eval.json"), out)
    return out


def run(cfg, stage: str, force: bool = False) -> str:
    """Evaluate one stage unless its per-problem files are up to date for these params."""
    from .models import load_stage
    from .train import STAGE_SECTIONS

    path = cfg.path("eval", f"{stage}_greedy.jsonl")
    fingerprint = cfg.fingerprint(*STAGE_SECTIONS[stage], "evaluation")
    if artifacts.is_current(path, fingerprint) and not force:
        return f"{stage}: evaluation up to date, skipped"
    problems = data.prepare_eval_set(cfg)
    shots = data.sft_problems(cfg, held_out=problems)[: cfg.evaluation.few_shot] if stage == "base" else []
    model, tokenizer = load_stage(cfg, stage)
    seconds = evaluate_stage(cfg, stage, model, tokenizer, problems, shots)["seconds"]
    artifacts.stamp(path, fingerprint, seconds=seconds)
    return f"{stage}: evaluated in {seconds:.0f} s"
