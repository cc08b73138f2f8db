"""Feature-level positive controls (`variants.planted`): SFT with one known feature written into, or taken out of,
the MLP of the block the crosscoder reads (`crosscoder.layer`, default the middle block). Both are known
Representation changes (a direction of the residual stream starts or stops carrying a feature; no other weight
moves), so the feature rows (crosscoder, dictionary transfer, probes) must find them; the other rows are not asked
to (`calibrates`).

  - 'planted_feature': one MLP neuron re-purposed into a *new feature*. The neuron is the block's least-used one on
    SFT's validation tokens (default run: its write held 2e-8 of the residual's variance, so nothing is lost).
    Its gate reads a property of the problem: the direction of the MLP's input along which a logistic
    regression tells problems that start from a two-digit number from the others (decodable from the input, not
    from the token alone), thresholded so that the neuron fires on `FIRING_RATE` of the completion tokens (default
    run: 15%, 97% of them in such problems). Its up row reads a direction on which the input is ~1 everywhere
    (least squares: the projections have no bias), so its output follows the gate. Its down column writes a
    *new direction*: the lowest-variance direction of SFT's residual stream after the block (9e-7 of its
    variance). Change: one row of the gate and of the up projection, one column of the down projection (rank 1). Strength: the
    write's RMS where the neuron fires is `PLANTED_STRENGTH` x the RMS norm of SFT's residual stream there
    (default run: 2.4% of the residual's variance; greedy accuracy -5.6 [-8.2, -3.2] points vs SFT, 500 problems).
    Why not token-locked: a write gated on a token (a digit neuron) is absorbed into the crosscoder's existing
    token latents and is never counted, however strong (measured up to 7.6% of the variance).
  - 'removed_feature': the mirror. The direction written by the block's strongest MLP neuron on the validation
    tokens (default run: a digit neuron, 2.1% of the residual's variance) is projected out of the down projection,
    W <- (I - w w^T) W (rank 1): the MLP writes nothing along w any more (default run: 10.8% of the residual's
    variance removed; greedy accuracy -16.4 [-20.2, -12.6] points).
Neurons and directions are chosen on the validation problems with their gold solutions (the evaluation problems
are never read), at the crosscoder's position selection ('completion'). The build's return line records them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rlvr_utils.core.params import ORGANISM
from rlvr_utils.treatments.registry import REPRESENTATION, Family, Treatment, register
from rlvr_utils.treatments.weights import build_from_checkpoints

PARAMS = ("variants", "model")  # not "crosscoder": every chapter imports the registry (config checks the layer)
PLANTED, REMOVED = "planted_feature", "removed_feature"
N_PROBLEMS = 256  # validation problems whose gold solutions choose the neurons and directions
FIRING_RATE = 0.15  # share of completion tokens on which the planted neuron fires
PLANTED_STRENGTH = 0.5  # RMS of the planted write where it fires / RMS norm of SFT's residual stream
GATE_SHARPNESS = 8.0  # gate pre-activation in units of its spread: the neuron is near 0 where it does not fire
PROPERTY = "the problem starts from a two-digit number"
FEATURE_ROWS = ("crosscoder", "dictionary transfer", "probes")  # the verdict's row groups these controls calibrate


def problem_property(problem: dict) -> bool:
    """What the planted neuron's gate reads: whether the gold solution's first number has two digits or more."""
    first = problem["answer"].split()[0] if problem["answer"].split() else ""
    return first.replace(".", "", 1).isdigit() and float(first) >= 10


# --- SFT's activations on the validation problems ---------------------------------------------------------------
def layer_of(cfg, n_layers: int) -> int:
    """The block the features are planted in: `variants.planted_layer`, by default the crosscoder's default block
    (num_layers // 2); rlvr_utils.core.config checks that it equals `crosscoder.layer` when that is set."""
    layer = cfg.variants.planted_layer if cfg.variants.planted_layer is not None else n_layers // 2
    if not 0 <= layer < n_layers:
        raise ValueError(f"variants.planted_layer={layer}: the model has blocks 0..{n_layers - 1}")
    return layer


def mlp_parts(model, layer: int) -> dict:
    """The block's MLP module and its gate / up / down projections (nn.Linear), by the family's names."""
    from rlvr_utils.models import families

    family = families.family_of(model)
    by_short = {short: child for child, (short, comp) in family.matrices.items() if comp == "mlp"}
    if not {"gate", "up", "down"} <= set(by_short):
        raise ValueError(f"the planted controls need a gated MLP (gate, up, down projections); {family.model_types[0]}"
                         f" has {sorted(by_short)}: set variants.planted: false for this model")
    prefix = f"{family.layers}.{layer}."
    parts = {short: model.get_submodule(prefix + by_short[short]) for short in ("gate", "up", "down")}
    if not all(isinstance(m, torch.nn.Linear) for m in parts.values()):
        raise ValueError(f"the planted controls edit nn.Linear projections; {family.model_types[0]}'s are not")
    parts["names"] = {short: prefix + by_short[short] + ".weight" for short in ("gate", "up", "down")}
    parts["mlp"] = families.blocks(model)[layer].mlp_out
    parts["block"] = families.blocks(model)[layer].block
    return parts


@torch.no_grad()
def activations(model, tokenizer, problems: list[dict], layer: int) -> dict[str, np.ndarray]:
    """At the completion positions of prompt + gold solution: the MLP's input `x`, its neurons `h` (down_proj's
    input), the residual stream after the block `resid`, and the problem property `y`, per token."""
    from rlvr_utils.activations.tokens import build_token_cache, select_positions
    from rlvr_utils.models import hooks

    parts = mlp_parts(model, layer)
    cache = build_token_cache(tokenizer, problems, None, "gold")
    by_row: dict[int, list[int]] = {}
    for row, pos in select_positions(cache, "completion"):
        by_row.setdefault(row, []).append(pos)
    seen: dict[str, torch.Tensor] = {}
    handles = [hooks.on_input(parts["mlp"], lambda t: seen.__setitem__("x", t)),
               hooks.on_input(parts["down"], lambda t: seen.__setitem__("h", t)),
               hooks.on_output(parts["block"], lambda t: seen.__setitem__("resid", t))]
    out: dict[str, list] = {"x": [], "h": [], "resid": [], "y": []}
    with hooks.active(handles):
        for row, positions in by_row.items():
            model(input_ids=torch.tensor([cache.sequences[row]]))
            for key in ("x", "h", "resid"):
                out[key].append(seen[key][0, positions].float().numpy())
            out["y"].append(np.full(len(positions), problem_property(problems[row])))
    if not out["x"]:
        raise ValueError("the validation problems have no completion tokens to choose the planted features on")
    return {key: np.concatenate(value) for key, value in out.items()}


def low_variance_direction(resid: np.ndarray) -> np.ndarray:
    """The unit direction along which SFT's residual stream varies least (a direction it does not use)."""
    centred = resid - resid.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    return vectors[:, 0]


# --- the plans: pure functions of weights and activations ----------------------------------------------------------
def plant(gate: np.ndarray, up: np.ndarray, down: np.ndarray, acts: dict, rate: float = FIRING_RATE,
          strength: float = PLANTED_STRENGTH) -> tuple[dict, dict]:
    """New gate, up and down matrices with the least-used neuron re-purposed into the planted feature, and a
    record of what was planted. gate/up: [n_neurons, d]; down: [d, n_neurons]."""
    from sklearn.linear_model import LogisticRegression

    x, h, resid, y = acts["x"], acts["h"], acts["resid"], acts["y"]
    if y.all() or not y.any():
        raise ValueError(f"'{PROPERTY}' is true on all or none of the validation problems: nothing to gate on")
    energy = (h ** 2).mean(0) * (down ** 2).sum(0)
    neuron = int(np.argmin(energy))
    # the property's direction in the MLP input (standardised features, then mapped back to x)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000).fit((x - mu) / sd, y)
    u = probe.coef_[0] / sd
    u /= np.linalg.norm(u)
    # the projections have no bias: c.x ~ 1 on every token (least squares) stands in for one
    c = np.linalg.lstsq(x, np.ones(len(x)), rcond=None)[0]
    q = x @ c
    if (q <= 0).any():
        raise ValueError("no direction of the MLP input is positive on every token: the planted gate needs one")
    t = np.quantile((x @ u) / q, 1 - rate)
    g = u - t * c  # g.x > 0 exactly where (u.x)/q > t
    g *= GATE_SHARPNESS / (x @ g).std()
    pre = x @ g
    act = pre / (1 + np.exp(-pre)) * q  # silu(gate.x) * up.x with up = c
    fires = pre > 0
    v = low_variance_direction(resid)
    rms = np.sqrt((resid[fires] ** 2).sum(1).mean())
    alpha = strength * rms / np.sqrt((act[fires] ** 2).mean())
    gate, up, down = gate.copy(), up.copy(), down.copy()
    gate[neuron], up[neuron], down[:, neuron] = g, c, alpha * v
    centred = resid - resid.mean(0)
    record = {"neuron": neuron, "old_write_share": float(energy[neuron] / (centred ** 2).sum(1).mean()),
              "firing_rate": float(fires.mean()), "property": PROPERTY,
              "property_rate_where_firing": float(y[fires].mean()), "property_rate": float(y.mean()),
              "direction_variance_share": float(((centred @ v) ** 2).mean() / (centred ** 2).sum(1).mean()),
              "strength": strength, "write_share": float((np.outer(act * alpha, v) ** 2).sum(1).mean()
                                                         / (centred ** 2).sum(1).mean())}
    return {"gate": gate, "up": up, "down": down}, record


def remove(down: np.ndarray, acts: dict) -> tuple[np.ndarray, dict]:
    """down_proj with the direction of its strongest neuron's write projected out (rank-1), and a record."""
    h, resid = acts["h"], acts["resid"]
    energy = (h ** 2).mean(0) * (down ** 2).sum(0)
    neuron = int(np.argmax(energy))
    w = down[:, neuron] / np.linalg.norm(down[:, neuron])
    new = down - np.outer(w, w @ down)
    centred = resid - resid.mean(0)
    removed = (h @ down.T) @ w  # what the MLP wrote along w, per token
    total = (centred ** 2).sum(1).mean()
    return new, {"neuron": neuron, "neuron_write_share": float(energy[neuron] / total),
                 "removed_share": float((removed ** 2).mean() / total),
                 "firing_rate": float((np.abs(h[:, neuron]) > 0.1 * np.abs(h[:, neuron]).max()).mean())}


# --- the family ---------------------------------------------------------------------------------------------------
def build(cfg, name: str) -> str:
    from rlvr_utils.instruments.weights import checkpoints
    from rlvr_utils.models import families
    from rlvr_utils.models.loading import load
    from rlvr_utils.training.data import read_jsonl

    record: dict = {}
    edited: dict = {}  # the few MLP tensors of one block that change, computed on the first call

    def edits() -> dict:
        files = checkpoints.tensor_files(cfg.model_ref("sft"))
        model, tokenizer = load(cfg.model_ref("sft"), cfg)
        layer = layer_of(cfg, len(families.blocks(model)))
        parts = mlp_parts(model, layer)
        path = cfg.path("data", "validation.jsonl")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: the planted controls choose their neurons on the validation problems")
        acts = activations(model, tokenizer, read_jsonl(path)[:N_PROBLEMS], layer)
        names = parts["names"]
        stored = {short: checkpoints.read_tensor(files[names[short]], names[short], dtype=None)
                  for short in ("gate", "up", "down")}
        current = {short: tensor.double().numpy() for short, tensor in stored.items()}
        if name == PLANTED:
            new, info = plant(current["gate"], current["up"], current["down"], acts)
        else:
            down, info = remove(current["down"], acts)
            new = {"down": down}
        record.update(layer=layer, **info)
        return {names[short]: torch.from_numpy(value).to(stored[short].dtype).contiguous() for short, value in new.items()}

    def make(tensor, get):
        if not edited:
            edited.update(edits())
        return edited[tensor] if tensor in edited else get("sft")
    done = build_from_checkpoints(cfg, name, make, ("sft",))
    # the chapter prints it: 3 significant digits, 2 below 1e-3, so that no number runs to 6 decimals (page audit)
    shown = {k: float(f"{v:.{3 if abs(v) >= 1e-3 else 2}g}") if isinstance(v, float) else v
             for k, v in record.items()}
    return done + (f" ({json.dumps(shown)})" if record else "")


def expand(cfg) -> list[Treatment]:
    """The two controls, on the model organism only: the gate reads a property of its synthetic problems' gold
    solutions (real data sets write their solutions otherwise, and the rehearsal's fail the gate)."""
    if not cfg.variants.planted or cfg.model.base != ORGANISM or cfg.model.analyze_only:
        return []
    return [Treatment(PLANTED, "control", REPRESENTATION, "planted",
                      f"SFT + a new feature: one MLP neuron re-purposed to write a direction SFT does not use, "
                      f"gated on '{PROPERTY}' (rank-1 write at the crosscoder's block)",
                      calibrates=FEATURE_ROWS),
            Treatment(REMOVED, "control", REPRESENTATION, "planted",
                      "SFT minus a feature: the direction its strongest MLP neuron writes at the crosscoder's block "
                      "projected out of down_proj (rank 1)", calibrates=FEATURE_ROWS)]


register(Family("planted", expand, build=build, order=17))
