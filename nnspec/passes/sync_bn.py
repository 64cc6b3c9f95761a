"""sync_bn: batch norm with the statistics of the whole batch, over every
process of a data-parallel job (train section: `sync_bn = true`).

Each training `batchnorm` and its running-statistic updates become

    s1 = allreduce(bn_sums(x))                 sum of x and count, per channel
    s2 = allreduce(bn_sums(x, s1; sq))         sum of (x - mean)^2 (two passes, as batchnorm)
    y  = batchnorm_synced(x, w, b, s1, s2, comm)
    running_mean, running_var <- bn_synced_stat(s1, s2, state)

once per normalised value x; batchnorm_synced's gradient sums its own
statistics over the ranks too (ops/norm.py).  `comm` is a program input,
COMM_INPUT, that the network feeds (ops/collective.py): zeros in one process,
where every allreduce copies and the program computes what batchnorm does.
Eval programs keep batchnorm, which reads the running statistics.
"""
from __future__ import annotations

from ..ir import Graph
from ..ops.collective import COMM_INPUT, COMM_SIZE
from .util import add_raw, copy_node, empty_like


def wanted(graph: Graph) -> bool:
    """Whether the spec asks for synchronised batch statistics."""
    return bool((graph.meta.get("train") or {}).get("sync_bn"))


def synchronise(graph: Graph) -> Graph:
    bns = {n.id for n in graph.nodes()
           if n.op in ("batchnorm", "batchnorm_stat") and n.attrs.get("training")}
    if not bns or not wanted(graph):
        return graph
    if COMM_INPUT in graph:
        raise ValueError(f"sync_bn: the graph already has a node '{COMM_INPUT}'")
    g = empty_like(graph)
    add_raw(g, COMM_INPUT, "input", (), {"kind": "input"}, (COMM_SIZE,), "int64")
    stats: dict = {}

    def stats_of(n):
        x = n.inputs[0]
        if x not in stats:
            dt, c = graph.dtype_of(x), graph.shape(x)[1]

            def node(name, op, ins, shape, attrs=None):
                return add_raw(g, g.unique(f"{x}.{name}"), op, ins, attrs or {}, shape, dt,
                               n.layer, n.loc)
            local = node("local_sums", "bn_sums", (x,), (2, c), {"kind": "x"})
            s1 = node("sums", "allreduce", (local, COMM_INPUT), (2, c), {"weighted": False})
            local = node("local_sqsums", "bn_sums", (x, s1), (c,), {"kind": "sq"})
            s2 = node("sqsums", "allreduce", (local, COMM_INPUT), (c,), {"weighted": False})
            stats[x] = s1, s2
        return stats[x]

    for n in graph.nodes():
        if n.id not in bns:
            copy_node(g, graph, n.id)
            continue
        s1, s2 = stats_of(n)
        if n.op == "batchnorm":
            x, w, b, _, _ = n.inputs
            add_raw(g, n.id, "batchnorm_synced", (x, w, b, s1, s2, COMM_INPUT),
                    {"eps": n.attrs.get("eps", 1e-5)}, n.shape, n.dtype, n.layer, n.loc)
        else:
            attrs = {k: v for k, v in n.attrs.items() if k in ("stat", "momentum", "updates")}
            add_raw(g, n.id, "bn_synced_stat", (s1, s2, n.inputs[1]), attrs, n.shape,
                    n.dtype, n.layer, n.loc)
    return g
