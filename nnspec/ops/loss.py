"""Softmax and losses.  Class scores are on the last axis; losses are scalars
(shape ()) averaged over every position (batch, and time for sequences).

    softmax(x), log_softmax(x)           over attr `axis` (default -1); stable (the
                                         maximum is subtracted)
    softmax_grad(g, y), log_softmax_grad(g, y)     their vector-Jacobian products
                                         from the output y (internal)
    cross_entropy(logits, target)        logits [..., C], int64 target [...]:
                                         mean of logsumexp(z) - z[target]
    cross_entropy_grad(g, logits, target)   g (softmax - onehot) / N (internal)
    nll(logp, target)                    -mean(logp[target])
    nll_grad(g, target, logp)            -g onehot / N
    (with class weights, ignore_index and reduction: see below)

`mse` and `bce_logits` are layers composed of elementwise ops and `mean`.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, Reduce, T, cuda_kernel, flat, fmt, kernel, layer, prange, prod,
                   register)
from .reduce import max_stages


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def _axis(attrs, ndim):
    return attrs.get("axis", -1) % ndim


class Softmax(Op):
    """softmax(x; axis=-1), log_softmax(x; axis=-1)."""
    arity = 1

    def __init__(self, name, log):
        self.name, self.log = name, log

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        if len(x) < 1:
            raise ShapeError(f"{self.name}: needs at least one axis, got a scalar")
        if not -len(x) <= attrs.get("axis", -1) < len(x):
            raise ShapeError(f"{self.name}: axis {attrs['axis']} is out of range for "
                             f"{fmt(x)}")
        return x, dtypes[0]

    def reference(self, attrs, x):
        ax = _axis(attrs, x.ndim)
        z = x - x.max(axis=ax, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=ax, keepdims=True))
        return z - lse if self.log else np.exp(z - lse)

    def grad(self, gb, node, g):
        return [gb.add(f"{self.name}_grad", (g, node.id), node.attrs)]

    def kernel(self, attrs):
        return softmax_rows, (self.log, int(attrs.get("axis", -1)))

    def cuda(self, attrs, in_shapes, out_shape):
        """The rows' maxima and log-sum-exp (`_lse_stages`), then each element."""
        shape3 = _around_axis(in_shapes[0], attrs)
        n = prod(shape3)
        stages, temps = _lse_stages("in0", shape3)
        args = [flat("in0", shape3), "tmp0", flat("out", shape3)]
        return Cuda(stages + [Map(softmax_cuda, n, args, shape3[1:] + (n // shape3[1], self.log))],
                    temps)


class SoftmaxGrad(Op):
    """softmax: y (g - sum(g y)); log_softmax: g - exp(y) sum(g), the sums
    along `axis`.  Internal."""
    arity = 2
    differentiable = False

    def __init__(self, name, log):
        self.name, self.log = name, log

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[0]) != tuple(shapes[1]):
            raise ShapeError(f"{self.name}: {fmt(shapes[0])} and {fmt(shapes[1])} differ")
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, g, y):
        ax = _axis(attrs, g.ndim)
        if self.log:
            return g - np.exp(y) * g.sum(axis=ax, keepdims=True)
        return y * (g - (g * y).sum(axis=ax, keepdims=True))

    def kernel(self, attrs):
        return softmax_grad_rows, (self.log, int(attrs.get("axis", -1)))

    def cuda(self, attrs, in_shapes, out_shape):
        """Per row, the sum of g y (of g for log_softmax) in a block; then
        each element."""
        shape3 = _around_axis(in_shapes[0], attrs)
        R = prod(shape3) // shape3[1]
        args = [flat("in0", shape3), flat("in1", shape3), "tmp0", flat("out", shape3)]
        extra = shape3[1:] + (R, self.log)
        return Cuda([Reduce(grad_sum_term, grad_sum_finish, R, shape3[1], args, extra),
                     Map(softmax_grad_cuda, prod(shape3), args, extra)], [R])


for _op in (Softmax("softmax", False), Softmax("log_softmax", True),
            SoftmaxGrad("softmax_grad", False), SoftmaxGrad("log_softmax_grad", True)):
    register(_op)


# ---- softmax on CUDA ---------------------------------------------------------------
# x seen as [outer, C, inner] around the axis: row r = (i, k) holds the
# elements (i C + j) inner + k, j < C.  tmp0 holds each row's maximum (the
# Maps of reduce.max_stages) and then, from index R (the number of rows) on,
# its log-sum-exp after the maximum is subtracted (a Reduce, a block per row).

def _around_axis(shape, attrs) -> tuple:
    """(outer, C, inner): the sizes before, along and after the op's axis."""
    ax = _axis(attrs, len(shape))
    return prod(shape[:ax]), int(shape[ax]), prod(shape[ax + 1:])


def _lse_stages(x: str, shape3):
    """(stages, scratch sizes) leaving tmp0[r] = the maximum of row r of x
    [outer, C, inner] and tmp0[R + r] = log(sum(exp(row - maximum)))."""
    outer, C, inner = shape3
    R = outer * inner
    stages, temps = max_stages(x, shape3, (1,), "tmp0", tmp="tmp1")
    stages.append(Reduce(exp_term, lse_finish, R, C, [flat(x, shape3), "tmp0"], (C, inner, R)))
    return stages, [2 * R + 1] + temps


@cuda_kernel
def _elem(r, j, C, inner):
    """The offset of element j of row r."""
    return (r // inner * C + j) * inner + r % inner


@cuda_kernel
def exp_term(r, j, x, st, C, inner, R):
    return math.exp(x[_elem(r, j, C, inner)] - st[r])


@cuda_kernel
def lse_finish(r, total, x, st, C, inner, R):
    st[R + r] = math.log(total)


@cuda_kernel
def softmax_cuda(k, x, st, out, C, inner, R, log):
    """Element k: z - lse (log) or exp(z - lse), z = x - the row's maximum."""
    r = k // (C * inner) * inner + k % inner
    z = x[k] - st[r] - st[R + r]
    out[k] = z if log else math.exp(z)


@cuda_kernel
def grad_sum_term(r, j, g, y, st, out, C, inner, R, log):
    e = _elem(r, j, C, inner)
    return g[e] if log else g[e] * y[e]


@cuda_kernel
def grad_sum_finish(r, total, g, y, st, out, C, inner, R, log):
    st[r] = total


@cuda_kernel
def softmax_grad_cuda(k, g, y, st, out, C, inner, R, log):
    """Element k: g - exp(y) s (log) or y (g - s), s the row's sum."""
    s = st[k // (C * inner) * inner + k % inner]
    out[k] = g[k] - math.exp(y[k]) * s if log else y[k] * (g[k] - s)


@kernel
def _around(x, axis):
    """(outer, C, inner): x's sizes before, along and after `axis`."""
    ax = axis % x.ndim
    outer, inner = 1, 1
    for k in range(ax):
        outer *= x.shape[k]
    for k in range(ax + 1, x.ndim):
        inner *= x.shape[k]
    return outer, x.shape[ax], inner


@kernel(parallel=True)
def softmax_rows(x, out, log, axis):
    outer, C, inner = _around(x, axis)
    x3 = x.reshape((outer, C, inner))
    o3 = out.reshape((outer, C, inner))
    T = out.dtype.type
    for r in prange(outer * inner):
        i, k = r // inner, r % inner
        m = x3[i, 0, k]
        for j in range(C):
            m = max(m, x3[i, j, k])
        s = T(0)
        for j in range(C):
            s += np.exp(x3[i, j, k] - m)
        lse = np.log(s)
        for j in range(C):
            o3[i, j, k] = x3[i, j, k] - m - lse if log else np.exp(x3[i, j, k] - m - lse)


@kernel(parallel=True)
def softmax_grad_rows(g, y, out, log, axis):
    outer, C, inner = _around(g, axis)
    g3 = g.reshape((outer, C, inner))
    y3 = y.reshape((outer, C, inner))
    o3 = out.reshape((outer, C, inner))
    T = out.dtype.type
    for r in prange(outer * inner):
        i, k = r // inner, r % inner
        s = T(0)
        for j in range(C):
            s += g3[i, j, k] if log else g3[i, j, k] * y3[i, j, k]
        for j in range(C):
            o3[i, j, k] = (g3[i, j, k] - np.exp(y3[i, j, k]) * s if log
                           else y3[i, j, k] * (g3[i, j, k] - s))


# ---- losses over int targets ----------------------------------------------------
# Attrs (PyTorch's semantics): `weight` (a weight per class, or absent),
# `ignore_index` (a target value that counts nowhere, or absent), `reduction`
# (mean: the sum over positions of w[t] * loss divided by the sum of w[t] over
# the positions not ignored, NaN when every one is; sum; none: the per-position
# losses, shaped like the targets, 0 where ignored).

REDUCTIONS = ("mean", "sum", "none")


def _check_target(name, scores, target, tdtype, attrs=None):
    if tuple(scores[:-1]) != tuple(target):
        raise ShapeError(f"{name}: scores {fmt(scores)} need targets of shape "
                         f"{fmt(scores[:-1])}, got {fmt(target)}")
    if not str(tdtype).startswith("int"):
        raise ShapeError(f"{name}: targets must be integer class indices, got {tdtype}")
    w = (attrs or {}).get("weight")
    if w is not None and len(w) != scores[-1]:
        raise ShapeError(f"{name}: {len(w)} class weights for {scores[-1]} classes "
                         f"(scores {fmt(scores)})")


def _loss_shape(attrs, target) -> tuple:
    return tuple(target) if attrs.get("reduction", "mean") == "none" else ()


def _target_weights(attrs, t):
    """Per position: the weight of its target class (1 without `weight`), 0
    where the target is ignore_index; and the targets made safe to index."""
    tf = t.reshape(-1)
    ig = attrs.get("ignore_index")
    keep = tf != ig if ig is not None else np.ones(tf.shape, bool)
    safe = np.where(keep, tf, 0)
    w = np.asarray(attrs["weight"], float)[safe] if attrs.get("weight") is not None else 1.0
    return np.where(keep, w, 0.0), safe


def _reduce(attrs, per, wt, shape):
    red = attrs.get("reduction", "mean")
    if red == "none":
        return per.reshape(shape)
    if red == "sum":
        return per.sum()
    return per.sum() / wt.sum() if wt.sum() != 0 else np.float64(np.nan)


def _per_position(attrs, logp, t):
    """-w[t] logp[t] per position, and the weights."""
    wt, safe = _target_weights(attrs, t)
    picked = np.take_along_axis(_rows(logp), safe.reshape(-1, 1), axis=1)[:, 0]
    return -wt * picked, wt


def _onehot_grad(attrs, g, t, like):
    """g's share per position times w[t] (divided by the weights' sum for a
    mean; 0 where ignored), placed at the target class: the gradient of
    -w[t] logp[t]."""
    wt, safe = _target_weights(attrs, t)
    red = attrs.get("reduction", "mean")
    share = g.reshape(-1) * wt if red == "none" else g * wt
    if red == "mean" and wt.sum() != 0:      # else every share is 0: no NaN
        share = share / wt.sum()
    out = np.zeros((t.size, like.shape[-1]), dtype=like.dtype)
    out[np.arange(t.size), safe] = share
    return out, share


def _loss_args(attrs):
    """Kernel arguments: the class weights (empty: none), whether to ignore a
    target and which, the reduction (0 mean, 1 sum, 2 none)."""
    w = attrs.get("weight")
    ig = attrs.get("ignore_index")
    return (np.asarray([] if w is None else w, np.float64), ig is not None,
            0 if ig is None else int(ig), REDUCTIONS.index(attrs.get("reduction", "mean")))


class CrossEntropy(Op):
    name = "cross_entropy"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[0], shapes[1], dtypes[1], attrs)
        return _loss_shape(attrs, shapes[1]), dtypes[0]

    def reference(self, attrs, z, t):
        per, wt = _per_position(attrs, Softmax("", True).reference({}, z), t)
        return _reduce(attrs, per, wt, t.shape).astype(z.dtype)

    def grad(self, gb, node, g):
        z, t = node.inputs
        return [gb.add("cross_entropy_grad", (g, z, t), node.attrs), None]

    def kernel(self, attrs):
        return cross_entropy, _loss_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _loss_cuda(attrs, in_shapes[0], True)


def _check_g(name, attrs, g, target):
    want = _loss_shape(attrs, target)
    if tuple(g) != want:
        raise ShapeError(f"{name}: the incoming gradient must have the loss's shape "
                         f"{fmt(want)}, got {fmt(g)}")


class CrossEntropyGrad(Op):
    name = "cross_entropy_grad"
    arity = 3
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[1], shapes[2], dtypes[2], attrs)
        _check_g(self.name, attrs, shapes[0], shapes[2])
        return tuple(shapes[1]), dtypes[0]

    def reference(self, attrs, g, z, t):
        onehot, share = _onehot_grad(attrs, g, t, z)
        p = _rows(Softmax("", False).reference({}, z))
        return (p * share[:, None] - onehot).reshape(z.shape).astype(z.dtype)

    def kernel(self, attrs):
        return cross_entropy_grad, _loss_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _loss_grad_cuda(attrs, in_shapes[1], True)


class Nll(Op):
    name = "nll"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[0], shapes[1], dtypes[1], attrs)
        return _loss_shape(attrs, shapes[1]), dtypes[0]

    def reference(self, attrs, logp, t):
        per, wt = _per_position(attrs, logp, t)
        return _reduce(attrs, per, wt, t.shape).astype(logp.dtype)

    def grad(self, gb, node, g):
        lp, t = node.inputs
        return [gb.add("nll_grad", (g, t, lp), node.attrs), None]

    def kernel(self, attrs):
        return nll, _loss_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _loss_cuda(attrs, in_shapes[0], False)


