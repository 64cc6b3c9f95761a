"""Rewrites of a recurrent loop's body graph (a `loop` node's `body`, a
`loop_grad`'s `bwd`) before a backend writes its code: graph-to-graph, so
every target runs the same body.

    body = optimise(body, roots, captures)          # what backend/loops.py writes

* `split_concat`: linear(concat(h[t-1], x[t]), W) -> an h part and an x part
  (the x part is then hoisted out of the loop by the writer).
* `merge_gemms`: GEMMs sharing an operand become one (an LSTM's four gates)
  with the weights stacked; in the backward, sum_k g_k W_k becomes one
  product of the concatenated g_k.
* `narrow_products`: a product read only in column slices is formed for
  those columns.
* `transpose_weights`: matmul(a, W) -> linear(a, W^T).

Weights made from the captured ones (stacked, sliced, transposed) are new
`input` nodes of kind "wcat", "wslice" or "wT" (`DERIVED`); the writer makes
them once per call, before the loop.
"""
from __future__ import annotations

from . import canonical, fusion
from .util import add_raw, copy_node, empty_like

def with_saved(bwd, saved):
    """The backward graph with each saved forward value an input (kind
    "saved", same id): the loop_grad reads it from the forward's buffer."""
    if not saved:
        return bwd
    g = empty_like(bwd)
    keep = set(saved)
    for n in bwd.nodes():
        if n.id in keep:
            add_raw(g, n.id, "input", (), {"kind": "saved"}, n.shape, n.dtype, n.layer, n.loc)
        else:
            copy_node(g, bwd, n.id)
    return g


def optimise(graph, roots, caps, skip=()):
    """The loop writer's passes on a body graph: bias adds split off the GEMMs,
    GEMMs sharing an operand merged (`merge_gemms`), and elementwise chains
    fused into one loop each (`roots`: the values read after the body runs;
    `caps`: the captured inputs; `skip`: nodes computed after the loop)."""
    g = split_concat(canonical.split_bias(graph), set(caps))
    g = merge_gemms(g, set(caps), set(skip))
    g = narrow_products(g, set(caps), set(skip))
    g = transpose_weights(g, set(caps), set(skip))
    return fusion.fuse_elementwise(g, roots)


def on_features(n) -> bool:
    """A slice or concat along the last axis (the features)."""
    return n.attrs.get("axis", 1) % len(n.shape) == len(n.shape) - 1


def weight_like(graph, caps) -> set:
    """Captured weights and the ones derived from them before the loop."""
    return set(caps) | {n.id for n in graph.nodes() if n.op == "input"
                        and n.attrs.get("kind") in DERIVED}


DERIVED = ("wcat", "wslice", "wT")


def _derived(g, kind: str, attrs: dict, shape, dtype, cache: dict) -> str:
    """An input node of the rebuilt graph `g` for weights made before the
    loop: "wcat" (attrs.parts stacked along axis 0), "wslice" (columns
    start:stop of attrs.src) or "wT" (attrs.src transposed); one per
    distinct recipe."""
    key = (kind, repr(sorted(attrs.items())))
    if key not in cache:
        cache[key] = add_raw(g, g.unique(kind), "input", (), {"kind": kind, **attrs},
                             shape, dtype)
    return cache[key]


def _rewrite(graph, todo, fn):
    """`graph` rebuilt with each node in `todo` replaced by what fn(g, node,
    cache) adds to the new graph g (cache: for `_derived`); `graph` itself
    when there is nothing to do."""
    if not todo:
        return graph
    g, cache = empty_like(graph), {}
    for n in graph.nodes():
        if n.id in todo:
            fn(g, n, cache)
        else:
            copy_node(g, graph, n.id)
    return g


