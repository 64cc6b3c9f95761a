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


# ---- spot checks against literal formulas (independent of the references) -------

def naive_conv2d(x, w, stride, dil, pad, groups):
    B, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    (pt, pb), (pl, pr) = pad
    Ho = (H + pt + pb - dil[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + pl + pr - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((B, O, Ho, Wo))
    for b in range(B):
        for o in range(O):
            g = o // (O // groups)
            for i in range(Ho):
                for j in range(Wo):
                    s = 0.0
                    for c in range(Cg):
                        for u in range(kh):
                            for v in range(kw):
                                yy = i * stride[0] - pt + u * dil[0]
                                xx = j * stride[1] - pl + v * dil[1]
                                if 0 <= yy < H and 0 <= xx < W:
                                    s += x[b, g * Cg + c, yy, xx] * w[o, c, u, v]
                    y[b, o, i, j] = s
    return y


@pytest.mark.parametrize("stride,dil,pad,groups", [
    ([1, 1], [1, 1], [[0, 0], [0, 0]], 1),
    ([2, 1], [1, 2], [[1, 0], [2, 1]], 2),
    ([2, 2], [1, 1], "same", 4),
])
def test_conv_against_loops(stride, dil, pad, groups):
    from nnspec.ops.base import pad_amounts
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((4, 4 // groups, 3, 2))
    if pad == "same":
        attrs_pad = ["same", "same"]
        pads = [pad_amounts("same", n, k, s, d) for n, k, s, d in zip((7, 6), (3, 2), stride, dil)]
    else:
        attrs_pad = pads = pad
    attrs = {"stride": stride, "dilation": dil, "pad": attrs_pad, "groups": groups}
    want = naive_conv2d(x, w, stride, dil, pads, groups)
    op = get_op("conv")
    np.testing.assert_allclose(op.reference(attrs, x, w), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_kernel(op, attrs, [x, w], want.shape, "float64"), want,
                               rtol=1e-12, atol=1e-12)


def test_same_padding_keeps_size_and_ceil_with_stride():
    g = Graph()
    x = g.input("x", (BATCH, 3, 9, 10))
    w = g.input("w", (4, 3, 4, 3))
    y = g.add("conv", (x, w), {"stride": [2, 2], "dilation": [1, 1], "pad": ["same", "same"],
                               "groups": 1})
    assert g.shape(y) == (BATCH, 4, 5, 5)
    x1 = g.input("x1", (BATCH, 2, 11))
    w1 = g.input("w1", (3, 2, 3))
    y1 = g.add("conv", (x1, w1), {"stride": [1], "dilation": [2], "pad": ["causal"], "groups": 1})
    assert g.shape(y1) == (BATCH, 3, 11)


def test_maxpool_and_switches_against_loops():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 8))
    attrs = {"kernel": [3, 2], "stride": [2, 2], "pad": [1, 0], "ceil_mode": True}
    Ho, Wo = 4, 4           # ceil((7 + 2 - 3) / 2) + 1, ceil((8 - 2) / 2) + 1
    want = np.full((2, 3, Ho, Wo), -np.inf)
    where = np.zeros((2, 3, Ho, Wo), np.int64)
    for b in range(2):
        for c in range(3):
            for i in range(Ho):
                for j in range(Wo):
                    for u in range(3):
                        for v in range(2):
                            yy, xx = i * 2 - 1 + u, j * 2 + v
                            if 0 <= yy < 7 and 0 <= xx < 8 and x[b, c, yy, xx] > want[b, c, i, j]:
                                want[b, c, i, j] = x[b, c, yy, xx]
                                where[b, c, i, j] = yy * 8 + xx
    for name, expect in (("maxpool", want), ("maxpool_switches", where)):
        op = get_op(name)
        np.testing.assert_array_equal(op.reference(attrs, x), expect)
        np.testing.assert_array_equal(run_kernel(op, attrs, [x], expect.shape, expect.dtype),
                                      expect)


def test_unpool_places_once_after_overlapping_windows():
    """3x3 windows at stride 2 overlap: two windows choose each maximum.  unpool
    places it once (PyTorch's max_unpool2d, ONNX's MaxUnpool), the first
    window's value where their values differ; maxpool's gradient (add=true)
    sums them; gather_switches (the adjoint) reads g for the first window only."""
    x = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 25],
                  [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]], np.float64)[None, None]
    attrs = {"kernel": [3, 3], "stride": [2, 2], "pad": [0, 0], "ceil_mode": False}
    sw = get_op("maxpool_switches").reference(attrs, x)
    np.testing.assert_array_equal(sw[0, 0], [[12, 14], [12, 14]])
    v = np.array([[10.0, 20.0], [30.0, 40.0]])[None, None]
    pooled = get_op("maxpool").reference(attrs, x)
    placed, summed = np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 5, 5))
    placed[0, 0, 2, 2], placed[0, 0, 2, 4] = 10, 20
    summed[0, 0, 2, 2], summed[0, 0, 2, 4] = 40, 60
    restored = np.where(x == 13, 13.0, 0) + np.where(x == 25, 25.0, 0)
    unpool, gather = get_op("unpool"), get_op("gather_switches")
    g = np.arange(25.0).reshape(1, 1, 5, 5)
    for add, values, want in ((False, pooled, restored), (False, v, placed), (True, v, summed)):
        for op, args, expect in ((unpool, [values, sw, x], want),
                                 (gather, [g, sw], np.array([[12.0, 14], [0, 0]])[None, None]
                                  if not add else np.array([[12.0, 14], [12, 14]])[None, None])):
            at = {"add": add}
            np.testing.assert_array_equal(op.reference(at, *args), expect)
            np.testing.assert_array_equal(run_kernel(op, at, args, expect.shape, "float64"),
                                          expect)


