"""Model families: where each supported architecture keeps its blocks, sublayers, norms and unembedding, and
which component every parameter belongs to. One file per family registers a `Family`; nothing else in the
package knows a module name of a transformers model (SAELens keeps one file per architecture the same way).

Components (one definition, used by extraction, hooks, patching, grafting, same-input, crosscoder, lens,
weights and the controls' freezing):
  - 'attn': the attention sublayer's own weights (q, k, v, o and their biases);
  - 'mlp': the MLP sublayer's own weights (gate, up, down and their biases);
  - 'norm': a block's norms (RMSNorm/LayerNorm gains and biases, before or after a sublayer);
  - 'embed', 'final_norm', 'unembed': outside the blocks.
The norms are a component of their own, not part of the sublayer they feed: a per-channel gain can neither
route attention nor build a feature alone, the attention-only and MLP-only controls train neither sublayer's
norms, and keeping them apart makes "attention" mean the same weights in every measurement.

Hook sites follow TransformerLens names. `attn_out` and `mlp_out` are the modules whose output is exactly
what the block adds to the residual stream, so that for every family
    resid_post = resid_pre + attn_out + mlp_out
(OLMo2 normalises *after* each sublayer, so its sites are the post-sublayer norms).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

SITES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
COMPONENTS = ("embed", "attn", "mlp", "norm", "final_norm", "unembed")
LAYER_COMPONENTS = ("attn", "mlp", "norm")


@dataclass(frozen=True)
class Family:
    """How one architecture is laid out. Paths are attribute paths from the model (`decoder`) or a block."""

    model_types: tuple[str, ...]
    layers: str  # path of the ModuleList of decoder blocks, e.g. 'model.layers'
    final_norm: str
    unembedding: str  # a tuple of candidates is allowed through `unembedding_fallbacks`
    attn_out: str  # block child whose output is what attention adds to the residual stream
    mlp_out: str
    mlp_in: str | None  # block child whose *input* is the MLP's input (None: MLP reads resid_pre, e.g. parallel)
    children: dict[str, str]  # block child -> component ('attn', 'mlp', 'norm')
    matrices: dict[str, tuple[str, str]]  # block child path of a weight matrix -> (short name, component)
    unembedding_fallbacks: tuple[str, ...] = ()
    notes: str = ""
    _layer_re: re.Pattern = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_layer_re", re.compile(rf"(?:^|\.){re.escape(self.layers.split('.')[-1])}\.(\d+)\."))

    # --- modules of a loaded model ---------------------------------------------------------------
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(_get(model, self.layers))

    def final_norm_of(self, model: nn.Module) -> nn.Module:
        return _get(model, self.final_norm)

    def unembedding_of(self, model: nn.Module) -> nn.Module:
        for path in (self.unembedding, *self.unembedding_fallbacks):
            module = _get(model, path, None)
            if module is not None:
                return module
        raise ValueError(f"{type(model).__name__}: no unembedding at {self.unembedding}")

    # --- parameter names (checkpoint tensors or named_parameters) -------------------------------------
    def layer_of(self, name: str) -> int | None:
        match = self._layer_re.search(name)
        return int(match.group(1)) if match else None

    def matrix_of(self, name: str) -> tuple[str, str] | None:
        """(short name, component) of a weight matrix tensor (q, k, v, o, qkv, gate, up, down), else None."""
        for child, described in self.matrices.items():
            if f".{child}." in f".{name}":
                return described
        return None

    def component_of(self, name: str) -> tuple[str, int | None]:
        """(component, layer) of a parameter or tensor name; raises for a name that fits nowhere."""
        layer = self.layer_of(name)
        if layer is not None:
            child = name.split(f".{layer}.", 1)[1].split(".")[0]
            if child not in self.children:
                raise ValueError(f"parameter {name!r}: block child {child!r} is in no component of "
                                 f"{self.model_types[0]} (known: {sorted(self.children)})")
            return self.children[child], layer
        short = name.removeprefix("model.")
        if _under(name, self.final_norm):
            return "final_norm", None
        if any(_under(name, p) for p in (self.unembedding, *self.unembedding_fallbacks)):
            return "unembed", None
        if "embed" in short or short.startswith(("wte.", "wpe.", "transformer.wte", "transformer.wpe")):
            return "embed", None
        raise ValueError(f"parameter {name!r} is in no component of {self.model_types[0]} ({COMPONENTS})")


def _under(name: str, path: str) -> bool:
    """Whether a parameter name lies under an attribute path ('model.norm' holds 'model.norm.weight'; a
    checkpoint may drop the leading 'model.')."""
    return name.startswith(path + ".") or ("." in path and name.startswith(path.split(".", 1)[1] + "."))


def _get(root, path: str, default=...):
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            if default is ...:
                raise AttributeError(f"{type(root).__name__} has no {path!r}")
            return default
        obj = getattr(obj, part)
    return obj


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def supported() -> list[str]:
    return sorted(_REGISTRY)


def family_of(model_or_type) -> Family:
    """The Family of a model, a config, or a model_type string."""
    model_type = model_or_type if isinstance(model_or_type, str) else (
        getattr(model_or_type, "model_type", None) or model_or_type.config.model_type)
    if model_type not in _REGISTRY:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_REGISTRY))}. "
                         "Add a file under rlvr_utils/models/families/ that registers its layout.")
    return _REGISTRY[model_type]


# --- the views every instrument uses --------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    block: nn.Module  # input = resid_pre, output = resid_post
    attn_out: nn.Module
    mlp_out: nn.Module
    mlp_in: nn.Module | None  # its input is the MLP's input (resid_mid, normalised or not)


def blocks(model: nn.Module) -> list[Block]:
    family = family_of(model)
    return [Block(b, _get(b, family.attn_out), _get(b, family.mlp_out),
                  _get(b, family.mlp_in) if family.mlp_in else None) for b in family.blocks(model)]


def final_norm(model: nn.Module) -> nn.Module:
    return family_of(model).final_norm_of(model)


def unembedding(model: nn.Module) -> nn.Module:
    return family_of(model).unembedding_of(model)


def site_name(layer: int, site: str) -> str:
    return f"blocks.{layer}.{site}"


def component_map(model: nn.Module) -> dict[str, tuple[str, int | None]]:
    """{parameter name: (component, layer or None)} for every parameter, tied aliases included (a tied
    alias shares its owner's component)."""
    family = family_of(model)
    out: dict[str, tuple[str, int | None]] = {}
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first_name:
            out[name] = out[first_name[id(param)]]
            continue
        first_name[id(param)] = name
        out[name] = family.component_of(name)
    return out

