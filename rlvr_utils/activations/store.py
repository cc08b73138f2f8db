"""Hook sites, the shared token cache, and the streamed activation store.

Every representation analysis compares base, SFT and RLVR at the same tokens. So sequences
(prompt + completion) are tokenised once into a `TokenCache` and replayed through every model;
position i is the same token in all of them. `extract` runs a model over the cache with forward hooks
on the TransformerLens sites of `architecture.SITES`, keeps only the selected positions, and streams
them to disk in shards (resumable), then joins the shards into one `.npy` per (site, position
selection) that `ActivationStore.read` memory-maps.

Position selections (all refer to positions p of a sequence, 0-based):
  - 'last_prompt': the last prompt token; its output predicts the first completion token.
  - 'completion':  every position whose next-token prediction is a completion token, i.e. p in
                   [prompt_length - 1, length - 2]: the states from which the model wrote its
                   completion. The last prompt token is included; the last completion token is not.
  - 'frac:F':      one position per sequence, the 'completion' position a fraction F of the way
                   through: p = prompt_length - 1 + round(F * (completion_length - 1)).
Sequences with an empty completion contribute no 'completion' or 'frac:' positions.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from rlvr_utils.core import artifacts
from rlvr_utils.training.data import read_jsonl
from rlvr_utils.models.families import SITES, blocks, site_name

log = logging.getLogger(__name__)

TOKENS_FILE = "tokens.json"
_STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


# --- token cache ----------------------------------------------------------------------------------
@dataclass
class TokenCache:
    """Token ids of prompt + completion for each problem, unpadded, shared by every model."""

    sequences: list[list[int]]
    prompt_lengths: list[int]
    problem_ids: list[int]
    source: str  # where completions came from: 'rlvr', 'sft', 'base' or 'gold'
    pad_token_id: int

    def __post_init__(self):
        n = len(self.sequences)
        if not (len(self.prompt_lengths) == len(self.problem_ids) == n):
            raise ValueError(
                f"TokenCache needs one prompt_length and problem_id per sequence: got {n} sequences, "
                f"{len(self.prompt_lengths)} prompt_lengths, {len(self.problem_ids)} problem_ids"
            )
        for row, (seq, p) in enumerate(zip(self.sequences, self.prompt_lengths)):
            if not 1 <= p <= len(seq):
                raise ValueError(f"prompt_lengths[{row}]={p} must be in 1..{len(seq)} (the sequence length)")

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def completion_lengths(self) -> list[int]:
        return [len(s) - p for s, p in zip(self.sequences, self.prompt_lengths)]

    @property
    def fingerprint(self) -> str:
        """Hash of the token ids, prompt lengths and problem ids: what every stored activation depends on."""
        data = json.dumps([self.sequences, self.prompt_lengths, self.problem_ids]).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write the cache to `folder` (replaced whole, atomically)."""
        with artifacts.atomic_dir(folder) as tmp:
            artifacts.write_json(tmp / TOKENS_FILE, {**asdict(self), "fingerprint": self.fingerprint})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> "TokenCache":
        data = artifacts.read_json(Path(folder) / TOKENS_FILE)
        data.pop("fingerprint", None)
        return cls(**data)


def build_token_cache(tokenizer, problems: list[dict], completions: dict[int, str] | None, source: str,
                      strict: bool = False) -> TokenCache:
    """Tokenise prompt + completion for each problem (eval.jsonl rows).

    `completions` maps problem id -> completion text; None uses each problem's gold `answer`.
    Prompt ids are `tokenizer(prompt)` (special tokens as the model saw them at evaluation); completion
    ids are `tokenizer(prompt + completion)` minus that prefix, so tokens merge across the boundary as
    they would in one text. When a merge across the boundary changes the prompt's ids (rare with byte
    BPE, e.g. '\\n' + '\\n'), the completion is tokenised on its own and appended instead; `strict`
    raises a ValueError then.
    """
    if completions is not None:
        missing = [p["id"] for p in problems if p["id"] not in completions]
        if missing:
            raise ValueError(f"completions has no entry for problem ids {missing[:10]} ({len(missing)} missing)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither pad_token_id nor eos_token_id: set tokenizer.pad_token first")
    sequences, prompt_lengths, ids, split = [], [], [], 0
    for problem in problems:
        prompt = problem["prompt"]
        completion = problem["answer"] if completions is None else completions[problem["id"]]
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion)["input_ids"]
        if full[: len(prompt_ids)] != prompt_ids:
            if strict:
                raise ValueError(
                    f"problem {problem['id']}: tokenising prompt + completion changes the prompt's tokens "
                    f"at the boundary (prompt ends {prompt[-20:]!r}, completion starts {completion[:20]!r})"
                )
            split += 1
            full = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
        sequences.append(list(full))
        prompt_lengths.append(len(prompt_ids))
        ids.append(int(problem["id"]))
    if split:
        log.warning("%d of %d completions were tokenised apart from their prompt (boundary merge)", split, len(problems))
    return TokenCache(sequences, prompt_lengths, ids, source, int(pad))