def test_avgpool_counts_padding_like_pytorch():
    x = np.ones((1, 1, 3, 3))
    attrs = {"kernel": [2, 2], "stride": [2, 2], "pad": [1, 1], "ceil_mode": False}
    # every window holds one, two or four real ones out of four places
    want = np.array([[[[0.25, 0.5], [0.5, 1.0]]]])
    np.testing.assert_allclose(get_op("avgpool").reference(attrs, x), want)
    excl = get_op("avgpool").reference({**attrs, "count_include_pad": False}, x)
    np.testing.assert_allclose(excl, np.ones((1, 1, 2, 2)))


def test_losses_against_formulas():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 3)) * 50          # large logits: the log-sum-exp must be stable
    t = np.array([0, 2, 1, 2])
    lse = np.array([np.log(sum(np.exp(v - max(r)) for v in r)) + max(r) for r in z])
    want = np.mean([lse[i] - z[i, t[i]] for i in range(4)])
    op = get_op("cross_entropy")
    assert op.reference({}, z, t) == pytest.approx(want, rel=1e-12)
    assert run_kernel(op, {}, [z, t], (), "float64") == pytest.approx(want, rel=1e-12)


def test_dropout_mask_rate_and_determinism():
    op = get_op("dropout_mask")
    x = np.zeros((200, 50), np.float32)
    attrs = {"p": 0.25, "seed": 7, "training": True}
    m1 = op.reference(attrs, x, np.array(3.0))
    m2 = run_kernel(op, attrs, [x, np.array(3.0, np.float32)], x.shape, "float32")
    np.testing.assert_array_equal(m1, m2)
    assert set(np.unique(m1)) == {0.0, np.float32(1 / 0.75)}
    assert abs((m1 == 0).mean() - 0.25) < 0.02
    assert not np.array_equal(m1, op.reference(attrs, x, np.array(4.0)))   # a new step


def test_batchnorm_stat_follows_pytorch():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 4))
    rv = np.ones(3)
    new = get_op("batchnorm_stat").reference({"stat": "var", "momentum": 0.1}, x, rv)
    unbiased = x.transpose(1, 0, 2).reshape(3, -1).var(axis=1, ddof=1)
    np.testing.assert_allclose(new, 0.9 * rv + 0.1 * unbiased)


@pytest.mark.parametrize("op,inputs,attrs,pattern", [
    ("conv", [(BATCH, 3, 8, 8), (4, 2, 3, 3)], {"stride": [1, 1], "dilation": [1, 1],
     "pad": ["valid"] * 2, "groups": 1}, r"input has 3 channels.*expects 2"),
    ("conv", [(BATCH, 3, 4, 8), (4, 3, 5, 3)], {"stride": [1, 1], "dilation": [1, 1],
     "pad": ["valid"] * 2, "groups": 1}, r"height 4 \(padded to 4\) is smaller than the kernel"),
    ("maxpool", [(BATCH, 3, 2, 8)], {"kernel": [3, 3], "stride": [3, 3], "pad": [0, 0]},
     r"height 2 \(padded to 2\) is smaller than the window 3"),
    ("linear", [(BATCH, 5), (4, 6)], {}, r"5 features.*expects 6"),
    ("cross_entropy", [(BATCH, 10), (BATCH, 3)], {}, r"\[B, 10\] need targets of shape \[B\]"),
    ("concat", [(BATCH, 3, 4), (BATCH, 3, 5)], {"axis": 1}, r"differ at axis 2 \(4 and 5\)"),
    ("reshape", [(BATCH, 3, 4)], {"shape": [5, 2]}, r"12 elements.*needs 10"),
    ("batchnorm", [(BATCH, 3, 4), (4,), (3,), (3,), (3,)], {}, r"weight \[4\].*3 channels"),
])
def test_shape_error_messages(op, inputs, attrs, pattern):
    g = Graph()
    ids = [g.input(f"i{k}", s, dtype="int64" if op == "cross_entropy" and k == 1 else None)
           for k, s in enumerate(inputs)]
    with pytest.raises(ShapeError, match=pattern):
        g.add(op, ids, attrs)
