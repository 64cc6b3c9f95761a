"""A tree cell's Scan (a cell applied with `parent=`) read back as the cell.

nnspec's exporter writes a tree cell as a Scan over the node positions that
scans, besides the cell's input, two one-hot sequences computed before it
from the parent ids P [B, N] (nnspec/frontend/tree.py, convert.py):

    here   = Cast(Equal(Unsqueeze(Expand(Reshape(Range(0, Gather(Shape(P), 1), 1),
                                                 [1, -1]), Shape(P)), [-1]), arange(N)))
    parent = Cast(Equal(Unsqueeze(P, [-1]), arange(N)))

and carries, for each state h that the step sums over a node's children, a
state [B, N, n] whose row j holds the sum of h over j's children run so far:

    children(h) = ReduceSum(Mul(Unsqueeze(here[t], [2]), acc), [1])     row t
    acc[t]      = Add(acc, Mul(Unsqueeze(parent[t], [2]), Unsqueeze(h[t], [1])))

`find_trees` matches the one-hot computations node by node (op types,
constants, and no other reader of any value between them) and makes the two
sequences views of P that only a Scan reads; `tree_body` matches the sums in
the body: each read becomes `children(h)`, and the sums are left out of the
cell's states, as the language adds them itself.  The cell is written with
`parent=` (and `mask=`, reader_scan.py).  Anything else is not this pattern:
one-hots computed differently are the ONNX nodes they are (an error for
each node the importer does not convert), and a Scan reading the one-hots
whose body differs is an error naming the Scan and what differs.
"""
from __future__ import annotations

import numpy as np

from .reader import Unsupported

HERE, PARENT = "tree positions", "tree parents"
FLOATS = (1, 10, 11, 16)            # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def producers(graph) -> dict:
    """Value name -> the node of `graph` that makes it."""
    return {o: n for n in graph.node for o in n.output if o}


def const(r, name):
    """The value of an initializer (or a value folded so far), else None."""
    v = r.consts.get(name)
    return None if v is None or np.asarray(v).dtype == object else np.asarray(v)


def same(r, name, want) -> bool:
    v = const(r, name)
    return v is not None and v.shape == np.shape(want) and np.array_equal(v, want)


def unsqueezed(r, node, axes) -> bool:
    """Whether `node` is an Unsqueeze at exactly `axes` (an input, or the
    attribute before opset 13)."""
    if node is None or node.op_type != "Unsqueeze":
        return False
    if len(node.input) > 1 and node.input[1]:
        v = const(r, node.input[1])
        return v is not None and [int(a) for a in v.ravel()] == list(axes)
    return [int(a) for a in r.attrs(node).get("axes", [])] == list(axes)


def only(r, value, *readers) -> bool:
    """Whether the nodes reading `value` are exactly `readers` (and it is no output)."""
    got = sorted(id(n) for n in r.uses.get(value, []))
    return value not in r.outputs and got == sorted(id(n) for n in readers)


# ---- the one-hots before the Scan ------------------------------------------------------------

def find_trees(r) -> None:
    """Make the one-hot positions and parents each tree cell's Scan reads views
    of the parent ids, their nodes skipped (the Scan converter reads them)."""
    made = producers(r.graph)
    for scan in r.graph.node:
        if scan.op_type != "Scan" or scan.domain not in ("", "ai.onnx"):
            continue
        m = int(r.attrs(scan).get("num_scan_inputs", 0))
        found: dict = {}
        for v in scan.input[len(scan.input) - m:]:
            hit = _one_hot(r, made, v, scan)
            if hit is not None:
                found.setdefault(hit[0], []).append((v, hit[1], hit[2]))
        if set(found) != {HERE, PARENT} or any(len(f) != 1 for f in found.values()):
            continue
        (here, p, nodes), (par, p2, nodes2) = found[HERE][0], found[PARENT][0]
        if p != p2:
            continue
        r.skip.update(id(n) for n in nodes + nodes2)
        r.alias(here, p, HERE, "the one-hot of each tree node's position")
        r.alias(par, p, PARENT, "the one-hot of each tree node's parent")


def _one_hot(r, made, v, scan):
    """(kind, P, nodes) when `v`, read only by `scan`, is nnspec's one-hot of
    the positions or of the parent ids P; else None."""
    cast = made.get(v)
    if cast is None or cast.op_type != "Cast" or r.attrs(cast).get("to") not in FLOATS \
            or not only(r, v, scan):
        return None
    eq = made.get(cast.input[0])
    if eq is None or eq.op_type != "Equal" or not only(r, eq.output[0], cast):
        return None
    ids = made.get(eq.input[0])
    n = const(r, eq.input[1])
    if n is None or n.ndim != 1 or not same(r, eq.input[1], np.arange(len(n))) \
            or not unsqueezed(r, ids, [-1]) or not only(r, ids.output[0], eq):
        return None
    nodes = [cast, eq, ids]
    src = ids.input[0]
    positions = _positions(r, made, src, ids)
    if positions is not None:
        kind, p, nodes = HERE, positions[0], nodes + positions[1]
    else:
        kind, p = PARENT, src
    try:
        shape, dtype = r.shape(p), np.dtype(r.dtypes.get(p, np.float32))
    except Unsupported:
        return None
    if len(shape) != 2 or shape[1] != len(n) or dtype.kind not in "iu":
        return None
    return kind, p, nodes


