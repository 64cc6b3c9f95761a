"""Tree cells: one cell applied bottom-up over a tree given per example.

    r = x -> cell(n, parent=parent, mask=mask)    # x [B, N, ...]; parent int [B, N]

The N nodes are numbered so that every child comes before its parent; parent[j]
is j's parent (-1, or any id outside [0, N), for the root).  Inside the cell,
`children(h)` is the sum of state h over the current node's children (zeros at
a leaf).  The cell still lowers to one ordinary `loop` over the node positions
t = 0..N-1; for each state h read as children(h) a hidden state
`children(h)` [B, N, ...] holds, in row j, the sum of h over the children of j
run so far.  At step t:

    children(h)       = vecmat(here[t], acc)             row t: t's children, all run
    acc (after step)  = acc + outer(par[t], h[t])        h[t] added to its parent's row

with here = one_hot(positions(parent)) and par = one_hot(parent), computed once
outside the loop and fed to it as two more sequences.  The step holds only
ordinary ops, so the loop's BPTT is backpropagation through structure, and the
compiled network does not grow with N (a step reads and writes N rows of the
sums: O(N) per state element).  A masked (padding) node leaves the sums alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SpecError
from ..ir import BATCH
from ..ops.base import fmt
from . import ast
from .values import Tensor

NAME = "children"


@dataclass
class TreeBuild:
    """The tree plumbing of one cell body being lowered."""
    nodes: int
    here: str                      # body input [B, N]: one-hot of the step's position
    parent: str                    # body input [B, N]: one-hot of the node's parent
    sums: dict = field(default_factory=dict)    # state name -> (carry id, read id)


def start(low, build, opts, g, seq: str, loc, scope) -> list:
    """Set up `build.tree` for a cell called with parent=: returns the outer
    sequences (here, par) to append to the loop's inputs."""
    if opts.get("bptt") is not None:
        raise SpecError("bptt= truncates a sequence; a tree cell (parent=) backpropagates "
                        "through the whole tree", loc)
    p = low.want_tensor(opts["parent"], loc, "parent")
    pid = low.bring(scope, p.nid, p.graph)
    n = g.shape(seq)[1]
    if not isinstance(n, int):
        raise SpecError("a tree cell needs a fixed number of nodes, not T", loc,
                        "declare the input as `input x: [nodes, features]`")
    if tuple(g.shape(pid)) != (BATCH, n) or not g.dtype_of(pid).startswith("int"):
        raise SpecError(f"parent holds one int per node, shape {fmt((BATCH, n))}; got "
                        f"{g.dtype_of(pid)} {fmt(g.shape(pid))}", loc,
                        f"declare it as `input parent: int[{n}]`")
    dtype = g.dtype
    pos = g.add("positions", (pid,), {"axis": 1}, name=f"{pid}.positions", loc=loc)
    here = g.add("one_hot", (pos,), {"k": n, "dtype": dtype}, name=f"{pid}.here", loc=loc)
    par = g.add("one_hot", (pid,), {"k": n, "dtype": dtype}, name=f"{pid}.onehot", loc=loc)
    body = build.body
    build.tree = TreeBuild(n, body.input("here[t]", (BATCH, n), dtype, kind="step"),
                           body.input("parent[t]", (BATCH, n), dtype, kind="step"))
    return [here, par]


def children(low, e: ast.Call, scope) -> Tensor:
    """`children(h)`: the sum of state h over the current node's children."""
    build = scope.cell
    if build is None or build.tree is None:
        raise SpecError("children(h) sums a state over a tree node's children; it is read "
                        "inside a cell applied to a tree", e.loc,
                        "apply the cell with parent=: x -> cell(n, parent=parent)")
    arg = e.args[0] if len(e.args) == 1 and not e.kwargs else None
    if not isinstance(arg, ast.Name) or arg.id not in build.states:
        raise SpecError(f"children takes one state of this cell: children(h); its states: "
                        f"{', '.join(build.states) or 'none'}", e.loc)
    name, tree, body = arg.id, build.tree, build.body
    if name not in tree.sums:
        rest = body.shape(build.states[name]["prev"])[1:]
        acc = body.input(f"children({name})[t-1]", (BATCH, tree.nodes, *rest), kind="carry",
                         loc=e.loc)
        read = body.add("vecmat", (tree.here, acc), name=f"children({name})", loc=e.loc)
        tree.sums[name] = (acc, read)
    return Tensor(tree.sums[name][1], body)


def finish(build) -> None:
    """Add each children(h) sum as a hidden state of the loop, updated after
    the step: h[t] goes into the row of t's parent."""
    tree, body = build.tree, build.body
    for name, (acc, _) in tree.sums.items():
        st = build.states[name]
        sent = body.add("outer", (tree.parent, st["new"]), name=f"{name}.to_parent",
                        loc=st["loc"])
        new = body.add("add", (acc, sent), name=f"children({name})[t]", loc=st["loc"])
        build.states[f"children({name})"] = {"prev": acc, "new": new, "init": None,
                                             "loc": st["loc"], "hidden": True}
