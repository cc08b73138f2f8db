"""User treatments (`variants.user`): any checkpoint a user puts beside RLVR, for example another RL run from the
same SFT model. Given, not built or trained here; measured and read like RLVR against the same placebos, nulls and
controls, with no known answer (the verdict reads it, it does not calibrate anything)."""
from rlvr_utils.treatments.registry import Family, Treatment, register

PARAMS = ("variants",)


def expand(cfg) -> list[Treatment]:
    return [Treatment(name, "user", None, "user", f"a given checkpoint: {ref}") for name, ref in cfg.variants.user.items()]


register(Family("user", expand, order=5))
