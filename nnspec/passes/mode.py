"""Mode specialisation: a copy of the graph for one mode.

Ops that behave differently when training (batchnorm, dropout) carry a
`training` attr; the eval program gets a copy with it False, the train program
one with it True, so each program's code holds no run-time mode test.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from .util import copy_node, empty_like


def specialise(graph: Graph, training: bool) -> Graph:
    g = empty_like(graph)
    g.meta["training"] = bool(training)
    for n in graph.nodes():
        if "training" in n.attrs:
            copy_node(g, graph, n.id, attrs={**n.attrs, "training": bool(training)})
        else:
            copy_node(g, graph, n.id)
    return g


def cast(graph: Graph, dtype: str) -> Graph:
    """The graph with every float node in `dtype` (a float32 spec run in float64)."""
    dtype = np.dtype(dtype).name
    if graph.dtype == dtype:
        return graph
    g = empty_like(graph)
    g.dtype = dtype
    for n in graph.nodes():
        d = dtype if str(n.dtype).startswith("float") else n.dtype
        copy_node(g, graph, n.id, dtype=d)
    return g
