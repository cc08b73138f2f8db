"""The rehearsal's base model: a tiny Qwen2.5-style checkpoint and a real-style tokenizer, built offline.

`params/rehearsal.yaml` runs every code path of the real-scale file (BPE tokenizer that merges digits,
NuminaMath-CoT-schema SFT data, GSM8K GRPO and evaluation, `accelerate launch` with two processes) on a
model small enough for a 2-core CPU. Nothing here downloads: the tokenizer is trained with `tokenizers`
on the GSM8K text shipped in tests/data/, and the model is briefly pretrained on the same text.

    python -m rlvr_utils.training.rehearsal --out runs/rehearsal-base      # ~1 min on 2 cores

The numbers a rehearsal produces mean nothing: it proves that the path runs, not what RLVR does.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from rlvr_utils.core import artifacts
from rlvr_utils.training import data
from rlvr_utils.core.config import resolve

# Qwen2.5's special tokens and chat template (ChatML), so a chat-formatted data path finds what it expects.
EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
TEXT_FILES = ("tests/data/numina/gsm8k_numina_cot.jsonl", "tests/data/gsm8k/train_sample.jsonl")
PROMPT = "Question: {question}\nAnswer:"  # the real-scale prompt template


def corpus(files=TEXT_FILES) -> list[str]:
    """Question + worked answer of every training problem shipped in the repo (never the test split)."""
    docs = []
    for f in files:
        for raw in data.read_jsonl(resolve(f)):
            if "problem" in raw:  # NuminaMath-CoT schema
                docs.append(PROMPT.format(question=raw["problem"]) + " " + raw["solution"])
            else:
                row = data.gsm8k_row(raw, 0, PROMPT)
                docs.append(row["prompt"] + row["answer"])
    return docs


def build_tokenizer(texts: list[str], vocab_size: int = 2048):
    """Byte-level BPE with GPT-2's pre-tokenizer: digit runs stay one pre-token, so merges join digits
    ('12', '150') as real tokenizers do, unlike the organism's one-token-per-digit tokenizer.

    Caution (transformers 5): `AutoTokenizer` loads any folder whose config says model_type 'qwen2' as
    `Qwen2Tokenizer`, which replaces the saved pre-tokenizer by Qwen2's, and Qwen2's isolates every digit.
    So the saved Qwen2.5-style checkpoint tokenizes digits one by one everywhere the code loads it, exactly as
    the real Qwen2.5 does; the digit merges act only where this tokenizer object is used directly, or in
    a checkpoint of another architecture (Llama 3 and OLMo 2 style tokenizers do merge digits)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None,
                                   model_max_length=1024, chat_template=CHAT_TEMPLATE)


def model_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                 intermediate_size: int = 176, vocab_size: int | None = None):
    """Qwen2.5-1.5B's config fields (GQA, rope_theta 1e6, tied embeddings, RMSNorm eps 1e-6, no sliding
    window, q/k/v biases of the qwen2 architecture), shrunk. `vocab_size` pads the embedding beyond the
    tokenizer, as Qwen2.5's 151,936 rows do (benchmarks/gpu_smoke.py builds the full 1.5B shape)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        hidden_act="silu", max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
        tie_word_embeddings=True, use_sliding_window=False, max_window_layers=num_layers, attention_dropout=0.0,
        initializer_range=0.02, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=["Qwen2ForCausalLM"])


def pretrain(model, tokenizer, texts: list[str], steps: int, seq_len: int = 128, batch_size: int = 16,
             lr: float = 3e-3, seed: int = 0) -> list[float]:
    """A brief next-token pretraining on packed documents, so the base writes GSM8K-like text, not noise."""
    from rlvr_utils.training.organism import pack_documents

    rows = [r for r in pack_documents(texts, tokenizer, seq_len) if len(r) == seq_len] or \
        pack_documents(texts, tokenizer, seq_len)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        batch = [rng.choice(rows) for _ in range(batch_size)]
        width = max(map(len, batch))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def build(out: str | Path, pretrain_steps: int = 60, vocab_size: int = 2048, seed: int = 0,
          **shape) -> dict:
    """Write the rehearsal base checkpoint (safetensors + tokenizer) to `out`, atomically; returns a summary
    (also saved as out/rehearsal.json)."""
    from transformers import AutoModelForCausalLM

    start = time.time()
    texts = corpus()
    tokenizer = build_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(tokenizer, **shape))
    losses = pretrain(model, tokenizer, texts, pretrain_steps, seed=seed) if pretrain_steps else []
    summary = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
               "pretrain_steps": pretrain_steps, "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, "documents": len(texts), "seed": seed,
               "seconds": round(time.time() - start, 1), "note": "rehearsal model: its numbers mean nothing"}
    with artifacts.atomic_dir(resolve(out)) as tmp:
        model.eval().save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "rehearsal.json").write_text(json.dumps(summary, indent=1))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlvr_utils.training.rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/rehearsal-base", help="checkpoint folder (params/rehearsal.yaml's "
                        "model.base)")
    parser.add_argument("--pretrain-steps", type=int, default=60, help="steps of next-token pretraining on the "
                        "GSM8K text (default: %(default)s; the rehearsal needs a model that runs, not one that knows)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="size of the BPE vocabulary trained on that "
                        "text (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and data order (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = build(args.out, args.pretrain_steps, args.vocab_size, args.seed)
    print(f"rehearsal base model -> {resolve(args.out)}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
