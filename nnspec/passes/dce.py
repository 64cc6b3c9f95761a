"""Dead-code elimination: keep only the nodes the program's roots depend on
(an eval program drops the loss's targets, a train program the outputs no
loss reads, every program the gradients of leaves nobody asked for)."""
from __future__ import annotations

import networkx as nx

from ..ir import Graph
from .util import copy_node, empty_like, roots_of


def dead_code(graph: Graph, roots=None) -> Graph:
    roots = list(roots_of(graph) if roots is None else roots)
    keep = set(roots)
    for r in roots:
        keep |= nx.ancestors(graph.nx, r)
    g = empty_like(graph)
    for nid in graph.nx.nodes:
        if nid in keep:
            copy_node(g, graph, nid)
    g.outputs = {k: v for k, v in graph.outputs.items() if v in keep}
    if g.meta.get("loss") not in keep:
        g.meta.pop("loss", None)
    return g
