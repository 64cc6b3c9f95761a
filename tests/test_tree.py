"""Tree cells (`parent=`, `children(h)`): the forward pass against the same
cell evaluated recursively in NumPy, the gradient (backpropagation through
structure, BPTT of the loop underneath) against float64 finite differences,
the `trees` data set against an independent evaluation, and the zoo's
specs/recursive_tree.nn compiled and trained for a few steps."""
from __future__ import annotations

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.data import load
from nnspec.data.trees import DIGIT0, PAD, PLUS, TIMES, expressions
from nnspec.errors import SpecError
from nnspec.ir import Graph
from nnspec.passes.autodiff import backward
from nnspec.train import fit

from test_loop import fd_check, nodes_total, params, sigmoid

SUM_RNN = """
cell tree_rnn(n)(x) {
  state h = zeros(n)
  h[t] = tanh(dense(x[t], n) + dense(children(h), n, bias=false))
  return h
}
"""

# the child-sum Tree-LSTM (Tai et al. 2015) with one forget gate for all children
TREE_LSTM = """
cell tree_lstm(n)(x) {
  state h = zeros(n)
  state c = zeros(n)
  p = concat(x[t], children(h))
  i = sigmoid(dense(p, n))
  f = sigmoid(dense(p, n))
  o = sigmoid(dense(p, n))
  u = tanh(dense(p, n))
  c[t] = i * u + f * children(c)
  h[t] = o * tanh(c[t])
  return h
}
"""

B, N, F, H = 3, 6, 3, 4
SIZES = [6, 4, 1]          # real nodes per example; the rest is padding


def net(cell: str, name: str, nodes=N) -> Graph:
    return nnspec.lower(cell + f"""
network n {{
  input x: [{nodes}, {F}]
  input parent: int[{nodes}]
  input mask: [{nodes}]
  r = x -> {name}({H}, parent=parent, mask=mask)
  output y = r
  output root = final(r)
}}""", dtype="float64")


def random_trees(seed=0):
    """Parents with every child before its parent (any number of children);
    padding nodes point anywhere: the mask must make them harmless."""
    rng = np.random.default_rng(seed)
    parent = rng.integers(0, N, size=(B, N))
    mask = np.zeros((B, N))
    for b, n in enumerate(SIZES):
        parent[b, :n - 1] = [rng.integers(j + 1, n) for j in range(n - 1)]
        parent[b, n - 1] = -1
        mask[b, :n] = 1
    return parent, mask


def recursive(cell, x, parent, n):
    """Per node: cell(x[j], [sums of each state over j's children]), evaluated
    recursively from the root down (the root is node n - 1)."""
    out = {}

    def visit(j):
        kids = [visit(c) for c in range(n) if parent[c] == j]
        sums = [sum((k[s] for k in kids), np.zeros(H)) for s in range(2)]
        out[j] = cell(x[j], *sums)
        return out[j]

    visit(n - 1)
    return out


def feeds_for(g, seed=0):
    feeds = params(g, seed)
    feeds["x"] = np.random.default_rng(seed + 1).standard_normal((B, N, F))
    feeds["parent"], feeds["mask"] = random_trees(seed)
    return feeds


