"""Integer indices made into tensors.

    one_hot(ids; k, dtype)      int ids [...] -> [..., k] of 0/1 in `dtype`; an id
                                outside [0, k) (the -1 of a tree's root) is a row of zeros
    positions(x; axis)          int64 of x's shape: each element's index along `axis`

Neither is differentiable: their results depend on x only through its shape
or its integer values.  Tree cells use both (frontend/tree.py): the one-hots
of each node's position and of its parent pick and scatter rows of the
children's sums.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Cuda, Map, Op, cuda_kernel, flat, fmt, kernel, layer, prange, prod, register


class OneHot(Op):
    name = "one_hot"
    arity = 1
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        k = attrs.get("k")
        if not isinstance(k, int) or k < 1:
            raise ShapeError(f"one_hot: k must be a positive integer, got {k!r}")
        if not str(dtypes[0]).startswith("int"):
            raise ShapeError(f"one_hot: ids must be integers, got {dtypes[0]} "
                             f"{fmt(shapes[0])}")
        return tuple(shapes[0]) + (k,), attrs.get("dtype", "float32")

    def reference(self, attrs, ids):
        k = attrs["k"]
        return (ids[..., None] == np.arange(k)).astype(attrs.get("dtype", "float32"))

    def kernel(self, attrs):
        return one_hot, ()

    def cuda(self, attrs, in_shapes, out_shape):
        ids = in_shapes[0]
        return Cuda([Map(one_hot_cuda, prod(out_shape), [flat("in0", ids), flat("out", out_shape)],
                         (int(attrs["k"]),))])


class Positions(Op):
    name = "positions"
    arity = 1
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        rank = len(shapes[0])
        axis = attrs.get("axis", 1)
        if not -rank <= axis < rank:
            raise ShapeError(f"positions: axis {axis} is out of range for a {rank}-d input "
                             f"{fmt(shapes[0])}")
        return tuple(shapes[0]), "int64"

    def reference(self, attrs, x):
        axis = attrs.get("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        return np.broadcast_to(np.arange(x.shape[axis]).reshape(shape), x.shape).copy()

    def kernel(self, attrs):
        return positions, (attrs.get("axis", 1),)

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        a = int(attrs.get("axis", 1)) % len(x)
        return Cuda([Map(positions_cuda, prod(out_shape), [flat("out", out_shape)],
                         (x[a], prod(x[a + 1:])))])


register(OneHot())
register(Positions())


@kernel(parallel=True)
def one_hot(ids, out):
    k = out.shape[-1]
    f = ids.reshape(-1)
    o = out.reshape((f.size, k))
    for i in prange(f.size):
        for j in range(k):
            o[i, j] = 0
        if 0 <= f[i] < k:
            o[i, f[i]] = 1


@cuda_kernel
def one_hot_cuda(k, ids, out, n):
    """out.flat[k] of [ids.size, n]: 1 where its column is its row's id, else 0
    (in out's dtype)."""
    i = k // n
    if ids[i] == k - i * n:
        out[k] = 1
    else:
        out[k] = 0


@cuda_kernel
def positions_cuda(k, out, n, inner):
    """out.flat[k] = its index along an axis of size n with `inner` elements
    after it."""
    out[k] = (k // inner) % n


@kernel
def positions(x, out, axis):
    a = axis % x.ndim
    n = x.shape[a]
    inner = 1
    for d in range(a + 1, x.ndim):
        inner *= x.shape[d]
    o = out.reshape(-1)
    for i in range(o.size):
        o[i] = (i // inner) % n


@layer("one_hot")
def one_hot_layer(ctx, ids, k):
    """Int ids [B, ...] as one-hot rows [B, ..., k]; an id outside [0, k) gives zeros
    (a class fed back to a cell: `teacher = one_hot(prev, classes)`)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        ctx.fail(f"one_hot: k must be a positive integer, got {k!r}")
    return ctx.emit("one_hot", [ids], {"k": k, "dtype": ctx.dtype})
