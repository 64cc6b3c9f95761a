"""Ops that move data without arithmetic.

    reshape(x[, like]; shape)     per-example shape (batch kept; one -1 allowed),
                                  or like's shape when a second input is given
    concat(a, b; axis)            two inputs (the layer chains more)
    slice(x; axis, start, stop)   Python slice semantics, negatives from the end
    unslice(g, x; axis, start, stop)   g placed into zeros of x's shape (slice's adjoint)
    take(x; axis, index)          one index along axis, the axis dropped
    untake(g, x; axis, index)     take's adjoint
    transpose(x; perm)            a permutation of all axes (batch included)
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, T, cuda_kernel, flat, fmt, kernel, known, layer, prange,
                   prod, register)
from .elementwise import _inner_sizes, _shape_of
from .reduce import _offset


def _axis(name, axis, rank):
    if not -rank <= axis < rank:
        raise ShapeError(f"{name}: axis {axis} is out of range for a {rank}-d input")
    return axis % rank


# ---- reshape ---------------------------------------------------------------------

class Reshape(Op):
    name = "reshape"

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        if len(shapes) == 2:
            like = tuple(shapes[1])
            if prod(d for d in x if known(d)) != prod(d for d in like if known(d)):
                raise ShapeError(f"reshape: {fmt(x)} and {fmt(like)} hold different numbers "
                                 f"of elements")
            return like, dtypes[0]
        want = list(attrs["shape"])
        have = prod(d for d in x[1:] if known(d))
        if not all(known(d) for d in x[1:]):
            raise ShapeError(f"reshape: per-example shape {fmt(x[1:])} must be static")
        if want.count(-1) > 1:
            raise ShapeError(f"reshape: at most one -1 in {want}")
        if -1 in want:
            rest = prod(d for d in want if d != -1)
            if rest == 0 or have % rest:
                raise ShapeError(f"reshape: cannot fill -1 in {want} from {have} elements "
                                 f"(shape {fmt(x)})")
            want[want.index(-1)] = have // rest
        if prod(want) != have:
            raise ShapeError(f"reshape: {fmt(x)} has {have} elements per example, "
                             f"{fmt(want)} needs {prod(want)}")
        return (x[0],) + tuple(want), dtypes[0]

    def reference(self, attrs, x, like=None):
        if like is not None:
            return x.reshape(like.shape)
        return x.reshape((x.shape[0],) + tuple(attrs["shape"]))

    def grad(self, gb, node, g):
        return [gb.add("reshape", (g, node.inputs[0]), {})] + [None] * (len(node.inputs) - 1)

    def kernel(self, attrs):
        return (copy_flat, ()) if "shape" in attrs else (copy_flat_like, ())

    def cuda(self, attrs, in_shapes, out_shape):
        n = prod(out_shape)
        return Cuda([Map(copy_cuda, n, [flat("in0", in_shapes[0]), flat("out", out_shape)])])


register(Reshape())


@cuda_kernel
def copy_cuda(k, x, out):
    """out.flat[k] = x.flat[k] (a reshape of contiguous arrays)."""
    out[k] = x[k]


@kernel(parallel=True)
def copy_flat(x, out):
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in prange(of.size):
        of[i] = xf[i]


@kernel
def copy_flat_like(x, like, out):
    copy_flat(x, out)


# ---- concat --------------------------------------------------------------------

class Concat(Op):
    name = "concat"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        a, b = tuple(shapes[0]), tuple(shapes[1])
        if len(a) != len(b):
            raise ShapeError(f"concat: inputs {fmt(a)} and {fmt(b)} differ in rank")
        ax = _axis("concat", attrs.get("axis", 1), len(a))
        if not (known(a[ax]) and known(b[ax])):
            # B + B or T + T would be a size the shape cannot say (and the batch
            # axis holds examples, not features)
            what = "the batch axis" if ax == 0 else f"a dynamic axis ({a[ax]}, {b[ax]})"
            raise ShapeError(f"concat: axis {ax} of {fmt(a)} and {fmt(b)} is {what}; inputs "
                             f"are joined along a feature axis (1 to {len(a) - 1}, or -1)")
        for i, (x, y) in enumerate(zip(a, b)):
            if i != ax and x != y:
                raise ShapeError(f"concat: along axis {ax}, inputs {fmt(a)} and {fmt(b)} "
                                 f"differ at axis {i} ({x} and {y})")
        return a[:ax] + (a[ax] + b[ax],) + a[ax + 1:], dtypes[0]

    def reference(self, attrs, a, b):
        return np.concatenate([a, b], axis=attrs.get("axis", 1))

    def grad(self, gb, node, g):
        a, b = node.inputs
        ax = node.attrs.get("axis", 1) % len(node.shape)
        na = gb.graph.shape(a)[ax]
        if not known(na):
            raise ShapeError(f"concat: cannot differentiate along a dynamic axis {na}")
        return [gb.add("slice", (g,), {"axis": ax, "start": 0, "stop": na})
                if gb.wants(0) else None,
                gb.add("slice", (g,), {"axis": ax, "start": na, "stop": None})
                if gb.wants(1) else None]

    def kernel(self, attrs):
        return concat, (int(attrs.get("axis", 1)),)

    def cuda(self, attrs, in_shapes, out_shape):
        a, b = in_shapes
        ax = int(attrs.get("axis", 1)) % len(out_shape)
        inner = prod(out_shape[ax + 1:])
        return Cuda([Map(concat_cuda, prod(out_shape),
                         [flat("in0", a), flat("in1", b), flat("out", out_shape)],
                         (a[ax] * inner, b[ax] * inner))])


register(Concat())


@cuda_kernel
def concat_cuda(k, a, b, out, ma, mb):
    """out.flat[k] of [outer, ma + mb] from a [outer, ma] or b [outer, mb] (the
    axis and everything after it as one)."""
    i = k // (ma + mb)
    j = k - i * (ma + mb)
    if j < ma:
        out[k] = a[i * ma + j]
    else:
        out[k] = b[i * mb + j - ma]


@kernel
def _outer_inner(shp, ax):
    outer = 1
    for k in range(ax):
        outer *= shp[k]
    inner = 1
    for k in range(ax + 1, shp.size):
        inner *= shp[k]
    return outer, inner


@kernel(parallel=True)
def concat(a, b, out, axis):
    ax = axis % out.ndim
    outer, inner = _outer_inner(_shape_of(out), ax)
    na, nb = a.shape[ax], b.shape[ax]
    a3 = a.reshape((outer, na * inner))
    b3 = b.reshape((outer, nb * inner))
    o3 = out.reshape((outer, (na + nb) * inner))
    for i in prange(outer):
        for j in range(na * inner):
            o3[i, j] = a3[i, j]
        for j in range(nb * inner):
            o3[i, na * inner + j] = b3[i, j]


# ---- slice / unslice --------------------------------------------------------------

def _slice_len(n, start, stop):
    if known(n):
        return len(range(*slice(start, stop).indices(n)))
    if start is not None and stop is not None and (start >= 0) == (stop >= 0):
        return max(stop - start, 0)
    return n


class Slice(Op):
    name = "slice"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        ax = _axis("slice", attrs.get("axis", 1), len(x))
        n = _slice_len(x[ax], attrs.get("start"), attrs.get("stop"))
        if known(n) and n < 1:
            raise ShapeError(f"slice: [{attrs.get('start')}:{attrs.get('stop')}] of axis {ax} "
                             f"(size {x[ax]}) is empty")
        return x[:ax] + (n,) + x[ax + 1:], dtypes[0]

    def reference(self, attrs, x):
        sl = [slice(None)] * x.ndim
        sl[attrs.get("axis", 1)] = slice(attrs.get("start"), attrs.get("stop"))
        return x[tuple(sl)]

    def grad(self, gb, node, g):
        return [gb.add("unslice", (g, node.inputs[0]), node.attrs)]

    def kernel(self, attrs):
        return slice_, _slice_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _slice_cuda(slice_cuda, attrs, in_shapes, out_shape, False)


class Unslice(Op):
    name = "unslice"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        want = Slice().infer(attrs, shapes[1:], dtypes[1:])[0]
        if tuple(shapes[0]) != want:
            raise ShapeError(f"unslice: {fmt(shapes[0])} is not the slice's shape {fmt(want)}")
        return tuple(shapes[1]), dtypes[0]

    def reference(self, attrs, g, x):
        out = np.zeros(x.shape, g.dtype)
        sl = [slice(None)] * x.ndim
        sl[attrs.get("axis", 1)] = slice(attrs.get("start"), attrs.get("stop"))
        out[tuple(sl)] = g
        return out

    def grad(self, gb, node, g2):
        return [gb.add("slice", (g2,), node.attrs), None]

    def kernel(self, attrs):
        return unslice, _slice_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _slice_cuda(unslice_cuda, attrs, in_shapes, out_shape, False)


for _op in (Slice(), Unslice()):
    register(_op)


def _slice_cuda(fn, attrs, in_shapes, out_shape, take: bool) -> Cuda:
    """The Map of slice_cuda (slice, take) or unslice_cuda (unslice, untake)
    over the output: x (the input the slice is taken from; the last input)
    seen as [outer, n] with the axis and everything after it as one, the
    slice as [outer, m] from column s0; a take is a slice of one index."""
    x = in_shapes[-1]
    ax = int(attrs.get("axis", 1)) % len(x)
    if take:
        s0, m = int(attrs.get("index", -1)) % x[ax], 1
    else:
        r = range(*slice(attrs.get("start"), attrs.get("stop")).indices(x[ax]))
        s0, m = r.start, len(r)
    inner = prod(x[ax + 1:])
    return Cuda([Map(fn, prod(out_shape), [flat("in0", in_shapes[0]), flat("out", out_shape)],
                     (m * inner, x[ax] * inner, s0 * inner))])


@cuda_kernel
def slice_cuda(k, x, out, m, n, s0):
    """out.flat[k] of [outer, m] = x [outer, n] at columns s0 .. s0 + m (the
    sliced axis and everything after it as one)."""
    i = k // m
    out[k] = x[i * n + s0 + k - i * m]


@cuda_kernel
def unslice_cuda(k, g, out, m, n, s0):
    """out.flat[k] of [outer, n] = g [outer, m] at columns s0 .. s0 + m, zero
    elsewhere (slice_cuda's adjoint)."""
    i = k // n
    j = k - i * n - s0
    if 0 <= j < m:
        out[k] = g[i * m + j]
    else:
        out[k] = T(0)


def _slice_args(attrs):
    big = 2 ** 62
    start, stop = attrs.get("start"), attrs.get("stop")
    return (int(attrs.get("axis", 1)), 0 if start is None else int(start),
            big if stop is None else int(stop))


@kernel
def _norm_slice(start, stop, n):
    if start < 0:
        start = max(start + n, 0)
    if stop < 0:
        stop = max(stop + n, 0)
    return min(start, n), min(stop, n)


@kernel(parallel=True)
def _slice_copy(big, small, axis, start, stop, forward):
    """forward: small = big[.., start:stop, ..]; else big = zeros with small placed."""
    ax = axis % big.ndim
    n = big.shape[ax]
    s0, s1 = _norm_slice(start, stop, n)
    m = s1 - s0
    outer, inner = _outer_inner(_shape_of(big), ax)
    b3 = big.reshape((outer, n, inner))
    s3 = small.reshape((outer, m, inner))
    for i in prange(outer):
        if forward:
            for j in range(m):
                for k in range(inner):
                    s3[i, j, k] = b3[i, s0 + j, k]
        else:
            for j in range(n):
                for k in range(inner):
                    b3[i, j, k] = s3[i, j - s0, k] if s0 <= j < s1 else 0


@kernel
def slice_(x, out, axis, start, stop):
    _slice_copy(x, out, axis, start, stop, True)


@kernel
def unslice(g, x, out, axis, start, stop):
    _slice_copy(out, g, axis, start, stop, False)


# ---- take / untake ------------------------------------------------------------------

class Take(Op):
    name = "take"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        ax = _axis("take", attrs.get("axis", 1), len(x))
        i = attrs.get("index", -1)
        if known(x[ax]) and not -x[ax] <= i < x[ax]:
            raise ShapeError(f"take: index {i} is out of range for axis {ax} of size {x[ax]}")
        return x[:ax] + x[ax + 1:], dtypes[0]

    def reference(self, attrs, x):
        return np.take(x, attrs.get("index", -1), axis=attrs.get("axis", 1))

    def grad(self, gb, node, g):
        return [gb.add("untake", (g, node.inputs[0]), node.attrs)]

    def kernel(self, attrs):
        return take, _take_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _slice_cuda(slice_cuda, attrs, in_shapes, out_shape, True)


class Untake(Op):
    name = "untake"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        want = Take().infer(attrs, shapes[1:], dtypes[1:])[0]
        if tuple(shapes[0]) != want:
            raise ShapeError(f"untake: {fmt(shapes[0])} is not the take's shape {fmt(want)}")
        return tuple(shapes[1]), dtypes[0]

    def reference(self, attrs, g, x):
        out = np.zeros(x.shape, g.dtype)
        sl = [slice(None)] * x.ndim
        sl[attrs.get("axis", 1)] = attrs.get("index", -1)
        out[tuple(sl)] = g
        return out

    def grad(self, gb, node, g2):
        return [gb.add("take", (g2,), node.attrs), None]

    def kernel(self, attrs):
        return untake, _take_args(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _slice_cuda(unslice_cuda, attrs, in_shapes, out_shape, True)


for _op in (Take(), Untake()):
    register(_op)


def _take_args(attrs):
    return int(attrs.get("axis", 1)), int(attrs.get("index", -1))


@kernel
def take(x, out, axis, index):
    i = index % x.shape[axis % x.ndim]
    _slice_copy(x, out, axis, i, i + 1, True)


@kernel
def untake(g, x, out, axis, index):
    i = index % x.shape[axis % x.ndim]
    _slice_copy(out, g, axis, i, i + 1, False)


# ---- transpose ---------------------------------------------------------------------

class Transpose(Op):
    name = "transpose"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        perm = list(attrs["perm"])
        if sorted(perm) != list(range(len(x))):
            raise ShapeError(f"transpose: {perm} is not a permutation of the {len(x)} axes "
                             f"of {fmt(x)}")
        return tuple(x[p] for p in perm), dtypes[0]

    def reference(self, attrs, x):
        return np.transpose(x, attrs["perm"])

    def grad(self, gb, node, g):
        return [gb.add("transpose", (g,), {"perm": [int(i) for i in
                                                   np.argsort(node.attrs["perm"])]})]

    def kernel(self, attrs):
        return transpose, (np.asarray(attrs["perm"], np.int64),)

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        xst = [prod(x[i + 1:]) for i in range(len(x))]
        st = tuple(xst[p] for p in attrs["perm"])
        n = prod(out_shape)
        return Cuda([Map(transpose_cuda, n, [flat("in0", x), flat("out", out_shape)],
                         (tuple(out_shape), st))])


register(Transpose())


@cuda_kernel
def transpose_cuda(k, x, out, shape, st):
    """out.flat[k] = x at the strides `st` of out's axes."""
    r = k
    i = 0
    for d in range(len(shape) - 1, -1, -1):
        i += (r % shape[d]) * st[d]
        r //= shape[d]
    out[k] = x[i]


@kernel(parallel=True)
def transpose(x, out, perm):
    xs = _shape_of(x)
    xst = _inner_sizes(xs)          # x's element strides
    shp = _shape_of(out)
    st = np.empty(shp.size, np.int64)
    for k in range(shp.size):
        st[k] = xst[perm[k]]
    inner = _inner_sizes(shp)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for j in prange(of.size):
        of[j] = xf[_offset(j, shp, inner, st)]


# ---- layers -----------------------------------------------------------------------

@layer("flatten")
def flatten(ctx, x, *, axis=1):
    """Axes from `axis` (default 1) on as one: [B, ...] -> [B, prod(...)];
    flatten(axis=2) of [B, C, H, W] is [B, C, H*W].  (ONNX's Flatten also
    merges the axes before `axis` into one, the batch's.)"""
    xs = ctx.shape(x)
    if not isinstance(axis, int) or isinstance(axis, bool) or not -len(xs) < axis < len(xs) \
            or axis % len(xs) == 0:
        ctx.fail(f"flatten: axis must be an integer from 1 to {len(xs) - 1} (or negative, "
                 f"from the end) for {fmt(xs)}, got {axis!r}",
                 hint="axes count the batch axis as 0, which flatten keeps")
    ax = axis % len(xs)
    if not all(known(d) for d in xs[1:]):
        ctx.fail(f"flatten: per-example shape {fmt(xs[1:])} must be static")
    return ctx.emit("reshape", [x], {"shape": list(xs[1:ax]) + [prod(xs[ax:])]})


@layer("reshape")
def reshape(ctx, x, shape):
    """Per-example reshape, the batch kept: `reshape([1, 28, 28])`; one -1 allowed."""
    if isinstance(shape, int):
        shape = [shape]
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
        ctx.fail(f"reshape: shape must be a list of ints, got {shape!r}")
    return ctx.emit("reshape", [x], {"shape": list(shape)})


@layer("concat", inputs=None)
def concat_layer(ctx, *xs, axis=1):
    """Joins its inputs along `axis` (default 1, channels/features): `concat(a, b, c)`."""
    if len(xs) < 2:
        ctx.fail("concat: needs at least two inputs")
    y = xs[0]
    for x in xs[1:]:
        y = ctx.emit("concat", [y, x], {"axis": int(axis)})
    return y


@layer("slice")
def slice_layer(ctx, x, start, stop=None, *, axis=1):
    """x[start:stop] along `axis` (default 1), negatives counting from the end."""
    return ctx.emit("slice", [x], {"axis": int(axis), "start": start, "stop": stop})


@layer("split")
def split(ctx, x, n, *, axis=1):
    """Splits `axis` (default 1) into n equal parts, returned as a tuple (LSTM gates)."""
    size = ctx.shape(x)[axis]
    if not isinstance(n, int) or n < 1 or not known(size) or size % n:
        ctx.fail(f"split: cannot split axis {axis} of size {size} into {n!r} equal parts")
    k = size // n
    return tuple(ctx.emit("slice", [x], {"axis": int(axis), "start": i * k, "stop": (i + 1) * k})
                 for i in range(n))


@layer("last")
def last(ctx, x):
    """The last time step of a sequence: [B, T, F] -> [B, F]."""
    return ctx.emit("take", [x], {"axis": 1, "index": -1})


@layer("transpose")
def transpose_layer(ctx, x, *perm):
    """Permutes the axes, the batch included: `transpose(0, 2, 1)`."""
    if len(perm) == 1 and isinstance(perm[0], (list, tuple)):
        perm = perm[0]
    return ctx.emit("transpose", [x], {"perm": [int(p) for p in perm]})

