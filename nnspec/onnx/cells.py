"""Recurrent cells: a `loop` node as an ONNX LSTM, GRU or RNN node where it
computes exactly what that op computes (fit.py decides), else as a Scan
whose body is the cell's step graph.

A loop's results are read by `loop_output` nodes ("seq" k: the k-th per-step
output [B, T, ...]; "final" s: state s after the last step).  `loop` names
them lazily, so only the results something reads get their ONNX nodes.

    LSTM/GRU/RNN:  x [B, T, I] -Transpose-> [T, B, I] -> op -> Y [T, 1, B, H]
                   -Squeeze, Transpose-> [B, T, H]; Y_h [1, B, H] -Squeeze-> [B, H]
    Scan:          states, then sequences scanned along axis 1 (batch-first), the
                   body's captured weights read from the outer graph; a reversed
                   cell scans and writes its outputs from the end; a masked cell
                   keeps its state and emits zeros where the mask is 0 (Where).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..ops.loop import split
from .emit import ExportError, value_info
from .fit import fit


# onnxruntime runs LSTM, GRU and RNN in float32 only: a float64 network's
# cells go out as Scans, which it runs in any dtype
RECURRENT_DTYPES = ("float32",)


def loop(e, n, xs, graph, weights):
    f = fit(n, graph, weights) if graph.dtype in RECURRENT_DTYPES else None
    return _recurrent(e, n, xs, graph, f) if f is not None else _scan(e, n, xs, graph, weights)


def loop_output(e, n, xs, graph, weights):
    results = xs[0]
    key = (n.attrs["kind"], n.attrs["index"])
    if key not in results:
        raise ExportError(f"layer '{n.layer}': the {n.attrs['kind']} results of a cell "
                          f"do not export to ONNX (only its outputs and final states)")
    return results[key]()


def _lazy(make):
    memo = []

    def get():
        if not memo:
            memo.append(make())
        return memo[0]
    return get


# ---- LSTM / GRU / RNN -----------------------------------------------------------------

def _recurrent(e, n, xs, graph, f):
    a, dtype = n.attrs, graph.dtype
    inits = xs[a["n_seq"]:a["n_seq"] + a["n_init"]]      # not the captures: W, R, B hold them
    w = {k: e.const(v.astype(dtype), f"{n.id}.{k}") for k, v in f.weights.items()}

    def initial(s):
        if s is None or a["states"][s]["init"] != "input":
            return ""
        return e.op("Unsqueeze", [inits[a["states"][s]["index"]], e.ints(0)],
                    f"{n.id}.initial_{a['states'][s]['name']}")

    x = e.op("Transpose", [xs[0]], f"{n.id}.time_major", perm=[1, 0, 2])
    ins = [x, w["W"], w["R"], w["B"], "", initial(f.h)]
    if f.kind == "LSTM":
        ins += [initial(f.c), w.get("P", "")]
    while ins[-1] == "":
        ins.pop()
    hidden = f.weights["R"].shape[-1]
    outs = e.op(f.kind, ins, n.id, n_out=3 if f.kind == "LSTM" else 2, hidden_size=hidden,
                direction="reverse" if a["reverse"] else "forward", **f.attrs)

    def seq():
        y = e.op("Squeeze", [outs[0], e.ints(1)], f"{n.id}.y")
        return e.op("Transpose", [y], f"{n.id}.seq", perm=[1, 0, 2])

    def final(k, name):
        return lambda: e.op("Squeeze", [outs[k], e.ints(0)], f"{n.id}.{name}")
    results = {("seq", k): _lazy(seq) for k in range(len(a["outputs"]))}
    results[("final", f.h)] = _lazy(final(1, a["states"][f.h]["name"]))
    if f.c is not None:
        results[("final", f.c)] = _lazy(final(2, a["states"][f.c]["name"]))
    return results


# ---- Scan -------------------------------------------------------------------------------

def _scan(e, n, xs, graph, weights):
    from .convert import convert
    a, body = n.attrs, n.attrs["body"]
    seqs, inits, caps, mask = split(a, xs)
    sub = e.child(f"{n.id}/")
    sub.names.update(zip(a["captures"], caps))
    infos = []
    for bid in list(a["state_inputs"]) + list(a["seq_inputs"]):
        sub.names[bid] = sub.fresh(bid)
        infos.append(value_info(sub.names[bid], body.dtype_of(bid), body.shape(bid)))
    if mask is not None:
        m_dtype = graph.dtype_of(n.inputs[-1])
        m = sub.fresh("mask[t]")
        infos.append(value_info(m, m_dtype, ("B",)))
    try:
        convert(sub, body, weights)
    except ExportError as err:
        raise ExportError(f"layer '{n.layer}' (a recurrent cell, exported as a Scan): "
                          f"{err}") from None
    new = [sub.names[body.outputs["state:" + s["name"]]] for s in a["states"]]
    ys = [sub.names[body.outputs[k]] for k in a["outputs"]]
    if mask is not None:
        new, ys = _masked(sub, n, m, new, ys, body, a)
    keys = ["state:" + s["name"] for s in a["states"]] + list(a["outputs"])
    outs = []
    for key, value in zip(keys, new + ys):
        name = sub.op("Identity", [value], key)
        outs.append(value_info(name, body.dtype_of(body.outputs[key]),
                               body.shape(body.outputs[key])))
    step = helper.make_graph(sub.nodes, f"{n.id}.step", infos, outs)
    start = []
    for s in a["states"]:
        carry = a["state_inputs"][len(start)]
        if s["init"] == "input":
            start.append(inits[s["index"]])
        else:
            start.append(e.fill(body.shape(carry), 0, body.dtype_of(carry),
                                f"{n.id}.{s['name']}0"))
    scanned = seqs + ([mask] if mask is not None else [])
    n_out = len(outs)
    attrs = {"num_scan_inputs": len(scanned), "scan_input_axes": [1] * len(scanned),
             "scan_output_axes": [1] * len(ys)}
    if a["reverse"]:
        attrs["scan_input_directions"] = [1] * len(scanned)
        attrs["scan_output_directions"] = [1] * len(ys)
    res = e.op("Scan", start + scanned, n.id, n_out=n_out, body=step, **attrs)
    res = [res] if n_out == 1 else res
    S = len(a["states"])
    results = {("final", s): (lambda v=res[s]: v) for s in range(S)}
    results.update({("seq", k): (lambda v=res[S + k]: v) for k in range(len(ys))})
    return results


def _masked(sub, n, m, new, ys, body, a):
    """A step where the mask is 0 keeps the state and emits zeros."""
    keep = sub.op("Cast", [m], "mask.on", to=helper.np_dtype_to_tensor_dtype(np.dtype(bool)))

    def spread(value_rank):
        return sub.op("Unsqueeze", [keep, sub.ints(*range(1, value_rank))], "mask.spread") \
            if value_rank > 1 else keep
    out_new = []
    for s, value in zip(a["states"], new):
        carry = a["state_inputs"][len(out_new)]
        rank = len(body.shape(carry))
        out_new.append(sub.op("Where", [spread(rank), value, sub.names[carry]],
                              f"{s['name']}.masked"))
    out_ys = []
    for k, value in zip(a["outputs"], ys):
        nid = body.outputs[k]
        zero = sub.const(np.zeros((), body.dtype_of(nid)), "zero")
        out_ys.append(sub.op("Where", [spread(len(body.shape(nid))), value, zero],
                             f"{k}.masked"))
    return out_new, out_ys
