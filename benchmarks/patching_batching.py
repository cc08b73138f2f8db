"""How much running several patches side by side in one forward pass saves (patching.sweep's
`patches_per_forward`), on a random model of the organism's size. Prints times measured in one run.

    .venv/bin/python benchmarks/patching_batching.py
"""
import time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rlvr_utils import patching


def main(n_problems: int = 64, seq: int = 90, batch_size: int = 16):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=400, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    receiver, donor = (AutoModelForCausalLM.from_config(config).eval() for _ in range(2))
    ids = torch.randint(1, 400, (n_problems, seq))
    batches = [patching.PatchBatch(ids[i:i + batch_size], torch.ones_like(ids[i:i + batch_size]),
                                   torch.full((len(ids[i:i + batch_size]),), seq - 1), ids[i:i + batch_size, 0])
               for i in range(0, n_problems, batch_size)]
    patches = patching.layer_patches(4, ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"), all_layers=True)
    seconds = {}
    for k in (1, 2, 4, 16):
        start = time.perf_counter()
        patching.sweep(receiver, donor, batches, patches, patches_per_forward=k, progress=False)
        seconds[k] = time.perf_counter() - start
    print(f"{n_problems} problems x {len(patches)} patches, {seq} tokens, {torch.get_num_threads()} threads")
    for k, s in seconds.items():
        print(f"patches_per_forward={k:>2}: {s:6.2f} s  ({seconds[1] / s:.2f}x faster than one at a time)")


if __name__ == "__main__":
    main()
