"""ONNX's LSTM, GRU and RNN nodes as nnspec cells (CELLS: the definitions the
written spec carries).  A node reads its sequence time-major, [T, B, I]: the
exporter (and PyTorch) put a Transpose before it, and after it Squeeze and
Transpose back to [B, T, H]; those are views here (reader_ops), so the cell
reads and makes [B, T, ...] sequences.

Each cell's weights keep ONNX's: `dense(x[t], G * n)` holds W and its half
of B, `dense(h[t-1], ...)` R and the other half, the gates stacked in ONNX's
order (LSTM i, o, f, c; GRU z, r, h), and an LSTM's peepholes P (i, o, f)
are one grouped 1x1 convolution each, so the parameter count is the node's.

    direction = "bidirectional"   x -> onnx_lstm(n, direction=bidir): the forward
                                  way's weights (W[0], R[0], B[0]), then the
                                  reverse way's; Y [T, 2, B, H] is the cell's
                                  [B, T, 2H] (merge=concat), Y_h [2, B, H] its
                                  r.h_forward and r.h_backward
    initial_h, initial_c          init=enc when they are another cell's final
                                  states h (and c), else h0=, c0= ([B, H]
                                  values); zeros or no input: the cell's zeros

A forward and a reverse cell over one sequence whose outputs only a Concat
joins (nnspec's export of `direction=bidir`) are one cell run both ways
(`join_ways`, after the whole graph is read).
"""
from __future__ import annotations

import numpy as np

from .reader import Unsupported
from .reader_ops import call, op

CELLS = {
    "onnx_lstm": """\
# ONNX's LSTM: gates stacked i, o, f, c as in its W, R and B.
cell onnx_lstm(n, h0 = zeros(n), c0 = zeros(n))(x) {
    state h = h0
    state c = c0
    i, o, f, g = split(dense(x[t], 4 * n) + dense(h[t-1], 4 * n), 4)
    c[t] = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
    h[t] = sigmoid(o) * tanh(c[t])
    return h
}
""",
    "onnx_lstm_peephole": """\
# ONNX's LSTM with peepholes P (i, o, f): a gate also reads the cell state,
# one weight per unit (a grouped 1x1 convolution); the output gate reads c[t].
block onnx_peephole(n)(c) {
    return c -> reshape([n, 1]) -> conv1d(n, 1, groups=n, bias=false) -> reshape([n])
}

cell onnx_lstm_peephole(n, h0 = zeros(n), c0 = zeros(n))(x) {
    state h = h0
    state c = c0
    xi, xo, xf, xg = split(dense(x[t], 4 * n) + dense(h[t-1], 4 * n), 4)
    i = sigmoid(xi + onnx_peephole(n)(c[t-1]))
    f = sigmoid(xf + onnx_peephole(n)(c[t-1]))
    c[t] = f * c[t-1] + i * tanh(xg)
    o = sigmoid(xo + onnx_peephole(n)(c[t]))
    h[t] = o * tanh(c[t])
    return h
}
""",
    "onnx_gru": """\
# ONNX's GRU: gates stacked z, r, h; linear_before_reset = 1 is PyTorch's form.
cell onnx_gru(n, linear_before_reset = 0, h0 = zeros(n))(x) {
    state h = h0
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
cell onnx_rnn(n, act = tanh, h0 = zeros(n))(x) {
    state h = h0
    h[t] = act(dense(x[t], n) + dense(h[t-1], n))
    return h
}
""",
}

ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction",
         "hidden_size", "input_forget", "layout", "linear_before_reset")
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
RNN_ACTS = {"Tanh": None, "Sigmoid": "sigmoid", "Relu": "relu"}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
STATES = {"LSTM": ("h", "c"), "GRU": ("h",), "RNN": ("h",)}


