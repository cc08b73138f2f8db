"""Hybrid models that take some components' weights from a donor checkpoint.

Every parameter belongs to exactly one component (`families.component_map`, one definition for the package):
    embed       token (and position) embeddings; a tied unembedding is the same tensor, so it is here too
    attn        per layer: the attention sublayer's own weights (q, k, v, o and their biases)
    mlp         per layer: the MLP sublayer's own weights
    norm        per layer: the block's norms (before or after a sublayer)
    final_norm  the norm before the unembedding
    unembed     an untied unembedding (lm_head / embed_out)
so taking every component reproduces the donor and taking none the receiver. `graft` makes a copy (grafting
evaluates it); `swapped` changes the receiver in place for the duration of a `with` block (patching runs a
donor's component on the receiver's own input without copying the model).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator

import torch
from torch import nn

from rlvr_utils.models import families
from rlvr_utils.models.families import COMPONENTS


def _chosen(model: nn.Module, components: Iterable[str], layers: Iterable[int] | None) -> list[str]:
    """Names of the parameters (tied aliases included) in `components` at `layers` (None = every layer;
    components outside the blocks are taken whenever named)."""
    components = set(components)
    unknown = components - set(COMPONENTS)
    if unknown:
        raise ValueError(f"components {sorted(unknown)} unknown; choose from {COMPONENTS}")
    n_layers = len(families.blocks(model))
    layers = None if layers is None else set(layers)
    if layers is not None and not layers <= set(range(n_layers)):
        raise ValueError(f"layers {sorted(layers - set(range(n_layers)))} out of range 0..{n_layers - 1}")
    return [name for name, (component, layer) in families.component_map(model).items()
            if component in components and (layer is None or layers is None or layer in layers)]


def _donor_tensor(donor_params: dict[str, nn.Parameter], name: str, param: nn.Parameter) -> nn.Parameter:
    source = donor_params.get(name)
    if source is None or source.shape != param.shape:
        raise ValueError(f"donor and receiver differ in architecture at {name!r}")
    return source


def graft(receiver: nn.Module, donor: nn.Module, components: Iterable[str],
          layers: Iterable[int] | None = None) -> nn.Module:
    """A copy of `receiver` whose `components` (at `layers`, None = all) hold the donor's weights."""
    donor_params = dict(donor.named_parameters(remove_duplicate=False))
    hybrid = copy.deepcopy(receiver)
    chosen = set(_chosen(hybrid, components, layers))
    with torch.no_grad():
        for name, param in hybrid.named_parameters(remove_duplicate=False):
            source = _donor_tensor(donor_params, name, param)  # checked for every tensor, taken or not
            if name in chosen:
                param.copy_(source)
    return hybrid


@contextlib.contextmanager
def swapped(receiver: nn.Module, donor: nn.Module, components: Iterable[str],
            layers: Iterable[int] | None = None) -> Iterator[nn.Module]:
    """`receiver` itself holds the donor's `components` (at `layers`) inside the block, its own weights after."""
    chosen = _chosen(receiver, components, layers)
    donor_params = dict(donor.named_parameters(remove_duplicate=False))
    params = dict(receiver.named_parameters(remove_duplicate=False))
    saved = {}
    try:
        with torch.no_grad():
            for name in chosen:
                param = params[name]
                source = _donor_tensor(donor_params, name, param)
                if id(param) not in saved:
                    saved[id(param)] = (param, param.detach().clone())
                param.copy_(source)
        yield receiver
    finally:
        with torch.no_grad():
            for param, original in saved.values():
                param.copy_(original)
