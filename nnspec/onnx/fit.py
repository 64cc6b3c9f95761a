"""Recognising a recurrent cell as ONNX's LSTM, GRU or RNN, and its weights.

A cell is a `loop` node's body graph (ops/loop.py), written in the spec's
own terms: `dense(concat(h[t-1], x[t]), n)` or `dense(x[t]) + dense(h[t-1])`,
gates in any order, biases anywhere.  The shape of the state update is
matched in the graph (an LSTM's `c = f * c[t-1] + i * g`, `h = o * tanh(c)`;
a GRU's `h = z * h[t-1] + (1 - z) * g`; an RNN's `h = act(...)`), and each
gate's pre-activation is then *measured*: it is affine in x[t] and h[t-1]
(and, for peepholes, in c), so evaluating it on the unit vectors gives
ONNX's W, R and bias columns, whatever ops the spec used to compute it.
Last, the whole step is run on random states and inputs and compared with
ONNX's equations for those weights (float64, to 1e-9): only a cell that
computes exactly what the ONNX op computes is exported as that op; any
other goes out as a Scan over its body (cells.py).

ONNX conventions (onnx.ai/onnx/operators): LSTM gates in the order i, o, f,
c and peepholes i, o, f (the output gate's reads the new c); GRU gates z, r,
h, with linear_before_reset = 1 for `r * (U h + b)` (PyTorch's) and 0 for
`U (r * h)` (Cho's); B holds the input biases, then the recurrent ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import networkx as nx

from ..ops import get_op
from ..passes.mode import cast

ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}
TOLERANCE = 1e-9


@dataclass
class Fit:
    kind: str                       # LSTM, GRU or RNN
    weights: dict                   # W, R, B (and P): ONNX's layouts, one direction
    h: int                          # index of the hidden state among the loop's states
    c: int | None = None            # LSTM: the cell state's index
    attrs: dict = field(default_factory=dict)


def fit(node, graph, weights: dict) -> Fit | None:
    """The ONNX op a loop node is, with its weights; None when none matches."""
    a = node.attrs
    if a.get("mask") or a["n_seq"] != 1 or len(graph.shape(node.inputs[0])) != 3:
        return None
    caps = {}
    first = a["n_seq"] + a["n_init"]
    for bid, outer in zip(a["captures"], node.inputs[first:]):
        if outer not in weights:
            return None                     # a computed capture: not a weight
        caps[bid] = np.asarray(weights[outer], np.float64)
    cell = Cell(a, caps)
    for match in (_lstm, _gru, _rnn):
        f = match(cell)
        if f is not None:
            return f
    return None


# ---- evaluating a step ----------------------------------------------------------

class Cell:
    """A loop's body in float64, with its captured weights, to evaluate."""

    def __init__(self, attrs, caps):
        self.attrs = attrs
        self.body = cast(attrs["body"], "float64")
        self.caps = caps
        self.x = attrs["seq_inputs"][0]
        self.states = attrs["states"]
        self.carries = attrs["state_inputs"]

    def new(self, s: int) -> str:
        return self.body.outputs["state:" + self.states[s]["name"]]

    def op(self, nid) -> str:
        return self.body.node(nid).op

    def arg(self, nid) -> str:
        return self.body.node(nid).inputs[0]

    def width(self, nid) -> int:
        return int(self.body.shape(nid)[-1])

    def pair(self, nid, op, test_a, test_b):
        """(a, b): the inputs of binary node `nid` of `op` in the order the
        tests accept, or None."""
        n = self.body.node(nid)
        if n.op != op or len(n.inputs) != 2:
            return None
        a, b = n.inputs
        if test_a(a) and test_b(b):
            return a, b
        if test_a(b) and test_b(a):
            return b, a
        return None

    def outputs_are(self, nid) -> bool:
        """Every per-step output of the loop is the node `nid` (ONNX's Y is h)."""
        return all(self.body.outputs[k] == nid for k in self.attrs["outputs"])

    def run(self, feeds: dict, targets) -> list:
        """The values of `targets`; `feeds` may fix any node, not only inputs."""
        vals = {**self.caps, **feeds}
        for n in self.body.nodes():
            if n.id in vals:
                continue
            if n.op == "const":
                vals[n.id] = np.asarray(n.attrs["value"], np.float64)
            else:
                vals[n.id] = get_op(n.op).reference(n.attrs, *[vals[i] for i in n.inputs])
        return [vals[t] for t in targets]

    def _inputs(self, rows, fill=np.zeros):
        return {i: fill((rows, self.width(i))) for i in [self.x, *self.carries]}

    def probe(self, target, sources, fixed=None):
        """`target` as bias + sum of M_s s over `sources` (node ids), the other
        inputs zero and the nodes in `fixed` held at a constant: (bias, [M_s])."""
        widths = [self.width(s) for s in sources]
        rows = 1 + sum(widths)
        feeds = self._inputs(rows)
        off = 1
        for s, w in zip(sources, widths):
            feeds[s] = np.zeros((rows, w))
            feeds[s][off:off + w] = np.eye(w)
            off += w
        for nid, v in (fixed or {}).items():
            feeds[nid] = np.full((rows, self.width(nid)), float(v))
        out = self.run(feeds, [target])[0]
        bias, mats, off = out[0], [], 1
        for w in widths:
            mats.append((out[off:off + w] - bias).T)
            off += w
        return bias, mats

    def agrees(self, step) -> bool:
        """Whether `step(x, *states) -> new states` is what the body computes."""
        rng = np.random.default_rng(0)
        feeds = self._inputs(7, lambda shape: rng.standard_normal(shape))
        want = self.run(feeds, [self.new(s) for s in range(len(self.states))])
        got = step(feeds[self.x], *[feeds[c] for c in self.carries])
        return all(np.abs(w - g).max() <= TOLERANCE * (1 + np.abs(w).max())
                   for w, g in zip(want, got))


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _is(cell, op):
    return lambda nid: cell.op(nid) == op


