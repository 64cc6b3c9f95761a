"""Batch normalisation and dropout: the ops that behave differently in training.

Both carry a `training` attr; `passes/mode.py` gives the eval program a copy
with it False.  Running state changes *functionally*: a node whose attrs hold
`updates: <state id>` computes the state's new value, and the train program
writes it back after the step (`passes/pipeline.state_updates`).  No kernel
here writes to its inputs.

batchnorm(x, weight, bias, running_mean, running_var; momentum, eps, training)
    x [B, C], [B, C, L] or [B, C, H, W]; statistics per channel (axis 1) over
    every other axis.  Training: normalise with the batch mean and the *biased*
    batch variance.  Eval: with running_mean / running_var.
    y = (x - mean) / sqrt(var + eps) * weight + bias.
batchnorm_stat(x, state; stat, momentum)      [the state update, PyTorch's rule]
    stat "mean": (1 - momentum) * running_mean + momentum * batch mean
    stat "var":  (1 - momentum) * running_var + momentum * *unbiased* batch var
    The running variance takes the unbiased batch variance (n / (n - 1) times
    the one the batch is normalised with; n = B * H * W), as PyTorch does;
    ONNX's BatchNormalization takes the biased one, and its momentum is the
    weight of the old value (1 - momentum here).
    The `batchnorm` layer emits one per running statistic, with `updates` naming
    the state leaf.
batchnorm_grad(g, x, weight, running_mean, running_var; part, eps, training)
    part "input": dL/dx; part "weight": dL/dweight = sum(g * xhat).  Internal.

dropout_mask(x, step; p, seed, training)      [x only gives the shape]
    Training: each element is 0 with probability p, else 1 / (1 - p); eval: 1.
    The `dropout` layer multiplies x by it, so forward and backward use one
    mask value.  RNG contract: counter-based and stateless.  Element i (flat,
    C order, the whole batch) keeps iff u >= p where
        u = (splitmix64(key + i) >> 11) * 2**-53,
        key = splitmix64(seed * 0x9E3779B97F4A7C15 + step)   (uint64, wrapping)
    `seed` is an attr fixed per layer (from its name unless given); `step` is a
    scalar state leaf `<layer>.step` that the layer advances by one per train
    step with an `updates` node (add(step, 1)).  NumPy reference and kernel
    give bit-identical masks, so results reproduce given seed and step.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, Reduce, T, cuda_kernel, flat, fmt, kernel, layer, prange, prod,
                   register)
from .reduce import split_parts


def _channel_axes(ndim):
    return (0,) + tuple(range(2, ndim))


def _check_x(name, x):
    if len(x) not in (2, 3, 4):
        raise ShapeError(f"{name}: needs [B, C], [B, C, L] or [B, C, H, W], got {fmt(x)}")


def _per_channel(name, x, shapes, what):
    for s, w in zip(shapes, what):
        if tuple(s) != (x[1],):
            raise ShapeError(f"{name}: {w} {fmt(s)} does not match the {x[1]} channels of "
                             f"{fmt(x)}")


def _grad_shape(name, attrs, shapes, dtypes):
    """The shape rule of the batch-norm gradients (g, x, ...; part)."""
    g, x = tuple(shapes[0]), tuple(shapes[1])
    if g != x:
        raise ShapeError(f"{name}: gradient {fmt(g)} and input {fmt(x)} differ")
    _check_x(name, x)
    return (x if attrs.get("part", "input") == "input" else (x[1],)), dtypes[0]


def _stats(x, training, rm, rv):
    axes = _channel_axes(x.ndim)
    if training:
        return x.mean(axis=axes), x.var(axis=axes)
    return rm, rv


def _bc(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


class BatchNorm(Op):
    name = "batchnorm"
    arity = 5

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        _check_x(self.name, x)
        _per_channel(self.name, x, shapes[1:],
                     ("weight", "bias", "running_mean", "running_var"))
        return x, dtypes[0]

    def reference(self, attrs, x, w, b, rm, rv):
        mean, var = _stats(x, attrs.get("training", True), rm, rv)
        inv = 1.0 / np.sqrt(var + attrs.get("eps", 1e-5))
        return (x - _bc(mean, x.ndim)) * _bc(inv * w, x.ndim) + _bc(b, x.ndim)

    def grad(self, gb, node, g):
        x, w, b, rm, rv = node.inputs
        at = {"eps": node.attrs.get("eps", 1e-5), "training": node.attrs.get("training", True)}
        ins = (g, x, w, rm, rv)
        return [gb.add("batchnorm_grad", ins, {**at, "part": "input"}) if gb.wants(0) else None,
                gb.add("batchnorm_grad", ins, {**at, "part": "weight"}) if gb.wants(1) else None,
                gb.add("sum", (g,), {"axes": list(_channel_axes(len(node.shape)))})
                if gb.wants(2) else None,
                None, None]

    def kernel(self, attrs):
        return batchnorm, (float(attrs.get("eps", 1e-5)), bool(attrs.get("training", True)))

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        """The statistics (batch or running) into tmp0, then each element."""
        cu = _CudaNorm(x, out_shape, attrs, xs="in0", gs="in0", ss=flat("in0", x))
        args = [flat("in0", x), "in1", "in2", "tmp0", flat("out", x)]
        return cu.done(cu.stats(attrs.get("training", True), "in3", "in4")
                       + [Map(normalize_cuda, prod(x), args, cu.sizes)])

    def macs(self, attrs, in_shapes, out_shape):
        return 0


class BatchNormGrad(Op):
    name = "batchnorm_grad"
    arity = 5
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        _per_channel(self.name, tuple(shapes[1]), shapes[2:],
                     ("weight", "running_mean", "running_var"))
        return _grad_shape(self.name, attrs, shapes, dtypes)

    def reference(self, attrs, g, x, w, rm, rv):
        training = attrs.get("training", True)
        mean, var = _stats(x, training, rm, rv)
        inv = 1.0 / np.sqrt(var + attrs.get("eps", 1e-5))
        axes = _channel_axes(x.ndim)
        xhat = (x - _bc(mean, x.ndim)) * _bc(inv, x.ndim)
        if attrs.get("part", "input") == "weight":
            return (g * xhat).sum(axis=axes)
        if not training:
            return g * _bc(inv * w, x.ndim)
        gm = g.mean(axis=axes, keepdims=True)
        gx = (g * xhat).mean(axis=axes, keepdims=True)
        return _bc(inv * w, x.ndim) * (g - gm - xhat * gx)

    def kernel(self, attrs):
        fn = batchnorm_grad_weight if attrs.get("part") == "weight" else batchnorm_grad_input
        return fn, (float(attrs.get("eps", 1e-5)), bool(attrs.get("training", True)))

    def cuda(self, attrs, in_shapes, out_shape):
        """The statistics as batchnorm's, then dweight = sum g (x - mean) inv
        per channel, or dx from the channel's sums of g and g (x - mean)."""
        x = in_shapes[1]
        training = attrs.get("training", True)
        cu = _CudaNorm(x, out_shape, attrs, xs="in1", gs="in0", ss=flat("in1", x))
        stages = cu.stats(training, "in3", "in4")
        if attrs.get("part", "input") == "weight":
            return cu.done(stages + cu.sums(_DWEIGHT))
        if training:
            stages += cu.sums(_SUM_G) + cu.sums(_SUM_GX)
        return cu.done(stages + [Map(input_grad_cuda, prod(x),
                                     [flat("in0", x), flat("in1", x), "in2", "tmp0",
                                      flat("out", x)], cu.sizes + (training,))])


