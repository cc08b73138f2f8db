"""Causal tests of where a treatment's behaviour lives (the patching chapter).

batches     what is scored: the answer's tokens, corrupted prompts (PatchBatch)
core        patches, activation-patching sweeps (total effects) and direct effects
effects     those results as estimates over problems, normalised effects
swap        hybrid weights: a donor's components in a receiver (copied, or swapped in place)
instrument  `Patching`: every treatment into SFT -> metrics/patching.json
grafting    `Grafting`: RLVR's attention / MLPs grafted into SFT, greedy accuracy -> metrics/grafting.json
figures     figures, tables and the reading of both files
"""