class NllGrad(Op):
    name = "nll_grad"
    arity = 3

    def infer(self, attrs, shapes, dtypes):
        _check_target(self.name, shapes[2], shapes[1], dtypes[1], attrs)
        _check_g(self.name, attrs, shapes[0], shapes[1])
        return tuple(shapes[2]), dtypes[0]

    def reference(self, attrs, g, t, like):
        return -_onehot_grad(attrs, g, t, like)[0].reshape(like.shape)

    def grad(self, gb, node, g2):
        # linear in g: its adjoint is the same nll of g2
        g, t, lp = node.inputs
        return [gb.add("nll", (g2, t), node.attrs), None, None]

    def kernel(self, attrs):
        return nll_grad, _loss_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _loss_grad_cuda(attrs, in_shapes[2], False)


for _op in (CrossEntropy(), CrossEntropyGrad(), Nll(), NllGrad()):
    register(_op)


@kernel
def _weight_of(c, w, ignore, ig):
    """The target c's weight: 0 when ignored, w[c] (1 without weights)."""
    if ignore and c == ig:
        return 0.0
    return w[c] if w.size > 0 else 1.0


@kernel
def _lse(zr, i, C):
    m = zr[i, 0]
    for j in range(C):
        m = max(m, zr[i, j])
    s = zr.dtype.type(0)
    for j in range(C):
        s += np.exp(zr[i, j] - m)
    return m, s


