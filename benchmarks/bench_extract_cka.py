"""Benchmarks for issue 4: streamed extraction memory, hook overhead, and CKA estimator costs.

Every figure is a ratio of two measurements taken side by side in this one run (the machine's speed
and load cancel out). Run from the project root:

    .venv/bin/python benchmarks/bench_extract_cka.py            # ~2-4 minutes on 2 cores

Targets (issue 4): extraction peak memory flat when samples grow 4x; capturing every site of every
layer adds <= 15% to a plain forward pass (hidden 1024, 8 layers, batches of 8 x 256); the debiased
estimator builds no n x n matrix when n > d and costs <= 1.3x the biased one; linear_cka is >= 5x
faster than the naive Gram form at n = 4096, d = 1536.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlvr_utils import activations  # noqa: E402
from rlvr_utils.instruments.cka import maths as cka  # noqa: E402
from rlvr_utils.models import hooks  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB. On Linux, VmHWM: getrusage's ru_maxrss survives
    fork + exec, so a child would report at least its parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: list[str]) -> dict:
    """Run this script as a fresh process for one memory measurement; returns what it printed (JSON)."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(fns: dict, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each function over `repeats` rounds, run in turn, so drift in machine load hits all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = clock()
            fn()
            times[name].append(clock() - t)
    return times


# --- 1. extraction memory ------------------------------------------------------------------------------
def tiny_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=256, hidden_size=128, intermediate_size=512,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    return AutoModelForCausalLM.from_config(config).eval()


def synthetic_cache(n_problems: int) -> activations.TokenCache:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 256, size=128).tolist() for _ in range(n_problems)]
    return activations.TokenCache(seqs, [32] * n_problems, list(range(n_problems)), "gold", 0)


def child_extract(n_problems: int, do_extract: bool) -> dict:
    model, cache = tiny_model(), synthetic_cache(n_problems)
    with tempfile.TemporaryDirectory() as tmp:
        if do_extract:
            store = activations.extract(model, cache, tmp, "m", positions=["completion"], batch_size=16, shard_size=32)
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*.npy"))
            rows = store.meta("m")["counts"]["completion"]
        else:  # the same process without extraction: imports, model, cache, one forward batch
            _, ids, mask = next(activations.iter_batches(cache, 16))
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)
            size, rows = 0, 0
    return {"peak_mb": peak_rss_mb(), "store_mb": size / 2**20, "rows": rows}


def bench_memory(n: int) -> None:
    base = child(["extract", str(n), "0"])
    small, large = child(["extract", str(n), "1"]), child(["extract", str(4 * n), "1"])
    print(f"[memory] extraction of {n} vs {4 * n} problems ({small['rows']} vs {large['rows']} rows; "
          f"store {small['store_mb']:.0f} MB vs {large['store_mb']:.0f} MB on disk)")
    print(f"         peak RSS {small['peak_mb']:.0f} MB vs {large['peak_mb']:.0f} MB: ratio "
          f"{large['peak_mb'] / small['peak_mb']:.3f} (target ~1: flat)")
    print(f"         above the same process without extraction ({base['peak_mb']:.0f} MB): "
          f"{small['peak_mb'] - base['peak_mb']:+.0f} MB vs {large['peak_mb'] - base['peak_mb']:+.0f} MB, while the "
          f"data grew by {large['store_mb'] - small['store_mb']:.0f} MB")


# --- 2. hook overhead ------------------------------------------------------------------------------------
def bench_hooks(repeats: int) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=1024, hidden_size=1024, intermediate_size=2816,
                                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 1024, (8, 256))
    mask = torch.ones_like(ids)

    def plain():
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)

    def captured():
        with torch.inference_mode(), hooks.capture(model) as acts:
            model(input_ids=ids, attention_mask=mask)
        assert len(acts) == 4 * 8

    # CPU time of this process on one thread: on a shared machine other processes' load then stays out of
    # the measurement (wall time swings by 30% between identical passes there)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plain()  # warm-up
    times = interleaved({"plain": plain, "capture": captured}, repeats, clock=time.process_time)
    torch.set_num_threads(threads)
    pairs = [c / p for p, c in zip(times["plain"], times["capture"])]
    print(f"[hooks]  hidden 1024, 8 layers, batch 8 x 256, every site of every layer, {repeats} interleaved pairs, "
          f"CPU seconds on 1 thread: plain {' '.join(f'{t:.2f}' for t in times['plain'])}, capture "
          f"{' '.join(f'{t:.2f}' for t in times['capture'])}")
    print(f"         overhead: median of paired ratios {100 * (statistics.median(pairs) - 1):+.1f}%, fastest vs "
          f"fastest {100 * (min(times['capture']) / min(times['plain']) - 1):+.1f}% (target <= 15%)")


