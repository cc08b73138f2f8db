"""Positive controls with a known answer: the RLVR recipe (GRPO from the same SFT model, same data and steps)
with only one component trainable, so the change is confined to it.

  - 'attn_only': only the attention weights (q, k, v, o) train: a known Routing change;
  - 'mlp_only': only the MLP weights (gate, up, down) train: a known Representation-learning change.
Embeddings and norms stay frozen in both (rlvr_utils.models.families defines the components).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from rlvr_utils.core import artifacts, lock
from rlvr_utils.treatments.registry import REPRESENTATION, ROUTING, Family, Treatment, register

PARAMS = ("variants",)
CONTROLS = {  # name: (component trained, the reading it must get, description)
    "attn_only": ("attn", ROUTING, "GRPO with every MLP weight frozen: a known Routing change"),
    "mlp_only": ("mlp", REPRESENTATION, "GRPO with every attention weight frozen: a known Representation change"),
}


def train_control(cfg, name: str) -> list[dict]:
    """GRPO with RLVR's recipe from the SFT model, training only the control's component."""
    from transformers import AutoModelForCausalLM

    from rlvr_utils.models.families import component_map
    from rlvr_utils.training import train

    trained = CONTROLS[name][0]
    sft_ref = cfg.model_ref("sft")
    model = AutoModelForCausalLM.from_pretrained(sft_ref, use_safetensors=True,
                                                 trust_remote_code=cfg.model.trust_remote_code)
    components = component_map(model)
    n_trained = 0
    for pname, param in model.named_parameters():
        param.requires_grad_(components[pname][0] == trained)
        n_trained += param.numel() if param.requires_grad else 0
    if n_trained == 0:
        raise ValueError(f"control {name!r}: no {trained} weights found in {sft_ref} to train")
    return train.grpo(cfg, name, model)


def train_controls(cfg, names: list[str], force: bool = False) -> list[str]:
    """Train the controls not yet up to date, side by side in one process each: the organism's steps are
    too small to use two cores in one process, so two single-threaded runs take the time of one."""
    from rlvr_utils.training import train

    todo = [n for n in names if force or not train.is_trained(cfg, n)]
    messages = [f"{n}: checkpoint is up to date ({cfg.path('models', n)}): skipped" for n in names if n not in todo]
    if not todo:
        return messages
    start = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if len(todo) > 1 else {})}
    params_file = artifacts.write_json(cfg.path("trainer", "controls-params.json"), cfg.model_dump(mode="json"))
    with lock.run_lock(cfg.run_dir):  # the children see that this process holds the run's lock
        env[lock.LOCK_ENV] = os.environ[lock.LOCK_ENV]
        procs = {n: subprocess.Popen([sys.executable, "-m", "rlvr_utils", "train", "--stage", n, "--params",
                                      str(params_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env) for n in todo}
        for n, proc in procs.items():
            output, _ = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"control {n} failed (exit {proc.returncode}):\n{output[-3000:]}")
    return messages + [f"trained {', '.join(todo)} in {time.time() - start:.0f} s (in parallel)"]


register(Family("controls", lambda cfg: [Treatment(n, "control", CONTROLS[n][1], "controls", CONTROLS[n][2],
                                                   trained=True) for n in cfg.variants.controls],
                order=10))
