"""Per-model chat templates (`model.chat_template`): an instruct checkpoint is asked in its own chat format.

With 'auto', a prompt given to a checkpoint whose tokenizer has a chat template is the question text as one user
turn through `tokenizer.apply_chat_template(add_generation_prompt=True)`; a checkpoint without one (a base model)
gets the text as it is. Evaluation, SFT, GRPO and the extraction's token cache all call `format_prompts` with the
tokenizer of the model that reads the prompt, so a model is measured on the prompts it was asked and trained on.

Every consumer tokenises the prompt text with the tokenizer's special tokens (`tokenizer(text)`: `generate`, TRL's
GRPO for text prompts, the token cache), so a template that writes the BOS token itself loses it here when the
tokenizer adds one anyway: the ids are then exactly `apply_chat_template(tokenize=True)`'s, with one BOS.
"""
from __future__ import annotations

PARAMS = ("model",)


def uses_template(cfg, tokenizer) -> bool:
    """Whether prompts for this tokenizer's model go through its chat template."""
    return cfg.model.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, text: str) -> str:
    """`text` as one user turn in the tokenizer's chat template, ready for the assistant's answer."""
    chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return chat[len(bos):] if adds_bos and chat.startswith(bos) else chat


def format_prompts(cfg, tokenizer, prompts: list[str]) -> list[str]:
    """The prompts as this tokenizer's model is asked them (unchanged unless `model.chat_template` is 'auto' and
    the tokenizer has a template)."""
    if not uses_template(cfg, tokenizer):
        return list(prompts)
    return [format_prompt(tokenizer, p) for p in prompts]
