"""The model organism: a local tokenizer, a ~1M-parameter Qwen2 config, and its pretraining corpus.

Nothing here touches the network. The tokenizer is a byte-level BPE trained on the corpus with every
digit its own token, so numbers are read and written digit by digit (probes and patching rely on it).
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config

EOS = "<|endoftext|>"


def build_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None,
                                   model_max_length=512)


def model_config(org, tokenizer) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=org.hidden_size, intermediate_size=org.intermediate_size,
        num_hidden_layers=org.num_layers, num_attention_heads=org.num_heads, num_key_value_heads=org.num_heads,
        max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10_000.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )


def pack_documents(docs: list[str], tokenizer, seq_len: int) -> list[list[int]]:
    """Whole documents (each followed by EOS) packed greedily into rows of at most `seq_len` tokens."""
    rows, row = [], []
    for doc in docs:
        ids = tokenizer(doc)["input_ids"][: seq_len - 1] + [tokenizer.eos_token_id]
        if len(row) + len(ids) > seq_len:
            rows.append(row)
            row = []
        row += ids
    if row:
        rows.append(row)
    return rows