class BatchNormStat(Op):
    name = "batchnorm_stat"
    arity = 2
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        x, s = tuple(shapes[0]), tuple(shapes[1])
        _check_x(self.name, x)
        _per_channel(self.name, x, [s], ("state",))
        if attrs.get("stat") not in ("mean", "var"):
            raise ShapeError(f"batchnorm_stat: stat must be mean or var, got {attrs.get('stat')!r}")
        return s, dtypes[1]

    def reference(self, attrs, x, s):
        if not attrs.get("training", True):
            return s.copy()
        m = attrs.get("momentum", 0.1)
        axes = _channel_axes(x.ndim)
        n = x.size // x.shape[1]
        if attrs["stat"] == "mean":
            new = x.mean(axis=axes)
        else:
            new = x.var(axis=axes) * (n / max(n - 1, 1))
        return (1 - m) * s + m * new

    def kernel(self, attrs):
        return batchnorm_stat, (float(attrs.get("momentum", 0.1)), attrs["stat"] == "var",
                                bool(attrs.get("training", True)))

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        cu = _CudaNorm(x, out_shape, attrs, xs="in0", gs="in0", ss="in1")
        if not attrs.get("training", True):
            return cu.done([Map(copy_cuda, x[1], ["in1", "out"])])
        if attrs["stat"] == "mean":
            return cu.done(cu.sums(_RUNNING_MEAN))
        return cu.done(cu.sums(_MEAN) + cu.sums(_RUNNING_VAR))