# ---- LSTM -----------------------------------------------------------------------------

def _lstm(cell: Cell) -> Fit | None:
    if len(cell.states) != 2:
        return None
    sig, tanh = _is(cell, "sigmoid"), _is(cell, "tanh")
    for hi, ci in ((0, 1), (1, 0)):
        hn, cn, hp, cp = cell.new(hi), cell.new(ci), cell.carries[hi], cell.carries[ci]
        out = cell.pair(hn, "mul", sig, lambda t: tanh(t) and cell.arg(t) == cn)
        forget = lambda m: cell.pair(m, "mul", sig, lambda v: v == cp)  # noqa: E731
        update = lambda m: cell.pair(m, "mul", sig, tanh)               # noqa: E731
        terms = cell.pair(cn, "add", forget, update)
        if out is None or terms is None or not cell.outputs_are(hn):
            continue
        (f, _), (i, g) = forget(terms[0]), update(terms[1])
        return _fit_lstm(cell, {"i": i, "o": out[0], "f": f, "g": g}, hi, ci, cp, cn)
    return None


def _fit_lstm(cell, gates, hi, ci, cp, cn) -> Fit | None:
    x, hp = cell.x, cell.carries[hi]
    W, R, B, P = {}, {}, {}, {}
    for k, gate in gates.items():
        c_in = {"i": cp, "f": cp, "o": cn}.get(k)
        bias, mats = cell.probe(cell.arg(gate), [x, hp] + ([c_in] if c_in else []))
        B[k], W[k], R[k] = bias, mats[0], mats[1]
        if c_in:
            P[k] = np.diag(mats[2])
            if np.abs(mats[2] - np.diag(P[k])).max() > TOLERANCE:
                return None                 # a peephole that is not one weight per unit
    order = "iofg"
    H = len(B["i"])
    w = {"W": np.concatenate([W[k] for k in order])[None],
         "R": np.concatenate([R[k] for k in order])[None],
         "B": np.concatenate([B[k] for k in order] + [np.zeros(4 * H)])[None]}
    if any(np.any(P[k]) for k in "iof"):
        w["P"] = np.concatenate([P[k] for k in "iof"])[None]
    f = Fit("LSTM", w, hi, ci)
    return f if cell.agrees(_lstm_step(f)) else None


