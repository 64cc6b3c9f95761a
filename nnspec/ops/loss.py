"""Softmax and losses.  Class scores are on the last axis; losses are scalars
(shape ()) averaged over every position (batch, and time for sequences).

    softmax(x), log_softmax(x)           stable (the row maximum is subtracted)
    softmax_grad(g, y), log_softmax_grad(g, y)     their vector-Jacobian products
                                         from the output y (internal)
    cross_entropy(logits, target)        logits [..., C], int64 target [...]:
                                         mean of logsumexp(z) - z[target]
    cross_entropy_grad(g, logits, target)   g (softmax - onehot) / N (internal)
    nll(logp, target)                    -mean(logp[target])
    nll_grad(g, target, logp)            -g onehot / N

`mse` and `bce_logits` are layers composed of elementwise ops and `mean`.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Op, fmt, kernel, layer, prange, register


def _rows(x):
    return x.reshape(-1, x.shape[-1])


class Softmax(Op):
    arity = 1

    def __init__(self, name, log):
        self.name, self.log = name, log

    def infer(self, attrs, shapes, dtypes):
        if len(shapes[0]) < 1:
            raise ShapeError(f"{self.name}: needs at least one axis, got a scalar")
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        z = x - x.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return z - lse if self.log else np.exp(z - lse)

    def grad(self, gb, node, g):
        return [gb.add(f"{self.name}_grad", (g, node.id))]

    def kernel(self, attrs):
        return softmax_rows, (self.log,)


class SoftmaxGrad(Op):
    """softmax: y (g - sum(g y)); log_softmax: g - exp(y) sum(g).  Internal."""
    arity = 2
    differentiable = False

    def __init__(self, name, log):
        self.name, self.log = name, log

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[0]) != tuple(shapes[1]):
            raise ShapeError(f"{self.name}: {fmt(shapes[0])} and {fmt(shapes[1])} differ")
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, g, y):
        if self.log:
            return g - np.exp(y) * g.sum(axis=-1, keepdims=True)
        return y * (g - (g * y).sum(axis=-1, keepdims=True))

    def kernel(self, attrs):
        return softmax_grad_rows, (self.log,)


for _op in (Softmax("softmax", False), Softmax("log_softmax", True),
            SoftmaxGrad("softmax_grad", False), SoftmaxGrad("log_softmax_grad", True)):
    register(_op)


@kernel(parallel=True)
def softmax_rows(x, out, log):
    C = x.shape[x.ndim - 1]
    n = x.size // C
    xr = x.reshape((n, C))
    o = out.reshape((n, C))
    T = out.dtype.type
    for i in prange(n):
        m = xr[i, 0]
        for j in range(C):
            m = max(m, xr[i, j])
        s = T(0)
        for j in range(C):
            s += np.exp(xr[i, j] - m)
        lse = np.log(s)
        for j in range(C):
            o[i, j] = xr[i, j] - m - lse if log else np.exp(xr[i, j] - m - lse)


@kernel(parallel=True)
def softmax_grad_rows(g, y, out, log):
    C = g.shape[g.ndim - 1]
    n = g.size // C
    gr = g.reshape((n, C))
    yr = y.reshape((n, C))
    o = out.reshape((n, C))
    T = out.dtype.type
    for i in prange(n):
        s = T(0)
        for j in range(C):
            s += gr[i, j] if log else gr[i, j] * yr[i, j]
        for j in range(C):
            o[i, j] = gr[i, j] - np.exp(yr[i, j]) * s if log else yr[i, j] * (gr[i, j] - s)


# ---- losses over int targets ----------------------------------------------------

def _check_target(name, scores, target, tdtype):
    if tuple(scores[:-1]) != tuple(target):
        raise ShapeError(f"{name}: scores {fmt(scores)} need targets of shape "
                         f"{fmt(scores[:-1])}, got {fmt(target)}")
    if not str(tdtype).startswith("int"):
        raise ShapeError(f"{name}: targets must be integer class indices, got {tdtype}")


class CrossEntropy(Op):
    name = "cross_entropy"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[0], shapes[1], dtypes[1])
        return (), dtypes[0]

    def reference(self, attrs, z, t):
        logp = Softmax("", True).reference({}, z)
        return -np.take_along_axis(_rows(logp), t.reshape(-1, 1), axis=1).mean()

    def grad(self, gb, node, g):
        z, t = node.inputs
        return [gb.add("cross_entropy_grad", (g, z, t)), None]

    def kernel(self, attrs):
        return cross_entropy, ()


class CrossEntropyGrad(Op):
    name = "cross_entropy_grad"
    arity = 3
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[0]) != ():
            raise ShapeError(f"{self.name}: the incoming gradient must be a scalar, "
                             f"got {fmt(shapes[0])}")
        _check_target(self.name, shapes[1], shapes[2], dtypes[2])
        return tuple(shapes[1]), dtypes[0]

    def reference(self, attrs, g, z, t):
        p = _rows(Softmax("", False).reference({}, z)).copy()
        p[np.arange(p.shape[0]), t.reshape(-1)] -= 1
        return (p * (g / p.shape[0])).reshape(z.shape)

    def kernel(self, attrs):
        return cross_entropy_grad, ()


class Nll(Op):
    name = "nll"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[0], shapes[1], dtypes[1])
        return (), dtypes[0]

    def reference(self, attrs, logp, t):
        return -np.take_along_axis(_rows(logp), t.reshape(-1, 1), axis=1).mean()

    def grad(self, gb, node, g):
        lp, t = node.inputs
        return [gb.add("nll_grad", (g, t, lp)), None]

    def kernel(self, attrs):
        return nll, ()


class NllGrad(Op):
    name = "nll_grad"
    arity = 3

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[0]) != ():
            raise ShapeError(f"{self.name}: the incoming gradient must be a scalar, "
                             f"got {fmt(shapes[0])}")
        _check_target(self.name, shapes[2], shapes[1], dtypes[1])
        return tuple(shapes[2]), dtypes[0]

    def reference(self, attrs, g, t, like):
        out = np.zeros((t.size, like.shape[-1]), dtype=like.dtype)
        out[np.arange(t.size), t.reshape(-1)] = -g / t.size
        return out.reshape(like.shape)

    def grad(self, gb, node, g2):
        g, t, lp = node.inputs
        return [gb.add("nll", (g2, t)), None, None]

    def kernel(self, attrs):
        return nll_grad, ()


for _op in (CrossEntropy(), CrossEntropyGrad(), Nll(), NllGrad()):
    register(_op)


@kernel
def cross_entropy(z, t, out):
    C = z.shape[z.ndim - 1]
    n = z.size // C
    zr = z.reshape((n, C))
    tf = t.reshape(-1)
    T = out.dtype.type
    total = T(0)
    for i in range(n):
        m = zr[i, 0]
        for j in range(C):
            m = max(m, zr[i, j])
        s = T(0)
        for j in range(C):
            s += np.exp(zr[i, j] - m)
        total += np.log(s) + m - zr[i, tf[i]]
    out[()] = total / T(n)


@kernel(parallel=True)
def cross_entropy_grad(g, z, t, out):
    C = z.shape[z.ndim - 1]
    n = z.size // C
    zr = z.reshape((n, C))
    o = out.reshape((n, C))
    tf = t.reshape(-1)
    T = out.dtype.type
    scale = g[()] / T(n)
    for i in prange(n):
        m = zr[i, 0]
        for j in range(C):
            m = max(m, zr[i, j])
        s = T(0)
        for j in range(C):
            s += np.exp(zr[i, j] - m)
        for j in range(C):
            o[i, j] = np.exp(zr[i, j] - m) / s * scale
        o[i, tf[i]] -= scale


@kernel
def nll(lp, t, out):
    C = lp.shape[lp.ndim - 1]
    n = lp.size // C
    r = lp.reshape((n, C))
    tf = t.reshape(-1)
    T = out.dtype.type
    total = T(0)
    for i in range(n):
        total -= r[i, tf[i]]
    out[()] = total / T(n)


@kernel
def nll_grad(g, t, like, out):
    n = t.size
    C = out.size // max(n, 1)
    o = out.reshape((n, C))
    tf = t.reshape(-1)
    v = -g[()] / out.dtype.type(n)
    o[:, :] = 0
    for i in range(n):
        o[i, tf[i]] = v


# ---- layers ------------------------------------------------------------------------

@layer("softmax")
def softmax(ctx, x):
    """Softmax over the last axis."""
    return ctx.emit("softmax", [x])


@layer("log_softmax")
def log_softmax(ctx, x):
    """log(softmax(x)) over the last axis, computed stably."""
    return ctx.emit("log_softmax", [x])


@layer("cross_entropy", inputs=2)
def cross_entropy_layer(ctx, logits, target):
    """Mean cross-entropy from logits [B, C] (or [B, T, C]) and int class targets
    [B] (or [B, T]); a stable log-sum-exp."""
    return ctx.emit("cross_entropy", [logits, target])


@layer("nll", inputs=2)
def nll_layer(ctx, logp, target):
    """Mean negative log-likelihood of int targets under log-probabilities (as
    from log_softmax)."""
    return ctx.emit("nll", [logp, target])


@layer("mse", inputs=2)
def mse(ctx, pred, target):
    """Mean squared error over all elements."""
    d = ctx.emit("sub", [pred, target])
    return ctx.emit("mean", [ctx.emit("square", [d])], {"axes": None, "keepdims": False})


@layer("bce_logits", inputs=2)
def bce_logits(ctx, logits, target):
    """Binary cross-entropy from logits and 0/1 (or soft) float targets, mean over
    all elements: softplus(z) - z * t, without overflow."""
    sp = ctx.emit("softplus", [logits])
    zt = ctx.emit("mul", [logits, target])
    return ctx.emit("mean", [ctx.emit("sub", [sp, zt])], {"axes": None, "keepdims": False})
