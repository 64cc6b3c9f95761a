"""Reverse-mode autodiff on the IR.

`backward(graph, loss, wrt)` returns a new graph holding the forward nodes,
then the backward nodes built from each op's `grad` rule (in other ops), and a
map from each node in `wrt` to its gradient node.

    forward:  x -> linear(x, W, b) -> relu -> ... -> loss
    backward: seed = fill_like(loss, 1)
              for each node in reverse order with a gradient g:
                  input grads = op.grad(gb, node, g)      # new IR nodes
              contributions from several consumers are summed with `add`

Only nodes that lie between `wrt` and `loss` get gradients.

A tuple-valued node (a `loop`, see ops/loop.py) is read through selector
nodes (`loop_output`, whose op has `selects = True` and `part(node)`); their
gradients are not summed but handed to the tuple-valued node's `grad` as a
dict `part -> gradient node`.  `seeds=[(node, cotangent)]` replaces the
scalar loss to build a vector-Jacobian product (a loop body's backward step).
`rules={op name: rule}` replaces the gradient rule of those ops by another
with the same signature, `rule(gb, node, g)`: a backward pass that is not the
derivative (the deconvnet of passes/deconv.py rectifies at every ReLU).
"""
from __future__ import annotations

import networkx as nx

from ..ir import Graph, LEAF_OPS
from ..ops import get_op


class GradBuilder:
    """What an op's `grad` rule sees: `add` appends a node to the graph being
    differentiated; `wants(i)` says whether input i needs a gradient."""

    def __init__(self, graph: Graph, node, needed: set):
        self.graph, self.node, self._needed = graph, node, needed

    def add(self, op, inputs=(), attrs=None, *, shape=None, dtype=None) -> str:
        return self.graph.add(op, inputs, attrs, name=f"d/{self.node.id}/{op}",
                              layer=self.node.layer, shape=shape, dtype=dtype)

    def const(self, value) -> str:
        return self.graph.const(value)

    def wants(self, i: int) -> bool:
        return self.node.inputs[i] in self._needed


def copy_graph(graph: Graph) -> Graph:
    g = Graph(graph.name, graph.dtype)
    g.nx = graph.nx.copy()
    g.outputs = dict(graph.outputs)
    g.meta = dict(graph.meta)
    return g


def backward(graph: Graph, loss: str | None, wrt=None, *, seeds=None, rules=None):
    """`seeds`, instead of a scalar `loss`: (node, cotangent node) pairs, the
    cotangents being nodes of `graph` already (a vector-Jacobian product).
    `rules`: op name -> a rule used instead of that op's `grad`."""
    wrt = list(graph.params if wrt is None else wrt)
    g = copy_graph(graph)
    grads: dict[str, list[str]] = {}
    if seeds is None:
        seeds = [(loss, g.add("fill_like", (loss,), {"value": 1.0}, name="d/seed"))]
    for nid, s in seeds:
        grads.setdefault(nid, []).append(s)
    ancestors = set(grads)
    for nid in grads:
        ancestors |= nx.ancestors(graph.nx, nid)
    needed = set()
    for w in wrt:
        needed |= (nx.descendants(graph.nx, w) | {w}) & ancestors
    # tuple-valued nodes (a `loop`): the gradients of the nodes that select
    # their parts (`loop_output`), by part
    parts: dict[str, dict] = {}
    total: dict[str, str] = {}
    for nid in reversed(list(graph.nx.nodes)):
        if nid not in needed:
            continue
        if nid in parts:
            acc = {k: _sum(g, gs, f"d/{nid}/{k[0]}{k[1]}/sum")
                   for k, gs in sorted(parts.pop(nid).items())}
        elif nid in grads:
            acc = _sum(g, grads.pop(nid), f"d/{nid}/sum")
            total[nid] = acc
        else:
            continue
        node = g.node(nid)
        if node.op in LEAF_OPS:
            continue
        op = get_op(node.op)
        if getattr(op, "selects", False):
            parts.setdefault(node.inputs[0], {}).setdefault(op.part(node), []).append(acc)
            continue
        if not op.differentiable:
            continue
        rule = (rules or {}).get(node.op, op.grad)
        in_grads = rule(GradBuilder(g, node, needed), node, acc)
        if len(in_grads) != len(node.inputs):
            raise AssertionError(f"{node.op}: grad returned {len(in_grads)} gradients "
                                 f"for {len(node.inputs)} inputs")
        for inp, ig in zip(node.inputs, in_grads):
            if ig is None or inp not in needed:
                continue
            if g.shape(ig) != graph.shape(inp):
                raise AssertionError(
                    f"{node.op}: gradient for input '{inp}' has shape {g.shape(ig)}, "
                    f"the input has {graph.shape(inp)}")
            grads.setdefault(inp, []).append(ig)
    return g, {w: total[w] for w in wrt if w in total}


def _sum(g: Graph, gs: list, name: str) -> str:
    acc = gs[0]
    for other in gs[1:]:
        acc = g.add("add", (acc, other), name=name)
    return acc
