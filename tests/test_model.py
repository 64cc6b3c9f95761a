"""`Network` on specs from the frontend: programs against the NumPy
interpreter for convolutions, batch norm (running statistics written back by
the train program), dropout (the counter-based mask advancing per step), and
recurrences (compiled, or run by the reference fallback)."""
from __future__ import annotations

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.passes.autodiff import backward
from nnspec.passes.mode import specialise

CNN = """
network small_cnn {
    input x: [2, 6, 6]
    output logits = x -> conv2d(3, 3, pad=1) -> batchnorm -> relu -> maxpool(2)
        -> flatten -> dropout(0.5) -> dense(4)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9)
}
"""

RNN = """
cell elman(n)(x) {
    state h = zeros(n)
    h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
    return h
}
network tiny_rnn {
    input x: [5, 3]
    output logits = final(x -> elman(4)) -> dense(3)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
}
"""


def batch(net, n=5, seed=0):
    rng = np.random.default_rng(seed)
    x = {k: rng.standard_normal((n,) + tuple(s)) for k, s in net.inputs.items()}
    y = {k: rng.integers(0, 3, n) for k in net.targets}
    return x, y


def reference(net, x, y, training):
    g = specialise(net.graph, training)
    loss = g.meta["loss"]
    gg, grads = backward(g, loss, g.params)
    feeds = {**x, **y, **net.params, **net.state}
    ids = [loss, g.outputs["logits"]] + list(grads.values())
    vals = numpy_ref.run(gg, feeds, ids)
    return vals, grads


def test_cnn_with_batchnorm_and_dropout_matches_reference():
    net = nnspec.compile(CNN, dtype="float64", seed=2)
    x, y = batch(net)
    vals, _ = reference(net, x, y, training=False)
    np.testing.assert_allclose(net.forward(**x)["logits"], vals[net.graph.outputs["logits"]],
                               rtol=1e-11, atol=1e-12)
    loss, grads = net.gradients(x, y)
    vals, gids = reference(net, x, y, training=True)
    assert loss == pytest.approx(float(vals[net.graph.meta["loss"]]), rel=1e-11)
    for p, gn in gids.items():
        np.testing.assert_allclose(grads[p], vals[gn], rtol=1e-9, atol=1e-11, err_msg=p)


def test_train_step_writes_running_statistics_and_advances_dropout():
    net = nnspec.compile(CNN, dtype="float64", seed=2)
    x, y = batch(net)
    mean = next(k for k in net.state if k.endswith("running_mean"))
    step = next(k for k in net.state if k.endswith(".step"))
    before = net.state_dict()
    # what the update nodes compute, from the state before the step
    g = specialise(net.graph, True)
    updates = {n.attrs["updates"]: n.id for n in g.nodes() if "updates" in n.attrs}
    want = numpy_ref.run(g, {**x, **y, **net.params, **net.state}, list(updates.values()))
    net.train_step(x, y, 0.1)
    np.testing.assert_allclose(net.state[mean], want[updates[mean]], rtol=1e-12)
    assert float(net.state[step]) == float(before[step]) + 1
    # eval mode reads the state and never changes it
    after = net.state_dict()
    net.evaluate_batch(x, y)
    net.forward(**x)
    for k in net.state:
        np.testing.assert_array_equal(net.state[k], after[k])


def test_recurrence_matches_reference_and_trains():
    net = nnspec.compile(RNN, dtype="float64", seed=0)
    x, y = batch(net)
    vals, gids = reference(net, x, y, training=True)
    np.testing.assert_allclose(net.forward(**x)["logits"], vals[net.graph.outputs["logits"]],
                               rtol=1e-12)
    loss, grads = net.gradients(x, y)
    for p, gn in gids.items():
        np.testing.assert_allclose(grads[p], vals[gn], rtol=1e-10, err_msg=p)
    first = net.train_step(x, y, 0.5)
    for _ in range(20):
        last = net.train_step(x, y, 0.5)
    assert last < first


def test_float32_spec_trains():
    net = nnspec.compile(CNN, seed=0)
    assert all(v.dtype == np.float32 for v in net.params.values())
    x, y = batch(net, n=8)
    x = {k: v.astype(np.float32) for k, v in x.items()}
    losses = [net.train_step(x, y, 0.05) for _ in range(15)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert net.evaluate_batch(x, y)[1]["logits"].dtype == np.float32