def _positions(r, made, v, reader):
    """(P, nodes) when `v` is `Expand(Reshape(Range(0, Gather(Shape(P), 1), 1), [1, -1]),
    Shape(P))`, the positions along axis 1 of P, read only by `reader`."""
    ex = made.get(v)
    if ex is None or ex.op_type != "Expand" or not only(r, v, reader):
        return None
    shape, along = made.get(ex.input[1]), made.get(ex.input[0])
    if shape is None or shape.op_type != "Shape" or shape.attribute \
            or along is None or along.op_type != "Reshape" or along.attribute \
            or not same(r, along.input[1], [1, -1]) or not only(r, along.output[0], ex):
        return None
    rng = made.get(along.input[0])
    if rng is None or rng.op_type != "Range" or not same(r, rng.input[0], 0) \
            or not same(r, rng.input[2], 1) or not only(r, rng.output[0], along):
        return None
    size = made.get(rng.input[1])
    if size is None or size.op_type != "Gather" or size.input[0] != shape.output[0] \
            or r.attrs(size).get("axis", 0) != 0 or not same(r, size.input[1], 1) \
            or not only(r, size.output[0], rng) or not only(r, shape.output[0], size, ex):
        return None
    return shape.input[0], [ex, shape, along, rng, size]


def tree_inputs(r, scanned) -> dict:
    """{HERE: j, PARENT: k}: which of a Scan's scanned inputs are a tree's
    one-hots (views find_trees made); {} for another Scan."""
    return {r.view(v)[1]: j for j, v in enumerate(scanned) if r.view(v)[1] in (HERE, PARENT)}


# ---- the children's sums in the body ---------------------------------------------------------

def tree_body(sub, body, n_states, here, parent, new, chains) -> dict:
    """The sums of a tree cell's step `sub` (a Reader of `body`): {sum state k:
    (summed state s, the ReduceSum reading row t)}.  `here`, `parent`: the
    body inputs of the one-hots; `new[k]`, `chains[k]`: state k's new value
    and the nodes between it and the body output (Identity, a mask's Where).
    The sums' nodes are skipped; each read is left for `children(h)`."""
    made = producers(body)
    prev = [body.input[k].name for k in range(n_states)]
    reads: dict = {}            # sum state k -> (Unsqueeze, Mul, ReduceSum) reading row t
    for u in sub.uses.get(here, []):
        mul = _single(sub, u.output[0]) if unsqueezed(sub, u, [2]) else None
        acc = [i for i in mul.input if i != u.output[0]] \
            if mul is not None and mul.op_type == "Mul" else []
        red = _single(sub, mul.output[0]) if len(acc) == 1 else None
        k = prev.index(acc[0]) if acc and acc[0] in prev else None
        if red is None or k is None or k in reads or not _summed_over_rows(sub, red):
            raise Unsupported(f"body input '{here}' (the one-hot of the node's position) is "
                              f"read other than as nnspec's children(h), row t of a [B, N, n] "
                              f"state: ReduceSum(Mul(Unsqueeze(here, [2]), sums), [1])")
        reads[k] = (u, mul, red)
    out: dict = {}
    ups = []
    for k, (u, read, red) in reads.items():
        add = made.get(new[k])
        sent = [i for i in add.input if i != prev[k]] \
            if add is not None and add.op_type == "Add" and prev[k] in add.input else []
        mul = made.get(sent[0]) if len(sent) == 1 else None
        ins = [made.get(i) for i in mul.input] if mul is not None and mul.op_type == "Mul" \
            else []
        to = [n for n in ins if unsqueezed(sub, n, [2]) and n.input[0] == parent]
        h = [n for n in ins if unsqueezed(sub, n, [1]) and n not in to]
        s = [j for j in range(n_states) if j not in reads and h and new[j] == h[0].input[0]]
        if len(ins) != 2 or len(to) != 1 or len(h) != 1 or not s \
                or not only(sub, sent[0], add) or not only(sub, to[0].output[0], mul) \
                or not only(sub, h[0].output[0], mul) \
                or sub.shape(prev[k])[1:] != (sub.shape(here)[1], *sub.shape(prev[s[0]])[1:]):
            raise Unsupported(f"state '{prev[k]}' is read as a tree's children's sums, but "
                              f"its new value is not nnspec's (a state's new value added to "
                              f"its parent's row: Add(sums, Mul(Unsqueeze(parent, [2]), "
                              f"Unsqueeze(h, [1]))), h another state)")
        wheres = [n for n in chains[k] if n.op_type == "Where"]
        ends = only(sub, new[k], chains[k][0]) if chains[k] else not sub.uses.get(new[k])
        if not ends or not only(sub, prev[k], read, add, *wheres):
            raise Unsupported(f"state '{prev[k]}' (a tree's children's sums) is read other "
                              f"than by children(h) and its own update")
        sub.skip.update(id(n) for n in (u, read, add, mul, to[0], h[0], *chains[k]))
        ups.append(to[0])
        out[k] = (s[0], red)
    if not only(sub, parent, *ups):
        raise Unsupported(f"body input '{parent}' (the one-hot of the node's parent) is read "
                          f"other than to add a state to its parent's row of the sums")
    return out


def _single(r, value):
    readers = r.uses.get(value, [])
    return readers[0] if len(readers) == 1 and value not in r.outputs else None


def _summed_over_rows(r, node) -> bool:
    """ReduceSum over axis 1 without keeping it: the row a one-hot picks."""
    if node.op_type != "ReduceSum":
        return False
    a = r.attrs(node)
    if a.get("keepdims", 1) or a.get("noop_with_empty_axes", 0):
        return False
    axes = a.get("axes")
    if len(node.input) > 1 and node.input[1]:
        v = const(r, node.input[1])
        axes = None if v is None else list(v.ravel())
    return axes is not None and [int(x) for x in axes] == [1]
