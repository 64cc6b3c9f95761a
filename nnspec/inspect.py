"""What `nnspec inspect` reports: per layer its output shape, parameters,
state, multiply-adds and receptive field, and the totals."""
from __future__ import annotations

from .ir import Graph
from .ops import get_op


def _known(shape):
    return [d for d in shape if isinstance(d, int)]


def receptive_fields(graph: Graph, starts: bool = False) -> dict:
    """node id -> (size, jump) per spatial axis, for nodes with spatial axes;
    with `starts`, (size, jump, start): output position i's field covers the
    input positions start + i * jump .. start + i * jump + size - 1 (a start
    below 0 lies in the padding).

    A window op (kernel k, stride s, dilation d, padding p before the first
    position) maps (r, j, a) to (r + (k-1) d j, j s, a - p j); ops without a
    window keep the widest field of their inputs; a transposed convolution
    divides the jump by its stride (its start is approximate)."""
    rf: dict = {}
    for n in graph.nodes():
        if n.op in ("input",) and len(n.shape) >= 3 and n.attrs.get("kind") == "input":
            rf[n.id] = tuple((1, 1, 0) for _ in n.shape[2:])
            continue
        ins = [rf[i] for i in n.inputs if i in rf]
        if not ins or len(n.shape) < 3:
            continue
        nsp = len(n.shape) - 2
        base = max(ins, key=lambda f: f[0][0])
        if len(base) != nsp:
            base = tuple(base[:nsp]) + tuple((1, 1, 0) for _ in range(nsp - len(base)))
        k = n.attrs.get("kernel")
        if k is None and "stride" in n.attrs and len(n.inputs) > 1:
            w = graph.shape(n.inputs[1])          # a convolution: the weight's spatial dims
            if len(w) == len(n.shape):
                k = list(w[2:])
        if k is None:
            rf[n.id] = base
            continue
        k, s, d = (_per_axis(v, nsp) for v in (k, n.attrs.get("stride", 1),
                                                 n.attrs.get("dilation", 1)))
        out = []
        for (r, j, a), ki, si, di, p in zip(base, k, s, d, _pads_before(graph, n, k)):
            if "transpose" in n.op:
                out.append((r + (ki - 1) * di * j, max(j / si, 1e-9),
                            a + j * (p - (ki - 1) * di) / si))
            else:
                out.append((r + (ki - 1) * di * j, j * si, a - p * j))
        rf[n.id] = tuple(out)
    if starts:
        return rf
    return {nid: tuple((r, j) for r, j, _ in f) for nid, f in rf.items()}


def field_box(field, position) -> list:
    """[(first, last + 1)] per spatial axis of the input: the receptive field at
    `position` (a node's spatial indices) of a node whose entry in
    ``receptive_fields(graph, starts=True)`` is `field`; not clipped to the input."""
    box = []
    for (r, j, a), i in zip(field, position):
        lo = round(a + i * j)
        box.append((lo, lo + round(r)))
    return box


def _pads_before(graph: Graph, n, ks) -> list:
    """Padding before the first position of each spatial axis of a window op."""
    pad = n.attrs.get("pad", 0)
    if n.op == "conv":
        from .ops.conv import _pads
        return [lo for lo, _ in _pads(n.attrs, graph.shape(n.inputs[0])[2:], ks)]
    return [p if isinstance(p, int) else 0 for p in _per_axis(pad, len(ks))]


def _per_axis(v, n):
    if isinstance(v, (list, tuple)):
        v = list(v)
        return (v * n)[:n] if len(v) == 1 else v[-n:]
    return [v] * n


def _all_nodes(graph: Graph, steps: int = 1):
    """(graph, node, steps) for the graph and, recursively, its loop bodies,
    whose nodes run once per time step (T when it is static, else 1)."""
    for n in graph.nodes():
        yield graph, n, steps
        if n.op == "loop":
            t = graph.shape(n.inputs[0])[1] if n.inputs else 1
            yield from _all_nodes(n.attrs["body"], steps * (t if isinstance(t, int) else 1))


def summary(graph: Graph) -> dict:
    """Per-layer rows and totals.  A cell's multiply-adds count every time step
    of a static-length sequence (one step when T is dynamic)."""
    rf = receptive_fields(graph)
    by_layer: dict = {}
    for g, n, steps in _all_nodes(graph):
        if n.layer is None or n.op in ("input", "param", "state", "const", "loop"):
            continue
        try:
            macs = steps * get_op(n.op).macs(n.attrs, [g.shape(i) for i in n.inputs],
                                             n.shape)
        except (KeyError, NotImplementedError):
            macs = 0
        by_layer.setdefault(n.layer, []).append((n.id, macs))
    rows = []
    for inst in graph.meta.get("layers", []):
        if inst["kind"] == "block":
            continue
        out = inst["output"] if not inst.get("in_step") else None
        params = sum(graph.node(p).size for p in inst["params"] if graph.node(p).op == "param")
        state = sum(graph.node(p).size for p in inst["params"] if graph.node(p).op == "state")
        macs = sum(m for _, m in by_layer.get(inst["name"], []))
        row = {"name": inst["name"], "op": inst["kind"], "shape": inst.get("shape") or list(graph.shape(out)),
               "params": params, "state": state, "macs": int(macs)}
        if out is not None and out in rf:
            sizes = [round(r) for r, _ in rf[out]]
            jumps = [j for _, j in rf[out]]
            row["receptive_field"] = {"size": sizes, "jump": [round(j, 4) for j in jumps]}
        rows.append(row)
    macs_nodes = {nid: m for v in by_layer.values() for nid, m in v}
    return {
        "name": graph.name,
        "dtype": graph.dtype,
        "inputs": {i: list(graph.shape(i)) for i in graph.inputs},
        "targets": {i: list(graph.shape(i)) for i in graph.targets},
        "outputs": {k: list(graph.shape(v)) for k, v in graph.outputs.items()},
        "layers": rows,
        "trainable_params": graph.count("param"),
        "state": graph.count("state"),
        "macs": int(sum(macs_nodes.values())),
        "macs_nodes": macs_nodes,
    }


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_shape(s) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def render(info: dict) -> str:
    head = ("layer", "op", "output", "params", "state", "mult-adds", "receptive field")
    rows = []
    for r in info["layers"]:
        field = ""
        if "receptive_field" in r:
            sz, jp = r["receptive_field"]["size"], r["receptive_field"]["jump"]
            field = ("×".join(map(str, sz)) + " / " +
                     "×".join(f"{j:g}" for j in jp))
        rows.append((r["name"], r["op"], _fmt_shape(r["shape"]),
                     _fmt_int(r["params"]) if r["params"] else "",
                     _fmt_int(r["state"]) if r["state"] else "",
                     _fmt_int(r["macs"]) if r["macs"] else "", field))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    right = {3, 4, 5}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"network {info['name']} ({info['dtype']})"]
    for k, v in info["inputs"].items():
        out.append(f"  input  {k}: {_fmt_shape(v)}")
    for k, v in info["targets"].items():
        out.append(f"  target {k}: {_fmt_shape(v)}")
    out.append("")
    out.append(line(head))
    out.append(line(["-" * w for w in widths]))
    out += [line(r) for r in rows]
    out.append("")
    out.append(f"trainable parameters: {_fmt_int(info['trainable_params'])}")
    out.append(f"state (non-trainable): {_fmt_int(info['state'])}")
    out.append(f"multiply-adds per example: {_fmt_int(info['macs'])}")
    return "\n".join(out)