for _op in (BatchNorm(), BatchNormGrad(), BatchNormStat()):
    register(_op)


# ---- CUDA ---------------------------------------------------------------------------
# x [B, C, ...] is seen as [B, C, P].  A `Reduce` sums one quantity per channel
# (a block each) over the channel's n = B P elements: B runs of P consecutive
# ones, which neighbouring threads read together.  Few channels of many
# elements are split into parts, a block each, summed by a second Reduce
# (reduce.split_parts).  A sum's kind says what it sums and what it becomes:
_MEAN, _INV, _SUM_G, _SUM_GX, _DWEIGHT, _RUNNING_MEAN, _RUNNING_VAR = range(7)
#   _MEAN          x             st[c] = the batch mean
#   _INV           (x - mean)^2  st[C + c] = 1 / sqrt(biased variance + eps)
#   _SUM_G         g             st[2C + c]
#   _SUM_GX        g (x - mean)  st[3C + c]
#   _DWEIGHT       g (x - mean)  out[c] = the sum times inv
#   _RUNNING_MEAN  x             out[c] = (1 - momentum) s[c] + momentum mean
#   _RUNNING_VAR   (x - mean)^2  the same with the unbiased variance
# st is the scratch tmp0 [4C]; in eval a Map fills its mean and inv from the
# running statistics.  The bodies compare kinds as numbers (no globals there).