@op("LSTM", "GRU", "RNN", attrs=ATTRS, inputs=8)
def _recurrent(r, node):
    a, kind = r.attrs(node), node.op_type
    direction = _check(r, node, a)
    base, view, _ = r.view(node.input[0])
    if view != "time-major":
        raise Unsupported("input X must be a [B, T, F] sequence transposed time-major "
                          "(nnspec's cells read [B, T, F])")
    x = r.data(node.input[0], accept=("time-major",))
    D = DIRECTIONS[direction]
    W, R = (np.asarray(r.const(node.input[k], INPUTS[k])) for k in (1, 2))
    n, gates = R.shape[-1], W.shape[1]
    bias = np.asarray(r.const(node.input[3], "B")) if r.has(node, 3) \
        else np.zeros((D, 2 * gates), W.dtype)
    peep = np.asarray(r.const(node.input[7], "P")) if kind == "LSTM" and r.has(node, 7) \
        else None
    states = STATES[kind]
    given = {s: _initial(r, node, 5 + k, D) for k, s in enumerate(states)}
    given = {s: v for s, v in given.items() if v is not None}

    weights = []
    for d in range(D):
        weights += _weights(kind, a, W[d], R[d], bias[d], None if peep is None else peep[d])
    name = {"LSTM": "onnx_lstm_peephole" if peep is not None else "onnx_lstm",
            "GRU": "onnx_gru", "RNN": "onnx_rnn"}[kind]
    kw = {}
    if kind == "GRU":
        kw["linear_before_reset"] = 1 if a.get("linear_before_reset", 0) else None
    if kind == "RNN":
        kw["act"] = RNN_ACTS[_acts(a)[0] if _acts(a) else "Tanh"]
    kw["reverse"] = "true" if direction == "reverse" else None
    kw["direction"] = "bidir" if D == 2 else None
    inputs = [x]
    sources = {r.finals.get(v, (None,))[0] for v in given.values()}
    if len(sources) == 1 and None not in sources and _starts_from(r, given, states,
                                                                  *sources):
        inputs.append(*sources)
        kw["init"] = "{1}"
    else:
        for s, value in given.items():
            inputs.append(value)
            kw[f"{s}0"] = f"{{{len(inputs) - 1}}}"
    seq = f"{node.output[0] or node.name}#seq"
    layer = r.emit(node, call(name, n, **kw), inputs, weights=[w.copy() for w in weights],
                   defs=(name,), output=seq)
    r.cells[seq] = states
    for k, state in enumerate(states, 1):
        if len(node.output) > k and node.output[k] and (node.output[k] in r.uses
                                                        or node.output[k] in r.outputs):
            _final_states(r, node, node.output[k], layer, seq, state, D)
    if node.output[0]:
        r.alias(node.output[0], seq, "[T, 1, B, H]" if D == 1 else "[T, 2, B, H]",
                "an LSTM/GRU/RNN node's Y")


def _acts(a) -> list:
    return [s.decode() for s in a.get("activations", [])]


def _check(r, node, a) -> str:
    """The node's direction, after the attributes nnspec cannot express."""
    kind = node.op_type
    for bad in ("activation_alpha", "activation_beta", "clip"):
        if bad in a:
            raise Unsupported(f"attribute '{bad}' is not supported")
    if a.get("layout", 0):
        raise Unsupported("attribute 'layout' = 1 is not supported (give X time-major)")
    if a.get("input_forget", 0):
        raise Unsupported("attribute 'input_forget' = 1 is not supported")
    direction = a.get("direction", b"forward").decode()
    if direction not in DIRECTIONS:
        raise Unsupported(f"attribute 'direction' = {direction} is not supported "
                          f"(forward, reverse or bidirectional)")
    acts, D = _acts(a), DIRECTIONS[direction]
    if kind in DEFAULT_ACTS and acts and acts != DEFAULT_ACTS[kind] * D:
        raise Unsupported(f"attribute 'activations' = {acts} is not supported")
    if kind == "RNN" and acts and (acts[0] not in RNN_ACTS or len(set(acts)) > 1):
        raise Unsupported(f"attribute 'activations' = {acts} is not supported")
    if r.has(node, 4):
        raise Unsupported("input 'sequence_lens' is not supported")
    return direction


