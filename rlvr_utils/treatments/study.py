"""The study's treatment: RLVR, trained by the GRPO chapter (or given by params)."""
from rlvr_utils.treatments.registry import STUDY, Family, Treatment, register

register(Family("study", lambda cfg: [Treatment(STUDY, "study", None, "study", "the RLVR model (GRPO from SFT)",
                                                 trained=True)], order=0))
