"""Embedding lookup.

    embedding(ids, w)              int64 ids [...], w [V, D] -> [..., D]
    embedding_grad(g, ids, w)      g [..., D] scatter-added into rows of a [V, D]
                                   zero array (w gives the shape)
    one_hot(ids; n)                int64 ids [...] -> [..., n] floats: the rows of an
                                   n x n identity (a fixed table); ids outside
                                   [0, n) give a row of zeros

The ids get no gradient.  Ids outside [0, V) are a DataError in the reference
and clipped nowhere: kernels assume the data binding checked them.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError, ShapeError
from .base import Op, fmt, kernel, layer, prange, register


class Embedding(Op):
    name = "embedding"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        ids, w = tuple(shapes[0]), tuple(shapes[1])
        if not str(dtypes[0]).startswith("int"):
            raise ShapeError(f"embedding: ids must be integers, got {dtypes[0]} {fmt(ids)}")
        if len(w) != 2:
            raise ShapeError(f"embedding: the table must be [vocab, dim], got {fmt(w)}")
        return ids + (w[1],), dtypes[1]

    def reference(self, attrs, ids, w):
        if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
            raise DataError(f"embedding: ids must lie in [0, {w.shape[0]}), got "
                            f"{ids.min()}..{ids.max()}")
        return w[ids]

    def grad(self, gb, node, g):
        ids, w = node.inputs
        return [None, gb.add("embedding_grad", (g, ids, w))]

    def kernel(self, attrs):
        return embedding, ()


class EmbeddingGrad(Op):
    name = "embedding_grad"
    arity = 3

    def infer(self, attrs, shapes, dtypes):
        g, ids, w = (tuple(s) for s in shapes)
        if g != ids + (w[1],):
            raise ShapeError(f"embedding_grad: gradient {fmt(g)} does not match ids {fmt(ids)} "
                             f"and table {fmt(w)}")
        return w, dtypes[0]

    def reference(self, attrs, g, ids, w):
        out = np.zeros(w.shape, g.dtype)
        np.add.at(out, ids.reshape(-1), g.reshape(-1, w.shape[1]))
        return out

    def grad(self, gb, node, g2):
        g, ids, w = node.inputs
        return [gb.add("embedding", (ids, g2)), None, None]

    def kernel(self, attrs):
        return embedding_grad, ()


class OneHot(Op):
    name = "one_hot"
    arity = 1
    differentiable = False            # of int ids

    def infer(self, attrs, shapes, dtypes):
        n = attrs.get("n")
        if not str(dtypes[0]).startswith("int"):
            raise ShapeError(f"one_hot: ids must be integers, got {dtypes[0]} "
                             f"{fmt(tuple(shapes[0]))}")
        if not isinstance(n, int) or n < 1:
            raise ShapeError(f"one_hot: n must be a positive integer, got {n!r}")
        return tuple(shapes[0]) + (n,), attrs.get("dtype", "float32")

    def reference(self, attrs, ids):
        n = attrs["n"]
        return (ids[..., None] == np.arange(n)).astype(attrs.get("dtype", "float32"))

    def kernel(self, attrs):
        return one_hot, ()


register(Embedding())
register(EmbeddingGrad())
register(OneHot())


@kernel(parallel=True)
def embedding(ids, w, out):
    D = w.shape[1]
    f = ids.reshape(-1)
    o = out.reshape((f.size, D))
    for i in prange(f.size):
        for j in range(D):
            o[i, j] = w[f[i], j]


@kernel(parallel=True)
def embedding_grad(g, ids, w, out):
    D = out.shape[1]
    f = ids.reshape(-1)
    gr = g.reshape((f.size, D))
    for j in prange(D):          # columns in parallel: no two threads add to one element
        for v in range(out.shape[0]):
            out[v, j] = 0
        for i in range(f.size):
            out[f[i], j] += gr[i, j]


@kernel
def one_hot(ids, out):
    n = out.shape[-1]
    f = ids.reshape(-1)
    o = out.reshape((f.size, n))
    for i in range(f.size):
        for j in range(n):
            o[i, j] = 1 if f[i] == j else 0


@layer("embedding")
def embedding_layer(ctx, ids, vocab, dim, *, init="glorot"):
    """Looks up int ids [B] or [B, T] in a [vocab, dim] table: [B, dim] or [B, T, dim]."""
    for what, v in (("vocab", vocab), ("dim", dim)):
        if not isinstance(v, int) or v < 1:
            ctx.fail(f"embedding: {what} must be a positive integer, got {v!r}")
    w = ctx.param("weight", (vocab, dim), init=init, fan_in=1, fan_out=dim)
    return ctx.emit("embedding", [ids, w])


@layer("one_hot")
def one_hot_layer(ctx, ids, n):
    """Int ids [B] or [B, T] as one-hot rows [B, n] or [B, T, n] (ids outside [0, n)
    give zeros): a class fed back to a cell, `teacher = one_hot(prev, classes)`."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        ctx.fail(f"one_hot: n must be a positive integer, got {n!r}")
    if not ctx.graph.dtype_of(ids).startswith("int"):
        ctx.fail(f"one_hot: takes int class ids, got {ctx.graph.dtype_of(ids)} "
                 f"{fmt(ctx.shape(ids))}")
    return ctx.emit("one_hot", [ids], {"n": n, "dtype": ctx.dtype}, dtype=ctx.dtype)