def _weights(kind, a, W, R, bias, peep) -> list:
    """One direction's weights in the order its cell creates them."""
    gates, n = W.shape[0], R.shape[-1]
    wb, rb = bias[:gates], bias[gates:]
    if kind == "GRU" and not a.get("linear_before_reset", 0):
        return [W, wb, R[:2 * n], rb[:2 * n], R[2 * n:], rb[2 * n:]]
    out = [W, wb, R, rb]
    if peep is not None:                # ONNX's i, o, f; the cell's i, f, then o
        pi, po, pf = (peep[k * n:(k + 1) * n].reshape(n, 1, 1) for k in range(3))
        out += [pi, pf, po]
    return out


def _initial(r, node, k: int, D: int):
    """initial_h (k = 5) or initial_c (6): None (zeros), else the [B, H] value the
    state starts from."""
    if not r.has(node, k):
        return None
    name, what = node.input[k], INPUTS[k]
    if r.is_const(name):
        v = np.asarray(r.consts[name])
        if v.dtype != object and not v.any():
            return None
        raise Unsupported(f"input '{what}' is a nonzero constant: nnspec's states start "
                          f"from zeros or from a value computed by the network")
    if D == 2:
        raise Unsupported(f"input '{what}' of a bidirectional node is not supported (a cell "
                          f"run both ways starts both from zeros)")
    base, view, _ = r.view(name)
    if view == "[1, B, H]":
        value = r.data(name, accept=(view,))
    elif view is None and base in r.inputs and r.shape(name)[:1] == (1,):
        value = r.data(name)                        # a graph input [1, B, H]
        r.leading_one.add(name)
    else:
        raise Unsupported(f"input '{what}' must be a [1, B, H] value: a final state of "
                          f"another node, a [B, H] value unsqueezed at axis 0, or a graph "
                          f"input")
    return value


def _starts_from(r, given, states, seq) -> bool:
    """Whether `init=` the cell making `seq` starts exactly the given states: each
    from the state of the same name, and every state the two cells share given."""
    shared = set(states) & set(r.cells.get(seq, ()))
    return set(given) == shared and all(r.finals[v] == (seq, s) for s, v in given.items())


def _final_states(r, node, out, layer, seq, state, D) -> None:
    """Y_h or Y_c: [1, B, H] of a one-way cell's `r.h`; [2, B, H] of a
    bidirectional one's `r.h_forward` and `r.h_backward` (and `r.h`, the two
    joined, for a reshape to [B, 2H])."""
    ways = [state] if D == 1 else [f"{state}_forward", f"{state}_backward", state]
    made = []
    for w in ways:
        final = r.emit(node, f"{{0}}.{w}", [seq], stage=False, output=f"{out}#{w}",
                       name=f"{layer.name}_{w}")
        r.finals[final.output] = (seq, w)
        made.append(final.output)
    if D == 1:
        r.alias(out, made[0], "[1, B, H]", "a final state")
    else:
        r.alias(out, made[0], "[2, B, H]", tuple(made))


def join_ways(r) -> None:
    """A forward and a reverse cell over the same sequence, their outputs
    joined along the last axis and read nowhere else (nnspec's export of
    `direction=bidir`), as one cell run both ways: `x -> cell(n, direction=bidir)`,
    the forward way's weights first, as that cell creates them."""
    readers: dict = {}
    for layer in r.layers:
        for i in layer.inputs:
            readers.setdefault(i, []).append(layer)
    kept = {r.view(o)[0] for o in r.outputs}
    for cat in [lay for lay in r.layers if lay.op == "Concat" and len(lay.inputs) == 2]:
        fw, bw = (r.producer.get(v) for v in cat.inputs)
        if fw is None or bw is None or fw.output not in r.cells or bw.output not in r.cells:
            continue
        if cat.call != "concat({0}, {1}, axis=2)" or len(fw.inputs) != 1 \
                or bw.inputs != fw.inputs or bw.call != fw.call[:-1] + ", reverse=true)" \
                or "direction=" in fw.call or "reverse=" in fw.call:
            continue
        if any(readers.get(lay.output) != [cat] or lay.output in kept for lay in (fw, bw)):
            continue
        fw.call = fw.call[:-1] + ", direction=bidir)"
        fw.weights += bw.weights
        r.layers = [lay for lay in r.layers if lay is not bw and lay is not cat]
        r.cells[cat.output] = r.cells.pop(fw.output)
        fw.output = cat.output
        r.producer[cat.output] = fw
