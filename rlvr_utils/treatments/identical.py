"""The identical model: a copy of SFT, which every measurement must read as "no evidence"."""
from rlvr_utils.treatments.registry import NO_EVIDENCE, Family, Treatment, register
from rlvr_utils.treatments.weights import build_from_checkpoints

PARAMS = ("variants",)

register(Family("identical", lambda cfg: [Treatment("identical", "identical", NO_EVIDENCE, "identical",
                                                    "a copy of SFT")] if cfg.variants.identical else [],
                build=lambda cfg, name: build_from_checkpoints(cfg, name, lambda tensor, get: get("sft"), ("sft",)),
                order=30))
