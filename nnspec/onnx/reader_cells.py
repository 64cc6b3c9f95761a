"""ONNX's LSTM, GRU and RNN nodes as nnspec cells (CELLS: the definitions the
written spec carries).  A node reads its sequence time-major, [T, B, I]: the
exporter (and PyTorch) put a Transpose before it, and after it Squeeze and
Transpose back to [B, T, H]; those are views here (reader_ops), so the cell
reads and makes [B, T, ...] sequences.

Each cell's weights keep ONNX's: `dense(x[t], G * n)` holds W and its half
of B, `dense(h[t-1], ...)` R and the other half, the gates stacked in ONNX's
order (LSTM i, o, f, c; GRU z, r, h), so the parameter count is the node's."""
from __future__ import annotations

import numpy as np

from .reader import Unsupported
from .reader_ops import call, op

CELLS = {
    "onnx_lstm": """\
# ONNX's LSTM: gates stacked i, o, f, c as in its W, R and B.
cell onnx_lstm(n)(x) {
    state h = zeros(n)
    state c = zeros(n)
    i, o, f, g = split(dense(x[t], 4 * n) + dense(h[t-1], 4 * n), 4)
    c[t] = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
    h[t] = sigmoid(o) * tanh(c[t])
    return h
}
""",
    "onnx_gru": """\
# ONNX's GRU: gates stacked z, r, h; linear_before_reset = 1 is PyTorch's form.
cell onnx_gru(n, linear_before_reset = 0)(x) {
    state h = zeros(n)
    xz, xr, xg = split(dense(x[t], 3 * n), 3)
    if linear_before_reset == 1 {
        hz, hr, hg = split(dense(h[t-1], 3 * n), 3)
        z = sigmoid(xz + hz)
        r = sigmoid(xr + hr)
        g = tanh(xg + r * hg)
    } else {
        hz, hr = split(dense(h[t-1], 2 * n), 2)
        z = sigmoid(xz + hz)
        r = sigmoid(xr + hr)
        g = tanh(xg + dense(r * h[t-1], n))
    }
    h[t] = z * h[t-1] + (1 - z) * g
    return h
}
""",
    "onnx_rnn": """\
# ONNX's RNN: one activation of W x + R h + biases.
cell onnx_rnn(n, act = tanh)(x) {
    state h = zeros(n)
    h[t] = act(dense(x[t], n) + dense(h[t-1], n))
    return h
}
""",
}

ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction",
         "hidden_size", "input_forget", "layout", "linear_before_reset")
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
RNN_ACTS = {"Tanh": None, "Sigmoid": "sigmoid", "Relu": "relu"}


@op("LSTM", "GRU", "RNN", attrs=ATTRS, inputs=8)
def _recurrent(r, node):
    a, kind = r.attrs(node), node.op_type
    for bad in ("activation_alpha", "activation_beta", "clip"):
        if bad in a:
            raise Unsupported(f"attribute '{bad}' is not supported")
    if a.get("layout", 0):
        raise Unsupported("attribute 'layout' = 1 is not supported (give X time-major)")
    if a.get("input_forget", 0):
        raise Unsupported("attribute 'input_forget' = 1 is not supported")
    direction = a.get("direction", b"forward").decode()
    if direction not in ("forward", "reverse"):
        raise Unsupported(f"attribute 'direction' = {direction} is not supported "
                          f"(forward or reverse)")
    acts = [s.decode() for s in a.get("activations", [])]
    if kind in DEFAULT_ACTS and acts and acts != DEFAULT_ACTS[kind]:
        raise Unsupported(f"attribute 'activations' = {acts} is not supported")
    if kind == "RNN" and (acts or ["Tanh"])[0] not in RNN_ACTS:
        raise Unsupported(f"attribute 'activations' = {acts} is not supported")
    names = ["sequence_lens", "initial_h", "initial_c", "P"]
    for k in range(4, len(node.input)):
        if node.input[k]:
            raise Unsupported(f"input '{names[k - 4]}' is not supported")
    base, view, _ = r.view(node.input[0])
    if view != "time-major":
        raise Unsupported("input X must be a [B, T, F] sequence transposed time-major "
                          "(nnspec's cells read [B, T, F])")
    x = r.data(node.input[0], accept=("time-major",))
    W, R = (np.asarray(r.const(node.input[k], n))[0] for k, n in ((1, "W"), (2, "R")))
    n = R.shape[-1]
    gates = W.shape[0]
    bias = np.asarray(r.const(node.input[3], "B"))[0] if r.has(node, 3) \
        else np.zeros(2 * gates, W.dtype)
    wb, rb = bias[:gates], bias[gates:]
    kw = {"reverse": "true" if direction == "reverse" else None}
    if kind == "LSTM":
        name, weights = "onnx_lstm", [W, wb, R, rb]
    elif kind == "GRU":
        name = "onnx_gru"
        lbr = a.get("linear_before_reset", 0)
        kw["linear_before_reset"] = 1 if lbr else None
        weights = [W, wb, R, rb] if lbr else [W, wb, R[:2 * n], rb[:2 * n], R[2 * n:],
                                              rb[2 * n:]]
    else:
        name, weights = "onnx_rnn", [W, wb, R, rb]
        kw["act"] = RNN_ACTS[(acts or ["Tanh"])[0]]
    seq = f"{node.output[0] or node.name}#seq"
    layer = r.emit(node, call(name, n, **kw), [x], weights=[w.copy() for w in weights],
                   defs=(name,), output=seq)
    for k, state in ((1, "h"), (2, "c")):
        if len(node.output) > k and node.output[k] and (node.output[k] in r.uses
                                                         or node.output[k] in r.outputs):
            final = r.emit(node, f"{{0}}.{state}", [seq], stage=False,
                           output=f"{node.output[k]}#final", name=f"{layer.name}_{state}")
            r.alias(node.output[k], final.output, "[1, B, H]", "a final state")
    if node.output[0]:
        r.alias(node.output[0], seq, "[T, 1, B, H]", "an LSTM/GRU/RNN node's Y")
