"""Experiments that train the study again under changed settings and compare the runs: each is a command of
`python -m rlvr_utils` that runs sub-runs in their own folders and writes its result into the main run's metrics
(elicitation: RLVR's gain as a function of how much of the evaluation's wording pretraining saw)."""
