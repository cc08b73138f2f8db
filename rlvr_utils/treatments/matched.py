"""Norm-matched placebos: each placebo's update rescaled, tensor by tensor, to the norm of RLVR's update, so that
a row cannot tell RLVR from a placebo by size alone (`variants.norm_matched`)."""
from rlvr_utils.treatments.placebos import runs as placebo_runs
from rlvr_utils.treatments.registry import NO_EVIDENCE, Family, Treatment, register
from rlvr_utils.treatments.weights import build_from_checkpoints, rescaled_tensor

PARAMS = ("variants",)


def build(cfg, name: str) -> str:
    placebo = name.removesuffix("_matched")
    return build_from_checkpoints(cfg, name, lambda tensor, get: rescaled_tensor(get("sft"), get(placebo), get("rlvr")),
                                  ("sft", placebo, "rlvr"))


register(Family("matched", lambda cfg: [
    Treatment(f"placebo_{k}_matched", "placebo", NO_EVIDENCE, "matched", "a placebo's update at RLVR's norm per tensor",
              rescales=f"placebo_{k}")
    for k in range(placebo_runs(cfg))] if cfg.variants.norm_matched else [], build=build, order=25))
