"""Reductions and their adjoints.

    sum(x; axes, keepdims)      mean(x; axes, keepdims)     max(x; axes, keepdims)
    max_mask(x; axes)           one-hot of the first maximum (not differentiable)
    sum_to(x, like; mean)       sum x down to like's shape (undoes broadcasting)
    broadcast_like(g, x; axes, mean)
                                g spread to x's shape: NumPy's right-aligned
                                broadcasting when axes is None, else g's axes are
                                x's axes other than `axes`; mean divides by the
                                number of copies

`sum(axes)` and `broadcast_like(axes)` are adjoint, and so are `sum_to` and
`broadcast_like(axes=None)`; with mean=True the pairs are `mean` /
`broadcast_like(mean=True)`.  Axes count the batch axis (0); negative axes
count from the end.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, Ref, T, cuda_kernel, flat, fmt, kernel, known, layer, prange,
                   prod, register)
from .base import Reduce as RowSums
from .elementwise import _bstrides, _inner_sizes, _shape_of

# seconds to compile (backend/precompile.py; the others take about 1)
COMPILE_SECONDS = {"reduce_kernel": 4, "broadcast_like": 2}


def norm_axes(name, axes, rank) -> tuple:
    if axes is None:
        return tuple(range(rank))
    if isinstance(axes, int):
        axes = [axes]
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ShapeError(f"{name}: axis {a} is out of range for a {rank}-d input")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"{name}: axis repeated in {list(axes)}")
    return tuple(sorted(out))


def reduced_shape(shape, axes, keepdims) -> tuple:
    return tuple((1 if keepdims else None) if i in axes else d
                 for i, d in enumerate(shape) if keepdims or i not in axes)


def _axes_arg(attrs):
    axes = attrs.get("axes")
    return np.asarray([] if axes is None else ([axes] if isinstance(axes, int) else axes),
                      dtype=np.int64), axes is None


# ---- reductions ------------------------------------------------------------------

class Reduce(Op):
    arity = 1

    def __init__(self, name, kind):
        self.name, self.kind = name, kind
        self.differentiable = True

    def infer(self, attrs, shapes, dtypes):
        x = tuple(shapes[0])
        axes = norm_axes(self.name, attrs.get("axes"), len(x))
        return reduced_shape(x, axes, attrs.get("keepdims", False)), dtypes[0]

    def reference(self, attrs, x):
        axes = norm_axes(self.name, attrs.get("axes"), x.ndim)
        f = {"sum": np.sum, "mean": np.mean, "max": np.max}[self.kind]
        return f(x, axis=axes, keepdims=bool(attrs.get("keepdims", False)))

    def grad(self, gb, node, g):
        x = node.inputs[0]
        axes = list(norm_axes(self.name, node.attrs.get("axes"), len(gb.graph.shape(x))))
        spread = {"axes": None if node.attrs.get("keepdims") else axes,
                  "mean": self.kind == "mean"}
        gx = gb.add("broadcast_like", (g, x), spread)
        if self.kind == "max":
            gx = gb.add("mul", (gx, gb.add("max_mask", (x,), {"axes": axes})))
        return [gx]

    def kernel(self, attrs):
        axes, all_ = _axes_arg(attrs)
        return reduce_kernel, (axes, all_, {"sum": 0, "mean": 1, "max": 2}[self.kind])

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        axes = norm_axes(self.name, attrs.get("axes"), len(x))
        if self.kind == "max":
            return Cuda(*max_stages("in0", x, axes, "out"))
        n = prod(d for i, d in enumerate(x) if i in axes)
        return Cuda(*sum_stages("in0", x, axes, "out", 1 / max(n, 1) if self.kind == "mean"
                                else 1.0))


for _k in ("sum", "mean", "max"):
    register(Reduce(_k, _k))


class MaxMask(Op):
    """max_mask(x; axes): 1 where x holds the first maximum along `axes`, else 0."""
    name = "max_mask"
    arity = 1
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        norm_axes(self.name, attrs.get("axes"), len(shapes[0]))
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        axes = norm_axes(self.name, attrs.get("axes"), x.ndim)
        rest = [i for i in range(x.ndim) if i not in axes]
        xt = np.transpose(x, rest + list(axes))
        flat = xt.reshape(xt.shape[:len(rest)] + (-1,))
        m = np.zeros_like(flat)
        np.put_along_axis(m, flat.argmax(axis=-1)[..., None], 1, axis=-1)
        return np.transpose(m.reshape(xt.shape), np.argsort(rest + list(axes)))

    def kernel(self, attrs):
        axes, all_ = _axes_arg(attrs)
        return max_mask, (axes, all_)

    def cuda(self, attrs, in_shapes, out_shape):
        """The first maximum's term per row, then each element of the row: 1
        there, else 0."""
        x = in_shapes[0]
        axes = norm_axes(self.name, attrs.get("axes"), len(x))
        stages, temps, args, extra = first_max_stages("in0", x, axes, flat("out", x), False)
        n = prod(x)
        return Cuda(stages + [Map(mask_row, n, args, extra)], temps)


register(MaxMask())


@kernel
def _red_mask(nd, axes, all_axes):
    m = np.zeros(nd, np.int64)
    for k in range(nd):
        m[k] = 1 if all_axes else 0
    for a in axes:
        m[a % nd] = 1
    return m


@kernel
def _split(x, mask):
    """Shapes and element strides of x's kept and reduced axes."""
    nd = x.ndim
    nk = 0
    for k in range(nd):
        nk += 1 - mask[k]
    ks = np.empty(nk, np.int64)
    kst = np.empty(nk, np.int64)
    rs = np.empty(nd - nk, np.int64)
    rst = np.empty(nd - nk, np.int64)
    s = 1
    ik = nk
    ir = nd - nk
    for k in range(nd - 1, -1, -1):
        if mask[k]:
            ir -= 1
            rs[ir] = x.shape[k]
            rst[ir] = s
        else:
            ik -= 1
            ks[ik] = x.shape[k]
            kst[ik] = s
        s *= x.shape[k]
    return ks, kst, rs, rst


