"""Extraction: run a model over the shared token cache and stream the selected activations into the store.

`extract` hooks the TransformerLens sites (`families.SITES`) through the one hook layer, keeps only the
selected positions (see `tokens`), writes shards and joins them (see `store`). `run_token_cache` and
`run_extract` are the extraction chapter's steps on one run; with `extract.num_processes` > 1,
`launch_extract` splits the shards between processes (`accelerate launch`), each holding a whole model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from rlvr_utils.activations.store import (STORE_DTYPES, ActivationStore, file_key, join_shards, keep_matching_shards,
                                          shard_path, store_fingerprint, stored_rows, write_shard)
from rlvr_utils.activations.tokens import TokenCache, build_token_cache, check_selection, iter_batches, select_positions
from rlvr_utils.core import artifacts, deps, lock
from rlvr_utils.core.device import run_device
from rlvr_utils.models import chat
from rlvr_utils.models.families import SITES, site_name
from rlvr_utils.models.hooks import capture, check_sites_layers
from rlvr_utils.training.data import read_jsonl
from rlvr_utils.training.launch import accelerate_command

PARAMS = ("extract", "model")

log = logging.getLogger(__name__)


def extract(model, cache: TokenCache, out_dir: str | Path, model_name: str, sites=SITES,
            layers: list[int] | None = None, positions=("last_prompt", "completion"), batch_size: int = 32,
            shard_size: int = 64, fingerprint: str = "", dtype: str = "float32", inputs=()) -> ActivationStore:
    """Run `model` over the token cache and store the selected activations under out_dir/model_name.

    Work goes in shards of `shard_size` cache rows, each written atomically as a safetensors file whose
    metadata records model, sites, positions and token cache hash; an interrupted run resumes from the
    shards it finished. Peak memory is one shard, whatever the number of samples. The finished store
    is skipped when its stamp matches `fingerprint` (callers pass what identifies the weights and
    params) combined with the cache hash and the arguments here.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1")
    if len(cache) == 0:
        raise ValueError("the token cache is empty: nothing to extract")
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(STORE_DTYPES)}")
    full_fp = store_fingerprint(cache, model_name, sites, layers, positions, fingerprint, dtype)
    layers = check_sites_layers(model, sites, layers)
    positions = list(positions)
    for sel in positions:
        check_selection(sel)
    site_names = [site_name(l, s) for l in layers for s in SITES if s in sites]
    folder = Path(out_dir) / model_name
    store = ActivationStore(out_dir)
    if artifacts.is_current(folder, full_fp, inputs):  # inputs: checkpoint, token cache (content-checked)
        log.info("activations of %s are up to date (%s): skipping", model_name, folder)
        return store

    rank, world, barrier = _process_group()
    shard_dir = folder / "shards"
    if rank == 0:
        keep_matching_shards(folder, shard_dir, full_fp)
    barrier()
    n_shards = (len(cache) + shard_size - 1) // shard_size
    todo = [i for i in range(n_shards) if not shard_path(shard_dir, i).exists()]
    if len(todo) < n_shards:
        log.info("%s: resuming, %d of %d shards already done", model_name, n_shards - len(todo), n_shards)
    todo = todo[rank::world]  # data parallel: each process its share of the shards, each a whole model
    if world > 1:
        print(f"extract {model_name}: process {rank} of {world} takes shards {todo}", flush=True)

    def shard_rows(i):
        return list(range(i * shard_size, min(len(cache), (i + 1) * shard_size)))

    device = next(model.parameters()).device
    started = time.perf_counter()
    n_batches = sum(-(-len(shard_rows(i)) // batch_size) for i in todo)
    with tqdm(total=n_batches, desc=f"extract {model_name}") as bar:
        for i in todo:
            rows = shard_rows(i)
            arrays = _extract_rows(model, cache, rows, site_names, positions, batch_size, device, dtype, bar)
            meta = {"model": model_name, "token_cache": cache.fingerprint, "fingerprint": full_fp,
                    "rows": f"{rows[0]}-{rows[-1]}", "sites": json.dumps(site_names), "positions": json.dumps(positions)}
            write_shard(arrays, shard_path(shard_dir, i), meta)
    log.info("%s: extracted %d shards in %.1f s", model_name, len(todo), time.perf_counter() - started)
    barrier()
    if rank != 0:  # the main process joins the shards; the others wait for the finished store
        barrier()
        return store
    join_shards(folder, shard_dir, n_shards, [file_key(s, sel) for s in site_names for sel in positions]
                + [file_key("index", sel) for sel in positions])
    artifacts.write_json(folder / "meta.json", {
        "model": model_name, "token_cache": cache.fingerprint, "token_source": cache.source,
        "sites": [s for s in SITES if s in sites], "layers": layers, "site_names": site_names,
        "positions": positions, "counts": {sel: stored_rows(folder, sel) for sel in positions}, "dtype": dtype,
        "d_model": int(model.config.hidden_size),
    })
    shutil.rmtree(shard_dir)
    artifacts.stamp(folder, full_fp, inputs)
    barrier()
    return store


def _extract_rows(model, cache, rows, site_names, positions, batch_size, device, dtype, bar) -> dict[str, np.ndarray]:
    """Activations of one shard's rows at every selection: {"site@selection": [n, d], "index@selection": [n, 2]}.
    Positions are computed per shard, so no bookkeeping grows with the whole cache."""
    wanted = {sel: select_positions(cache, sel, rows) for sel in positions}
    sites = sorted({n.split(".")[2] for n in site_names})
    layers = sorted({int(n.split(".")[1]) for n in site_names})
    parts: dict[str, list[np.ndarray]] = {}
    for batch_rows, input_ids, mask in iter_batches(cache, batch_size, rows):
        where = {r: i for i, r in enumerate(batch_rows)}
        # one gather of the union of wanted positions per site, then split per selection
        union = sorted({(where[r], p) for pairs in wanted.values() for r, p in pairs if r in where})
        slot = {bp: k for k, bp in enumerate(union)}
        b_idx = torch.tensor([b for b, _ in union], dtype=torch.long, device=device)
        p_idx = torch.tensor([p for _, p in union], dtype=torch.long, device=device)
        with torch.inference_mode(), capture(model, sites, layers, transform=lambda t: t[b_idx, p_idx]) as acts:
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
        for sel, pairs in wanted.items():
            mine = [(where[r], p) for r, p in pairs if r in where]
            take = torch.tensor([slot[bp] for bp in mine], dtype=torch.long, device=device)
            parts.setdefault(file_key("index", sel), []).append(
                np.array([(batch_rows[b], p) for b, p in mine], dtype=np.int64).reshape(-1, 2))
            for name in site_names:
                parts.setdefault(file_key(name, sel), []).append(
                    to_stored(acts[name][take], dtype))
        bar.update(1)
    return {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}


def to_stored(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor as the store keeps it. bfloat16 is what a bf16 model computes, kept bit for bit (float16 would
    overflow above 65504, where residual streams of large models reach); float32 and float16 as before."""
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return t.float().cpu().numpy().astype(STORE_DTYPES[dtype])


def _process_group() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) inside a data-parallel launch (accelerate launch / torchrun: WORLD_SIZE
    > 1), else (0, 1, no-op). On CPU the processes join a gloo group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState  # heavy, and only needed inside a launch

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def launch_extract(cfg, stage: str) -> str:
    """Extract one stage with `extract.num_processes` processes (`accelerate launch -m rlvr_utils extract`):
    the token cache's shards are split between them, and the store is the one a single process writes.
    Returns the processes' output."""
    params_file = artifacts.write_json(cfg.path("trainer", f"extract-{stage}-params.json"), cfg.model_dump(mode="json"))
    cmd = accelerate_command(cfg.extract.num_processes) + [
        "-m", "rlvr_utils", "extract", "--stage", stage, "--params", str(params_file)]
    with lock.run_lock(cfg.run_dir):  # the launched processes see that this one holds the run's lock
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"extraction of {stage} failed under accelerate launch (exit {result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


# --- one run: the extraction chapter's steps ---------------------------------------------------------------
def run_token_cache(cfg) -> TokenCache:
    """The run's shared token cache (runs/<name>/tokens/): first `extract.n_problems` held-out problems,
    completions from eval/<extract.completions_from>_greedy.jsonl or the gold answers; rebuilt only when
    those inputs change (the key is the data's: the values and file contents the cache is made from)."""
    from transformers import AutoTokenizer  # heavy: only when the cache is rebuilt

    source = cfg.extract.completions_from
    eval_path = cfg.path("data", "eval.jsonl")
    problems = read_jsonl(eval_path)[: cfg.extract.n_problems]
    completions_path = None if source == "gold" else cfg.path("eval", f"{source}_greedy.jsonl")
    inputs = [source, cfg.extract.n_problems, artifacts.file_digest(eval_path) if eval_path.exists() else None,
              artifacts.file_digest(completions_path) if completions_path and completions_path.exists() else None]
    fingerprint = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    folder = cfg.path("tokens")
    inputs = [p for p in (eval_path, completions_path) if p is not None]  # content-checked by the stamp
    if artifacts.is_current(folder, fingerprint, inputs):
        log.info("token cache is up to date (%s)", folder)
        return TokenCache.load(folder)

    completions = None
    if completions_path is not None:
        completions = {int(r["id"]): r["completion"] for r in read_jsonl(completions_path)}
        kept = [p for p in problems if p["id"] in completions]
        if len(kept) < len(problems):
            log.warning("%s covers %d of the first %d held-out problems: using those %d",
                        completions_path.name, len(kept), len(problems), len(kept))
        problems = kept
    tokenizer_ref = cfg.model_ref("sft" if source in ("gold", "base") else source)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the prompts as the source model was asked them (its chat template with model.chat_template: auto)
    prompts = chat.format_prompts(cfg, tokenizer, [p["prompt"] for p in problems])
    problems = [{**p, "prompt": q} for p, q in zip(problems, prompts)]
    cache = build_token_cache(tokenizer, problems, completions, source)
    cache.save(folder)
    artifacts.stamp(folder, fingerprint, inputs, token_cache=cache.fingerprint, n_sequences=len(cache))
    log.info("token cache: %d sequences, %d completion tokens (%s completions)",
             len(cache), sum(cache.completion_lengths), source)
    return cache


def run_extract(cfg, stage: str, cache: TokenCache, device: str | None = None) -> ActivationStore:
    """Activations of one model (a stage or a treatment) under runs/<name>/activations/<stage>/; skipped when
    this module's params and code, the checkpoint and the token cache are unchanged; resumes after an
    interruption."""
    from rlvr_utils.models import loading  # heavy (transformers): only when a model must be loaded

    store_dir = cfg.path("activations")
    e = cfg.extract
    ref = cfg.model_ref(stage)
    fingerprint = deps.fingerprint(cfg, __name__) + artifacts.checkpoint_fingerprint(ref)
    store = ActivationStore(store_dir)
    expected = store_fingerprint(cache, stage, e.sites, e.layers, e.positions, fingerprint, e.dtype)
    inputs = [ref, cfg.path("tokens")]  # content-checked by the stamp
    if artifacts.is_current(store_dir / stage, expected, inputs):  # checked before loading the weights
        log.info("activations of %s are up to date: skipping", stage)
        return store
    if e.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        launch_extract(cfg, stage)
        return store
    device = device or run_device(cfg)  # in a launch, 'auto' is this process's own GPU (LOCAL_RANK)
    started = time.perf_counter()
    model, _ = loading.load(ref, cfg, device)
    extract(model, cache, store_dir, stage, sites=e.sites, layers=e.layers, positions=e.positions,
            batch_size=e.batch_size, shard_size=e.shard_size, fingerprint=fingerprint, dtype=e.dtype, inputs=inputs)
    log.info("%s: activations ready in %.1f s", stage, time.perf_counter() - started)
    return store
