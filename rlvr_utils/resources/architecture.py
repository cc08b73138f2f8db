"""The shape of a decoder-only transformer, as far as memory and compute need it, and where it comes from.

Resolution order for a checkpoint reference: a local folder's config.json; a hub id's config.json in the local
Hugging Face cache (no network); the shipped table known_models.json (the hub models the shipped params name).
The organism's shape comes from params (organism section). Anything else is an error that says how to fetch
the config.json, which is a few kB.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlvr_utils.core.params import ORGANISM
from rlvr_utils.core.paths import looks_local, resolve

PARAMS = ("organism",)
KNOWN_MODELS = Path(__file__).with_name("known_models.json")


class UnknownArchitecture(ValueError):
    """The shape of a model could not be found offline; the message says how to make it available."""


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    source: str  # where these numbers come from (a file, the table, params)
    dtype: str | None = None  # dtype of the stored weights when the config says so

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    # Parameter counts of a Llama/Qwen2/OLMo-2-style block: q and o are d x d, k and v are d x kv_dim (grouped-query
    # attention), the SwiGLU MLP has gate, up and down (3 x d x I), plus a few norm vectors. Counting them from
    # the shape rather than from 12·L·d² (Kaplan et al. 2020) matters here: Qwen2.5's MLP is 5.8 d wide, not 4 d.
    @property
    def attn_params(self) -> int:
        """Attention weights of all blocks (q, k, v, o and q/k/v biases)."""
        per_layer = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim
        if self.qkv_bias:
            per_layer += self.hidden + 2 * self.kv_dim
        return self.layers * per_layer

    @property
    def mlp_params(self) -> int:
        """MLP weights of all blocks (gate, up, down)."""
        return self.layers * 3 * self.hidden * self.intermediate

    @property
    def other_params(self) -> int:
        """Embedding, unembedding (when untied) and norm weights (two per block and the final one)."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + (2 * self.layers + 1) * self.hidden

    @property
    def n_params(self) -> int:
        return self.attn_params + self.mlp_params + self.other_params

    @property
    def non_embedding_params(self) -> int:
        """N of the 6·N·tokens rule (Kaplan et al. 2020 count FLOPs without the embedding lookup; the
        unembedding matmul does cost 2·d·V per token and is added by the compute estimate)."""
        return self.attn_params + self.mlp_params + (2 * self.layers + 1) * self.hidden


def from_config(config: dict, source: str) -> Architecture:
    """An Architecture from a Hugging Face config.json (text_config of a multimodal one)."""
    config = config.get("text_config", config)
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        arch = Architecture(
            hidden=hidden, layers=int(config["num_hidden_layers"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", True)),
            # Qwen2 configs carry no flag: their q/k/v projections always have biases
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
            source=source, dtype=config.get("dtype") or config.get("torch_dtype"))
    except (KeyError, TypeError, ValueError) as err:
        raise UnknownArchitecture(f"{source}: not a decoder config this plan understands (needs hidden_size, "
                                  f"num_hidden_layers, num_attention_heads, intermediate_size, vocab_size): "
                                  f"{type(err).__name__}: {err}") from err
    if arch.hidden % arch.heads:
        raise UnknownArchitecture(f"{source}: hidden_size={arch.hidden} is not a multiple of "
                                  f"num_attention_heads={arch.heads}")
    return arch


def of_organism(org) -> Architecture:
    """The organism's shape from params (training.organism.model_config: tied embeddings, q/k/v biases of
    Qwen2, as many KV heads as heads)."""
    return Architecture(hidden=org.hidden_size, layers=org.num_layers, heads=org.num_heads, kv_heads=org.num_heads,
                        intermediate=org.intermediate_size, vocab=org.vocab_size, tied=True, qkv_bias=True,
                        source="params: organism section", dtype="float32")


def known_models() -> dict[str, dict]:
    table = json.loads(KNOWN_MODELS.read_text())
    return {k: v for k, v in table.items() if not k.startswith("_")}


def _from_table(ref: str) -> Architecture | None:
    table = known_models()
    entry = table.get(ref)
    if entry is None:
        return None
    shape = table[entry["same_as"]] if "same_as" in entry else entry
    return from_config(shape, f"{KNOWN_MODELS.name}: {ref} ({entry['source']})")


def of_checkpoint(ref: str) -> Architecture:
    """The shape of a checkpoint: a local folder or a hub id (cache, then the shipped table)."""
    if looks_local(ref):
        path = resolve(ref) / "config.json"
        if not path.is_file():
            raise UnknownArchitecture(f"checkpoint folder {resolve(ref)} has no config.json (not built or not "
                                      "downloaded yet): make it first, or plan with a hub id")
        return from_config(json.loads(path.read_text()), str(path))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str):
        return from_config(json.loads(Path(cached).read_text()), cached)
    found = _from_table(ref)
    if found is not None:
        return found
    raise UnknownArchitecture(
        f"hub model {ref!r}: its config.json is neither in the local Hugging Face cache nor in "
        f"{KNOWN_MODELS.relative_to(KNOWN_MODELS.parents[2])}. Fetch only the config (a few kB): "
        f"`huggingface-cli download {ref} config.json` (or `hf download {ref} config.json`), then plan again")


def of_run(cfg) -> Architecture:
    """The shape of the model a run trains or analyses: the organism's, else base's (SFT's and RLVR's must
    match it: rlvr_utils.models.loading.check_compatible)."""
    if cfg.model.base == ORGANISM and not cfg.model.analyze_only:
        return of_organism(cfg.organism)
    return of_checkpoint(cfg.model.rlvr or cfg.model.sft or cfg.model.base if cfg.model.analyze_only
                         else cfg.model.base)
