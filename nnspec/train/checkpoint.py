"""Checkpoints: everything `fit` needs to go on as if it had never stopped.

    model      net.state_dict() (parameters and state, e.g. running statistics)
    optimizer  net.optimizer_state() (momenta, Adam's moments and step count)
    epoch      epochs completed;  step: optimizer steps taken
    rng        the shuffling generator's state at the start of the next epoch
    history    per-epoch metrics so far
    config     the TrainConfig that made it (for reference)
    set, dtype the network's --set values and dtype, so eval / predict rebuild the same network
    data       what the data needs to be read the same way again: a text's vocabulary
               ("chars", id -> character) and unigram entropy; None for other data
"""
from __future__ import annotations

import numpy as np

from ..errors import TrainingError
from .bundle import read_bundle, write_bundle

KIND = "nnspec-checkpoint"
VERSION = 1


def save_checkpoint(path, net, *, epoch: int, step: int, rng: np.random.Generator,
                    history: list, config: dict, data: dict | None = None) -> None:
    write_bundle(path, KIND, {
        "version": VERSION, "epoch": epoch, "step": step,
        "rng": rng.bit_generator.state, "history": history, "config": config,
        "graph": net.graph.hash(),
        "set": dict(net.graph.meta.get("set") or {}), "dtype": net.graph.dtype,
        "data": data,
        "model": dict(net.state_dict()), "optimizer": net.optimizer_state(),
    })


def load_checkpoint(path) -> dict:
    _, ck = read_bundle(path, KIND, error=TrainingError)
    if ck.get("version") != VERSION:
        raise TrainingError(f"'{path}' is a version {ck.get('version')} checkpoint; "
                            f"this nnspec reads version {VERSION}")
    return ck


def load_weights(net, weights: dict, source) -> None:
    """Load a state dict after checking it names the same arrays with the same shapes."""
    mine = {k: np.shape(v) for k, v in net.state_dict().items()}
    theirs = {k: np.shape(v) for k, v in weights.items()}
    problems = [f"'{k}' is missing" for k in mine if k not in theirs]
    problems += [f"'{k}' is not in this network" for k in theirs if k not in mine]
    problems += [f"'{k}' has shape {list(theirs[k])}, the network's is {list(mine[k])}"
                 for k in mine if k in theirs and mine[k] != theirs[k]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TrainingError(f"{source} does not fit this network: "
                            + "; ".join(problems[:3]) + more
                            + " (was it made with other --set values?)")
    net.load_state_dict(weights)


def restore(net, ck: dict, source) -> np.random.Generator:
    """Put a checkpoint's weights and optimizer state into `net`; return the shuffling RNG."""
    load_weights(net, ck["model"], source)
    net.load_optimizer_state(ck["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ck["rng"]
    return rng
