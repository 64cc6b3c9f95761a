"""Loop results: every result of a `loop` / `loop_grad` node gets a
`loop_output` reader, placed right after the loop.

The compiled loop writes all its results in one call, into the buffers of
its readers, so each result needs a buffer (a reader) even when nothing reads
it (the carries in an inference program), and the readers' buffers must be
allocated at the loop's position in the order the memory planner walks
(passes/memory.py keeps the loop's inputs live until its readers are placed).

    before:  loop -> a -> loop_output(seq, 0) -> b
    after:   loop -> loop_output(seq, 0) -> loop_output(final, 0) -> loop_output(carry, 0) -> a -> b
"""
from __future__ import annotations

from ..ir import Graph
from ..ops.loop import output_shape
from .util import add_raw, copy_node, empty_like


def results(graph: Graph, nid: str) -> list[tuple[str, int]]:
    n = graph.node(nid)
    a = n.attrs
    if n.op == "loop_grad":
        return [("grad", i) for i in a["wants"]]
    S = len(a["states"])
    return ([("seq", k) for k in range(len(a["outputs"]))] + [("final", s) for s in range(S)]
            + [("carry", s) for s in range(S)])


def materialise(graph: Graph) -> Graph:
    loops = [n.id for n in graph.nodes() if n.op in ("loop", "loop_grad")]
    if not loops:
        return graph
    readers = {}
    for lid in loops:
        for c in graph.consumers(lid):
            r = graph.node(c)
            readers.setdefault(lid, {})[(r.attrs["kind"], r.attrs["index"])] = c
    moved = {c for d in readers.values() for c in d.values()}
    g = empty_like(graph)
    for n in graph.nodes():
        if n.id in moved:
            continue
        copy_node(g, graph, n.id)
        if n.op not in ("loop", "loop_grad"):
            continue
        have = readers.get(n.id, {})
        for key in sorted(k for k in have if k[0] == "saved"):   # values kept for loop_grad
            copy_node(g, graph, have[key])
        for kind, index in results(graph, n.id):
            if (kind, index) in have:
                copy_node(g, graph, have[(kind, index)])
                continue
            shape, dtype = output_shape(graph, n.id, kind, index)
            if str(dtype).startswith("float"):
                dtype = graph.dtype
            add_raw(g, g.unique(f"{n.id}.{kind}{index}"), "loop_output", (n.id,),
                    {"kind": kind, "index": index, "shape": shape, "dtype": dtype},
                    shape, dtype)
    return g