def split_concat(graph, caps: set):
    """linear(concat(a, x[t]), W) -> linear(a, W[:, :na]) + linear(x[t], W[:, na:])
    (a concatenation along the features, W captured): the step input's part
    is then hoisted out of the loop, and the GEMM left in the loop is smaller
    (an LSTM written with concat(h[t-1], x[t]))."""
    w_like = weight_like(graph, caps)

    def splittable(n):
        if n.op != "linear" or len(n.inputs) != 2 or n.inputs[1] not in w_like:
            return False
        c = graph.node(n.inputs[0])
        if c.op != "concat" or not on_features(c):
            return False
        return any(graph.node(i).attrs.get("kind") == "step" for i in c.inputs)

    def split(g, n, cache):
        c = graph.node(n.inputs[0])
        w = n.inputs[1]
        rows, off, parts = graph.shape(w)[0], 0, []
        for i in c.inputs:
            k = graph.shape(i)[-1]
            ws = _derived(g, "wslice", {"src": w, "start": off, "stop": off + k},
                          (rows, k), graph.dtype_of(w), cache)
            parts.append(add_raw(g, g.unique(f"{n.id}.part"), "linear", (i, ws),
                                 {"bias": False}, n.shape, n.dtype, n.layer, n.loc))
            off += k
        acc = parts[0]
        for j, q in enumerate(parts[1:]):
            last = j == len(parts) - 2
            acc = add_raw(g, n.id if last else g.unique(f"{n.id}.sum"), "add", (acc, q), {},
                          n.shape, n.dtype, n.layer, n.loc)
    return _rewrite(graph, {n.id for n in graph.nodes() if splittable(n)}, split)


def merge_gemms(graph, caps: set, skip: set = frozenset()):
    """One GEMM per step where the body has several with a shared operand
    (an LSTM's four gates, a GRU's three):

    forward   y_k = linear(x, W_k), x not a step input (those are hoisted)
              -> y = linear(x, Wcat) [.., sum n_k]; y_k = slice of y
    backward  add-tree with leaves matmul(g_k, W_k)   (dx = sum_k g_k W_k + ...)
              -> cat = colcat(g_k...) [.., sum n_k]; matmul(cat, Wcat) + ...

    Wcat is an input node of kind "wcat" (attrs.parts: the weights stacked
    along axis 0), filled once per call before the loop."""
    caps = weight_like(graph, caps)
    fwd: dict[str, list] = {}
    for n in graph.nodes():
        if (n.op == "linear" and len(n.inputs) == 2 and n.inputs[1] in caps
                and graph.node(n.inputs[0]).attrs.get("kind") != "step"):
            fwd.setdefault(n.inputs[0], []).append(n.id)
    fwd = {x: ms for x, ms in fwd.items() if len(ms) > 1}

    def plain_mm(nid):
        n = graph.node(nid)
        return (n.op == "matmul" and not n.attrs.get("ta") and not n.attrs.get("tb")
                and n.inputs[1] in caps and len(graph.consumers(nid)) == 1)

    def tree(nid, top, leaves, inner):
        n = graph.node(nid)
        if (n.op == "add" and len(n.inputs) == 2 and n.inputs[0] != n.inputs[1]
                and (top or len(graph.consumers(nid)) == 1)
                and tuple(graph.shape(n.inputs[0])) == tuple(graph.shape(n.inputs[1]))
                == tuple(n.shape)):
            inner.add(nid)
            for i in n.inputs:
                tree(i, False, leaves, inner)
        else:
            leaves.append(nid)

    bwd, gone_bwd = {}, set()
    for n in reversed(list(graph.nodes())):
        if n.id in gone_bwd or n.id in skip or n.op != "add":
            continue
        leaves, inner = [], set()
        tree(n.id, True, leaves, inner)
        mms = [m for m in leaves if plain_mm(m)]
        if len(mms) > 1:
            bwd[n.id] = (mms, [m for m in leaves if m not in mms])
            gone_bwd |= inner | set(mms)
    if not fwd and not bwd:
        return graph
    g, cache = empty_like(graph), {}

    def wcat(parts):
        rows = sum(graph.shape(p)[0] for p in parts)
        return _derived(g, "wcat", {"parts": list(parts)},
                        (rows,) + tuple(graph.shape(parts[0])[1:]), graph.dtype_of(parts[0]),
                        cache)
    first = {ms[0]: x for x, ms in fwd.items()}
    gone = {m for ms in fwd.values() for m in ms} | gone_bwd
    for n in graph.nodes():
        if n.id in first:
            ms = fwd[first[n.id]]
            ws = [graph.node(m).inputs[1] for m in ms]
            wc = wcat(ws)
            shape = tuple(n.shape[:-1]) + (g.shape(wc)[0],)
            mm = add_raw(g, g.unique(f"{n.id}.merged"), "linear", (n.inputs[0], wc),
                         {"bias": False}, shape, n.dtype, n.layer, n.loc)
            off = 0
            for m, w in zip(ms, ws):
                k = graph.shape(w)[0]
                add_raw(g, m, "slice", (mm,), {"axis": len(shape) - 1, "start": off,
                                               "stop": off + k},
                        graph.shape(m), n.dtype, n.layer, n.loc)
                off += k
        elif n.id in bwd:
            mms, others = bwd[n.id]
            ls = [graph.node(m) for m in mms]
            wc = wcat([m.inputs[1] for m in ls])
            gs = [m.inputs[0] for m in ls]
            shape = tuple(graph.shape(gs[0])[:-1]) + (g.shape(wc)[0],)
            cat = add_raw(g, g.unique(f"{n.id}.cat"), "colcat", gs, {}, shape, n.dtype,
                          n.layer, n.loc)
            acc = add_raw(g, n.id if not others else g.unique(f"{n.id}.merged"), "matmul",
                          (cat, wc), {}, n.shape, n.dtype, n.layer, n.loc)
            for j, o in enumerate(others):
                acc = add_raw(g, n.id if j == len(others) - 1 else g.unique(f"{n.id}.sum"),
                              "add", (acc, o), {}, n.shape, n.dtype, n.layer, n.loc)
        elif n.id not in gone:
            copy_node(g, graph, n.id)
    return g