class _CudaNorm:
    """The stages of one batch-norm op over x [B, C, ...] with output `out`:
    xs, gs and ss name its x, g and s (x where the op has no g or s: a
    stand-in the bodies do not read)."""

    def __init__(self, x, out, attrs, xs, gs, ss):
        B, C, P = int(x[0]), int(x[1]), prod(x[2:])
        self.C, self.n = C, B * P
        self.S = split_parts(C, self.n)
        self.sizes = (C, P, self.n)
        self.extra = (C, P, self.n, self.S, -(-self.n // self.S), float(attrs.get("eps", 1e-5)),
                      float(attrs.get("momentum", 0.1)))
        self.args = [flat(xs, x), flat(gs, x), ss, "tmp0", "tmp1" if self.S > 1 else "tmp0",
                     flat("out", out)]

    def sums(self, kind) -> list:
        """The Reduce(s) of one kind of sum."""
        extra = self.extra + (kind,)
        if self.S == 1:
            return [Reduce(channel_term, channel_finish, self.C, self.n, self.args, extra)]
        return [Reduce(channel_term, channel_part, self.C * self.S, extra[4], self.args, extra),
                Reduce(part_term, channel_finish, self.C, self.S, self.args, extra)]

    def stats(self, training, rm, rv) -> list:
        """st's mean and inv: the batch's (training) or from rm, rv."""
        if training:
            return self.sums(_MEAN) + self.sums(_INV)
        return [Map(running_stats_cuda, self.C, [rm, rv, "tmp0"], self.extra)]

    def done(self, stages) -> Cuda:
        return Cuda(stages, [4 * self.C] + ([self.C * self.S] if self.S > 1 else []))


@cuda_kernel
def channel_term(r, j, x, g, s, st, part, out, C, P, n, S, L, eps, momentum, kind):
    """Term j of part r % S of channel r // S (of channel r when S = 1)."""
    q = (r % S) * L + j
    if q >= n:
        return T(0)
    c = r // S
    e = (q // P * C + c) * P + q % P
    if kind == 0 or kind == 5:      # _MEAN, _RUNNING_MEAN
        return x[e]
    if kind == 2:                   # _SUM_G
        return g[e]
    d = x[e] - st[c]
    if kind == 1 or kind == 6:      # _INV, _RUNNING_VAR
        return d * d
    return g[e] * d


@cuda_kernel
def channel_part(r, total, x, g, s, st, part, out, C, P, n, S, L, eps, momentum, kind):
    part[r] = total


@cuda_kernel
def part_term(r, j, x, g, s, st, part, out, C, P, n, S, L, eps, momentum, kind):
    return part[r * S + j]


@cuda_kernel
def channel_finish(c, total, x, g, s, st, part, out, C, P, n, S, L, eps, momentum, kind):
    """What channel c's sum becomes, by its kind (see above)."""
    if kind == 0:
        st[c] = total / T(n)
    elif kind == 1:
        st[C + c] = T(1) / math.sqrt(total / T(n) + eps)
    elif kind == 2 or kind == 3:
        st[kind * C + c] = total
    elif kind == 4:
        out[c] = total * st[C + c]
    elif kind == 5:
        out[c] = (T(1) - momentum) * s[c] + momentum * (total / T(n))
    else:
        out[c] = (T(1) - momentum) * s[c] + momentum * (total / T(max(n - 1, 1)))


@cuda_kernel
def running_stats_cuda(c, rm, rv, st, C, P, n, S, L, eps, momentum):
    st[c] = rm[c]
    st[C + c] = T(1) / math.sqrt(rv[c] + eps)


@cuda_kernel
def normalize_cuda(k, x, w, b, st, out, C, P, n):
    """(x - mean) inv weight + bias."""
    c = k // P % C
    out[k] = (x[k] - st[c]) * (st[C + c] * w[c]) + b[c]


@cuda_kernel
def input_grad_cuda(k, g, x, w, st, out, C, P, n, training):
    """dx = inv weight (g - mean(g) - xhat mean(g xhat)), xhat = (x - mean)
    inv, in training; inv weight g in eval."""
    c = k // P % C
    inv = st[C + c]
    if training:
        xhat = (x[k] - st[c]) * inv
        out[k] = inv * w[c] * (g[k] - st[2 * C + c] / T(n) - xhat * (st[3 * C + c] * inv / T(n)))
    else:
        out[k] = g[k] * (inv * w[c])


@cuda_kernel
def copy_cuda(c, s, out):
    out[c] = s[c]


@kernel
def _as3(x):
    """[B, C, ...] as [B, C, P] (P = 1 for [B, C])."""
    b, c = x.shape[0], x.shape[1]
    return x.reshape((b, c, x.size // max(b * c, 1)))


@kernel(reassoc=True)
def _sums(x3, g3, c, m, kind):
    """Over b and p of channel c (kind 0: (sum x, 0); 1: (sum (x - m)^2, 0);
    2: (sum g, sum g (x - m))), vectorised (reassoc), unsigned indices (a signed
    one stops the vectoriser)."""
    B, P = x3.shape[0], x3.shape[2]
    T = x3.dtype.type
    a, e = T(0), T(0)
    for b in range(B):
        xr = x3[b, c]
        gr = g3[b, c]
        if kind == 0:
            for p in range(P):
                a += xr[np.uint64(p)]
        elif kind == 1:
            for p in range(P):
                d = xr[np.uint64(p)] - m
                a += d * d
        else:
            for p in range(P):
                q = np.uint64(p)
                a += gr[q]
                e += gr[q] * (xr[q] - m)
    return a, e


@kernel
def _channel_stats(x3, c):
    """(mean, biased var) of channel c, two-pass."""
    B, P = x3.shape[0], x3.shape[2]
    T = x3.dtype.type
    s, _ = _sums(x3, x3, c, T(0), 0)
    mean = s / T(B * P)
    v, _ = _sums(x3, x3, c, mean, 1)
    return mean, v / T(B * P)


@kernel
def _scale_shift(x3, o3, c, scale, shift):
    """o = x * scale + shift over channel c."""
    for bb in range(x3.shape[0]):
        xr = x3[bb, c]
        orow = o3[bb, c]
        for p in range(x3.shape[2]):
            orow[np.uint64(p)] = xr[np.uint64(p)] * scale + shift


@kernel
def _input_grad(g3, x3, o3, c, k, a, d):
    """dx = k g + a x + d over channel c (batch norm's input gradient)."""
    for bb in range(x3.shape[0]):
        xr = x3[bb, c]
        gr = g3[bb, c]
        orow = o3[bb, c]
        for p in range(x3.shape[2]):
            q = np.uint64(p)
            orow[q] = k * gr[q] + a * xr[q] + d


@kernel(parallel=True)
def batchnorm(x, w, b, rm, rv, out, eps, training):
    x3, o3 = _as3(x), _as3(out)
    T = out.dtype.type
    for c in prange(x3.shape[1]):
        if training:
            mean, var = _channel_stats(x3, c)
        else:
            mean, var = rm[c], rv[c]
        scale = w[c] / np.sqrt(var + T(eps))
        shift = b[c] - mean * scale
        _scale_shift(x3, o3, c, scale, shift)


@kernel(parallel=True)
def _batchnorm_grad(g, x, w, rm, rv, out, eps, training, weight_part):
    """out: dx (x's shape) or, with weight_part, dweight as [1, C, 1]."""
    x3, g3, o3 = _as3(x), _as3(g), _as3(out)
    T = out.dtype.type
    B, C, P = x3.shape
    for c in prange(C):
        if training:
            mean, var = _channel_stats(x3, c)
        else:
            mean, var = rm[c], rv[c]
        inv = T(1) / np.sqrt(var + T(eps))
        sg, sgx = _sums(x3, g3, c, mean, 2)
        sgx = sgx * inv
        if weight_part:
            o3[0, c, 0] = sgx
        else:
            n = T(B * P)
            k = w[c] * inv
            if training:
                # dx = k (g - sg/n - (x - mean) inv sgx/n) = k g + a x + d
                a = -k * inv * sgx / n
                d = -k * sg / n - a * mean
            else:
                a = T(0)
                d = T(0)
            _input_grad(g3, x3, o3, c, k, a, d)


@kernel
def batchnorm_grad_input(g, x, w, rm, rv, out, eps, training):
    _batchnorm_grad(g, x, w, rm, rv, out, eps, training, False)


@kernel
def batchnorm_grad_weight(g, x, w, rm, rv, out, eps, training):
    _batchnorm_grad(g, x, w, rm, rv, out.reshape((1, out.size, 1)), eps, training, True)


@kernel(parallel=True)
def batchnorm_stat(x, s, out, momentum, var, training):
    x3 = _as3(x)
    T = out.dtype.type
    m = T(momentum)
    n = x3.shape[0] * x3.shape[2]
    for c in prange(x3.shape[1]):
        if not training:
            out[c] = s[c]
            continue
        if var:
            mean, v = _channel_stats(x3, c)
            new = v * T(n) / T(max(n - 1, 1))
        else:
            tot, _ = _sums(x3, x3, c, T(0), 0)
            new = tot / T(n)
        out[c] = (T(1) - m) * s[c] + m * new


# ---- batch norm over several processes (sync_bn) -----------------------------------
# passes/sync_bn.py rewrites a training batchnorm into these when the train
# section says `sync_bn = true`; allreduce (ops/collective.py) sums between them:
#     s1 = allreduce(bn_sums(x))              [2, C]: sum of x, count
#     s2 = allreduce(bn_sums(x, s1; sq))      [C]: sum of (x - mean)^2
#     y  = batchnorm_synced(x, w, b, s1, s2, comm)
# and its gradient sums (sum g, sum g (x - mean)) over the ranks the same way.
# In one process the allreduces copy, and the result is batchnorm's.

def _sync_stats(s1, s2):
    n = s1[1]
    return s1[0] / n, s2 / n, n


class BnSums(Op):
    """Per-channel sums of sync_bn, each rank's, for allreduce to add up:
        bn_sums(x; kind="x")           -> [2, C]: sum x, and the count of values
        bn_sums(x, s1; kind="sq")      -> [C]: sum (x - mean)^2, mean = s1[0] / s1[1]
        bn_sums(g, x, s1; kind="grad") -> [2, C]: sum g, sum g (x - mean)"""
    name = "bn_sums"
    arity = None
    differentiable = False       # batchnorm_synced's gradient goes through its statistics
    KINDS = {"x": 1, "sq": 2, "grad": 3}

    def infer(self, attrs, shapes, dtypes):
        kind = attrs.get("kind", "x")
        if self.KINDS.get(kind) != len(shapes):
            raise ShapeError(f"bn_sums: kind {kind!r} with {len(shapes)} inputs")
        x = tuple(shapes[1 if kind == "grad" else 0])
        _check_x(self.name, x)
        if kind != "x" and tuple(shapes[-1]) != (2, x[1]) or \
                kind == "grad" and tuple(shapes[0]) != x:
            raise ShapeError(f"bn_sums: {', '.join(fmt(s) for s in shapes)} do not match")
        return ((x[1],) if kind == "sq" else (2, x[1])), dtypes[0]

    def reference(self, attrs, *xs):
        kind = attrs.get("kind", "x")
        x = xs[1] if kind == "grad" else xs[0]
        axes = _channel_axes(x.ndim)
        if kind == "x":
            return np.stack([x.sum(axis=axes), np.full(x.shape[1], x.size // x.shape[1])]
                            ).astype(x.dtype)
        d = x - _bc(xs[-1][0] / xs[-1][1], x.ndim)
        if kind == "sq":
            return (d * d).sum(axis=axes)
        return np.stack([xs[0].sum(axis=axes), (xs[0] * d).sum(axis=axes)])

    def kernel(self, attrs):
        return {"x": bn_sums, "sq": bn_sqsums, "grad": bn_grad_sums}[attrs.get("kind", "x")], ()


class BatchNormSynced(Op):
    """batchnorm_synced(x, weight, bias, s1, s2, comm; eps): batchnorm in
    training with the statistics s1, s2 of bn_sums: the whole batch's, every
    rank's, summed by allreduce, and the gradient sums its own statistics'
    gradients over the ranks (comm).  With synced=false it has no comm:
    the statistics are this process's (the split form of a training
    batchnorm, passes/sync_bn.py)."""
    name = "batchnorm_synced"
    arity = None

    def infer(self, attrs, shapes, dtypes):
        want = 6 if attrs.get("synced", True) else 5
        if len(shapes) != want:
            raise ShapeError(f"batchnorm_synced: takes x, weight, bias, s1, s2"
                             f"{', comm' if want == 6 else ''} (synced="
                             f"{str(want == 6).lower()}), got {len(shapes)} inputs")
        x = tuple(shapes[0])
        _check_x(self.name, x)
        _per_channel(self.name, x, shapes[1:3], ("weight", "bias"))
        if tuple(shapes[3]) != (2, x[1]) or tuple(shapes[4]) != (x[1],):
            raise ShapeError(f"batchnorm_synced: sums {fmt(shapes[3])}, {fmt(shapes[4])} "
                             f"do not match {fmt(x)}")
        return x, dtypes[0]

    def reference(self, attrs, x, w, b, s1, s2, comm=None):
        mean, var, _ = _sync_stats(s1, s2)
        inv = 1.0 / np.sqrt(var + attrs.get("eps", 1e-5))
        return (x - _bc(mean, x.ndim)) * _bc(inv * w, x.ndim) + _bc(b, x.ndim)

    def grad(self, gb, node, g):
        x, w, b, s1, s2 = node.inputs[:5]
        comm = node.inputs[5:]
        at = {"eps": node.attrs.get("eps", 1e-5)}
        local = gb.add("bn_sums", (g, x, s1), {"kind": "grad"})
        dx = dw = db = None
        if gb.wants(0):
            total = gb.add("allreduce", (local, comm[0]), {"weighted": True}) if comm \
                else local
            dx = gb.add("batchnorm_synced_grad", (g, x, w, s1, s2, total),
                        {**at, "part": "input"})
        # dweight and dbias: this rank's share; the step sums the ranks' gradients
        if gb.wants(1):
            dw = gb.add("batchnorm_synced_grad", (g, x, w, s1, s2, local),
                        {**at, "part": "weight"})
        if gb.wants(2):         # sum g, which the sums hold
            db = gb.add("batchnorm_synced_grad", (g, x, w, s1, s2, local),
                        {**at, "part": "bias"})
        return [dx, dw, db, None, None] + [None] * len(comm)

    def kernel(self, attrs):
        return (batchnorm_synced if attrs.get("synced", True) else batchnorm_split), \
            (float(attrs.get("eps", 1e-5)),)


class BatchNormSyncedGrad(Op):
    """batchnorm_synced_grad(g, x, weight, s1, s2, gs; part, eps): part
    "input": dL/dx from the whole batch's gradient sums gs (bn_grad_sums
    summed over the ranks); "weight": sum g * xhat, and "bias": sum g, from
    gs = this rank's (neither reads g or x)."""
    name = "batchnorm_synced_grad"
    arity = 6
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        if attrs.get("part", "input") not in ("input", "weight", "bias"):
            raise ShapeError(f"batchnorm_synced_grad: part must be input, weight or bias, "
                             f"got {attrs.get('part')!r}")
        return _grad_shape(self.name, attrs, shapes, dtypes)

    def reference(self, attrs, g, x, w, s1, s2, gs):
        mean, var, n = _sync_stats(s1, s2)
        inv = 1.0 / np.sqrt(var + attrs.get("eps", 1e-5))
        part = attrs.get("part", "input")
        if part == "weight":
            return gs[1] * inv
        if part == "bias":
            return gs[0].copy()
        xhat = (x - _bc(mean, x.ndim)) * _bc(inv, x.ndim)
        return _bc(inv * w, x.ndim) * (g - _bc(gs[0] / n, x.ndim)
                                       - xhat * _bc(gs[1] * inv / n, x.ndim))

    def kernel(self, attrs):
        part = attrs.get("part", "input")
        fn = {"weight": batchnorm_synced_grad_weight, "bias": batchnorm_synced_grad_bias,
              "input": batchnorm_synced_grad_input}[part]
        return fn, (float(attrs.get("eps", 1e-5)),)


class BnSyncedStat(Op):
    """bn_synced_stat(s1, s2, state; stat, momentum): batchnorm_stat's running
    mean or (unbiased) variance from the whole batch's sums."""
    name = "bn_synced_stat"
    arity = 3
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        c = tuple(shapes[2])
        if tuple(shapes[0]) != (2,) + c or tuple(shapes[1]) != c:
            raise ShapeError(f"bn_synced_stat: sums {fmt(shapes[0])}, {fmt(shapes[1])} do "
                             f"not match the state {fmt(c)}")
        if attrs.get("stat") not in ("mean", "var"):
            raise ShapeError(f"bn_synced_stat: stat must be mean or var, got "
                             f"{attrs.get('stat')!r}")
        return c, dtypes[2]

    def reference(self, attrs, s1, s2, s):
        m = attrs.get("momentum", 0.1)
        n = s1[1]
        new = s1[0] / n if attrs["stat"] == "mean" else s2 / np.maximum(n - 1, 1)
        return (1 - m) * s + m * new

    def kernel(self, attrs):
        return bn_synced_stat, (float(attrs.get("momentum", 0.1)), attrs["stat"] == "var")


for _op in (BnSums(), BatchNormSynced(), BatchNormSyncedGrad(), BnSyncedStat()):
    register(_op)


@kernel(parallel=True)
def bn_sums(x, out):
    x3 = _as3(x)
    T = out.dtype.type
    n = T(x3.shape[0] * x3.shape[2])
    for c in prange(x3.shape[1]):
        s, _ = _sums(x3, x3, c, T(0), 0)
        out[0, c] = s
        out[1, c] = n


@kernel(parallel=True)
def bn_sqsums(x, s1, out):
    x3 = _as3(x)
    for c in prange(x3.shape[1]):
        v, _ = _sums(x3, x3, c, s1[0, c] / s1[1, c], 1)
        out[c] = v


@kernel(parallel=True)
def bn_grad_sums(g, x, s1, out):
    x3, g3 = _as3(x), _as3(g)
    for c in prange(x3.shape[1]):
        a, e = _sums(x3, g3, c, s1[0, c] / s1[1, c], 2)
        out[0, c] = a
        out[1, c] = e


@kernel
def batchnorm_synced(x, w, b, s1, s2, comm, out, eps):
    _batchnorm_apply(x, w, b, s1, s2, out, eps)


@kernel
def batchnorm_split(x, w, b, s1, s2, out, eps):
    _batchnorm_apply(x, w, b, s1, s2, out, eps)


@kernel(parallel=True)
def _batchnorm_apply(x, w, b, s1, s2, out, eps):
    x3, o3 = _as3(x), _as3(out)
    T = out.dtype.type
    for c in prange(x3.shape[1]):
        mean = s1[0, c] / s1[1, c]
        scale = w[c] / np.sqrt(s2[c] / s1[1, c] + T(eps))
        shift = b[c] - mean * scale
        _scale_shift(x3, o3, c, scale, shift)


@kernel(parallel=True)
def _batchnorm_synced_grad(g, x, w, s1, s2, gs, o3, eps, weight_part):
    """o3: dx as [B, C, P] or, with weight_part, dweight as [1, C, 1]."""
    x3, g3 = _as3(x), _as3(g)
    T = o3.dtype.type
    for c in prange(x3.shape[1]):
        n = s1[1, c]
        mean = s1[0, c] / n
        inv = T(1) / np.sqrt(s2[c] / n + T(eps))
        sgx = gs[1, c] * inv
        if weight_part:
            o3[0, c, 0] = sgx
            continue
        # dx = k (g - sg/n - (x - mean) inv sgx/n) = k g + a x + d
        k = w[c] * inv
        a = -k * inv * sgx / n
        d = -k * gs[0, c] / n - a * mean
        _input_grad(g3, x3, o3, c, k, a, d)


@kernel
def batchnorm_synced_grad_input(g, x, w, s1, s2, gs, out, eps):
    _batchnorm_synced_grad(g, x, w, s1, s2, gs, _as3(out), eps, False)


@kernel
def batchnorm_synced_grad_weight(g, x, w, s1, s2, gs, out, eps):
    _batchnorm_synced_grad(g, x, w, s1, s2, gs, out.reshape((1, out.size, 1)), eps, True)


@kernel
def batchnorm_synced_grad_bias(g, x, w, s1, s2, gs, out, eps):
    for c in range(out.size):
        out[c] = gs[0, c]


@kernel
def bn_synced_stat(s1, s2, s, out, momentum, var):
    T = out.dtype.type
    m = T(momentum)
    for c in range(s.shape[0]):      # [C]: threads would cost more
        n = s1[1, c]
        new = s2[c] / max(n - T(1), T(1)) if var else s1[0, c] / n
        out[c] = (T(1) - m) * s[c] + m * new


# ---- dropout ----------------------------------------------------------------------

_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix_np(z):
    z = z + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_uniform(seed: int, step: int, n: int) -> np.ndarray:
    """The RNG contract in NumPy: n uniforms in [0, 1) for (seed, step)."""
    with np.errstate(over="ignore"):
        key = _splitmix_np(np.array([seed], np.uint64) * np.uint64(_GOLDEN)
                           + np.array([step], np.uint64))[0]
        h = _splitmix_np(key + np.arange(n, dtype=np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class DropoutMask(Op):
    name = "dropout_mask"
    arity = 2
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[1]) != ():
            raise ShapeError(f"dropout_mask: step must be a scalar, got {fmt(shapes[1])}")
        p = attrs.get("p", 0.5)
        if not 0 <= p < 1:
            raise ShapeError(f"dropout_mask: p must be in [0, 1), got {p}")
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x, step):
        if not attrs.get("training", True):
            return np.ones_like(x)
        p = attrs.get("p", 0.5)
        u = dropout_uniform(int(attrs.get("seed", 0)), int(step), x.size).reshape(x.shape)
        return np.where(u >= p, 1.0 / (1.0 - p), 0.0).astype(x.dtype)

    def kernel(self, attrs):
        return dropout_mask, (float(attrs.get("p", 0.5)), int(attrs.get("seed", 0)),
                              bool(attrs.get("training", True)))


register(DropoutMask())


@kernel
def _splitmix(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@kernel
def dropout_mask(x, step, out, p, seed, training):
    T = out.dtype.type
    o = out.reshape(-1)
    if not training:
        for i in range(o.size):
            o[i] = T(1)
        return
    key = _splitmix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(int(step[()])))
    keep = T(1.0 / (1.0 - p))
    for j in range(o.size):
        u = np.float64(_splitmix(key + np.uint64(j)) >> np.uint64(11)) * 1.1102230246251565e-16
        o[j] = keep if u >= p else T(0)


# ---- layers ------------------------------------------------------------------------

@layer("batchnorm")
def batchnorm_layer(ctx, x, *, momentum=0.1, eps=1e-5):
    """Batch normalisation per channel (axis 1) of [B, C], [B, C, L] or
    [B, C, H, W], as PyTorch's BatchNorm: parameters weight (ones) and bias
    (zeros), state running_mean (zeros) and running_var (ones).  Training
    normalises with the biased batch variance and updates running_var with
    the unbiased one, as PyTorch (ONNX's BatchNormalization uses the biased
    one there, and its momentum is 1 - momentum)."""
    xs = ctx.shape(x)
    if len(xs) not in (2, 3, 4):
        ctx.fail(f"batchnorm: needs [B, C], [B, C, L] or [B, C, H, W], got {fmt(xs)}")
    for what, v in (("momentum", momentum), ("eps", eps)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            ctx.fail(f"batchnorm: {what} must be a number in [0, 1], got {v!r}")
    c = xs[1]
    w = ctx.param("weight", (c,), init="ones", fan_in=c, fan_out=c)
    b = ctx.param("bias", (c,), init="zeros", fan_in=c, fan_out=c)
    rm = ctx.state("running_mean", (c,), init="zeros")
    rv = ctx.state("running_var", (c,), init="ones")
    for s, stat in ((rm, "mean"), (rv, "var")):
        ctx.emit("batchnorm_stat", [x, s], {"stat": stat, "momentum": float(momentum),
                                            "training": True, "updates": s})
    return ctx.emit("batchnorm", [x, w, b, rm, rv],
                    {"momentum": float(momentum), "eps": float(eps), "training": True})


@layer("dropout")
def dropout(ctx, x, p=0.5, *, seed=None):
    """Zeroes each element with probability p while training, scaling the rest by
    1 / (1 - p); the identity in eval.  Masks follow a counter-based RNG of
    (seed, step) (see nnspec/ops/norm.py)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
        ctx.fail(f"dropout: p must be a number in [0, 1), got {p!r}")
    step = ctx.state("step", (), init="zeros")
    if seed is None:
        seed = zlib.crc32(str(step).encode())
    ctx.emit("add", [step, ctx.const(1.0)], {"updates": step})
    mask = ctx.emit("dropout_mask", [x, step], {"p": float(p), "seed": int(seed),
                                                "training": True})
    return ctx.emit("mul", [x, mask])
