"""Embedding lookup.

    embedding(ids, w)              int64 ids [...], w [V, D] -> [..., D]
    embedding_grad(g, ids, w)      g [..., D] scatter-added into rows of a [V, D]
                                   zero array (w gives the shape)

The ids get no gradient.  Ids outside [0, V) are a DataError in the reference
and clipped nowhere: kernels assume the data binding checked them.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError, ShapeError
from .base import Cuda, Map, Op, T, cuda_kernel, flat, fmt, kernel, layer, prange, prod, register


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

    def cuda(self, attrs, in_shapes, out_shape):
        ids, w = in_shapes
        return Cuda([Map(embedding_cuda, prod(out_shape),
                         [flat("in0", ids), flat("in1", w), flat("out", out_shape)], (w[1],))])


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

    def cuda(self, attrs, in_shapes, out_shape):
        """Without atomics: each row v of the table first finds where its ids
        lie (tmp0[2v] = how many ids are smaller than v, tmp0[2v + 1] that
        plus how many equal it, and tmp1 from tmp0[2v] on the positions of
        those ids, in order: a counting sort); then each element of the
        gradient sums g over its row's positions, in order, as the reference
        does."""
        g, ids, w = in_shapes
        n, (v, d) = prod(ids), w
        return Cuda([Map(embedding_rows_cuda, v, [flat("in1", ids), "tmp0", "tmp1"], (n,)),
                     Map(embedding_grad_cuda, v * d, [flat("in0", g), "tmp0", "tmp1",
                                                      flat("out", out_shape)], (d,))],
                    temps=[(2 * v, "int64"), (n, "int64")])


register(Embedding())
register(EmbeddingGrad())


@cuda_kernel
def embedding_cuda(k, ids, w, out, d):
    """out.flat[k] of [ids.size, d] = w [V, d] at its row's id."""
    i = k // d
    out[k] = w[ids[i] * d + k - i * d]


@cuda_kernel
def embedding_rows_cuda(v, ids, span, pos, n):
    """span[2v], span[2v + 1]: where row v's ids begin and end in ids sorted
    (stably) by value; pos from span[2v] on: their positions in ids."""
    below = 0
    same = 0
    for i in range(n):
        if ids[i] < v:
            below += 1
        elif ids[i] == v:
            same += 1
    span[2 * v] = below
    span[2 * v + 1] = below + same
    for i in range(n):
        if ids[i] == v:
            pos[below] = i
            below += 1


@cuda_kernel
def embedding_grad_cuda(k, g, span, pos, out, d):
    """out.flat[k] of [V, d] = the sum of g [n, d] at column k % d over the
    positions of row k // d's ids."""
    v = k // d
    j = k - v * d
    s = T(0)
    for p in range(span[2 * v], span[2 * v + 1]):
        s += g[pos[p] * d + j]
    out[k] = s


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


@layer("embedding")
def embedding_layer(ctx, ids, vocab, dim, *, init="glorot"):
    """Looks up int ids [B] or [B, T] in a [vocab, dim] table: [B, dim] or [B, T, dim]."""
    for what, v in (("vocab", vocab), ("dim", dim)):
        if not isinstance(v, int) or v < 1:
            ctx.fail(f"embedding: {what} must be a positive integer, got {v!r}")
    w = ctx.param("weight", (vocab, dim), init=init, fan_in=1, fan_out=dim)
    return ctx.emit("embedding", [ids, w])
