"""An interpreter of the IR over each op's NumPy `reference`: the oracle the
compiled backends are tested against, and a backend of its own for tiny nets."""
from __future__ import annotations

import networkx as nx
import numpy as np

from ..errors import DataError
from ..ops import get_op


def run(graph, feeds: dict, outputs) -> dict:
    """Evaluate `outputs` (node ids) given `feeds`: node id -> array for every
    input, param and state leaf the outputs depend on."""
    outputs = list(outputs)
    needed = set(outputs)
    for o in outputs:
        needed |= nx.ancestors(graph.nx, o)
    vals: dict = {}
    for node in graph.nodes():
        if node.id not in needed:
            continue
        if node.op == "const":
            vals[node.id] = np.asarray(node.attrs["value"], dtype=node.dtype)
        elif node.op in ("input", "param", "state"):
            if node.id not in feeds:
                raise DataError(f"no value given for {node.op} '{node.id}'")
            vals[node.id] = np.asarray(feeds[node.id])
        else:
            out = get_op(node.op).reference(node.attrs, *[vals[i] for i in node.inputs])
            # a `loop` node's value is a dict of arrays (read by loop_output)
            vals[node.id] = out if node.dtype == "loop" else np.asarray(out, dtype=node.dtype)
    return {o: vals[o] for o in outputs}
