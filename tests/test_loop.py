"""Recurrence: the `loop` op's forward (NumPy reference) against cells unrolled
by hand, its gradient (BPTT, built as IR) against float64 finite differences
and against an unrolled flat graph, truncation and masks, and compile size
independent of T."""
from __future__ import annotations

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.ir import BATCH, TIME, Graph, LEAF_OPS
from nnspec.passes.autodiff import backward

ELMAN = """
cell rnn(n)(x) {
  state h = zeros(n)
  h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
  return h
}
"""

LSTM = """
cell lstm(n)(x) {
  state h = zeros(n)
  state c = zeros(n)
  i = sigmoid(dense(x[t], n) + dense(h[t-1], n, bias=false))
  f = sigmoid(dense(x[t], n, bias_init=1) + dense(h[t-1], n, bias=false))
  o = sigmoid(dense(x[t], n) + dense(h[t-1], n, bias=false))
  g = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
  c[t] = f * c[t-1] + i * g
  h[t] = o * tanh(c[t])
  return h
}
"""

B, F, H = 2, 3, 4


def net(body: str, cell=ELMAN, steps="T") -> Graph:
    return nnspec.lower(cell + "network n {\n  input x: [%s, 3]\n%s\n}" % (steps, body),
                        dtype="float64")


def params(g: Graph, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {p: 0.5 * rng.standard_normal(g.shape(p)) for p in g.params}


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def elman_np(x, W, b, U, h=None, reverse=False, mask=None):
    h = np.zeros((x.shape[0], W.shape[0])) if h is None else h
    T = x.shape[1]
    outs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        new = np.tanh(x[:, t] @ W.T + b + h @ U.T)
        m = 1.0 if mask is None else mask[:, t, None]
        h = m * new + (1 - m) * h
        outs[t] = m * new
    return np.stack(outs, 1), h


def with_loss(g: Graph, ys, seed=3):
    """loss = sum_k sum(y_k * r_k) with fixed random r_k; returns (loss, feeds of r)."""
    rng = np.random.default_rng(seed)
    terms, feeds = [], {}
    for k, y in enumerate(ys):
        r = g.input(f"r{k}", g.shape(y))
        terms.append(g.add("sum", (g.add("mul", (y, r)),)))
        feeds[r] = rng.standard_normal([B if d == BATCH else T_ if d == TIME else d
                                        for d in g.shape(y)])
    loss = terms[0]
    for tm in terms[1:]:
        loss = g.add("add", (loss, tm))
    return loss, feeds


T_ = 5     # the T the loss weights are drawn for


def rebuild(g: Graph, loop_id: str, mask=False, **attrs) -> Graph:
    """The same graph with the loop's attrs changed (and a mask input)."""
    ng = Graph(g.name, g.dtype)
    if mask:
        ng.input("mask", (BATCH, TIME))
    for n in g.nodes():
        a, ins = dict(n.attrs), list(n.inputs)
        if n.id == loop_id:
            a.update(attrs)
            if mask:
                a["mask"] = True
                ins.append("mask")
        ng.add(n.op, ins, a, name=n.id, layer=n.layer, shape=n.shape, dtype=n.dtype)
    ng.outputs = dict(g.outputs)
    return ng


def grads_of(g, loss, feeds, wrt):
    gg, grads = backward(g, loss, wrt)
    vals = numpy_ref.run(gg, feeds, [grads[w] for w in wrt])
    return {w: vals[grads[w]] for w in wrt}


def fd_check(g, loss, feeds, wrt, seed=7):
    """Directional derivative: analytic (autodiff) vs central differences."""
    rng = np.random.default_rng(seed)
    got = grads_of(g, loss, feeds, wrt)
    dirs = {w: rng.standard_normal(feeds[w].shape) for w in wrt}
    analytic = sum(float(np.sum(got[w] * dirs[w])) for w in wrt)

    def f(e):
        fd = dict(feeds)
        for w in wrt:
            fd[w] = feeds[w] + e * dirs[w]
        return float(numpy_ref.run(g, fd, [loss])[loss])
    eps = 1e-6
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-7, abs=1e-9)
    return got


