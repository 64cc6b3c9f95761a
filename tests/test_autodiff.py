"""The autodiff pass: contributions summed, only needed gradients built,
shared weights, and a grad rule with the wrong shape reported."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec.backend import numpy_ref
from nnspec.ir import BATCH, Graph
from nnspec.ops import OPS, Op
from nnspec.passes.autodiff import backward


def fd_check(g, loss, feeds, wrt, grads, seed=0):
    """Directional derivative of `loss` along a random direction vs the gradients."""
    rng = np.random.default_rng(seed)
    dirs = {w: rng.standard_normal(feeds[w].shape) for w in wrt}
    vals = numpy_ref.run(g, feeds, [grads[w] for w in wrt])
    analytic = sum(float(np.sum(vals[grads[w]] * dirs[w])) for w in wrt)

    def f(t):
        return float(numpy_ref.run(g, {k: v + t * dirs[k] if k in dirs else v
                                       for k, v in feeds.items()}, [loss])[loss])
    eps = 1e-6
    assert analytic == pytest.approx((f(eps) - f(-eps)) / (2 * eps), rel=1e-6)


def test_contributions_from_several_consumers_are_summed():
    g = Graph("t", "float64")
    x = g.input("x", (BATCH, 4))
    a = g.add("tanh", (x,))
    b = g.add("mul", (x, a))            # x read twice here, and by tanh
    c = g.add("exp", (a,))              # a read by mul and exp
    loss = g.add("sum", (g.add("add", (b, c)),))
    gg, grads = backward(g, loss, [x])
    assert "d/x/sum" in gg and "d/tanh/sum" in gg
    rng = np.random.default_rng(1)
    fd_check(gg, loss, {x: rng.standard_normal((3, 4))}, [x], grads)


def test_no_gradient_for_inputs_that_need_none():
    g = Graph("t", "float64")
    x = g.input("x", (BATCH, 5))
    w = g.param("w", (3, 5))
    b = g.param("b", (3,))
    y = g.add("linear", (x, w, b), {"bias": True})
    h = g.add("relu", (y,))
    loss = g.add("sum", (h,))
    gg, grads = backward(g, loss, [w])
    assert set(grads) == {w}
    new = [n for n in gg.nodes() if n.id not in g]
    # dW = matmul(g^T x) only: no dx (matmul g W) and no bias gradient (sum_rows)
    ops = [n.op for n in new]
    assert ops.count("matmul") == 1 and "sum_rows" not in ops
    assert all(x not in n.inputs or n.op == "matmul" for n in new)
    rng = np.random.default_rng(2)
    feeds = {x: rng.standard_normal((4, 5)), w: rng.standard_normal((3, 5)),
             b: rng.standard_normal(3)}
    fd_check(gg, loss, feeds, [w], grads)


def test_nodes_off_the_path_get_no_gradient():
    g = Graph("t", "float64")
    x = g.input("x", (BATCH, 3))
    w = g.param("w", (3,))
    side = g.add("exp", (x,))                    # feeds the loss, but not from w
    loss = g.add("sum", (g.add("add", (g.add("mul", (x, w)), side)),))
    gg, grads = backward(g, loss, [w])
    assert not any(n.id.startswith(f"d/{side}/") for n in gg.nodes())


def test_shared_weight_used_twice():
    g = Graph("t", "float64")
    x = g.input("x", (BATCH, 4))
    w = g.param("w", (4, 4))
    h = g.add("tanh", (g.add("linear", (x, w), {"bias": False}),))
    y = g.add("linear", (h, w), {"bias": False})          # the same weight again
    loss = g.add("sum", (g.add("square", (y,)),))
    gg, grads = backward(g, loss, [w])
    assert f"d/{w}/sum" in gg                              # two contributions, summed
    rng = np.random.default_rng(3)
    fd_check(gg, loss, {x: rng.standard_normal((2, 4)), w: rng.standard_normal((4, 4))},
             [w], grads)


class _BadGrad(Op):
    """An op whose gradient rule returns the wrong shape."""
    name = "_bad_grad_test"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        return x

    def grad(self, gb, node, g):
        return [gb.add("sum", (g,), {"axes": [1]})]


def test_shape_mismatch_in_a_grad_rule_is_reported():
    OPS[_BadGrad.name] = _BadGrad()
    try:
        g = Graph("t", "float64")
        x = g.input("x", (BATCH, 3))
        loss = g.add("sum", (g.add(_BadGrad.name, (x,)),))
        with pytest.raises(AssertionError, match=r"_bad_grad_test: gradient for input 'x' has "
                                                 r"shape \('B',\), the input has \('B', 3\)"):
            backward(g, loss, [x])
    finally:
        del OPS[_BadGrad.name]


@pytest.mark.parametrize("alpha, reads", [(0.2, "output"), (0.0, "output"), (-0.3, "input")])
def test_leaky_relu_gradient_reads_its_output_where_alpha_is_not_negative(alpha, reads):
    """With alpha >= 0, leaky_relu's gradient reads its output (y > 0 exactly
    where x > 0), so its input need not outlive the forward; a negative alpha
    maps x < 0 to y > 0, and the gradient reads the input.  Both match finite
    differences."""
    g = Graph("t", "float64")
    x = g.input("x", (BATCH, 7))
    w = g.param("w", (7,))
    pre = g.add("mul", (x, w))
    y = g.add("leaky_relu", (pre,), {"alpha": alpha})
    loss = g.add("sum", (g.add("square", (y,)),))
    gg, grads = backward(g, loss, [w])
    mask = [n for n in gg.nodes() if n.op == "leaky_relu_grad"]
    assert len(mask) == 1 and mask[0].inputs[1] == (y if reads == "output" else pre)
    rng = np.random.default_rng(4)
    fd_check(gg, loss, {x: rng.standard_normal((5, 7)), w: rng.standard_normal(7)}, [w], grads)