@kernel
def _finish(per, wsum, out, red):
    """The per-position losses reduced into out (see the attrs above)."""
    T = out.dtype.type
    of = out.reshape(out.size)
    if red == 2:
        for i in range(per.size):
            of[i] = T(per[i])
        return
    total = 0.0
    for i in range(per.size):
        total += per[i]
    of[0] = T(total if red == 1 else (total / wsum if wsum != 0 else np.nan))


@kernel
def cross_entropy(z, t, out, w, ignore, ig, red):
    C = z.shape[z.ndim - 1]
    n = z.size // C
    zr = z.reshape((n, C))
    tf = t.reshape(t.size)
    per = np.zeros(n)
    wsum = 0.0
    for i in range(n):
        wi = _weight_of(tf[i], w, ignore, ig)
        wsum += wi
        if wi != 0:
            m, s = _lse(zr, i, C)
            per[i] = wi * (np.log(s) + m - zr[i, tf[i]])
    _finish(per, wsum, out, red)


@kernel
def _shares(g, t, w, ignore, ig, red):
    """Per position: the incoming gradient's share times w[t], over the
    weights' sum for a mean (the scale of the position's one-hot row)."""
    n = t.size
    tf = t.reshape(n)
    gf = g.reshape(g.size)
    share = np.empty(n)
    wsum = 0.0
    for i in range(n):
        share[i] = _weight_of(tf[i], w, ignore, ig)
        wsum += share[i]
    for i in range(n):
        if share[i] != 0:       # ignored positions get none (no NaN when all are)
            gi = gf[i] if red == 2 else gf[0]
            share[i] *= gi / wsum if red == 0 else gi
    return share