def iter_batches(cache: TokenCache, batch_size: int, rows: list[int] | None = None
                 ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield (rows, input_ids [B, T], attention_mask [B, T]), right-padded with the cache's pad id.

    Right padding keeps every real token at its own position (causal attention never looks right),
    so activations at real positions do not depend on the batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    rows = list(range(len(cache))) if rows is None else list(rows)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(cache.sequences[r]) for r in chunk)
        input_ids = torch.full((len(chunk), width), cache.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            seq = cache.sequences[r]
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        yield chunk, input_ids, mask


def _check_selection(selection: str) -> float | None:
    """None for the named selections, the fraction for 'frac:F'; ValueError otherwise."""
    if selection in ("last_prompt", "completion"):
        return None
    if selection.startswith("frac:"):
        try:
            frac = float(selection[5:])
        except ValueError:
            frac = -1.0
        if 0.0 <= frac <= 1.0:
            return frac
    raise ValueError(f"position selection {selection!r} is not one of 'last_prompt', 'completion', 'frac:<0..1>'")


def select_positions(cache: TokenCache, selection: str, rows: list[int] | None = None) -> list[tuple[int, int]]:
    """(row, position) pairs of a selection, in row order (see the module docstring for definitions);
    `rows` restricts it to some cache rows."""
    frac = _check_selection(selection)
    out = []
    for row in range(len(cache)) if rows is None else rows:
        seq, p = cache.sequences[row], cache.prompt_lengths[row]
        n_completion = len(seq) - p
        if selection == "last_prompt":
            out.append((row, p - 1))
        elif n_completion == 0:
            continue
        elif selection == "completion":
            out.extend((row, pos) for pos in range(p - 1, len(seq) - 1))
        else:
            out.append((row, p - 1 + int(round(frac * (n_completion - 1)))))
    return out


# --- hooks ----------------------------------------------------------------------------------------
def _tensor(output):
    """Attention modules return tuples (output, weights); decoder layers may too."""
    return output[0] if isinstance(output, tuple) else output


def _check_sites_layers(model, sites, layers) -> list[int]:
    n_layers = len(blocks(model))
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise ValueError(f"sites={list(sites)}: {bad} not in {SITES}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers={layers}: {bad} out of range for a model with {n_layers} layers (0..{n_layers - 1})")
    return layers


@contextlib.contextmanager
def capture(model, sites=SITES, layers: list[int] | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that fill a dict {"blocks.{l}.{site}": tensor [B, T, d]} on every forward pass.

    `transform` is applied to each captured tensor as it is produced (e.g. to keep a few positions and
    free the rest); by default the tensor is kept as is, detached. Hooks are removed on exit.
    """
    layers = _check_sites_layers(model, sites, layers)
    captured: dict[str, torch.Tensor] = {}
    keep = transform or (lambda t: t)

    def store(name):
        def hook(module, args, output):
            captured[name] = keep(_tensor(output).detach())
        return hook

    def store_input(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[name] = keep(hidden.detach())
        return hook

    handles = []
    all_blocks = blocks(model)
    try:
        for layer in layers:
            b = all_blocks[layer]
            if "hook_resid_pre" in sites:
                handles.append(b.block.register_forward_pre_hook(
                    store_input(site_name(layer, "hook_resid_pre")), with_kwargs=True))
            for site, module in (("hook_attn_out", b.attn_out), ("hook_mlp_out", b.mlp_out),
                                 ("hook_resid_post", b.block)):
                if site in sites:
                    handles.append(module.register_forward_hook(store(site_name(layer, site))))
        yield captured
    finally:
        for h in handles:
            h.remove()


# --- streamed activation store ----------------------------------------------------------------------
def _file_key(site: str, selection: str) -> str:
    return f"{site}@{selection}"


def _file_name(key: str) -> str:
    return key.replace("@", "__").replace(":", "-") + ".npy"


class ActivationStore:
    """Activations of several models at the same token positions, under one folder:

        <folder>/<model_name>/<site>__<selection>.npy   float [n, d], memory-mapped when read
        <folder>/<model_name>/index__<selection>.npy    int [n, 2]: (cache row, position) of each row
        <folder>/<model_name>/meta.json                 model, sites, layers, positions, token cache hash
        <folder>/<model_name>/_stamp.json               fingerprint of what made it (written last)
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def models(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob("*/meta.json"))

    def meta(self, model_name: str) -> dict:
        path = self.folder / model_name / "meta.json"
        if not path.exists():
            raise FileNotFoundError(f"no activations for model {model_name!r} in {self.folder}: run 04_extract first")
        return artifacts.read_json(path)

    def index(self, model_name: str, selection: str) -> np.ndarray:
        """(cache row, position) of each stored row of a selection, int [n, 2]."""
        return np.load(self._path(model_name, f"index@{selection}"), mmap_mode="r")

    def read(self, model_name: str, site: str, selection: str) -> tuple[np.ndarray, np.ndarray]:
        """(activations memmap [n, d], cache row of each activation [n]) for one site and selection."""
        return np.load(self._path(model_name, _file_key(site, selection)), mmap_mode="r"), \
            np.asarray(self.index(model_name, selection)[:, 0])

    def iter_chunks(self, model_name: str, site: str, selection: str, chunk_rows: int) -> Iterator[np.ndarray]:
        """Consecutive row chunks of one stored array, read from disk one at a time."""
        data, _ = self.read(model_name, site, selection)
        for start in range(0, len(data), chunk_rows):
            yield np.asarray(data[start:start + chunk_rows])

    def _path(self, model_name: str, key: str) -> Path:
        meta = self.meta(model_name)
        site, _, selection = key.partition("@")
        if selection not in meta["positions"]:
            raise ValueError(f"position selection {selection!r} was not extracted for {model_name}; have {meta['positions']}")
        if site != "index" and site not in meta["site_names"]:
            raise ValueError(f"site {site!r} was not extracted for {model_name}; have {meta['site_names']}")
        return self.folder / model_name / _file_name(key)


def store_fingerprint(cache: TokenCache, model_name: str, sites, layers, positions, fingerprint: str = "",
                      dtype: str = "float32") -> str:
    """What a stored model's activations depend on; `extract` skips when its stamp holds this value."""
    key = json.dumps([fingerprint, cache.fingerprint, model_name, sorted(sites), layers, list(positions), dtype])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
    if dtype not in _STORE_DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {list(_STORE_DTYPES)}")
    full_fp = store_fingerprint(cache, model_name, sites, layers, positions, fingerprint, dtype)
    layers = _check_sites_layers(model, sites, layers)
    positions = list(positions)
    for sel in positions:
        _check_selection(sel)
    site_names = [site_name(l, s) for l in layers for s in SITES if s in sites]
    folder = Path(out_dir) / model_name
    store = ActivationStore(out_dir)
    if artifacts.is_current(folder, full_fp, inputs):  # inputs: checkpoint, token cache (content-checked)
        log.info("activations of %s are up to date (%s): skipping", model_name, folder)
        return store

    rank, world, barrier = _process_group()
    shard_dir = folder / "shards"
    if rank == 0:
        _keep_matching_shards(folder, shard_dir, full_fp)
    barrier()
    n_shards = (len(cache) + shard_size - 1) // shard_size
    todo = [i for i in range(n_shards) if not (shard_dir / f"shard-{i:05d}.safetensors").exists()]
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
            _save_atomic(arrays, shard_dir / f"shard-{i:05d}.safetensors", meta)
    log.info("%s: extracted %d shards in %.1f s", model_name, len(todo), time.perf_counter() - started)
    barrier()
    if rank != 0:  # the main process joins the shards; the others wait for the finished store
        barrier()
        return store
    _join_shards(folder, shard_dir, n_shards, [_file_key(s, sel) for s in site_names for sel in positions]
                 + [_file_key("index", sel) for sel in positions])
    artifacts.write_json(folder / "meta.json", {
        "model": model_name, "token_cache": cache.fingerprint, "token_source": cache.source,
        "sites": [s for s in SITES if s in sites], "layers": layers, "site_names": site_names,
        "positions": positions, "counts": {sel: _stored_rows(folder, sel) for sel in positions}, "dtype": dtype,
        "d_model": int(model.config.hidden_size),
    })
    shutil.rmtree(shard_dir)
    artifacts.stamp(folder, full_fp, inputs)
    barrier()
    return store


def _process_group() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) inside a data-parallel launch (accelerate launch / torchrun: WORLD_SIZE
    > 1), else (0, 1, no-op). On CPU the processes join a gloo group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.wait_for_everyone


def launch_extract(cfg, stage: str) -> str:
    """Extract one stage with `extract.num_processes` processes (`accelerate launch -m rlvr_utils extract`):
    the token cache's shards are split between them, and the store is the one a single process writes.
    Returns the processes' output."""
    import subprocess

    from rlvr_utils.training.launch import accelerate_command

    params_file = artifacts.write_json(cfg.path("trainer", f"extract-{stage}-params.json"), cfg.model_dump(mode="json"))
    cmd = accelerate_command(cfg.extract.num_processes) + [
        "-m", "rlvr_utils", "extract", "--stage", stage, "--params", str(params_file)]
    with artifacts.run_lock(cfg.run_dir):  # the launched processes see that this one holds the run's lock
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"extraction of {stage} failed under accelerate launch (exit {result.returncode}):\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def _keep_matching_shards(folder: Path, shard_dir: Path, fingerprint: str) -> None:
    """Drop a finished store and any shards made by other params/weights; keep the rest for resuming."""
    for path in [folder / artifacts.STAMP, folder / "meta.json", *folder.glob("*.npy")]:
        path.unlink(missing_ok=True)  # stamp first: a half-cleared store never looks finished
    if not shard_dir.exists():
        return
    for path in shard_dir.iterdir():
        ok = path.name.endswith(".safetensors") and not path.name.startswith(".")
        if ok:
            with safe_open(str(path), framework="np") as f:
                ok = (f.metadata() or {}).get("fingerprint") == fingerprint
        if not ok:
            path.unlink()


def _stored_rows(folder: Path, selection: str) -> int:
    return int(np.load(folder / _file_name(_file_key("index", selection)), mmap_mode="r").shape[0])


def _extract_rows(model, cache, rows, site_names, positions, batch_size, device, dtype, bar) -> dict[str, np.ndarray]:
    """Activations of one shard's rows at every selection: {"site@selection": [n, d], "index@selection": [n, 2]}.
    Positions are computed per shard, so no bookkeeping grows with the whole cache."""
    wanted = {sel: select_positions(cache, sel, rows) for sel in positions}
    parts: dict[str, list[np.ndarray]] = {}
    for batch_rows, input_ids, mask in iter_batches(cache, batch_size, rows):
        where = {r: i for i, r in enumerate(batch_rows)}
        # one gather of the union of wanted positions per site, then split per selection
        union = sorted({(where[r], p) for pairs in wanted.values() for r, p in pairs if r in where})
        slot = {bp: k for k, bp in enumerate(union)}
        b_idx = torch.tensor([b for b, _ in union], dtype=torch.long, device=device)
        p_idx = torch.tensor([p for _, p in union], dtype=torch.long, device=device)
        with torch.inference_mode(), capture(model, _sites_of(site_names), _layers_of(site_names),
                                             transform=lambda t: t[b_idx, p_idx]) as acts:
            model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
        for sel, pairs in wanted.items():
            mine = [(where[r], p) for r, p in pairs if r in where]
            take = torch.tensor([slot[bp] for bp in mine], dtype=torch.long, device=device)
            parts.setdefault(_file_key("index", sel), []).append(
                np.array([(batch_rows[b], p) for b, p in mine], dtype=np.int64).reshape(-1, 2))
            for name in site_names:
                parts.setdefault(_file_key(name, sel), []).append(
                    acts[name][take].float().cpu().numpy().astype(_STORE_DTYPES[dtype]))
        bar.update(1)
    return {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}


def _sites_of(site_names):
    return sorted({n.split(".")[2] for n in site_names})


def _layers_of(site_names):
    return sorted({int(n.split(".")[1]) for n in site_names})


def _save_atomic(arrays: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _join_shards(folder: Path, shard_dir: Path, n_shards: int, keys: list[str]) -> None:
    """Concatenate each key over the shards into one .npy, one shard's array in memory at a time."""
    shards = [shard_dir / f"shard-{i:05d}.safetensors" for i in range(n_shards)]
    for key in keys:
        shapes, dtype = [], None
        for path in shards:
            with safe_open(str(path), framework="np") as f:
                sl = f.get_slice(key)
                shapes.append(sl.get_shape())
                dtype = sl.get_dtype()
        width = shapes[0][1]
        np_dtype = {"F32": np.float32, "F16": np.float16, "I64": np.int64}[dtype]
        target = folder / _file_name(key)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np_dtype)),
                                                       "fortran_order": False,
                                                       "shape": (sum(s[0] for s in shapes), width)})
            for path in shards:
                with safe_open(str(path), framework="np") as f:
                    out.write(np.ascontiguousarray(f.get_tensor(key)).tobytes())
        os.replace(tmp, target)