# ---- forward --------------------------------------------------------------------

@pytest.mark.parametrize("T", [3, 4, 5])
@pytest.mark.parametrize("reverse", [False, True])
def test_elman_forward_matches_unrolled(T, reverse):
    g = net(f"  output y = x -> rnn({H}, reverse={'true' if reverse else 'false'})")
    feeds = params(g)
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T, F))
    out = numpy_ref.run(g, feeds, ["y.out", "y.h"])
    W, b, U = (feeds[p] for p in g.params)
    ys, h = elman_np(feeds["x"], W, b, U, reverse=reverse)
    np.testing.assert_allclose(out["y.out"], ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["y.h"], h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [3, 5])
def test_lstm_forward_matches_standard_equations(T):
    g = net(f"  output y = x -> lstm({H})", cell=LSTM)
    feeds = params(g)
    x = feeds["x"] = np.random.default_rng(1).standard_normal((B, T, F))
    p = [feeds[n] for n in g.params]
    # params in spec order: (Wx, bx, Uh) for i, f, o, g
    gates = [p[3 * k:3 * k + 3] for k in range(4)]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    hs = []
    for t in range(T):
        z = [x[:, t] @ Wx.T + bx + h @ Uh.T for Wx, bx, Uh in gates]
        i, f, o, gg = sigmoid(z[0]), sigmoid(z[1]), sigmoid(z[2]), np.tanh(z[3])
        c = f * c + i * gg
        h = o * np.tanh(c)
        hs.append(h)
    out = numpy_ref.run(g, feeds, ["y.out", "y.h", "y.c"])
    np.testing.assert_allclose(out["y.out"], np.stack(hs, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["y.h"], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["y.c"], c, rtol=1e-12, atol=1e-12)


def test_initial_state_from_another_cell():
    g = net(f"  enc = x -> rnn({H}, reverse=true)\n  output y = x -> rnn({H}, init=enc)")
    feeds = params(g)
    x = feeds["x"] = np.random.default_rng(1).standard_normal((B, 4, F))
    pe = [feeds[p] for p in g.params[:3]]
    pd = [feeds[p] for p in g.params[3:]]
    _, h0 = elman_np(x, *pe, reverse=True)
    ys, _ = elman_np(x, *pd, h=h0)
    np.testing.assert_allclose(numpy_ref.run(g, feeds, ["y.out"])["y.out"], ys, rtol=1e-12)


# ---- gradient ------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["elman", "lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_matches_finite_differences(cell, reverse):
    src = ELMAN if cell == "elman" else LSTM
    name = "rnn" if cell == "elman" else "lstm"
    g = net(f"  output y = x -> {name}({H}, reverse={'true' if reverse else 'false'})",
            cell=src)
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    fd_check(g, loss, feeds, g.params + ["x"])


def test_gradient_through_initial_state_and_final_state():
    g = net(f"  enc = x -> rnn({H}, reverse=true)\n  output y = x -> rnn({H}, init=enc)")
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    fd_check(g, loss, feeds, g.params + ["x"])


def unrolled_elman(T, reverse=False, bptt=0, cut_values=None):
    """The Elman cell as a flat graph of T steps.  With bptt=k the carry into
    every step i with i % k == 0 (i > 0, in processing order) is a separate
    input holding the forward value: the gradient stops there."""
    g = Graph("unrolled", "float64")
    xs = [g.input(f"x{t}", (BATCH, F)) for t in range(T)]
    W = g.param("W", (H, F))
    b = g.param("b", (H,))
    U = g.param("U", (H, H))
    h = g.input("h0", (BATCH, H))
    outs = [None] * T
    for i in range(T):
        t = T - 1 - i if reverse else i
        if bptt and i % bptt == 0 and i > 0:
            h = g.input(f"cut{i}", (BATCH, H))
        a = g.add("add", (g.add("linear", (xs[t], W, b)), g.add("linear", (h, U))))
        h = outs[t] = g.add("tanh", (a,))
    return g, xs, outs, h


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bptt", [0, 1, 2, 3, 5, 9])
def test_gradient_matches_unrolled_graph(reverse, bptt):
    """The loop's BPTT equals autodiff through a flat unrolled graph, also
    truncated: windows of k steps in processing order, carries cut between."""
    T = T_
    g = net(f"  output y = x -> rnn({H}, reverse={'true' if reverse else 'false'})")
    if bptt:
        g = rebuild(g, "y", bptt=bptt)
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    x = feeds["x"] = np.random.default_rng(1).standard_normal((B, T, F))
    got = grads_of(g, loss, feeds, g.params + ["x"])
    carry = numpy_ref.run(g, feeds, ["y"])["y"]["carry"][0]         # [T, B, H]

    u, xs, outs, hT = unrolled_elman(T, reverse, bptt)
    r_seq, r_fin = feeds["r0"], feeds["r1"]
    ufeeds = {xs[t]: x[:, t] for t in range(T)}
    ufeeds.update(zip(("W", "b", "U"), (feeds[p] for p in g.params)))
    ufeeds["h0"] = np.zeros((B, H))
    for i in range(1, T):
        t = T - 1 - i if reverse else i
        if f"cut{i}" in u:
            ufeeds[f"cut{i}"] = carry[t]
    rs = [u.input(f"r{t}", (BATCH, H)) for t in range(T)]
    terms = [u.add("sum", (u.add("mul", (o, r)),)) for o, r in zip(outs, rs)]
    ufeeds.update({r: r_seq[:, t] for t, r in enumerate(rs)})
    rf = u.input("rf", (BATCH, H))
    ufeeds[rf] = r_fin
    terms.append(u.add("sum", (u.add("mul", (hT, rf)),)))
    ul = terms[0]
    for tm in terms[1:]:
        ul = u.add("add", (ul, tm))
    want = grads_of(u, ul, ufeeds, ["W", "b", "U"] + xs)
    for p, q in zip(g.params, ("W", "b", "U")):
        np.testing.assert_allclose(got[p], want[q], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["x"], np.stack([want[xt] for xt in xs], 1),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bptt", [1, 2, 3])
def test_truncation_window_is_exact(bptt):
    """With bptt=k, output t's gradient reaches x[s] iff s and t share a window
    (s // k == t // k, s <= t), and nothing else."""
    T = 7
    g = rebuild(net(f"  output y = x -> rnn({H})"), "y", bptt=bptt)
    r = g.input("r", (BATCH, TIME, H))
    loss = g.add("sum", (g.add("mul", ("y.out", r)),))
    feeds = params(g)
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T, F))
    for t in range(T):
        feeds[r] = np.zeros((B, T, H))
        feeds[r][:, t] = 1.0
        gx = grads_of(g, loss, feeds, ["x"])["x"]
        reach = np.abs(gx).sum(axis=(0, 2)) > 0
        want = np.array([s <= t and s // bptt == t // bptt for s in range(T)])
        np.testing.assert_array_equal(reach, want, err_msg=f"output {t}")


def test_bptt_at_least_T_is_the_full_gradient():
    g = net(f"  output y = x -> rnn({H})")
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    full = grads_of(g, loss, feeds, g.params + ["x"])
    g2 = rebuild(g, "y", bptt=T_)
    cut = grads_of(g2, loss, feeds, g.params + ["x"])
    for k in full:
        np.testing.assert_allclose(cut[k], full[k], rtol=1e-13, atol=1e-15)


# ---- masks ------------------------------------------------------------------------------

MASK = np.array([[1, 1, 1, 0, 0],          # length 3, padded
                 [1, 0, 1, 1, 1]], float)  # a hole in the middle


@pytest.mark.parametrize("reverse", [False, True])
def test_masked_forward(reverse):
    g = rebuild(net(f"  output y = x -> rnn({H})"), "y", mask=True, reverse=reverse)
    feeds = params(g)
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    feeds["mask"] = MASK
    out = numpy_ref.run(g, feeds, ["y.out", "y.h"])
    ys, h = elman_np(feeds["x"], *(feeds[p] for p in g.params), reverse=reverse, mask=MASK)
    np.testing.assert_allclose(out["y.out"], ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["y.h"], h, rtol=1e-12, atol=1e-12)
    assert np.all(out["y.out"][0, 3:] == 0)


@pytest.mark.parametrize("cell", ["elman", "lstm"])
@pytest.mark.parametrize("bptt", [0, 2])
def test_masked_gradient_matches_finite_differences(cell, bptt):
    src, name = (ELMAN, "rnn") if cell == "elman" else (LSTM, "lstm")
    g = rebuild(net(f"  output y = x -> {name}({H})", cell=src), "y", mask=True,
                **({"bptt": bptt} if bptt else {}))
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    feeds["mask"] = MASK
    if bptt:    # a truncated gradient is no derivative: check padding invariance only
        grads_of(g, loss, feeds, g.params + ["x"])
        return
    got = fd_check(g, loss, feeds, g.params + ["x"])
    assert np.all(got["x"][MASK == 0] == 0)


@pytest.mark.parametrize("bptt", [0, 2])
def test_padding_changes_neither_outputs_nor_gradients(bptt):
    g = rebuild(net(f"  output y = x -> rnn({H})"), "y", mask=True,
                **({"bptt": bptt} if bptt else {}))
    loss, feeds = with_loss(g, ["y.out", "y.h"])
    feeds.update(params(g))
    feeds["x"] = np.random.default_rng(1).standard_normal((B, T_, F))
    feeds["mask"] = MASK
    other = dict(feeds)
    other["x"] = feeds["x"].copy()
    other["x"][MASK == 0] = 1e3                           # garbage in the padding
    other["r0"] = feeds["r0"].copy()
    other["r0"][MASK == 0] = -7.0                         # and in the loss weights there
    a = numpy_ref.run(g, feeds, ["y.out", "y.h", loss])
    b = numpy_ref.run(g, other, ["y.out", "y.h", loss])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ga = grads_of(g, loss, feeds, g.params)
    gb = grads_of(g, loss, other, g.params)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


# ---- compile size ---------------------------------------------------------------------

def nodes_total(g: Graph) -> int:
    n = len(g)
    for node in g.nodes():
        for v in node.attrs.values():
            if isinstance(v, Graph):
                n += nodes_total(v)
    return n


@pytest.mark.parametrize("cell", ["elman", "lstm"])
def test_compile_size_does_not_grow_with_T(cell):
    src, name = (ELMAN, "rnn") if cell == "elman" else (LSTM, "lstm")
    sizes = []
    for steps in (1, 10, 1000):
        g = net(f"  output y = x -> {name}({H})", cell=src, steps=str(steps))
        loss, _ = with_loss(g, ["y.out"])
        gg, _ = backward(g, loss, g.params + ["x"])
        sizes.append((len(g), nodes_total(g), len(gg), nodes_total(gg)))
    assert sizes[0] == sizes[1] == sizes[2]


def test_loop_ops_in_backward_graph_are_ir():
    g = net(f"  output y = x -> rnn({H})")
    loss, _ = with_loss(g, ["y.out"])
    gg, grads = backward(g, loss, g.params)
    ops = [n.op for n in gg.nodes()]
    assert ops.count("loop") == 1 and ops.count("loop_grad") == 1
    lg = next(n for n in gg.nodes() if n.op == "loop_grad")
    bwd = lg.attrs["bwd"]
    assert {n.attrs.get("kind") for n in bwd.nodes() if n.op == "input"} == \
        {"step", "carry", "capture", "seed"}
    assert all(n.op in LEAF_OPS or not n.op.startswith("loop") for n in bwd.nodes())