@kernel(parallel=True)
def cross_entropy_grad(g, z, t, out, w, ignore, ig, red):
    C = z.shape[z.ndim - 1]
    n = z.size // C
    zr = z.reshape((n, C))
    o = out.reshape((n, C))
    tf = t.reshape(t.size)
    T = out.dtype.type
    share = _shares(g, t, w, ignore, ig, red)
    for i in prange(n):
        if share[i] == 0:
            for j in range(C):
                o[i, j] = 0
            continue
        m, s = _lse(zr, i, C)
        sc = T(share[i])
        for j in range(C):
            o[i, j] = np.exp(zr[i, j] - m) / s * sc
        o[i, tf[i]] -= sc


@kernel
def nll(lp, t, out, w, ignore, ig, red):
    C = lp.shape[lp.ndim - 1]
    n = lp.size // C
    r = lp.reshape((n, C))
    tf = t.reshape(t.size)
    per = np.zeros(n)
    wsum = 0.0
    for i in range(n):
        wi = _weight_of(tf[i], w, ignore, ig)
        wsum += wi
        if wi != 0:
            per[i] = -wi * r[i, tf[i]]
    _finish(per, wsum, out, red)


@kernel
def nll_grad(g, t, like, out, w, ignore, ig, red):
    n = t.size
    C = out.size // max(n, 1)
    o = out.reshape((n, C))
    tf = t.reshape(n)
    share = _shares(g, t, w, ignore, ig, red)
    o[:, :] = 0
    for i in range(n):
        if share[i] != 0:
            o[i, tf[i]] = out.dtype.type(-share[i])


