"""rlvr_utils: the library the notebooks of the RLVR-internals book call."""
