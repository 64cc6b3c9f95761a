"""Canonicalisation: rewrite ops into forms the later passes handle better.

split_bias:  y = linear(x, W, b)   ->   t = linear(x, W); y = add(t, b)

The bias add becomes an elementwise op that fusion merges with the activation
after it (one pass over y instead of two), and the GEMM kernel stays a bare
BLAS call.  The add keeps the linear's id, so every reader of y is unchanged.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import OPS, load_all
from .util import add_raw, copy_node, empty_like


def split_bias(graph: Graph) -> Graph:
    load_all()
    if "add" not in OPS:
        return graph
    g = empty_like(graph)
    for n in graph.nodes():
        if n.op == "linear" and len(n.inputs) == 3:
            x, w, b = n.inputs
            mm = add_raw(g, g.unique(f"{n.id}.mm"), "linear", (x, w), {**n.attrs, "bias": False},
                         n.shape, n.dtype, n.layer, n.loc)
            add_raw(g, n.id, "add", (mm, b), {}, n.shape, n.dtype, n.layer, n.loc)
        else:
            copy_node(g, graph, n.id)
    return g