@kernel
def _offset(i, shp, inner, st):
    off = 0
    for ax in range(shp.size):
        off += ((i // inner[ax]) % shp[ax]) * st[ax]
    return off


@kernel(parallel=True)
def _reduce_core(x, out, mask, kind):
    """kind 0: sum, 1: mean, 2: max; out holds x's kept axes in order."""
    T = out.dtype.type
    ks, kst, rs, rst = _split(x, mask)
    kin = _inner_sizes(ks)
    rin = _inner_sizes(rs)
    nk = 1
    for d in ks:
        nk *= d
    nr = 1
    for d in rs:
        nr *= d
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in prange(nk):
        base = _offset(i, ks, kin, kst)
        if kind == 2:
            acc = T(-np.inf)
            for r in range(nr):
                v = xf[base + _offset(r, rs, rin, rst)]
                if v > acc:
                    acc = v
        else:
            acc = T(0)
            for r in range(nr):
                acc += xf[base + _offset(r, rs, rin, rst)]
            if kind == 1:
                acc = acc / T(nr)
        of[i] = acc


@kernel
def reduce_kernel(x, out, axes, all_axes, kind):
    _reduce_core(x, out, _red_mask(x.ndim, axes, all_axes), kind)


@kernel(parallel=True)
def max_mask(x, out, axes, all_axes):
    T = out.dtype.type
    ks, kst, rs, rst = _split(x, _red_mask(x.ndim, axes, all_axes))
    kin = _inner_sizes(ks)
    rin = _inner_sizes(rs)
    nk = 1
    for d in ks:
        nk *= d
    nr = 1
    for d in rs:
        nr *= d
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in prange(nk):
        base = _offset(i, ks, kin, kst)
        best = base + _offset(0, rs, rin, rst)
        for r in range(nr):
            o = base + _offset(r, rs, rin, rst)
            of[o] = T(0)
            if xf[o] > xf[best]:
                best = o
        of[best] = T(1)


# ---- sum_to / broadcast_like --------------------------------------------------------

def _fits(name, small, big):
    """Whether `small` broadcasts to `big` (right-aligned), else a ShapeError."""
    if len(small) > len(big):
        raise ShapeError(f"{name}: {fmt(small)} has more axes than {fmt(big)}")
    for i in range(1, len(small) + 1):
        s, b = small[-i], big[-i]
        if s != b and s != 1:
            raise ShapeError(f"{name}: {fmt(small)} does not broadcast to {fmt(big)} "
                             f"(sizes {s} and {b} meet at axis -{i})")


class SumTo(Op):
    """sum_to(x, like; mean=False): x summed (averaged) down to like's shape."""
    name = "sum_to"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        _fits(self.name, tuple(shapes[1]), tuple(shapes[0]))
        return tuple(shapes[1]), dtypes[0]

    def reference(self, attrs, x, like):
        lead = x.ndim - like.ndim
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(like.shape)
                                          if d == 1 and x.shape[lead + i] != 1)
        y = np.sum(x, axis=axes, keepdims=True).reshape(like.shape)
        return y * (like.size / x.size) if attrs.get("mean") else y

    def grad(self, gb, node, g):
        return [gb.add("broadcast_like", (g, node.inputs[0]),
                       {"axes": None, "mean": bool(node.attrs.get("mean"))}), None]

    def kernel(self, attrs):
        return sum_to, (1 if attrs.get("mean") else 0,)

    def cuda(self, attrs, in_shapes, out_shape):
        x, like = tuple(in_shapes[0]), tuple(in_shapes[1])
        lead = len(x) - len(like)
        axes = tuple(i for i in range(len(x))
                     if i < lead or like[i - lead] == 1 and x[i] != 1)
        return Cuda(*sum_stages("in0", x, axes, "out",
                                prod(like) / max(prod(x), 1) if attrs.get("mean") else 1.0))


register(SumTo())


@kernel
def sum_to(x, like, out, kind):
    nd = x.ndim
    lead = nd - like.ndim
    m = np.zeros(nd, np.int64)
    for k in range(nd):
        if k < lead:
            m[k] = 1
        elif like.shape[k - lead] == 1 and x.shape[k] != 1:
            m[k] = 1
    _reduce_core(x, out, m, kind)


class BroadcastLike(Op):
    """broadcast_like(g, x; axes=None, mean=False): g spread to x's shape."""
    name = "broadcast_like"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        g, x = tuple(shapes[0]), tuple(shapes[1])
        axes = attrs.get("axes")
        if axes is None:
            _fits(self.name, g, x)
        else:
            axes = norm_axes(self.name, axes, len(x))
            kept = tuple(d for i, d in enumerate(x) if i not in axes)
            if kept != g:
                raise ShapeError(f"{self.name}: {fmt(g)} is not {fmt(x)} without axes "
                                 f"{list(axes)} (that is {fmt(kept)})")
        return x, dtypes[0]

    def reference(self, attrs, g, x):
        axes = attrs.get("axes")
        if axes is not None:
            axes = norm_axes(self.name, axes, x.ndim)
            g = g.reshape([1 if i in axes else d for i, d in enumerate(x.shape)])
        y = np.broadcast_to(g, x.shape).copy()
        return y * (g.size / x.size) if attrs.get("mean") else y

    def grad(self, gb, node, g):
        axes, mean = node.attrs.get("axes"), bool(node.attrs.get("mean"))
        if axes is None:
            return [gb.add("sum_to", (g, node.inputs[0]), {"mean": mean}), None]
        return [gb.add("mean" if mean else "sum", (g,), {"axes": list(axes)}), None]

    def kernel(self, attrs):
        axes, none = _axes_arg(attrs)
        return broadcast_like, (axes, none, bool(attrs.get("mean")))

    def cuda(self, attrs, in_shapes, out_shape):
        g, x = tuple(in_shapes[0]), tuple(out_shape)
        axes = attrs.get("axes")
        if axes is None:            # right-aligned, as NumPy
            gx = (1,) * (len(x) - len(g)) + g
        else:
            axes = norm_axes(self.name, axes, len(x))
            gx = tuple(1 if i in axes else d for i, d in enumerate(x))
        st = [prod(gx[i + 1:]) if gx[i] != 1 else 0 for i in range(len(x))]
        n = prod(x)
        return Cuda([Map(spread, n, [flat("in0", g), flat("out", x)],
                         (x or (1,), tuple(st) or (0,),
                          prod(g) / max(n, 1) if attrs.get("mean") else 1.0))])


register(BroadcastLike())


@kernel(parallel=True)
def broadcast_like(g, x, out, axes, numpy_style, mean):
    T = out.dtype.type
    shp = _shape_of(out)
    nd = shp.size
    if numpy_style:
        st = _bstrides(g, shp)
    else:
        m = _red_mask(nd, axes, False)
        st = np.zeros(nd, np.int64)
        s = 1
        k = g.ndim
        for ax in range(nd - 1, -1, -1):
            if m[ax] == 0:
                k -= 1
                if g.shape[k] != 1:
                    st[ax] = s
                s *= g.shape[k]
    inner = _inner_sizes(shp)
    scale = T(g.size) / T(out.size) if mean else T(1)
    gf = g.reshape(-1)
    of = out.reshape(-1)
    for j in prange(of.size):
        of[j] = gf[_offset(j, shp, inner, st)] * scale


# ---- CUDA ----------------------------------------------------------------------------
# An array reduced over `axes` is seen as rows (its kept axes in order: the
# output's elements) of `count` terms (its reduced axes in order): term q of
# row r lies at _at(r, kept sizes, their strides) + _at(q, reduced sizes, their
# strides).  Sums are `Reduce` stages, one block per row; a row much longer
# than the rows are many is split into parts, one block each, summed by a
# second stage.  Maxima are two Maps: per row, the first maximum of each of
# `P` interleaved slices (slice c holds terms c, c + P, ...: neighbouring
# threads read neighbouring terms), then the first of those.

SPLIT_TERMS = 4096       # a row is split into parts of at least this many terms
SPLIT_BLOCKS = 1024      # ... while there are fewer rows than this


def split_axes(shape, axes) -> tuple:
    """(kept sizes, their element strides, reduced sizes, their strides) of an
    array of `shape` reduced over `axes`; a side without axes is one axis of
    size 1."""
    st = [prod(shape[i + 1:]) for i in range(len(shape))]
    kept = [(int(d), s) for i, (d, s) in enumerate(zip(shape, st)) if i not in axes]
    red = [(int(d), s) for i, (d, s) in enumerate(zip(shape, st)) if i in axes]
    kept, red = kept or [(1, 0)], red or [(1, 0)]
    return (tuple(d for d, _ in kept), tuple(s for _, s in kept),
            tuple(d for d, _ in red), tuple(s for _, s in red))


def split_parts(rows: int, count: int) -> int:
    """Into how many parts each row's sum is split (1: none)."""
    if rows >= SPLIT_BLOCKS or count < 2 * SPLIT_TERMS:
        return 1
    return max(1, min(count // SPLIT_TERMS, -(-SPLIT_BLOCKS // rows)))


def _slices(count: int) -> int:
    """How many interleaved slices a row's maximum is taken over: about the
    square root of its length, so both Maps do as much per thread."""
    return max(1, min(count, int(np.ceil(np.sqrt(count)))))


def sum_stages(x: str, shape, axes, out: str, scale: float = 1.0, tmp: str = "tmp0"):
    """(stages, scratch sizes): `out` (flat, the kept axes in order) = scale *
    the sum of `x` [shape] over `axes`; `tmp` names the scratch of split rows."""
    ks, kst, rs, rst = split_axes(shape, axes)
    rows, count = prod(ks), prod(rs)
    S = split_parts(rows, count)
    L = -(-count // S)
    extra = (ks, kst, rs, rst, S, L, count, float(scale))
    xr, orow = flat(x, shape), flat(out, ks)
    if S == 1:
        return [RowSums(sum_term, sum_finish, rows, count, [xr, orow, orow], extra)], []
    part = Ref(tmp, (rows * S,))
    return [RowSums(sum_term, sum_part, rows * S, L, [xr, part, orow], extra),
            RowSums(part_term, sum_finish, rows, S, [xr, part, orow], extra)], [rows * S]


def first_max_stages(x: str, shape, axes, out: Ref, write: bool, tmp: str = "tmp0"):
    """(stages, scratch sizes, their arguments and extra arguments): tmp[r * P]
    = the term of row r holding its first maximum (P: its slices), from the
    slices' firsts; with `write`, out.flat[r] = that maximum."""
    ks, kst, rs, rst = split_axes(shape, axes)
    rows, count = prod(ks), prod(rs)
    P = _slices(count)
    args = [flat(x, shape), Ref(tmp, (rows * P,)), out]
    extra = (ks, kst, rs, rst, P, count, write)
    return ([Map(first_max_slice, rows * P, args, extra),
             Map(first_max_row, rows, args, extra)], [(rows * P, "int64")], args, extra)


def max_stages(x: str, shape, axes, out: str, tmp: str = "tmp0"):
    """(stages, scratch sizes): `out` (flat, the kept axes in order) = the
    maximum of `x` [shape] over `axes` (NaN where a row holds one)."""
    ks = split_axes(shape, axes)[0]
    return first_max_stages(x, shape, axes, flat(out, ks), True, tmp)[:2]


@cuda_kernel
def _at(i, sizes, strides):
    """The offset of element i (C order over `sizes`) at `strides`."""
    off = 0
    for d in range(len(sizes) - 1, -1, -1):
        off += (i % sizes[d]) * strides[d]
        i //= sizes[d]
    return off


@cuda_kernel
def sum_term(r, j, x, part, out, ks, kst, rs, rst, S, L, count, scale):
    """Term j of part r % S of row r // S (of row r itself when S = 1)."""
    q = (r % S) * L + j
    if q >= count:
        return T(0)
    return x[_at(r // S, ks, kst) + _at(q, rs, rst)]


@cuda_kernel
def sum_part(r, total, x, part, out, ks, kst, rs, rst, S, L, count, scale):
    part[r] = total


@cuda_kernel
def part_term(r, j, x, part, out, ks, kst, rs, rst, S, L, count, scale):
    return part[r * S + j]


@cuda_kernel
def sum_finish(r, total, x, part, out, ks, kst, rs, rst, S, L, count, scale):
    out[r] = total * scale


@cuda_kernel
def _beats(v, m):
    """Whether v takes m's place as a maximum: it is greater, or the first NaN
    (NumPy's max and argmax)."""
    return v > m or v != v and m == m


@cuda_kernel
def first_max_slice(k, x, first, out, ks, kst, rs, rst, P, count, write):
    """first[k] = the term of slice k % P of row k // P holding its first maximum."""
    base = _at(k // P, ks, kst)
    best = k % P
    m = x[base + _at(best, rs, rst)]
    for q in range(best + P, count, P):
        v = x[base + _at(q, rs, rst)]
        if _beats(v, m):
            best = q
            m = v
    first[k] = best


@cuda_kernel
def first_max_row(r, x, first, out, ks, kst, rs, rst, P, count, write):
    """first[r * P] = the term of row r holding its first maximum, from its
    slices'; with `write`, out[r] = that maximum."""
    base = _at(r, ks, kst)
    best = first[r * P]
    m = x[base + _at(best, rs, rst)]
    for c in range(1, P):
        q = first[r * P + c]
        v = x[base + _at(q, rs, rst)]
        if _beats(v, m) or q < best and not _beats(m, v):
            best = q
            m = v
    first[r * P] = best
    if write:
        out[r] = m


@cuda_kernel
def mask_row(k, x, first, out, ks, kst, rs, rst, P, count, write):
    """Term k % count of row k // count: 1 at the row's first maximum, else 0."""
    r = k // count
    q = k % count
    out[_at(r, ks, kst) + _at(q, rs, rst)] = T(1) if q == first[r * P] else T(0)


@cuda_kernel
def spread(k, g, out, shape, st, scale):
    """out.flat[k] = g at the strides `st` of out's axes (0 where g is broadcast)."""
    out[k] = g[_at(k, shape, st)] * scale


# ---- layers -------------------------------------------------------------------------

def _axes_kw(ctx, what, axes):
    if axes is None or isinstance(axes, int) and not isinstance(axes, bool):
        return axes
    if isinstance(axes, (list, tuple)) and all(isinstance(a, int) for a in axes):
        return list(axes)
    ctx.fail(f"{what}: axes must be an int or a list of ints, got {axes!r}")


@layer("sum")
def sum_(ctx, x, axes=None, *, keepdims=False):
    """Sum over `axes` (ints counting the batch axis as 0; default all)."""
    return ctx.emit("sum", [x], {"axes": _axes_kw(ctx, "sum", axes), "keepdims": bool(keepdims)})


@layer("mean")
def mean(ctx, x, axes=None, *, keepdims=False):
    """Mean over `axes` (ints counting the batch axis as 0; default all)."""
    return ctx.emit("mean", [x], {"axes": _axes_kw(ctx, "mean", axes),
                                  "keepdims": bool(keepdims)})


@layer("max")
def max_(ctx, x, axes=None, *, keepdims=False):
    """Maximum over `axes`; the gradient goes to the first maximum."""
    return ctx.emit("max", [x], {"axes": _axes_kw(ctx, "max", axes), "keepdims": bool(keepdims)})
