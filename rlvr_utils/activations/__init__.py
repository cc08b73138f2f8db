"""Activations of every model at the same tokens: the shared token cache (`tokens`), the streamed store
(`store`), extraction (`extraction`) and a first look at a store (`figures`, imported on its own: every
instrument imports this package, and a change to how a figure is drawn must not make them measure again)."""
from rlvr_utils.activations.extraction import extract, launch_extract, run_extract, run_token_cache
from rlvr_utils.activations.store import ActivationStore, store_fingerprint
from rlvr_utils.activations.tokens import TokenCache, build_token_cache, iter_batches, select_positions

__all__ = ["TokenCache", "build_token_cache", "iter_batches", "select_positions", "ActivationStore",
           "store_fingerprint", "extract", "launch_extract", "run_extract", "run_token_cache"]
