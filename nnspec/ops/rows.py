"""Per-example matrix-vector products over the rows of a [B, N, ...] tensor.

Per example, x [N, ...] is a matrix of N rows (its trailing axes flattened to
R columns), w [N] and y [...] (R values) are vectors:

    vecmat(w, x)    w^T x      [B, N] and [B, N, ...] -> [B, ...]     rows mixed by w
    outer(w, y)     w y^T      [B, N] and [B, ...]    -> [B, N, ...]  y placed in rows by w
    matvec(x, y)    x y        [B, N, ...] and [B, ...] -> [B, N]     each row dotted with y

The three are each other's adjoints, so their gradients need no other op:

    vecmat: dw = matvec(x, g)   dx = outer(w, g)
    outer:  dw = matvec(g, y)   dy = vecmat(w, g)
    matvec: dx = outer(g, y)    dy = vecmat(g, x)

Tree cells (frontend/tree.py) read a node's children's sum as vecmat(one-hot of
the node, sums) and send a node's state to its parent's row as outer(one-hot
of the parent, h): one pass over B * N * R values each, where a broadcast
multiply and a sum over axis 1 would take general strided loops.
"""
from __future__ import annotations

from ..errors import ShapeError
from .base import (Cuda, Map, Op, Reduce, T, cuda_kernel, flat, fmt, kernel, known, prange, prod,
                   register)


def _check(name, rows, vec, what):
    """rows [B, N, ...] against w [B, N] ("w") or y [B, ...] ("y")."""
    rows, vec = tuple(rows), tuple(vec)
    if len(rows) < 2:
        raise ShapeError(f"{name}: needs rows [B, N, ...], got {fmt(rows)}")
    want = rows[:2] if what == "w" else (rows[0],) + rows[2:]
    if vec != want:
        raise ShapeError(f"{name}: {fmt(rows)} needs {what} of shape {fmt(want)}, "
                         f"got {fmt(vec)}")


class _Product(Op):
    """One of the three: `adjoints` gives, per input, the op and its inputs
    (from the op's own two inputs and the cotangent g) that form its gradient."""
    arity = 2
    adjoints: tuple = ()

    def grad(self, gb, node, g):
        a, b = node.inputs
        return [gb.add(op, ins(a, b, g)) if gb.wants(i) else None
                for i, (op, ins) in enumerate(self.adjoints)]

    def kernel(self, attrs):
        return globals()[self.name], ()         # the kernel below named like the op

    def macs(self, attrs, in_shapes, out_shape):
        # one multiply-add per element of the [B, N, ...] operand or result
        return max(prod(d for d in s[1:] if known(d)) for s in (*in_shapes, out_shape))


class VecMat(_Product):
    name = "vecmat"
    adjoints = (("matvec", lambda w, x, g: (x, g)), ("outer", lambda w, x, g: (w, g)))

    def infer(self, attrs, shapes, dtypes):
        w, x = shapes
        _check(self.name, x, w, "w")
        return (x[0],) + tuple(x[2:]), dtypes[1]

    def reference(self, attrs, w, x):
        return (w.reshape(w.shape + (1,) * (x.ndim - 2)) * x).sum(axis=1)

    def cuda(self, attrs, in_shapes, out_shape):
        """A thread per output element, summing down its column of x."""
        (B, N), x = in_shapes[0], in_shapes[1]
        R = prod(x[2:])
        return Cuda([Map(vecmat_cuda, B * R, ["in0", flat("in1", x), flat("out", out_shape)],
                         (N, R))])


class Outer(_Product):
    name = "outer"
    adjoints = (("matvec", lambda w, y, g: (g, y)), ("vecmat", lambda w, y, g: (w, g)))

    def infer(self, attrs, shapes, dtypes):
        w, y = tuple(shapes[0]), tuple(shapes[1])
        if len(w) != 2 or not y or y[0] != w[0]:
            raise ShapeError(f"outer: needs w [B, N] and y [B, ...], got {fmt(w)} and {fmt(y)}")
        return w + y[1:], dtypes[1]

    def reference(self, attrs, w, y):
        return w.reshape(w.shape + (1,) * (y.ndim - 1)) * y[:, None]

    def cuda(self, attrs, in_shapes, out_shape):
        (B, N), y = in_shapes[0], in_shapes[1]
        R = prod(y[1:])
        return Cuda([Map(outer_cuda, B * N * R, ["in0", flat("in1", y), flat("out", out_shape)],
                         (N, R))])


class MatVec(_Product):
    name = "matvec"
    adjoints = (("outer", lambda x, y, g: (g, y)), ("vecmat", lambda x, y, g: (g, x)))

    def infer(self, attrs, shapes, dtypes):
        x, y = shapes
        _check(self.name, x, y, "y")
        return tuple(x[:2]), dtypes[0]

    def reference(self, attrs, x, y):
        return (x * y[:, None]).reshape(x.shape[:2] + (-1,)).sum(axis=2)

    def cuda(self, attrs, in_shapes, out_shape):
        """A block per row of x, its dot product with y summed in shared memory."""
        x, y = in_shapes
        B, N = x[:2]
        R = prod(x[2:])
        return Cuda([Reduce(matvec_term, matvec_finish, B * N, R,
                            [flat("in0", x), flat("in1", y), flat("out", out_shape)], (N, R))])


for _op in (VecMat(), Outer(), MatVec()):
    register(_op)


@kernel(parallel=True)
def vecmat(w, x, out):
    B, N = w.shape[0], w.shape[1]
    xf = x.reshape((B, N, -1))
    o = out.reshape((B, -1))
    for b in prange(B):
        for r in range(o.shape[1]):
            o[b, r] = 0
        for j in range(N):
            wj = w[b, j]
            for r in range(o.shape[1]):
                o[b, r] += wj * xf[b, j, r]


@kernel(parallel=True)
def outer(w, y, out):
    B, N = w.shape[0], w.shape[1]
    yf = y.reshape((B, -1))
    o = out.reshape((B, N, -1))
    for b in prange(B):
        for j in range(N):
            wj = w[b, j]
            for r in range(yf.shape[1]):
                o[b, j, r] = wj * yf[b, r]


@kernel(parallel=True)
def matvec(x, y, out):
    B, N = out.shape[0], out.shape[1]
    xf = x.reshape((B, N, -1))
    yf = y.reshape((B, -1))
    for b in prange(B):
        for j in range(N):
            acc = out.dtype.type(0)
            for r in range(yf.shape[1]):
                acc += xf[b, j, r] * yf[b, r]
            out[b, j] = acc


@cuda_kernel
def vecmat_cuda(k, w, x, out, N, R):
    """out [B, R] at k = (b, r): the sum over j of w[b, j] x[b, j, r]."""
    b = k // R
    r = k % R
    s = T(0)
    for j in range(N):
        s += w[b, j] * x[(b * N + j) * R + r]
    out[k] = s


@cuda_kernel
def outer_cuda(k, w, y, out, N, R):
    """out [B, N, R] at k = (b, j, r): w[b, j] y[b, r]."""
    r = k % R
    i = k // R
    out[k] = w[i // N, i % N] * y[i // N * R + r]


@cuda_kernel
def matvec_term(i, r, x, y, out, N, R):
    """Term r of row i = (b, j): x[b, j, r] y[b, r]."""
    return x[i * R + r] * y[i // N * R + r]


@cuda_kernel
def matvec_finish(i, total, x, y, out, N, R):
    out[i] = total