# ---- losses on CUDA ----------------------------------------------------------------
# Scores [n, C] (a row per position) and targets [n].  Cross-entropy first
# takes each row's log-sum-exp as softmax does (tmp0[r], tmp0[n + r]); for a
# mean, tmp0[2 n] = the sum of the positions' weights (a Reduce of one block).
# A position's loss is computed where it is summed (a Reduce of one block) or
# written (reduction none); its gradient's share, where each element of its
# row is.  The bodies' extra arguments are `_loss_extra`'s.

def _loss_extra(attrs, scores, ce: bool) -> tuple:
    """(n, C, the class weights (a tuple; (1,) without), whether there are,
    whether a target is ignored, which, the reduction (0 mean, 1 sum, 2
    none), whether the scores are logits)."""
    w, ig = attrs.get("weight"), attrs.get("ignore_index")
    return (prod(scores[:-1]), int(scores[-1]),
            tuple(float(v) for v in w) if w is not None else (1.0,), w is not None,
            ig is not None, 0 if ig is None else int(ig),
            REDUCTIONS.index(attrs.get("reduction", "mean")), ce)


def _loss_start(extra, z: str, t: str):
    """(stages, scratch sizes): the rows' log-sum-exp of z (logits), the
    weights' sum (a mean), into tmp0."""
    n, C, ce, mean = extra[0], extra[1], extra[7], extra[6] == 0
    stages, temps = _lse_stages(z, (n, C, 1)) if ce else ([], [2 * n + 1])
    if mean:
        stages.append(Reduce(weight_term, weight_finish, 1, n, [flat(t, (n,)), "tmp0"],
                             extra))
    return stages, temps


