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

Without sync_bn the same rewrite, less the allreduces and `comm`, is what a
CPU training program runs (SPLIT): batchnorm computes its batch's mean and
variance in each of its kernels (batchnorm, the two batchnorm_stat, the two
parts of batchnorm_grad: ten passes over x), where the split form reads x
twice for them once, and its gradient reads g and x once for both of its
sums (ResNet-50's batch norms are most of its memory traffic outside the
convolutions).  The CUDA backend keeps batchnorm (it has kernels for it,
and none for these yet).
"""
from __future__ import annotations

from ..ir import Graph
from ..ops.collective import COMM_INPUT, COMM_SIZE
from .util import add_raw, copy_node, empty_like

SPLIT = True        # False: training batchnorm stays whole without sync_bn (tests compare)

def wanted(graph: Graph) -> bool:
    """Whether the spec asks for synchronised batch statistics."""
    return bool((graph.meta.get("train") or {}).get("sync_bn"))


def synchronise(graph: Graph) -> Graph:
    bns = {n.id for n in graph.nodes()
           if n.op in ("batchnorm", "batchnorm_stat") and n.attrs.get("training")}
    sync = wanted(graph)
    if not bns or not (sync or SPLIT):
        return graph
    if sync and COMM_INPUT in graph:
        raise ValueError(f"sync_bn: the graph already has a node '{COMM_INPUT}'")
    g = empty_like(graph)
    comm = (COMM_INPUT,) if sync else ()
    if sync:
        add_raw(g, COMM_INPUT, "input", (), {"kind": "input"}, (COMM_SIZE,), "int64")
    stats: dict = {}

    def stats_of(n):
        x = n.inputs[0]
        if x not in stats:
            dt, c = graph.dtype_of(x), graph.shape(x)[1]

            def node(name, op, ins, shape, attrs=None):
                return add_raw(g, g.unique(f"{x}.{name}"), op, ins, attrs or {}, shape, dt,
                               n.layer, n.loc)

            def summed(name, local):        # over the ranks, or this process's own
                if not sync:
                    return local
                return node(name, "allreduce", (local, COMM_INPUT), g.shape(local),
                            {"weighted": False})
            s1 = summed("sums", node("local_sums", "bn_sums", (x,), (2, c), {"kind": "x"}))
            s2 = summed("sqsums", node("local_sqsums", "bn_sums", (x, s1), (c,),
                                       {"kind": "sq"}))
            stats[x] = s1, s2
        return stats[x]

    for n in graph.nodes():
        if n.id not in bns:
            copy_node(g, graph, n.id)
            continue
        s1, s2 = stats_of(n)
        if n.op == "batchnorm":
            x, w, b, _, _ = n.inputs
            add_raw(g, n.id, "batchnorm_synced", (x, w, b, s1, s2) + comm,
                    {"eps": n.attrs.get("eps", 1e-5), "synced": sync}, n.shape, n.dtype,
                    n.layer, n.loc)
        else:
            attrs = {k: v for k, v in n.attrs.items() if k in ("stat", "momentum", "updates")}
            add_raw(g, n.id, "bn_synced_stat", (s1, s2, n.inputs[1]), attrs, n.shape,
                    n.dtype, n.layer, n.loc)
    return g
