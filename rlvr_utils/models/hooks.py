"""The one hook layer: read or replace any TransformerLens-named site of any supported family.

Every instrument that looks inside a model goes through here (TransformerLens keeps its hook points in one
place for the same reason): `site_module` says which module carries a site, `hook` registers a reader or a
replacer on it, `capture` records sites for a forward pass, `replace_input` / `replace_output` hook a module
directly (an MLP's input, the final norm's input). Modules may return tuples (attention returns
(hidden, weights), some blocks do too); only the hidden states are passed on and replaced.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from rlvr_utils.models.families import SITES, blocks, site_name

Fn = Callable[[torch.Tensor], "torch.Tensor | None"]  # activation -> replacement, or None to leave it


def hidden(output):
    """The hidden states of a module's output (attention modules return (hidden, weights))."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, tensor):
    """`output` with its hidden states replaced by `tensor`, keeping a tuple's other members."""
    return (tensor,) + tuple(output[1:]) if isinstance(output, tuple) else tensor


def on_input(module: nn.Module, fn: Fn):
    """Pre-hook calling fn(first input) -> replacement or None; returns the handle."""
    def pre_hook(_module, args, kwargs):
        new = fn(args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def on_output(module: nn.Module, fn: Fn):
    """Forward hook calling fn(output's hidden states) -> replacement or None; returns the handle."""
    def post_hook(_module, _args, output):
        new = fn(hidden(output))
        return None if new is None else with_hidden(output, new)
    return module.register_forward_hook(post_hook)


def check_sites_layers(model: nn.Module, sites, layers) -> list[int]:
    """The layers asked for (all when None), after checking sites and layers exist; raises naming them."""
    n_layers = len(blocks(model))
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise ValueError(f"sites={list(sites)}: {bad} not in {SITES}")
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers={layers}: {bad} out of range for a model with {n_layers} layers (0..{n_layers - 1})")
    return layers


def site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, bool]:
    """(module, is_input): the module whose output (or, for resid_pre, whose input) is the site."""
    check_sites_layers(model, [site], [layer])
    block = blocks(model)[layer]
    return {"hook_resid_pre": (block.block, True), "hook_attn_out": (block.attn_out, False),
            "hook_mlp_out": (block.mlp_out, False), "hook_resid_post": (block.block, False)}[site]


def hook(model: nn.Module, layer: int, site: str, fn: Fn):
    """Register fn(activation) -> replacement or None at a site; returns the handle."""
    module, is_input = site_module(model, layer, site)
    return on_input(module, fn) if is_input else on_output(module, fn)


@contextlib.contextmanager
def active(handles: list) -> Iterator[None]:
    """Remove the hooks' handles when the block ends, however it ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(model: nn.Module, sites=SITES, layers: list[int] | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Fill a dict {"blocks.{l}.{site}": tensor [B, T, d]} on every forward pass while the block runs.

    `transform` is applied to each captured tensor as it is produced (e.g. to keep a few positions and free
    the rest); by default the tensor is kept as is, detached.
    """
    layers = check_sites_layers(model, sites, layers)
    captured: dict[str, torch.Tensor] = {}
    keep = transform or (lambda t: t)

    def store(name):
        def fn(t):
            captured[name] = keep(t.detach())
        return fn

    handles = [hook(model, layer, site, store(site_name(layer, site))) for layer in layers for site in SITES
               if site in sites]
    with active(handles):
        yield captured
