"""One table-driven test over the op registry (the table is `tests/opcases.py`).

For every case: the compiled CPU kernel against the NumPy reference in float32
and float64, the shape rule against the reference's shape, and the gradient
(built by autodiff from other ops, run by the NumPy interpreter) against
central finite differences along a random direction.  A registered op with no
case fails `test_every_op_has_a_case`.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnspec.backend import numpy_ref
from nnspec.backend.jit import jitted
from nnspec.errors import ShapeError
from nnspec.ir import BATCH, LEAF_OPS, Graph
from nnspec.ops import all_ops, get_op
from nnspec.passes.autodiff import backward

from opcases import CASES, ELSEWHERE, Case

TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-12, atol=1e-12)}


def sample(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [a.sample(rng, dtype) for a in case.args]


def run_kernel(op, attrs, xs, out_shape, dtype):
    fn, extra = op.kernel(attrs)
    out = np.full(out_shape, -1 if np.dtype(dtype).kind == "i" else np.nan, dtype=dtype)
    jitted(fn)(*xs, out, *extra)
    return out


def test_every_op_has_a_case():
    covered = {c.op for c in CASES}
    missing = sorted(set(all_ops()) - covered - set(LEAF_OPS) - ELSEWHERE)
    assert not missing, f"ops with no case in tests/opcases.py: {missing}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_matches_reference(case, dtype):
    op = get_op(case.op)
    xs = sample(case, dtype)
    ref = np.asarray(op.reference(case.attrs, *[x.copy() for x in xs]))
    before = [x.copy() for x in xs]
    out = run_kernel(op, case.attrs, xs, ref.shape, ref.dtype if ref.dtype.kind != "f"
                     else dtype)
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    updates = getattr(op, "state_update", None)
    changed = updates(case.attrs, *before) if updates else {}
    for i, (x, b) in enumerate(zip(xs, before)):
        if i in changed:   # state the kernel updates in place
            np.testing.assert_allclose(x, changed[i], **TOL[dtype])
        else:
            np.testing.assert_array_equal(x, b, err_msg=f"kernel wrote to input {i}")


def batch_of(case: Case, xs):
    return next((x.shape[0] for a, x in zip(case.args, xs) if a.batched), None)


def build(case: Case, xs):
    """A float64 graph: input leaves, the op, and loss = sum(op(...) * r)."""
    g = Graph("case", "float64")
    ids = []
    for i, (a, x) in enumerate(zip(case.args, xs)):
        shape = ((BATCH,) + x.shape[1:]) if a.batched else x.shape
        ids.append(g.input(f"x{i}", shape, dtype=str(x.dtype)))
    y = g.add(case.op, ids, case.attrs, name="y")
    return g, ids, y


def test_shape_rule():
    for case in CASES:
        xs = sample(case, "float64")
        g, ids, y = build(case, xs)
        ref = np.asarray(get_op(case.op).reference(case.attrs, *xs))
        batch = batch_of(case, xs)
        got = tuple(batch if d == BATCH else d for d in g.shape(y))
        assert got == ref.shape, f"{case.id}: shape rule {g.shape(y)}, reference {ref.shape}"


@pytest.mark.parametrize("case", [c for c in CASES if c.fd and get_op(c.op).differentiable],
                         ids=lambda c: c.id)
def test_gradient(case):
    xs = sample(case, "float64", seed=1)
    rng = np.random.default_rng(2)
    g, ids, y = build(case, xs)
    r = g.input("r", g.shape(y), dtype="float64")
    loss = g.add("sum", (g.add("mul", (y, r)),), name="loss")
    wrt = [i for i, a in zip(ids, case.args) if a.grad and a.dtype == "float"]
    gg, grads = backward(g, loss, wrt)
    feeds = dict(zip(ids, xs))
    batch = batch_of(case, xs)
    feeds[r] = rng.standard_normal(tuple(batch if d == BATCH else d for d in g.shape(y)))
    vals = numpy_ref.run(gg, feeds, [grads[w] for w in wrt if w in grads])
    dirs = {w: rng.standard_normal(feeds[w].shape) for w in wrt}
    analytic = sum(float(np.sum(vals[grads[w]] * dirs[w])) for w in wrt if w in grads)

    def f(t):
        fd = dict(feeds)
        for w in wrt:
            fd[w] = feeds[w] + t * dirs[w]
        return float(numpy_ref.run(g, fd, [loss])[loss])

    eps = 1e-6
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-7), case.id


def test_shape_errors_name_the_sizes():
    g = Graph()
    a = g.input("a", (BATCH, 3, 5))
    b = g.input("b", (4,))
    with pytest.raises(ShapeError, match=r"\[B, 3, 5\].*\[4\].*5 and 4"):
        g.add("add", (a, b))
    with pytest.raises(ShapeError, match="axis 3 is out of range for a 3-d"):
        g.add("sum", (a,), {"axes": [3]})
