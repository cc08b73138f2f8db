"""Activations of every model at the same tokens: the shared token cache (`tokens`), the streamed store
(`store`), extraction (`extraction`) and a first look at a store (`figures`)."""
from rlvr_utils.activations.extraction import extract, launch_extract, run_extract, run_token_cache
from rlvr_utils.activations.figures import describe_store, plot_norms
from rlvr_utils.activations.store import ActivationStore, store_fingerprint
from rlvr_utils.activations.tokens import TokenCache, build_token_cache, iter_batches, select_positions

__all__ = ["TokenCache", "build_token_cache", "iter_batches", "select_positions", "ActivationStore",
           "store_fingerprint", "extract", "launch_extract", "run_extract", "run_token_cache", "describe_store",
           "plot_norms"]
