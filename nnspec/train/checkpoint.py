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
from .bundle import (ARRAYS, COUNT, DTYPE, INT, NUMBER, TABLE, TEXT, check_schema, load_arrays,
                     open_bundle, optional, read_bundle, rule, Stored, stored_arrays,
                     write_bundle)

KIND = "nnspec-checkpoint"
VERSION = 1


def _number(v) -> bool:      # a NumPy scalar comes back from a bundle as a 0-d array
    return NUMBER(v) or (isinstance(v, (Stored, np.ndarray)) and v.shape == ()
                         and v.dtype.kind in "iuf")


def _record(r) -> bool:
    """An epoch's metrics: numbers (or null), a warning's text; epoch, train loss and time."""
    return isinstance(r, dict) \
        and all(_number(r.get(k)) for k in ("epoch", "train_loss", "seconds")) \
        and all(_number(v) or v is None or (k == "warning" and isinstance(v, str))
                for k, v in r.items())


HISTORY = rule("a list of epoch records (numbers)", lambda v: isinstance(v, list)
               and all(_record(r) for r in v))
SCHEMA = {"version": INT,
          "epoch": COUNT, "step": COUNT, "rng": TABLE, "history": HISTORY, "config": TABLE,
          "set": optional(TABLE), "dtype": optional(DTYPE), "data": optional(TABLE),
          "model": ARRAYS, "optimizer": TABLE}
OPTIMIZER = {"name": TEXT, "step": optional(COUNT)}


def save_checkpoint(path, net, *, epoch: int, step: int, rng: np.random.Generator,
                    history: list, config: dict, data: dict | None = None) -> None:
    """Write the checkpoint; never one whose weights or optimizer state are not finite."""
    tree = {"version": VERSION, "epoch": epoch, "step": step,
            "rng": rng.bit_generator.state, "history": history, "config": config,
            "graph": net.graph.hash(),
            "set": dict(net.graph.meta.get("set") or {}), "dtype": net.graph.dtype,
            "data": data,
            "model": dict(net.state_dict()), "optimizer": net.optimizer_state()}
    bad = nonfinite({"model": tree["model"], "optimizer": tree["optimizer"]})
    if bad:
        raise TrainingError(f"not writing {path}: {some_names(bad)} hold NaN or infinity")
    write_bundle(path, KIND, tree)


def nonfinite(tree, prefix="") -> list[str]:
    """The names of the float arrays in a tree that hold NaN or infinity."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in nonfinite(v, f"{prefix}{k} ")]
    if isinstance(tree, list):
        return [n for i, v in enumerate(tree) for n in nonfinite(v, f"{prefix}{i} ")]
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "f" and not np.isfinite(tree).all():
        return [prefix.strip()]
    return []


def some_names(names: list) -> str:
    """The first three names, quoted, and how many more."""
    more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(f"'{n}'" for n in names[:3]) + more


def load_checkpoint(path, net=None) -> dict:
    """The checkpoint at `path`, its layout checked before any array is read
    (and, given `net`, its weights' names and shapes against the network's)."""
    def check(ck):
        check_checkpoint(ck, path)
        if net is not None:
            check_weights(net, ck["model"], path)
            check_size(net, ck, path)
    return read_bundle(path, KIND, error=TrainingError, check=check)[1]


def check_checkpoint(ck, path) -> None:
    if isinstance(ck, dict) and type(ck.get("version")) is int and ck["version"] != VERSION:
        raise TrainingError(f"'{path}' is a version {ck.get('version')} checkpoint; "
                            f"this nnspec reads version {VERSION}")
    check_schema(ck, SCHEMA, f"'{path}'", TrainingError)
    check_schema(ck["optimizer"], OPTIMIZER, f"'{path}' (optimizer)", TrainingError)


def load_trained(path, build):
    """A checkpoint or `.nnc` file's network: ``build(set values, dtype)`` makes
    it, then the weights are checked against it and read: ``(net, tree)``."""
    from . import nnc
    kind, ck = open_bundle(path, (KIND, nnc.KIND), error=TrainingError)
    if kind == KIND:
        check_checkpoint(ck, path)
        weights = "model"
    else:
        nnc.check_model(ck, path)
        weights = "weights"
    net = build(ck.get("set"), ck.get("dtype"))
    check_weights(net, ck[weights], path)
    check_size(net, ck, path)
    ck = load_arrays(path, ck, TrainingError)
    load_weights(net, ck[weights], path)
    return net, ck


def check_size(net, tree, path) -> None:
    """A file of a network's weights holds at most its values and optimizer slots
    (in float64): refuse more before reading it (a zip member that inflates to
    gigabytes is a few kilobytes on disk)."""
    weights = sum(np.size(v) for v in {**net.params, **net.state}.values())
    limit = 8 * 4 * weights + (1 << 20)
    need = sum(a.nbytes for a in stored_arrays(tree))
    if need > limit:
        from ..memory import fmt_bytes
        raise TrainingError(f"'{path}': its arrays hold {fmt_bytes(need)}, more than the "
                            f"network's weights and optimizer state ({fmt_bytes(limit)})")


def check_weights(net, weights: dict, source) -> None:
    """Check a state dict (arrays or `Stored`) names the network's arrays with
    their shapes, and floats where the network has floats."""
    mine = {**net.params, **net.state}
    problems = [f"'{k}' is missing" for k in mine if k not in weights]
    problems += [f"'{k}' is not in this network" for k in weights if k not in mine]
    problems += [f"'{k}' has shape {list(np.shape(weights[k]))}, the network's is "
                 f"{list(np.shape(mine[k]))}"
                 for k in mine if k in weights and np.shape(mine[k]) != np.shape(weights[k])]
    problems += [f"'{k}' holds {weights[k].dtype} values, not floats" for k in mine
                 if k in weights and np.asarray(mine[k]).dtype.kind == "f"
                 and weights[k].dtype.kind != "f"]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TrainingError(f"{source} does not fit this network: "
                            + "; ".join(problems[:3]) + more
                            + " (was it made with other --set values?)")


def load_weights(net, weights: dict, source) -> None:
    """Load a state dict after checking it names the same arrays with the same
    shapes, and that they are finite."""
    check_weights(net, weights, source)
    bad = nonfinite(weights)
    if bad:
        raise TrainingError(f"{source}: the weights {some_names(bad)} hold NaN or infinity")
    net.load_state_dict(weights)


def restore(net, ck: dict, source) -> np.random.Generator:
    """Put a checkpoint's weights and optimizer state into `net`; return the shuffling RNG."""
    load_weights(net, ck["model"], source)
    bad = nonfinite(ck["optimizer"])
    if bad:
        raise TrainingError(f"{source}: the optimizer state {some_names(bad)} holds NaN "
                            f"or infinity")
    rng = np.random.default_rng()
    try:
        net.load_optimizer_state(ck["optimizer"])
        rng.bit_generator.state = ck["rng"]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise TrainingError(f"{source}: its optimizer or shuffling state is not valid "
                            f"({type(e).__name__}: {e})") from None
    return rng