def _loss_cuda(attrs, scores, ce: bool) -> Cuda:
    """cross_entropy (ce: scores are logits) or nll: scores in0, targets in1."""
    extra = _loss_extra(attrs, scores, ce)
    n = extra[0]
    stages, temps = _loss_start(extra, "in0", "in1")
    none = extra[6] == 2
    args = [flat("in0", scores), flat("in1", (n,)), "tmp0", flat("out", (n if none else 1,))]
    if none:
        stages.append(Map(loss_each, n, args, extra))
    else:
        stages.append(Reduce(loss_term, loss_finish, 1, n, args, extra))
    return Cuda(stages, temps)


def _loss_grad_cuda(attrs, scores, ce: bool) -> Cuda:
    """cross_entropy_grad (ce; g, logits, targets) or nll_grad (g, targets,
    like): an element of out [..., C] per thread."""
    extra = _loss_extra(attrs, scores, ce)
    n, C = extra[0], extra[1]
    z, t = ("in1", "in2") if ce else ("in2", "in1")
    stages, temps = _loss_start(extra, z, t)
    args = [flat("in0", (n if extra[6] == 2 else 1,)), flat(z, scores), flat(t, (n,)), "tmp0",
            flat("out", scores)]
    return Cuda(stages + [Map(loss_grad_cuda, n * C, args, extra)], temps)


@cuda_kernel
def _weight(c, w, has_w, ignore, ig):
    """Target class c's weight: 0 where it is ignored, else w[c] (1 without
    weights)."""
    if ignore and c == ig:
        return T(0)
    return w[c] if has_w else T(1)


@cuda_kernel
def weight_term(r, j, t, st, n, C, w, has_w, ignore, ig, red, ce):
    return _weight(t[j], w, has_w, ignore, ig)


@cuda_kernel
def weight_finish(r, total, t, st, n, C, w, has_w, ignore, ig, red, ce):
    st[2 * n] = total


@cuda_kernel
def _position_loss(r, z, t, st, n, C, w, has_w, ignore, ig, ce):
    """-w[c] log p[c] at position r (c its target): log p from the logits
    (ce: z - maximum - log-sum-exp), or z itself."""
    c = t[r]
    wr = _weight(c, w, has_w, ignore, ig)
    if wr == T(0):
        return T(0)
    v = z[r * C + c]
    if ce:
        v = v - st[r] - st[n + r]
    return -wr * v


@cuda_kernel
def loss_each(r, z, t, st, out, n, C, w, has_w, ignore, ig, red, ce):
    out[r] = _position_loss(r, z, t, st, n, C, w, has_w, ignore, ig, ce)


@cuda_kernel
def loss_term(r, j, z, t, st, out, n, C, w, has_w, ignore, ig, red, ce):
    return _position_loss(j, z, t, st, n, C, w, has_w, ignore, ig, ce)


@cuda_kernel
def loss_finish(r, total, z, t, st, out, n, C, w, has_w, ignore, ig, red, ce):
    """The sum, or the mean over the weights' sum (NaN when it is 0)."""
    wsum = st[2 * n]
    if red == 1:
        out[0] = total
    elif wsum != T(0):
        out[0] = total / wsum
    else:
        out[0] = T(math.nan)


@cuda_kernel
def loss_grad_cuda(k, g, z, t, st, out, n, C, w, has_w, ignore, ig, red, ce):
    """Element k = (r, j) of the gradient: share (softmax - onehot) for
    logits (ce), -share onehot for log-probabilities; share = the incoming
    gradient's part for position r times its target's weight (over the
    weights' sum for a mean)."""
    r = k // C
    j = k % C
    c = t[r]
    share = _weight(c, w, has_w, ignore, ig)
    if share != T(0):
        share = share * (g[r] if red == 2 else g[0])
        if red == 0:
            share = share / st[2 * n]
    hit = share if j == c else T(0)
    if ce and share != T(0):
        out[k] = math.exp(z[k] - st[r] - st[n + r]) * share - hit
    else:
        out[k] = -hit


# ---- layers ------------------------------------------------------------------------

