"""Elementwise fusion: chains (and trees) of elementwise ops become one `fused`
node, compiled by the CPU backend into one loop.

    before:  t = add(mm, b)        # b: [32] broadcast over [B, 32]
             y = tanh(t)           # t has one reader
    after:   y = fused(mm, b; body=[t = a + b, y = np.tanh(t)])

A node joins its reader's group when both are elementwise, it has exactly one
reader, it is not a root (output, loss, gradient) and it has the reader's shape
(so every member has the group's output shape and only the group's inputs
broadcast).  An input may broadcast when its non-unit axes are one contiguous
block of the output's axes, matching them: a bias [C] against [B, C], a channel
vector [C, 1, 1] against [B, C, H, W], a scalar.  Every elementwise node
becomes a `fused` node, even alone: the backend's loop is typed and serial for
small sizes where the op's own kernel is general and parallel.

The fused node keeps the id of its last member, so readers are unchanged.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops import OPS, Op, get_op, load_all, register
from .util import add_raw, copy_node, empty_like, roots_of


class Fused(Op):
    """`fused(*inputs; body)`: the body's members in order, each
    {"id", "op", "attrs", "args"}, args naming group inputs "in<k>" or earlier
    members "t<j>".  The value is the last member's."""
    name = "fused"
    elementwise = True

    def infer(self, attrs, shapes, dtypes):
        raise TypeError("fused: built by the fusion pass with its shape given")

    def reference(self, attrs, *xs):
        vals = {f"in{k}": x for k, x in enumerate(xs)}
        out = None
        for j, m in enumerate(attrs["body"]):
            out = get_op(m["op"]).reference(m["attrs"], *[vals[a] for a in m["args"]])
            vals[f"t{j}"] = out
        return out


def member_expr(op_name: str, attrs: dict) -> str:
    """The scalar expression of one member over `a`, `b`, `c` and `T` (the
    elementwise ops' convention), its attrs already substituted by name."""
    if op_name == "fill_like":
        return f"T({float(attrs.get('value', 0.0))!r})"
    op = get_op(op_name)
    expr = op.expr
    vals = op.attr_values(attrs) if hasattr(op, "attr_values") else {}
    if vals:
        import ast

        class Sub(ast.NodeTransformer):
            def visit_Name(self, node):
                if node.id in vals:
                    return ast.copy_location(ast.Constant(vals[node.id]), node)
                return node
        expr = ast.unparse(Sub().visit(ast.parse(expr, mode="eval")))
    return expr


load_all()
if "fused" not in OPS:
    register(Fused())


def block_pattern(shape, out_shape):
    """How an input of `shape` is read in a loop over `out_shape`: ("scalar",),
    ("full",) or ("block", first_axis, last_axis) in out's axes; None when the
    broadcast is not one contiguous block."""
    shape, out_shape = tuple(shape), tuple(out_shape)
    if len(shape) > len(out_shape):
        return None
    pad = (1,) * (len(out_shape) - len(shape)) + shape
    axes = [i for i, d in enumerate(pad) if d != 1]
    if not axes:
        return ("scalar",)
    lo, hi = axes[0], axes[-1]
    for i in range(lo, hi + 1):
        if pad[i] != out_shape[i]:
            return None
    if all(pad[i] == out_shape[i] for i in range(len(out_shape))):
        return ("full",)
    # a leading block of out's axes with ones after it is "full" up to the
    # unit axes only when those are unit in out too (handled above)
    return ("block", lo, hi)


def _fusable(graph: Graph, n) -> bool:
    if n.op == "fill_like":
        return str(n.dtype).startswith("float") and all(
            isinstance(d, int) or d == "B" for d in n.shape)
    op = OPS.get(n.op)
    if op is None or not op.elementwise or not isinstance(getattr(op, "expr", None), str):
        return False
    if not str(n.dtype).startswith("float"):
        return False
    if any(not isinstance(d, int) and d != "B" for d in n.shape):
        return False
    return all(block_pattern(graph.shape(i), n.shape) is not None for i in n.inputs)


def fuse_elementwise(graph: Graph, roots=None) -> Graph:
    load_all()
    roots = set(roots_of(graph) if roots is None else roots)
    group_of: dict[str, list[str]] = {}     # group output id -> member ids (in order)
    member_of: dict[str, str] = {}          # member id -> group output id
    pos = {nid: k for k, nid in enumerate(graph.nx.nodes)}
    for n in graph.nodes():
        if not _fusable(graph, n):
            continue
        members = []
        for i in dict.fromkeys(n.inputs):
            if (i in group_of and i not in roots and graph.consumers(i) == [n.id]
                    and tuple(graph.shape(i)) == tuple(n.shape)):
                members += group_of.pop(i)
        members.append(n.id)
        members.sort(key=pos.__getitem__)
        group_of[n.id] = members
        for m in members:
            member_of[m] = n.id

    g = empty_like(graph)
    for n in graph.nodes():
        if n.id in member_of and member_of[n.id] != n.id:
            continue                          # emitted with its group's output
        if n.id not in group_of:
            copy_node(g, graph, n.id)
            continue
        members = group_of[n.id]
        ext: list[str] = []
        ref: dict[str, str] = {}
        body = []
        for j, m in enumerate(members):
            mn = graph.node(m)
            args = []
            for i in mn.inputs:
                if i not in ref:
                    ref[i] = f"in{len(ext)}"
                    ext.append(i)
                args.append(ref[i])
            body.append({"id": m, "op": mn.op, "attrs": dict(mn.attrs), "args": args})
            ref[m] = f"t{j}"
        attrs = {"body": body, "ops": [b["op"] for b in body]}
        add_raw(g, n.id, "fused", ext, attrs, n.shape, n.dtype, n.layer, n.loc)
    return g