# --- one run: the notebook 03 steps ------------------------------------------------------------------------
def run_token_cache(cfg) -> TokenCache:
    """The run's shared token cache (runs/<name>/tokens/): first `extract.n_problems` held-out problems,
    completions from eval/<extract.completions_from>_greedy.jsonl or the gold answers; rebuilt only when
    those inputs change."""
    from transformers import AutoTokenizer

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
    cache = build_token_cache(tokenizer, problems, completions, source)
    cache.save(folder)
    artifacts.stamp(folder, fingerprint, inputs, token_cache=cache.fingerprint, n_sequences=len(cache))
    log.info("token cache: %d sequences, %d completion tokens (%s completions)",
             len(cache), sum(cache.completion_lengths), source)
    return cache


def run_extract(cfg, stage: str, cache: TokenCache, device: str | None = None) -> ActivationStore:
    """Activations of one stage ('base', 'sft', 'rlvr') under runs/<name>/activations/<stage>/; skipped when
    the extract params, the checkpoint and the token cache are unchanged; resumes after an interruption."""
    from rlvr_utils.models.loading import load

    store_dir = cfg.path("activations")
    e = cfg.extract
    ref = cfg.model_ref(stage)
    fingerprint = cfg.fingerprint("extract", "model") + artifacts.checkpoint_fingerprint(ref)
    store = ActivationStore(store_dir)
    expected = store_fingerprint(cache, stage, e.sites, e.layers, e.positions, fingerprint, e.dtype)
    inputs = [ref, cfg.path("tokens")]  # content-checked by the stamp
    if artifacts.is_current(store_dir / stage, expected, inputs):  # checked before loading the weights
        log.info("activations of %s are up to date: skipping", stage)
        return store
    if e.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        launch_extract(cfg, stage)
        return store
    device = device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model, _ = load(ref, cfg, device)
    extract(model, cache, store_dir, stage, sites=e.sites, layers=e.layers, positions=e.positions,
            batch_size=e.batch_size, shard_size=e.shard_size, fingerprint=fingerprint, dtype=e.dtype, inputs=inputs)
    log.info("%s: activations ready in %.1f s", stage, time.perf_counter() - started)
    return store


