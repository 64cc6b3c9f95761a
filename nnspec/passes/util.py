"""Helpers passes share: rebuilding a graph from a node list (passes build new
graphs rather than mutating in place)."""
from __future__ import annotations

from ..ir import Graph


def empty_like(graph: Graph) -> Graph:
    g = Graph(graph.name, graph.dtype)
    g.outputs = dict(graph.outputs)
    g.meta = dict(graph.meta)
    return g


def add_raw(g: Graph, nid: str, op: str, inputs, attrs, shape, dtype, layer=None, loc=None):
    """Add a node under an exact id, its shape given (no shape rule runs)."""
    inputs = tuple(inputs)
    if nid in g.nx:
        raise KeyError(f"node '{nid}' added twice")
    g.nx.add_node(nid, op=op, inputs=inputs, attrs=dict(attrs), shape=tuple(shape),
                  dtype=dtype, layer=layer, loc=loc)
    for pos, i in enumerate(inputs):
        if i not in g.nx:
            raise KeyError(f"{op} '{nid}': input '{i}' is not in the graph")
        if g.nx.has_edge(i, nid):
            g.nx.edges[i, nid]["pos"].append(pos)
        else:
            g.nx.add_edge(i, nid, pos=[pos])
    return nid


def copy_node(g: Graph, src: Graph, nid: str, **changes):
    d = dict(src.nx.nodes[nid])
    d.update(changes)
    return add_raw(g, nid, d["op"], d["inputs"], d["attrs"], d["shape"], d["dtype"],
                   d["layer"], d["loc"])


def roots_of(graph: Graph) -> list:
    """The nodes a program must compute: `meta["roots"]` when a program set
    them, else the outputs and the loss."""
    if "roots" in graph.meta:
        return list(graph.meta["roots"])
    r = list(graph.outputs.values())
    if graph.meta.get("loss"):
        r.append(graph.meta["loss"])
    return r