def _softmax_layer(ctx, name, x, axis):
    xs = ctx.shape(x)
    if (not isinstance(axis, int) or isinstance(axis, bool) or not -len(xs) <= axis < len(xs)
            or axis % len(xs) == 0):
        ctx.fail(f"{name}: axis must be an integer from 1 to {len(xs) - 1} (or -{len(xs) - 1} "
                 f"to -1) for {fmt(xs)}, got {axis!r}",
                 hint="axes count the batch axis as 0; a softmax over it would mix examples")
    # the last axis is written as no attribute: one graph for softmax and softmax(axis=-1)
    return ctx.emit(name, [x], {} if axis % len(xs) == len(xs) - 1 else {"axis": axis % len(xs)})


@layer("softmax")
def softmax(ctx, x, *, axis=-1):
    """Softmax over `axis` (default the last; axes count the batch as 0)."""
    return _softmax_layer(ctx, "softmax", x, axis)


@layer("log_softmax")
def log_softmax(ctx, x, *, axis=-1):
    """log(softmax(x)) over `axis` (default the last), computed stably."""
    return _softmax_layer(ctx, "log_softmax", x, axis)


def _class_loss(ctx, name, scores, target, weight, ignore_index, reduction):
    """The attrs of cross_entropy / nll: only those given, so that a plain call
    makes the graph it always made."""
    attrs = {}
    classes = ctx.shape(scores)[-1]
    if weight is not None:
        if (not isinstance(weight, (list, tuple)) or len(weight) != classes
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                           for v in weight)):
            ctx.fail(f"{name}: weight must be a list of {classes} numbers >= 0, one per class "
                     f"of the scores {fmt(ctx.shape(scores))}; got {weight!r}",
                     hint=f"weight = [{', '.join(['1.0'] * min(classes, 3))}"
                          f"{', ...' if classes > 3 else ''}]")
        attrs["weight"] = [float(v) for v in weight]
    if ignore_index is not None:
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            ctx.fail(f"{name}: ignore_index must be an integer (a target value), got "
                     f"{ignore_index!r}", hint="PyTorch's default is -100")
        attrs["ignore_index"] = ignore_index
    reduction = ctx.choice(reduction, REDUCTIONS, "reduction")
    if reduction != "mean":
        attrs["reduction"] = reduction
    return ctx.emit(name, [scores, target], attrs)


@layer("cross_entropy", inputs=2)
def cross_entropy_layer(ctx, logits, target, *, weight=None, ignore_index=None,
                        reduction="mean"):
    """Cross-entropy from logits [B, C] (or [B, T, C]) and int class targets
    [B] (or [B, T]); a stable log-sum-exp.  As PyTorch's: `weight` (one number
    per class) scales each position's loss by its target's weight, targets
    equal to `ignore_index` count nowhere, and reduction=mean divides the sum
    by the sum of the weights of the positions not ignored (sum: the sum;
    none: the losses per position, [B] or [B, T])."""
    return _class_loss(ctx, "cross_entropy", logits, target, weight, ignore_index, reduction)


@layer("nll", inputs=2)
def nll_layer(ctx, logp, target, *, weight=None, ignore_index=None, reduction="mean"):
    """Negative log-likelihood of int targets under log-probabilities (as from
    log_softmax); weight, ignore_index and reduction as cross_entropy's."""
    return _class_loss(ctx, "nll", logp, target, weight, ignore_index, reduction)


def _reduced(ctx, x, reduction):
    reduction = ctx.choice(reduction, REDUCTIONS, "reduction")
    if reduction == "none":
        return x
    return ctx.emit(reduction, [x], {"axes": None, "keepdims": False})


@layer("mse", inputs=2)
def mse(ctx, pred, target, *, reduction="mean"):
    """Mean squared error over all elements (reduction=sum: the sum; none: the
    squared errors)."""
    d = ctx.emit("sub", [pred, target])
    return _reduced(ctx, ctx.emit("square", [d]), reduction)


@layer("bce_logits", inputs=2)
def bce_logits(ctx, logits, target, *, reduction="mean"):
    """Binary cross-entropy from logits and 0/1 (or soft) float targets, mean over
    all elements (or sum, or none): softplus(z) - z * t, without overflow."""
    sp = ctx.emit("softplus", [logits])
    zt = ctx.emit("mul", [logits, target])
    return _reduced(ctx, ctx.emit("sub", [sp, zt]), reduction)