def describe_store(store: ActivationStore, selection: str) -> "pd.DataFrame":
    """Mean L2 norm of each stored site per model at one selection: a sanity check and a first look at
    how the three models' streams differ in scale. Columns: model, layer, site, norm, n, d."""
    import pandas as pd

    records = []
    for model in store.models():
        meta = store.meta(model)
        if selection not in meta["positions"]:
            continue
        for name in meta["site_names"]:
            layer, site = int(name.split(".")[1]), name.split(".")[2]
            chunks = [np.linalg.norm(c.astype(np.float64), axis=1) for c in store.iter_chunks(model, name, selection, 4096)]
            norms = np.concatenate(chunks) if chunks else np.zeros(0)
            records.append({"model": model, "layer": layer, "site": site.removeprefix("hook_"),
                            "norm": float(norms.mean()) if len(norms) else float("nan"), "n": len(norms),
                            "d": meta["d_model"]})
    return pd.DataFrame(records)


def plot_norms(table) -> "plt.Figure":
    """Mean activation norm per layer, one panel per site, one line per model."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from rlvr_utils.core.plots import STAGE_COLORS

    sites = list(dict.fromkeys(table["site"]))
    fig, axes = plt.subplots(1, len(sites), figsize=(3.6 * len(sites), 3.4), squeeze=False, sharex=True)
    for ax, site in zip(axes[0], sites):
        sns.lineplot(table[table["site"] == site], x="layer", y="norm", hue="model", marker="o",
                     palette={m: STAGE_COLORS.get(m, "black") for m in table["model"].unique()}, ax=ax)
        ax.set_title(site)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean L2 norm")
        ax.set_xticks(sorted(table["layer"].unique()))
    fig.suptitle("Activation norms per layer at the stored positions")
    fig.tight_layout()
    return fig