def _lstm_step(f: Fit):
    W, R, B = f.weights["W"][0], f.weights["R"][0], f.weights["B"][0]
    P = f.weights.get("P", np.zeros((1, 3 * W.shape[0] // 4)))[0]
    Pi, Po, Pf = np.split(P, 3)

    def step(x, *states):
        h, c = states[f.h], states[f.c]
        i, o, fg, g = np.split(x @ W.T + h @ R.T + B[:len(B) // 2] + B[len(B) // 2:], 4, axis=1)
        c2 = _sigmoid(fg + Pf * c) * c + _sigmoid(i + Pi * c) * np.tanh(g)
        h2 = _sigmoid(o + Po * c2) * np.tanh(c2)
        return [h2, c2] if f.h == 0 else [c2, h2]
    return step


# ---- GRU -------------------------------------------------------------------------------

def _gru(cell: Cell) -> Fit | None:
    if len(cell.states) != 1:
        return None
    hn, hp = cell.new(0), cell.carries[0]
    sig, tanh = _is(cell, "sigmoid"), _is(cell, "tanh")
    keep = lambda m: cell.pair(m, "mul", sig, lambda v: v == hp)             # noqa: E731
    one_minus = lambda s: cell.op(s) == "sub" and _is_one(cell, cell.arg(s))  # noqa: E731
    new = lambda m: cell.pair(m, "mul", one_minus, tanh)                    # noqa: E731
    terms = cell.pair(hn, "add", keep, new)
    if terms is None or not cell.outputs_are(hn):
        return None
    (z, _), (s, g) = keep(terms[0]), new(terms[1])
    if cell.body.node(s).inputs[1] != z:
        return None
    pre_g = cell.arg(g)
    resets = [r for r in nx.ancestors(cell.body.nx, pre_g) if sig(r) and r != z]
    if len(resets) != 1:
        return None
    r = resets[0]
    x = cell.x
    bz, (Wz, Rz) = cell.probe(cell.arg(z), [x, hp])
    br, (Wr, Rr) = cell.probe(cell.arg(r), [x, hp])
    b0, (Wg,) = cell.probe(pre_g, [x], fixed={r: 0})
    b1, (_, Rg) = cell.probe(pre_g, [x, hp], fixed={r: 1})
    W = np.concatenate([Wz, Wr, Wg])[None]
    R = np.concatenate([Rz, Rr, Rg])[None]
    zero = np.zeros_like(bz)
    for lbr, wb, rb in ((0, b1, zero), (1, b0, b1 - b0)):
        B = np.concatenate([bz, br, wb, zero, zero, rb])[None]
        f = Fit("GRU", {"W": W, "R": R, "B": B}, 0, attrs={"linear_before_reset": lbr})
        if cell.agrees(_gru_step(f)):
            return f
    return None


def _is_one(cell, nid) -> bool:
    n = cell.body.node(nid)
    return n.op == "const" and float(n.attrs["value"]) == 1.0


def _gru_step(f: Fit):
    W, R, B = f.weights["W"][0], f.weights["R"][0], f.weights["B"][0]
    Wz, Wr, Wh = np.split(W, 3)
    Rz, Rr, Rh = np.split(R, 3)
    bz, br, bh, rbz, rbr, rbh = np.split(B, 6)

    def step(x, h):
        z = _sigmoid(x @ Wz.T + h @ Rz.T + bz + rbz)
        r = _sigmoid(x @ Wr.T + h @ Rr.T + br + rbr)
        if f.attrs["linear_before_reset"]:
            g = np.tanh(x @ Wh.T + r * (h @ Rh.T + rbh) + bh)
        else:
            g = np.tanh(x @ Wh.T + (r * h) @ Rh.T + rbh + bh)
        return [(1 - z) * g + z * h]
    return step


# ---- RNN --------------------------------------------------------------------------------

def _rnn(cell: Cell) -> Fit | None:
    if len(cell.states) != 1:
        return None
    hn, hp = cell.new(0), cell.carries[0]
    act = ACTIVATIONS.get(cell.op(hn))
    if act is None or not cell.outputs_are(hn):
        return None
    b, (W, R) = cell.probe(cell.arg(hn), [cell.x, hp])
    f = Fit("RNN", {"W": W[None], "R": R[None], "B": np.concatenate([b, 0 * b])[None]}, 0,
            attrs={"activations": [act]})
    fn = {"Tanh": np.tanh, "Sigmoid": _sigmoid, "Relu": lambda v: np.maximum(v, 0)}[act]
    return f if cell.agrees(lambda x, h: [fn(x @ W.T + h @ R.T + b)]) else None
