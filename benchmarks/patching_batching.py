"""How long patching takes on a random model of the organism's size: total effects with several patches side by
side in one forward pass (patching.sweep's `patches_per_forward`), and direct effects (one forward pass per layer
and component for the same-input outputs). Prints times measured in one run.

    .venv/bin/python benchmarks/patching_batching.py [n_problems]
"""
import sys
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils.instruments.patching import batches as batching, core as patching


def main(n_problems: int = 64, seq: int = 90, batch_size: int = 16, answer_tokens: int = 3):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=400, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    receiver, donor = (AutoModelForCausalLM.from_config(config).eval() for _ in range(2))
    ids = torch.randint(1, 400, (n_problems, seq))
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, seq - 1 - answer_tokens:seq - 1] = True
    batches = [batching.PatchBatch(ids[i:i + batch_size], torch.ones_like(ids[i:i + batch_size]),
                                   score[i:i + batch_size]) for i in range(0, n_problems, batch_size)]
    patches = patching.layer_patches(4, ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"), all_layers=True)
    seconds = {}
    for k in (1, 2, 4, 16):
        start = time.perf_counter()
        patching.sweep(receiver, donor, batches, patches, patches_per_forward=k, progress=False)
        seconds[k] = time.perf_counter() - start
    start = time.perf_counter()
    patching.direct_effects(receiver, donor, batches, progress=False)
    direct = time.perf_counter() - start
    print(f"{n_problems} problems x {len(patches)} patches, {seq} tokens, {torch.get_num_threads()} threads")
    for k, s in seconds.items():
        print(f"patches_per_forward={k:>2}: {s:6.2f} s  ({seconds[1] / s:.2f}x faster than one at a time)")
    print(f"direct effects (8 same-input passes + 2): {direct:6.2f} s; one treatment = total + direct")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