# --- 3. debiased vs biased -------------------------------------------------------------------------------
def child_no_gram(n: int, d: int) -> dict:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    before = peak_rss_mb()
    value = cka.linear_cka(X, Y, debiased=True)
    return {"peak_mb": peak_rss_mb(), "before_mb": before, "value": value}


def bench_debiased(n: int, d: int, big_n: int) -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    t = interleaved({"biased": lambda: cka.linear_cka(X, Y, debiased=False),
                     "debiased": lambda: cka.linear_cka(X, Y, debiased=True)}, 9)
    paired = statistics.median(u / b for b, u in zip(t["biased"], t["debiased"]))
    print(f"[debias] n={n}, d={d}, 9 interleaved pairs: biased fastest {min(t['biased']) * 1e3:.0f} ms, debiased "
          f"fastest {min(t['debiased']) * 1e3:.0f} ms: ratio {min(t['debiased']) / min(t['biased']):.2f} "
          f"(median of paired ratios {paired:.2f}; target <= 1.3)")
    out = child(["nogram", str(big_n), "64"])
    print(f"         n={big_n}, d=64, debiased, in a fresh process: peak RSS {out['peak_mb']:.0f} MB (data alone: "
          f"{out['before_mb']:.0f} MB); one n x n float64 matrix would need {big_n ** 2 * 8 / 2**30:.0f} GiB")


# --- 4. feature form vs naive Gram form -------------------------------------------------------------------------
def naive_gram_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Textbook form: K = X X^T, centred as H K H with H = I - 11^T/n; HSIC = <Kc, Lc> / (n-1)^2."""
    n = len(X)
    H = np.eye(n) - np.full((n, n), 1.0 / n)
    Kc, Lc = H @ (X @ X.T) @ H, H @ (Y @ Y.T) @ H
    return float((Kc * Lc).sum() / np.sqrt((Kc * Kc).sum() * (Lc * Lc).sum()))


def mean_centred_gram_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Gram form with O(n^2) centring (Kornblith et al.'s reference code), a stronger baseline."""
    def centre(K):
        return K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()
    Kc, Lc = centre(X @ X.T), centre(Y @ Y.T)
    return float((Kc * Lc).sum() / np.sqrt((Kc * Kc).sum() * (Lc * Lc).sum()))


def bench_forms(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(n, 64))
    X = Z @ rng.normal(size=(64, d)) + rng.normal(size=(n, d))
    Y = Z @ rng.normal(size=(64, d)) + rng.normal(size=(n, d))
    results = {}
    for name, fn in (("linear_cka", lambda: cka.linear_cka(X, Y)), ("naive", lambda: naive_gram_cka(X, Y)),
                     ("mean-centred Gram", lambda: mean_centred_gram_cka(X, Y))):
        t = time.perf_counter()
        results[name] = (fn(), time.perf_counter() - t)
    (v, t_fast), (v_naive, t_naive), (v_gram, t_gram) = results.values()
    print(f"[forms]  n={n}, d={d}: linear_cka {t_fast:.2f} s, naive Gram (H K H) {t_naive:.2f} s: "
          f"{t_naive / t_fast:.1f}x faster (target >= 5); |difference| {abs(v - v_naive):.1e}")
    print(f"         against the Gram form with O(n^2) centring ({t_gram:.2f} s): {t_gram / t_fast:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=4, help="interleaved forward passes per variant")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_extract(int(rest[0]), rest[1] == "1") if kind == "extract" else child_no_gram(*map(int, rest))
        print(json.dumps(result))
        return
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_memory(128)
    bench_hooks(args.repeats)
    bench_debiased(20_000, 256, 200_000)
    bench_forms(4096, 1536)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