def check_forward(g, feeds, cell):
    got = numpy_ref.run(g, feeds, list(g.outputs.values()))
    got = {k: got[nid] for k, nid in g.outputs.items()}
    for b, n in enumerate(SIZES):
        want = recursive(cell, feeds["x"][b], feeds["parent"][b], n)
        for j in range(N):
            node = want[j][0] if j < n else np.zeros(H)    # padding emits zeros
            np.testing.assert_allclose(got["y"][b, j], node, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["root"][b], want[n - 1][0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_sum_rnn_forward_matches_recursion(seed):
    g = net(SUM_RNN, "tree_rnn")
    feeds = feeds_for(g, seed)
    W, b, U = (feeds[p] for p in g.params)

    def cell(x, hsum, _):
        h = np.tanh(x @ W.T + b + hsum @ U.T)
        return h, h
    check_forward(g, feeds, cell)


def test_tree_lstm_forward_matches_recursion():
    g = net(TREE_LSTM, "tree_lstm")
    feeds = feeds_for(g)
    Wi, bi, Wf, bf, Wo, bo, Wu, bu = (feeds[p] for p in g.params)

    def cell(x, hsum, csum):
        p = np.concatenate([x, hsum])
        i, f, o = (sigmoid(p @ W.T + c) for W, c in ((Wi, bi), (Wf, bf), (Wo, bo)))
        c = i * np.tanh(p @ Wu.T + bu) + f * csum
        h = o * np.tanh(c)
        return h, c
    check_forward(g, feeds, cell)


@pytest.mark.parametrize("cell, name", [(SUM_RNN, "tree_rnn"), (TREE_LSTM, "tree_lstm")])
def test_gradient_matches_finite_differences(cell, name):
    g = net(cell, name)
    rng = np.random.default_rng(5)
    feeds = feeds_for(g)
    terms = []
    for y in g.outputs.values():
        r = g.input(f"r_{y}", g.shape(y))
        feeds[r] = rng.standard_normal(numpy_ref.run(g, feeds, [y])[y].shape)
        terms.append(g.add("sum", (g.add("mul", (y, r)),)))
    loss = g.add("add", tuple(terms))
    got = fd_check(g, loss, feeds, g.params + ["x"])
    assert np.all(got["x"][feeds["mask"] == 0] == 0)       # padding gets no gradient


def test_compile_size_does_not_grow_with_nodes():
    sizes = []
    for nodes in (3, 31):
        g = net(SUM_RNN, "tree_rnn", nodes)
        gg, _ = backward(g, g.add("sum", (g.outputs["root"],)), g.params)
        sizes.append((len(g), nodes_total(g), len(gg), nodes_total(gg)))
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("body, message", [
    ("r = x -> tree_rnn(4, parent=parent, reverse=true)", "no reverse"),
    ("r = x -> tree_rnn(4, parent=parent, bptt=2)", "whole tree"),
    ("r = x -> tree_rnn(4, parent=x)", r"one int per node"),
    ("r = x -> plain(4)", r"inside a cell applied to a tree"),
    ("r = x -> prev(4, parent=parent)", r"reads its children, not the node before"),
    ("r = x -> odd(4, parent=parent)", r"children takes one state of this cell"),
])
def test_errors(body, message):
    src = SUM_RNN + """
cell plain(n)(x) { state h = zeros(n); h[t] = tanh(dense(children(h), n)); return h }
cell prev(n)(x) { state h = zeros(n); h[t] = tanh(dense(h[t-1], n)); return h }
cell odd(n)(x) { state h = zeros(n); h[t] = tanh(dense(children(x), n)); return h }
network n {
  input x: [5, 3]
  input parent: int[5]
  %s
  output y = r
}""" % body
    with pytest.raises(SpecError, match=message):
        nnspec.lower(src)


def test_one_hot_layer():
    g = nnspec.lower("network n { input t: int[4]\n output y = t -> one_hot(6) }",
                     dtype="float64")
    assert g.shape(g.outputs["y"]) == ("B", 4, 6) and g.dtype_of(g.outputs["y"]) == "float64"
    y = numpy_ref.run(g, {"t": np.array([[0, 5, -1, 6]])}, [g.outputs["y"]])[g.outputs["y"]]
    want = np.zeros((4, 6))
    want[0, 0] = want[1, 5] = 1                     # -1 and 6 lie outside: rows of zeros
    np.testing.assert_array_equal(y[0], want)
    with pytest.raises(SpecError, match="k must be a positive integer"):
        nnspec.lower("network n { input t: int[4]\n output y = t -> one_hot(0) }")


# ---- the data set ---------------------------------------------------------------------

def evaluate(tok, parent, mask, modulus=5):
    """The root's value, from the arrays alone: nodes in order (children first)."""
    n = int(mask.sum())
    assert np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
    assert np.all(tok[n:] == PAD) and np.all(parent[n:] == -1)
    assert parent[n - 1] == -1 and np.all(parent[:n - 1] > np.arange(n - 1))
    value = {}
    for j in range(n):
        kids = [value[c] for c in range(n) if parent[c] == j]
        if tok[j] >= DIGIT0:
            assert not kids
            value[j] = tok[j] - DIGIT0
        else:
            assert tok[j] in (PLUS, TIMES) and len(kids) == 2
            a, b = kids
            value[j] = (a + b) % modulus if tok[j] == PLUS else (a * b) % modulus
    return value[n - 1]


def test_trees_are_deterministic_and_labelled_by_their_value():
    a, b = expressions(300, 15, seed=1), expressions(300, 15, seed=1)
    c = expressions(300, 15, seed=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["tok"], c["tok"])
    assert a["tok"].dtype == a["parent"].dtype == a["label"].dtype == np.int64
    assert a["mask"].dtype == np.float32
    for i in range(300):
        assert evaluate(a["tok"][i], a["parent"][i], a["mask"][i]) == a["label"][i]
    sizes = a["mask"].sum(axis=1)
    assert set(np.unique(sizes)) == {3, 5, 7, 9, 11, 13, 15}     # 1 to 7 operators
    d = expressions(50, 9, modulus=7, seed=0)
    assert d["tok"].shape == (50, 9) and d["label"].max() < 7
    for i in range(50):
        assert evaluate(d["tok"][i], d["parent"][i], d["mask"][i], 7) == d["label"][i]


# ---- the zoo spec ---------------------------------------------------------------------

def test_spec_compiled_gradient_matches_reference_and_trains(monkeypatch):
    net_ = nnspec.compile("specs/recursive_tree.nn", set={"hidden": 8, "embed": 4})
    train, test = load("trees", net_)
    assert train["tok"].shape[1:] == (15,) and len(train["tok"]) + len(test["tok"]) == 10_000
    xb = {k: train[k][:16] for k in net_.inputs}
    yb = {k: train[k][:16] for k in net_.targets}
    loss, grads = net_.gradients(xb, yb)
    g = net_.graph
    gg, ref = backward(g, g.meta["loss"], g.params)
    want = numpy_ref.run(gg, {**xb, **yb, **net_.params}, [g.meta["loss"]] + list(ref.values()))
    assert loss == pytest.approx(float(want[g.meta["loss"]]), rel=1e-5)
    for p, gid in ref.items():
        np.testing.assert_allclose(grads[p], want[gid], rtol=1e-4, atol=1e-6, err_msg=p)
    # an epoch of fit: its training and eval programs interpreted (the compiled
    # gradient is checked above; the zoo's tree net trains compiled in
    # tests/test_zoo_runs.py)
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")
    r = fit(net_, ({k: v[:256] for k, v in train.items()}, {k: v[:64] for k, v in test.items()}),
            epochs=1, progress=False)
    assert np.isfinite(r["test_loss"]) and 0 <= r["test_accuracy"] <= 1
