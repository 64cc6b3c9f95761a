"""Locating non-finite values: the train-mode forward and backward graph run
node by node with the NumPy reference (backend/numpy_ref.py's oracle), stopping
at the first node, in topological order, whose values are not all finite."""
from __future__ import annotations

import numpy as np

from ..ops import get_op
from ..passes.autodiff import backward
from ..passes.mode import cast, specialise


def _describe(node, what: str) -> str:
    where = f" at {node.loc}" if node.loc is not None else ""
    layer = f"layer '{node.layer}'" if node.layer else "no layer"
    kind = {"input": "input", "param": "parameter", "state": "state"}.get(node.op, "node")
    return f"{kind} '{node.id}' (op {node.op}, {layer}{where}): {what}"


def first_nonfinite(graph, feeds: dict, dtype: str):
    g = specialise(cast(graph, dtype), training=True)
    loss = g.meta.get("loss")
    if loss is not None:
        g, _ = backward(g, loss, g.params)
    vals = {}
    for node in g.nodes():
        if node.op == "const":
            v = np.asarray(node.attrs["value"], dtype=node.dtype)
        elif node.op in ("input", "param", "state"):
            if node.id not in feeds:
                continue
            v = np.asarray(feeds[node.id])
        else:
            if any(i not in vals for i in node.inputs):
                continue
            with np.errstate(all="ignore"):
                v = get_op(node.op).reference(node.attrs, *[vals[i] for i in node.inputs])
            if node.dtype == "loop":          # a recurrence's value: a dict of arrays
                vals[node.id] = v
                continue
            v = np.asarray(v, dtype=node.dtype)
        vals[node.id] = v
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            kinds = []
            if np.isnan(v).any():
                kinds.append("NaN")
            if np.isinf(v).any():
                kinds.append("inf")
            return _describe(node, f"{bad} of {np.size(v)} values are {'/'.join(kinds)}")
    return None