def narrow_products(graph, caps: set, skip: set = frozenset()):
    """A product matmul(a, W) of which only column slices are read (the part
    of a concatenation's gradient a state needs, the input's part unused) is
    formed for those columns only: matmul(a, W[:, start:stop]) per slice."""
    caps = weight_like(graph, caps)
    cols = {}
    for n in graph.nodes():
        readers = [graph.node(c) for c in graph.consumers(n.id)]
        if (n.op == "matmul" and not n.attrs.get("ta") and not n.attrs.get("tb")
                and n.inputs[1] in caps and n.id not in skip and readers
                and all(r.op == "slice" and r.id not in skip and on_features(r)
                        for r in readers)
                and sum(r.shape[-1] for r in readers) < n.shape[-1]):
            cols[n.id] = [r.id for r in readers]
    if not cols:
        return graph
    sliced = {r: p for p, rs in cols.items() for r in rs}
    g, cache = empty_like(graph), {}
    for n in graph.nodes():
        if n.id in cols:
            continue
        if n.id not in sliced:
            copy_node(g, graph, n.id)
            continue
        a, w = graph.node(sliced[n.id]).inputs
        start, stop = n.attrs.get("start") or 0, n.attrs.get("stop")
        stop = graph.shape(w)[-1] if stop is None else stop
        ws = _derived(g, "wslice", {"src": w, "start": start, "stop": stop},
                      (graph.shape(w)[0], stop - start), graph.dtype_of(w), cache)
        add_raw(g, n.id, "matmul", (a, ws), {}, n.shape, n.dtype, n.layer, n.loc)
    return g


def transpose_weights(graph, caps: set, skip: set = frozenset()):
    """matmul(a, W) -> linear(a, W^T) with W^T made once before the loop: a
    GEMM of a few rows runs transposed (ops/linalg.py `dot`), and OpenBLAS is
    faster when its left operand, W^T there, is contiguous (an LSTM's
    backward, [32, 1024] x [1024, 256]: 75 -> 58 us; 8 rows: 47 -> 31 us;
    within 10% either way from 64 rows on)."""
    caps = weight_like(graph, caps)

    def transposed(g, n, cache):
        a, w = n.inputs
        k, m = graph.shape(w)
        wt = _derived(g, "wT", {"src": w}, (m, k), graph.dtype_of(w), cache)
        add_raw(g, n.id, "linear", (a, wt), {"bias": False}, n.shape, n.dtype, n.layer, n.loc)
    return _rewrite(graph, {n.id for n in graph.nodes()
                            if n.op == "matmul" and not n.attrs.get("ta")
                            and not n.attrs.get("tb") and n.inputs[1] in caps
                            and n.id not in skip}, transposed)
