"""`.nnc` files: a compiled network in one file.

    save(net, "mlp.nnc")
    net = load("mlp.nnc")

The file is a bundle (see bundle.py: npz + JSON, never a pickle) holding the
spec's source text, its ``--set`` overrides, dtype and seed, the graph's hash,
and the weights (`state_dict`).  Loading re-lowers the source with the same
overrides, checks the weights fit, and loads them; nothing in the file is
executed, only parsed as a spec.
"""
from __future__ import annotations

import warnings

from ..errors import TrainingError
from .bundle import check_writable, read_bundle, write_bundle
from .checkpoint import load_weights

KIND = "nnspec-model"
VERSION = 1


def save(net, path, *, source: str | None = None, overrides: dict | None = None,
         name: str | None = None) -> None:
    """Write `net` to `path`.  The spec's source text and ``--set`` overrides are
    taken from the network (what `nnspec.compile` recorded) unless given."""
    meta = net.graph.meta
    source = source if source is not None else meta.get("source")
    if source is None:
        raise TrainingError("save: the network does not carry its spec's source text; "
                            "pass source=<the spec text>")
    check_writable(path, (KIND,), error=TrainingError)
    write_bundle(path, KIND, {
        "version": VERSION,
        "name": name or meta.get("file") or net.graph.name,
        "source": source,
        "set": dict(overrides if overrides is not None else meta.get("set") or {}),
        "dtype": net.graph.dtype,
        "seed": int(getattr(net, "seed", 0) or 0),
        "graph": net.graph.hash(),
        "weights": dict(net.state_dict()),
    })


def load(path):
    """The network saved in `path`, with its weights."""
    import nnspec
    _, m = read_bundle(path, KIND, error=TrainingError)
    if m.get("version") != VERSION:
        raise TrainingError(f"'{path}' is a version {m.get('version')} .nnc file; "
                            f"this nnspec reads version {VERSION}")
    net = nnspec.compile(m["source"], dtype=m["dtype"], set=m["set"] or None, seed=m["seed"])
    if net.graph.hash() != m["graph"]:
        warnings.warn(f"{path}: the spec lowers to a different graph with this version "
                      f"of nnspec; loading the weights by name", stacklevel=2)
    load_weights(net, m["weights"], path)
    return net
