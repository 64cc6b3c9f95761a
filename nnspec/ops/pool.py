"""Pooling, 1-d, 2-d and 3-d ([B, C, L], [B, C, H, W] or [B, C, D, H, W]), and
unpooling.

    maxpool(x)                    max over each window (padding never wins)
    maxpool_switches(x)           int64 index of each window's first maximum,
                                  flat within its channel's plane (H*W or L), as
                                  PyTorch's max_unpool indices; not differentiable
    unpool(v, switches[, like])   v placed at the switch positions of a zero
                                  plane; output like's shape or [B, C, *size].
                                  Where several windows chose one position
                                  (overlapping windows), the value is placed
                                  once, not summed, as PyTorch's max_unpool2d
                                  and ONNX's MaxUnpool: the first such window's
                                  (row-major order; PyTorch and ONNX leave which
                                  one unspecified).  With attr add=true the
                                  values are summed: maxpool's gradient.
    gather_switches(g, switches)  g read at the switch positions (unpool's
                                  adjoint: with add=false, zero at the windows
                                  whose value unpool does not place)
    avgpool(x)                    mean over each window; count_include_pad as PyTorch
    avgpool_grad(g, x)            avgpool's adjoint (x gives the shape)

Attrs, per spatial axis: `kernel`, `stride`, `pad` (an int for both sides, or
[lo, hi]), `dilation` (optional, default 1: a window's taps are d apart); and
`ceil_mode`, `count_include_pad` (avgpool, default True: the count is the
taps inside the padded input).  Output size per axis, with the window's
extent e = d (k - 1) + 1: floor((n + lo + hi - e) / s) + 1 (ceil with
ceil_mode, the last window starting inside the input or its left padding).
maxpool's gradient is unpool(g, maxpool_switches(x), x; add=true), with the
pool's `kernel`, `stride`, `pad` and `dilation` among unpool's attrs: the
windows the switches were chosen in (each switch inside its window), which
let the CUDA kernel gather each position's values from the windows holding it
(gather_switches and unpool pass them on to their gradients).  Without them
a CUDA unpool places each channel's values from one thread.

The CUDA kernels are gathers (no atomics): a thread per output element of
maxpool, maxpool_switches and avgpool scans its window; one per input
element of avgpool_grad and of unpool with the windows' geometry loops over
the windows holding that element.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, T, cuda_kernel, flat, fmt, kernel, known, layer,
                   pad_amounts, prange, prod, register)
from .conv import _as4, _per_axis, side_pads

# seconds a pooling kernel takes to compile (backend/precompile.py): 3-5; the
# max pools share their code: maxpool_switches takes 0.9 s after maxpool
COMPILE_SECONDS_DEFAULT = 4
COMPILE_TOGETHER = (("maxpool", "maxpool_switches"),)
COMPILE_SECONDS_SHARED = {"maxpool": 1, "maxpool_switches": 1}


def pads(attrs) -> list:
    """(lo, hi) per spatial axis: `pad` holds an int (both sides) or [lo, hi]."""
    return [(p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in attrs["pad"]]


def dilations(attrs) -> list:
    return list(attrs.get("dilation") or [1] * len(attrs["kernel"]))


def pool_len(name, n, k, s, d, pad, ceil_mode, axis) -> int:
    """Output size along one axis; `pad` an int (PyTorch's rule: at most half
    the window) or (lo, hi) (each side short of the window's extent, so that
    no window lies wholly in the padding)."""
    if not known(n):
        return n
    span = d * (k - 1) + 1
    lo, hi = (pad, pad) if isinstance(pad, int) else pad
    if isinstance(pad, int) and pad * 2 > k:
        raise ShapeError(f"{name}: pad {pad} is more than half the window {k}")
    if not isinstance(pad, int) and max(lo, hi) >= span:
        raise ShapeError(f"{name}: pad [{lo}, {hi}] along the {axis} reaches the window's "
                         f"extent {span}: a window would hold only padding")
    if n + lo + hi < span:
        raise ShapeError(f"{name}: input {axis} {n} (padded to {n + lo + hi}) is smaller than "
                         f"the window {span}" + (f" (kernel {k}, dilation {d})" if d > 1 else ""))
    extent = n + lo + hi - span
    out = (-(-extent // s) if ceil_mode else extent // s) + 1
    if ceil_mode and (out - 1) * s >= n + lo:
        out -= 1
    return out


AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
LAYOUT = {1: "L", 2: "H, W", 3: "D, H, W"}


def pool_shape(name, attrs, x) -> tuple:
    nd = len(attrs["kernel"])
    if len(x) != nd + 2:
        raise ShapeError(f"{name}: a {nd}-d pool needs a [B, C, {LAYOUT[nd]}] input, got "
                         f"{fmt(x)}")
    return tuple(x[:2]) + tuple(
        pool_len(name, n, k, s, d, p, attrs.get("ceil_mode", False), ax)
        for n, k, s, d, p, ax in zip(x[2:], attrs["kernel"], attrs["stride"], dilations(attrs),
                                     attrs["pad"], AXES[nd]))


def _extra(attrs):
    """Kernel arguments: per-axis int64 arrays (kernel, stride, dilation, pad
    before, pad after), 1-d and 2-d padded out to 3-d with unit D (and H) axes."""
    nd = len(attrs["kernel"])
    a = lambda xs, fill: np.asarray([fill] * (3 - nd) + list(xs), np.int64)  # noqa: E731
    ps = pads(attrs)
    return (a(attrs["kernel"], 1), a(attrs["stride"], 1), a(dilations(attrs), 1),
            a([lo for lo, _ in ps], 0), a([hi for _, hi in ps], 0))


WINDOW = ("kernel", "stride", "pad", "dilation")


def _window_attrs(attrs) -> dict:
    """The pool geometry among `attrs` (see the module's docstring)."""
    return {k: attrs[k] for k in WINDOW if k in attrs}


def _dims(shape) -> tuple:
    """A [B, C, ...] shape's spatial sizes as 3 ints, 1-d and 2-d padded with
    unit D (and H) axes as `_extra`."""
    sp = [int(d) for d in shape[2:]]
    return tuple([1] * (3 - len(sp)) + sp)


def _geometry(attrs, xshape, oshape) -> tuple:
    """A CUDA body's extras: the pool input's and output's spatial sizes,
    then kernel, stride, dilation, pad before and after (`_extra`), each 3
    ints."""
    return (_dims(xshape), _dims(oshape)) + tuple(tuple(int(v) for v in a)
                                                  for a in _extra(attrs))


def _pool_cuda(fn, attrs, x, out_shape, extra=()) -> Cuda:
    """A thread per output element: fn(k, x, out, *geometry, *extra)."""
    return Cuda([Map(fn, prod(out_shape), [flat("in0", x), flat("out", out_shape)],
                     _geometry(attrs, x, out_shape) + tuple(extra))])


def _taps(o, n, k, s, d, lo, hi):
    """Output position o's window along one axis: the slice of its taps inside
    the input, and how many taps lie inside the padded input (avgpool's
    count with the padding included)."""
    start = o * s - lo
    j0 = -(start // d) if start < 0 else 0           # first tap at or after 0
    j1 = min(k, (n - 1 - start) // d + 1)            # past the last tap before n
    first = start + j0 * d
    return slice(first, start + (j1 - 1) * d + 1, d), min(k, -(-(n + hi - start) // d))


def _windows(attrs, xshape):
    """Per output position: (output index, input slices, include-pad count)."""
    outs = pool_shape("pool", attrs, xshape)[2:]
    ranges = [[_taps(o, n, k, s, d, lo, hi) for o in range(m)]
              for n, k, s, d, (lo, hi), m in zip(xshape[2:], attrs["kernel"], attrs["stride"],
                                                  dilations(attrs), pads(attrs), outs)]
    for idx in np.ndindex(*outs):
        sl = tuple(ranges[a][i][0] for a, i in enumerate(idx))
        cnt = prod(ranges[a][i][1] for a, i in enumerate(idx))
        yield idx, sl, cnt


class MaxPool(Op):
    name = "maxpool"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        return pool_shape(self.name, attrs, shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        y = np.empty(pool_shape(self.name, attrs, x.shape), x.dtype)
        for idx, sl, _ in _windows(attrs, x.shape):
            w = x[(slice(None), slice(None)) + sl]
            y[(slice(None), slice(None)) + idx] = w.reshape(w.shape[:2] + (-1,)).max(-1)
        return y

    def grad(self, gb, node, g):
        x = node.inputs[0]
        sw = gb.add("maxpool_switches", (x,), node.attrs)
        return [gb.add("unpool", (g, sw, x), {"add": True, **_window_attrs(node.attrs)})]

    def kernel(self, attrs):
        return maxpool, _extra(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _pool_cuda(maxpool_cuda, attrs, in_shapes[0], out_shape)

    def macs(self, attrs, in_shapes, out_shape):
        return 0


class MaxPoolSwitches(MaxPool):
    name = "maxpool_switches"
    differentiable = False

    def infer(self, attrs, shapes, dtypes):
        return pool_shape(self.name, attrs, shapes[0]), "int64"

    def reference(self, attrs, x):
        y = np.empty(pool_shape(self.name, attrs, x.shape), np.int64)
        plane = x.shape[2:]
        for idx, sl, _ in _windows(attrs, x.shape):
            w = x[(slice(None), slice(None)) + sl]
            arg = w.reshape(w.shape[:2] + (-1,)).argmax(-1)
            local = np.unravel_index(arg, w.shape[2:])
            glob = [s.start + loc * s.step for loc, s in zip(local, sl)]
            y[(slice(None), slice(None)) + idx] = np.ravel_multi_index(glob, plane)
        return y

    def kernel(self, attrs):
        return maxpool_switches, _extra(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        return _pool_cuda(maxpool_switches_cuda, attrs, in_shapes[0], out_shape)


class Unpool(Op):
    name = "unpool"

    def infer(self, attrs, shapes, dtypes):
        v, sw = tuple(shapes[0]), tuple(shapes[1])
        if v != sw:
            raise ShapeError(f"unpool: values {fmt(v)} and switches {fmt(sw)} differ in shape")
        if dtypes[1] != "int64":
            raise ShapeError(f"unpool: switches must be int64 indices, got {dtypes[1]}")
        if len(shapes) == 3:
            like = tuple(shapes[2])
            if like[:2] != v[:2]:
                raise ShapeError(f"unpool: values {fmt(v)} and the output {fmt(like)} differ "
                                 f"in batch or channels")
            return like, dtypes[0]
        size = attrs.get("size")
        if size is None or len(size) != len(v) - 2:
            raise ShapeError(f"unpool: needs `size` ({len(v) - 2} ints) or a shape input")
        return v[:2] + tuple(size), dtypes[0]

    def reference(self, attrs, v, sw, like=None):
        shape = like.shape if like is not None else v.shape[:2] + tuple(attrs["size"])
        out = np.zeros((v.shape[0] * v.shape[1], prod(shape[2:])), v.dtype)
        rows = np.repeat(np.arange(out.shape[0]), prod(v.shape[2:]))
        if attrs.get("add", False):
            np.add.at(out, (rows, sw.reshape(-1)), v.reshape(-1))
        else:
            first = _first_windows(sw, out.shape[1]).reshape(-1)
            out[rows[first], sw.reshape(-1)[first]] = v.reshape(-1)[first]
        return out.reshape(shape)

    def grad(self, gb, node, g):
        sw = node.inputs[1]
        at = {"add": bool(node.attrs.get("add", False)), **_window_attrs(node.attrs)}
        return [gb.add("gather_switches", (g, sw), at) if gb.wants(0) else None, None] + \
            [None] * (len(node.inputs) - 2)

    def kernel(self, attrs):
        add = (bool(attrs.get("add", False)),)
        return (unpool_like, add) if attrs.get("size") is None else (unpool, add)

    def cuda(self, attrs, in_shapes, out_shape):
        v = in_shapes[0]
        add = bool(attrs.get("add", False))
        ins = [flat("in0", v), flat("in1", v), flat("out", out_shape)]
        if "kernel" in attrs:       # the windows known: each position gathers
            return Cuda([Map(unpool_windows_cuda, prod(out_shape), ins,
                             _geometry(attrs, out_shape, v) + (add,))])
        return Cuda([Map(zero_cuda, prod(out_shape), [flat("out", out_shape)]),
                     Map(unpool_rows_cuda, prod(v[:2]), ins,
                         (prod(v[2:]), prod(out_shape[2:]), add))])


class GatherSwitches(Op):
    name = "gather_switches"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        g, sw = tuple(shapes[0]), tuple(shapes[1])
        if g[:2] != sw[:2] or len(g) != len(sw):
            raise ShapeError(f"gather_switches: {fmt(g)} and switches {fmt(sw)} differ in "
                             f"batch, channels or rank")
        return sw, dtypes[0]

    def reference(self, attrs, g, sw):
        gf = g.reshape(g.shape[0] * g.shape[1], -1)
        rows = np.arange(gf.shape[0])[:, None]
        out = gf[rows, sw.reshape(gf.shape[0], -1)].reshape(sw.shape)
        if not attrs.get("add", False):
            out = np.where(_first_windows(sw, gf.shape[1]), out, 0).astype(out.dtype)
        return out

    def grad(self, gb, node, g2):
        g, sw = node.inputs
        return [gb.add("unpool", (g2, sw, g), {"add": bool(node.attrs.get("add", False)),
                                               **_window_attrs(node.attrs)}), None]

    def kernel(self, attrs):
        return gather_switches, (bool(attrs.get("add", False)),)

    def cuda(self, attrs, in_shapes, out_shape):
        g, sw = in_shapes
        rows, nw, plane = prod(sw[:2]), prod(sw[2:]), prod(g[2:])
        ins, out = [flat("in0", g), flat("in1", sw)], flat("out", sw)
        if attrs.get("add", False):
            return Cuda([Map(gather_switches_cuda, prod(sw), ins + [flat("in1", sw), out],
                             (nw, plane, True))])
        if "kernel" in attrs:       # the windows known: a scan of those holding the switch
            return Cuda([Map(gather_first_windows_cuda, prod(sw), ins + [out],
                             _geometry(attrs, g, sw))])
        first = flat("tmp0", (rows * plane,))
        return Cuda([Map(zero_cuda, rows * plane, [first]),
                     Map(first_windows_cuda, rows, [flat("in1", sw), first], (nw, plane)),
                     Map(gather_switches_cuda, prod(sw), ins + [first, out],
                         (nw, plane, False))],
                    temps=[(rows * plane, "int64")])


def _first_windows(sw, plane: int) -> np.ndarray:
    """Whether each window is the first (row-major) of its plane to choose
    its switch position: the one whose value unpool places."""
    n = sw.shape[0] * sw.shape[1]
    keys = (np.arange(n)[:, None] * plane + sw.reshape(n, -1)).reshape(-1)
    first = np.zeros(keys.size, bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first.reshape(sw.shape)


class AvgPool(Op):
    name = "avgpool"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        return pool_shape(self.name, attrs, shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        y = np.empty(pool_shape(self.name, attrs, x.shape), x.dtype)
        incl = attrs.get("count_include_pad", True)
        for idx, sl, cnt in _windows(attrs, x.shape):
            w = x[(slice(None), slice(None)) + sl]
            w = w.reshape(w.shape[:2] + (-1,))
            y[(slice(None), slice(None)) + idx] = w.sum(-1) / (cnt if incl else w.shape[-1])
        return y

    def grad(self, gb, node, g):
        return [gb.add("avgpool_grad", (g, node.inputs[0]), node.attrs)]

    def kernel(self, attrs):
        return avgpool, _extra(attrs) + (bool(attrs.get("count_include_pad", True)),)

    def cuda(self, attrs, in_shapes, out_shape):
        return _pool_cuda(avgpool_cuda, attrs, in_shapes[0], out_shape,
                          (bool(attrs.get("count_include_pad", True)),))

    def macs(self, attrs, in_shapes, out_shape):
        return 0


class AvgPoolGrad(Op):
    name = "avgpool_grad"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        g, x = tuple(shapes[0]), tuple(shapes[1])
        want = pool_shape(self.name, attrs, x)
        if g != want:
            raise ShapeError(f"avgpool_grad: gradient {fmt(g)} does not match the pool's "
                             f"output {fmt(want)}")
        return x, dtypes[0]

    def reference(self, attrs, g, x):
        dx = np.zeros(x.shape, g.dtype)
        incl = attrs.get("count_include_pad", True)
        for idx, sl, cnt in _windows(attrs, x.shape):
            n = prod(len(range(s.start, s.stop, s.step)) for s in sl)
            gi = g[(slice(None), slice(None)) + idx]
            dx[(slice(None), slice(None)) + sl] += (gi / (cnt if incl else n)).reshape(
                gi.shape + (1,) * len(sl))
        return dx

    def grad(self, gb, node, g2):
        return [gb.add("avgpool", (g2,), node.attrs), None]

    def kernel(self, attrs):
        return avgpool_grad, _extra(attrs) + (bool(attrs.get("count_include_pad", True)),)

    def cuda(self, attrs, in_shapes, out_shape):
        g = in_shapes[0]
        return Cuda([Map(avgpool_grad_cuda, prod(out_shape), [flat("in0", g),
                                                              flat("out", out_shape)],
                         _geometry(attrs, out_shape, g)
                         + (bool(attrs.get("count_include_pad", True)),))])


for _op in (MaxPool(), MaxPoolSwitches(), Unpool(), GatherSwitches(), AvgPool(), AvgPoolGrad()):
    register(_op)


# ---- kernels ---------------------------------------------------------------------

@kernel
def _win(o, s, k, d, lo, hi, n):
    """Output position o's window along one axis: (first tap inside the input,
    number of taps inside it, taps inside the padded input); see `_taps`.
    Undilated windows (d = 1) need no division: an int64 division is most of
    a small window's cost (Inception's 3x3 average pools)."""
    start = o * s - lo
    if d == 1:
        j0 = -start if start < 0 else 0
        return start + j0, min(k, n - start) - j0, min(k, n + hi - start)
    j0 = (-start + d - 1) // d if start < 0 else 0
    j1 = min(k, (n - 1 - start) // d + 1)
    return start + j0 * d, j1 - j0, min(k, (n + hi - start + d - 1) // d)


@kernel
def _max2x2(x4, o4, s4, b, c, want_sw, Ho, Wo):
    """One plane of a 2x2 max pool whose windows tile it: straight-line selects
    over unsigned indices, which vectorise.  The first maximum in row-major
    order wins (the switches compare pairs, then the pairs' winners; ties keep
    the earlier)."""
    W = x4.shape[3]
    for oy in range(Ho):
        r0, r1 = x4[b, c, 2 * oy], x4[b, c, 2 * oy + 1]
        if want_sw:
            base = 2 * oy * W
            srow = s4[b, c, oy]
            for ox in range(Wo):
                q0, q1 = np.uint64(2 * ox), np.uint64(2 * ox + 1)
                a0, a1, a2, a3 = r0[q0], r0[q1], r1[q0], r1[q1]
                m01, m23 = a1 > a0, a3 > a2
                v01 = a1 if m01 else a0
                v23 = a3 if m23 else a2
                i01 = np.int64(1) if m01 else np.int64(0)
                i23 = W + 1 if m23 else W
                i = i23 if v23 > v01 else i01
                srow[np.uint64(ox)] = base + 2 * ox + i
        else:
            orow = o4[b, c, oy]
            for ox in range(Wo):
                q0, q1 = np.uint64(2 * ox), np.uint64(2 * ox + 1)
                v = r0[q0]
                u = r0[q1]
                v = u if u > v else v
                u = r1[q0]
                v = u if u > v else v
                u = r1[q1]
                orow[np.uint64(ox)] = u if u > v else v


@kernel
def _max_plane(x4, o4, s4, b, c, want_sw, kern, stride, lo, hi, Ho, Wo):
    """One plane of a 1-d or 2-d undilated max pool, in two passes per output
    row: the maximum down each column of the window's rows (with its first
    row), contiguous and vectorised, then along each window's columns, with
    selects, not branches (on random data a branch per tap mispredicts half
    the time).  The first maximum in row-major order wins: among columns whose
    maxima tie, the one whose maximum lies in the earliest row, then the
    leftmost.  ResNet's 3x3 stride-2 stem pool took 15.5 ms (values) and 17.6
    ms (switches) in the general loop at batch 8."""
    H, W = x4.shape[2], x4.shape[3]
    colv = np.empty(W, dtype=x4.dtype)
    colr = np.empty(W if want_sw else 1, dtype=np.int64)
    for oy in range(Ho):
        y0, ny, _ = _win(oy, stride[1], kern[1], 1, lo[1], hi[1], H)
        first = x4[b, c, y0]
        for q in range(W):
            colv[q] = first[q]
        if want_sw:
            for q in range(W):
                colr[q] = y0
        for i in range(1, ny):
            r = x4[b, c, y0 + i]
            if want_sw:
                for q in range(W):
                    v, u = r[q], colv[q]
                    m = v > u
                    colv[q] = v if m else u
                    colr[q] = y0 + i if m else colr[q]
            else:
                for q in range(W):
                    v, u = r[q], colv[q]
                    colv[q] = v if v > u else u
        for ox in range(Wo):
            x0, nx, _ = _win(ox, stride[2], kern[2], 1, lo[2], hi[2], W)
            best = colv[x0]
            if want_sw:
                row = colr[x0]
                at = x0
                for j in range(1, nx):
                    v, rj = colv[x0 + j], colr[x0 + j]
                    m = (v > best) | ((v == best) & (rj < row))
                    best = v if m else best
                    row = rj if m else row
                    at = x0 + j if m else at
                s4[b, c, oy, ox] = row * W + at
            else:
                for j in range(1, nx):
                    v = colv[x0 + j]
                    best = v if v > best else best
                o4[b, c, oy, ox] = best


@kernel
def _as5(a):
    """a as [B, C, D, H, W]: a 1-d or 2-d pool's input with unit D (and H) axes."""
    n0, n1, nl = a.shape[0], a.shape[1], a.shape[a.ndim - 1]
    nh = a.shape[a.ndim - 2] if a.ndim > 3 else 1
    return a.reshape((n0, n1, a.size // max(n0 * n1 * nh * nl, 1), nh, nl))


@kernel(parallel=True)
def _maxpool(x, out, sw, want_sw, kern, stride, dil, lo, hi):
    x5, o5, s5 = _as5(x), _as5(out), _as5(sw)
    B, C, D, H, W = x5.shape
    Do, Ho, Wo = s5.shape[2], s5.shape[3], s5.shape[4]
    if not want_sw:
        Do, Ho, Wo = o5.shape[2], o5.shape[3], o5.shape[4]
    pairs = x.ndim <= 4 and kern[1] == 2 and kern[2] == 2 and \
        _tiled(kern, stride, dil, lo, Ho, Wo, H, W)
    x4, o4, s4 = _as4(x), _as4(out), _as4(sw)
    rows = x.ndim <= 4 and dil[1] == 1 and dil[2] == 1
    for t in prange(B * C):         # a plane each: ResNet-50's stem pool 108 -> ~60 ms
        b = t // C
        c = t % C
        if pairs:
            _max2x2(x4, o4, s4, b, c, want_sw, Ho, Wo)
            continue
        if rows:
            _max_plane(x4, o4, s4, b, c, want_sw, kern, stride, lo, hi, Ho, Wo)
            continue
        for oz in range(Do):
            z0, nz, _ = _win(oz, stride[0], kern[0], dil[0], lo[0], hi[0], D)
            for oy in range(Ho):
                y0, ny, _ = _win(oy, stride[1], kern[1], dil[1], lo[1], hi[1], H)
                for ox in range(Wo):
                    x0, nx, _ = _win(ox, stride[2], kern[2], dil[2], lo[2], hi[2], W)
                    best = x5[b, c, z0, y0, x0]
                    at = (z0 * H + y0) * W + x0
                    for q in range(nz):
                        zz = z0 + q * dil[0]
                        for i in range(ny):
                            yy = y0 + i * dil[1]
                            for j in range(nx):
                                xx = x0 + j * dil[2]
                                v = x5[b, c, zz, yy, xx]
                                if v > best:
                                    best = v
                                    at = (zz * H + yy) * W + xx
                    if want_sw:
                        s5[b, c, oz, oy, ox] = at
                    else:
                        o5[b, c, oz, oy, ox] = best


@kernel
def maxpool(x, out, kern, stride, dil, lo, hi):
    _maxpool(x, out, np.zeros((1, 1, 1, 1), np.int64), False, kern, stride, dil, lo, hi)


@kernel
def maxpool_switches(x, out, kern, stride, dil, lo, hi):
    _maxpool(x, np.zeros((1, 1, 1, 1), x.dtype), out, True, kern, stride, dil, lo, hi)


@kernel
def _unpool(v, sw, out, add):
    # (explicit sizes: reshape with -1 miscompiles inside this parallel kernel)
    n = v.shape[0] * v.shape[1]
    vf = v.reshape((n, v.size // n))
    sf = sw.reshape((n, v.size // n))
    of = out.reshape((n, out.size // n))
    for t in range(n):
        for i in range(of.shape[1]):
            of[t, i] = 0
        if add:
            for k in range(vf.shape[1]):
                of[t, sf[t, k]] += vf[t, k]
        else:       # backwards: the first window to choose a position writes last
            for k in range(vf.shape[1] - 1, -1, -1):
                of[t, sf[t, k]] = vf[t, k]


@kernel
def unpool(v, sw, out, add):
    _unpool(v, sw, out, add)


@kernel
def unpool_like(v, sw, like, out, add):
    _unpool(v, sw, out, add)


@kernel
def gather_switches(g, sw, out, add):
    n = g.shape[0] * g.shape[1]
    gf = g.reshape((n, g.size // n))
    sf = sw.reshape((n, sw.size // n))
    of = out.reshape((n, out.size // n))
    seen = np.zeros(0 if add else gf.shape[1], np.bool_)
    for t in range(n):
        for i in range(of.shape[1]):
            s = sf[t, i]
            if add or not seen[s]:
                of[t, i] = gf[t, s]
            else:           # a later window: unpool did not place its value
                of[t, i] = 0
            if not add:
                seen[s] = True
        if not add:
            for i in range(of.shape[1]):
                seen[sf[t, i]] = False


@kernel
def _tiled(kern, stride, dil, lo, Ho, Wo, H, W):
    """Windows that tile the input: stride = kernel, no padding or dilation,
    every window inside (LeNet's 2x2 pools): a fast path of plain row loops."""
    return (stride[1] == kern[1] and stride[2] == kern[2] and lo[1] == 0 and lo[2] == 0
            and dil[1] == 1 and dil[2] == 1 and Ho * kern[1] <= H and Wo * kern[2] <= W)


@kernel
def _avg_tiles(xp, op, kh, kw, r):
    """One plane of an average pool whose windows tile it: row loops."""
    T = op.dtype.type
    for oy in range(op.shape[0]):
        orow = op[oy]
        for ox in range(op.shape[1]):
            orow[ox] = T(0)
        for ky in range(kh):
            xrow = xp[oy * kh + ky]
            for ox in range(op.shape[1]):
                acc = T(0)
                for kx in range(kw):
                    acc += xrow[ox * kw + kx]
                orow[ox] += acc
        for ox in range(op.shape[1]):
            orow[ox] *= r


@kernel
def _avg_tiles_grad(gp, dp, kh, kw, r):
    """Its gradient into a zeroed plane dp."""
    for oy in range(gp.shape[0]):
        grow = gp[oy]
        for ky in range(kh):
            drow = dp[oy * kh + ky]
            for ox in range(gp.shape[1]):
                v = grow[ox] * r
                for kx in range(kw):
                    drow[ox * kw + kx] = v


@kernel
def _avg_window(x5, b, c, z0, nz, y0, ny, x0, nx, dil):
    """The sum over one window's taps inside the input."""
    acc = x5.dtype.type(0)
    for q in range(nz):
        for i in range(ny):
            for j in range(nx):
                acc += x5[b, c, z0 + q * dil[0], y0 + i * dil[1], x0 + j * dil[2]]
    return acc


@kernel
def _avg_plane(src, dst, kern, stride, lo, hi, include_pad, grad):
    """One plane of a 1-d or 2-d average pool with undilated windows, each
    window walked along the input's rows: dst = the windows' means of the
    input src, or (grad) dst, the input's gradient, zeroed, += each window's
    share of src, the output's gradient."""
    T = dst.dtype.type
    out = src if grad else dst      # the output plane: one window per element
    H, W = (dst if grad else src).shape
    for oy in range(out.shape[0]):
        y0, ny, cy = _win(oy, stride[1], kern[1], 1, lo[1], hi[1], H)
        for ox in range(out.shape[1]):
            x0, nx, cx = _win(ox, stride[2], kern[2], 1, lo[2], hi[2], W)
            count = T(cy * cx if include_pad else ny * nx)
            if grad:
                v = src[oy, ox] / count
                for i in range(ny):
                    row = dst[y0 + i]
                    for j in range(nx):
                        row[x0 + j] += v
            else:
                acc = T(0)
                for i in range(ny):
                    row = src[y0 + i]
                    for j in range(nx):
                        acc += row[x0 + j]
                dst[oy, ox] = acc / count


@kernel(parallel=True)
def avgpool(x, out, kern, stride, dil, lo, hi, include_pad):
    x5, o5 = _as5(x), _as5(out)
    B, C, D, H, W = x5.shape
    Do, Ho, Wo = o5.shape[2], o5.shape[3], o5.shape[4]
    T = out.dtype.type
    tiles = x.ndim <= 4 and _tiled(kern, stride, dil, lo, Ho, Wo, H, W)
    flat = x.ndim <= 4 and dil[1] == 1 and dil[2] == 1
    x4, o4 = _as4(x), _as4(out)
    r = T(1) / T(kern[1] * kern[2])
    for t in prange(B * C):         # a plane each (Inception's 3x3 pools: 2x on two cores)
        b = t // C
        c = t % C
        if tiles:
            _avg_tiles(x4[b, c], o4[b, c], kern[1], kern[2], r)
            continue
        if flat:
            _avg_plane(x4[b, c], o4[b, c], kern, stride, lo, hi, include_pad, False)
            continue
        for oz in range(Do):
            z0, nz, cz = _win(oz, stride[0], kern[0], dil[0], lo[0], hi[0], D)
            for oy in range(Ho):
                y0, ny, cy = _win(oy, stride[1], kern[1], dil[1], lo[1], hi[1], H)
                for ox in range(Wo):
                    x0, nx, cx = _win(ox, stride[2], kern[2], dil[2], lo[2], hi[2], W)
                    acc = _avg_window(x5, b, c, z0, nz, y0, ny, x0, nx, dil)
                    o5[b, c, oz, oy, ox] = acc / T(cz * cy * cx if include_pad else nz * ny * nx)


@kernel(parallel=True)
def avgpool_grad(g, x, out, kern, stride, dil, lo, hi, include_pad):
    g5, d5 = _as5(g), _as5(out)
    B, C, D, H, W = d5.shape
    Do, Ho, Wo = g5.shape[2], g5.shape[3], g5.shape[4]
    T = out.dtype.type
    tiles = x.ndim <= 4 and _tiled(kern, stride, dil, lo, Ho, Wo, H, W)
    flat = x.ndim <= 4 and dil[1] == 1 and dil[2] == 1
    g4, d4 = _as4(g), _as4(out)
    r = T(1) / T(kern[1] * kern[2])
    out.reshape(out.size)[:] = 0
    for t in prange(B * C):         # a plane each: each writes its own plane only
        b = t // C
        c = t % C
        if tiles:
            _avg_tiles_grad(g4[b, c], d4[b, c], kern[1], kern[2], r)
            continue
        if flat:
            _avg_plane(g4[b, c], d4[b, c], kern, stride, lo, hi, include_pad, True)
            continue
        for oz in range(Do):
            z0, nz, cz = _win(oz, stride[0], kern[0], dil[0], lo[0], hi[0], D)
            for oy in range(Ho):
                y0, ny, cy = _win(oy, stride[1], kern[1], dil[1], lo[1], hi[1], H)
                for ox in range(Wo):
                    x0, nx, cx = _win(ox, stride[2], kern[2], dil[2], lo[2], hi[2], W)
                    v = g5[b, c, oz, oy, ox] / T(cz * cy * cx if include_pad else nz * ny * nx)
                    for q in range(nz):
                        for i in range(ny):
                            for j in range(nx):
                                d5[b, c, z0 + q * dil[0], y0 + i * dil[1], x0 + j * dil[2]] += v


# ---- CUDA kernels -------------------------------------------------------------------
# Flat arrays; n, m: the pool input's and output's spatial sizes (z, y, x);
# kern, stride, dil, lo, hi per axis (`_geometry`).

@cuda_kernel
def _split(k, m):
    """Flat index k of a [rows, *m] array as (row, z, y, x) (a depth of 1 skips
    two divisions: on a GPU they are most of an index's cost)."""
    x = k % m[2]
    r = k // m[2]
    y = r % m[1]
    r = r // m[1]
    if m[0] == 1:
        return r, 0, y, x
    return r // m[0], r % m[0], y, x


@cuda_kernel
def _cwin(o, s, k, d, lo, hi, n):
    """`_win` on the device (no taps: count 0)."""
    start = o * s - lo
    j0 = (-start + d - 1) // d if start < 0 else 0
    j1 = min(k, (n - 1 - start) // d + 1)
    return start + j0 * d, max(j1 - j0, 0), min(k, (n + hi - start + d - 1) // d)


@cuda_kernel
def _window(k, n, m, kern, stride, dil, lo, hi):
    """Output element k's window: the offset of its input plane, its first tap
    inside the input and its number of taps inside it per axis, and its
    count of taps inside the padded input."""
    t, oz, oy, ox = _split(k, m)
    z0, nz, cz = _cwin(oz, stride[0], kern[0], dil[0], lo[0], hi[0], n[0])
    y0, ny, cy = _cwin(oy, stride[1], kern[1], dil[1], lo[1], hi[1], n[1])
    x0, nx, cx = _cwin(ox, stride[2], kern[2], dil[2], lo[2], hi[2], n[2])
    return t * n[0] * n[1] * n[2], (z0, y0, x0), (nz, ny, nx), cz * cy * cx


@cuda_kernel
def _scan(x, k, n, m, kern, stride, dil, lo, hi):
    """Output element k's window over x: (its maximum, the first one's flat
    position in its plane (row-major; the first NaN's where there is one, as
    NumPy's argmax; -1 without taps), the sum of its taps, their count, the
    count with the padding)."""
    base, first, taps, padded = _window(k, n, m, kern, stride, dil, lo, hi)
    best = T(0)
    at = -1
    total = T(0)
    for q in range(taps[0]):
        z = first[0] + q * dil[0]
        for i in range(taps[1]):
            row = (z * n[1] + first[1] + i * dil[1]) * n[2] + first[2]
            for j in range(taps[2]):
                p = row + j * dil[2]
                v = x[base + p]
                total += v
                if at < 0 or v > best or (v != v and best == best):
                    best = v
                    at = p
    return best, at, total, taps[0] * taps[1] * taps[2], padded


@cuda_kernel
def maxpool_cuda(k, x, out, n, m, kern, stride, dil, lo, hi):
    """out[k]: the maximum of output element k's window."""
    best, _, _, _, _ = _scan(x, k, n, m, kern, stride, dil, lo, hi)
    out[k] = best


@cuda_kernel
def maxpool_switches_cuda(k, x, out, n, m, kern, stride, dil, lo, hi):
    """out[k]: where the first maximum of output element k's window lies."""
    _, at, _, _, _ = _scan(x, k, n, m, kern, stride, dil, lo, hi)
    out[k] = at


@cuda_kernel
def avgpool_cuda(k, x, out, n, m, kern, stride, dil, lo, hi, include_pad):
    """out[k]: the mean of output element k's window."""
    _, _, total, inside, padded = _scan(x, k, n, m, kern, stride, dil, lo, hi)
    out[k] = total / T(padded if include_pad else inside)


@cuda_kernel
def _cover1(i, j, m, s, d, lo):
    """The output position along one axis whose window's tap j is input
    position i, or -1."""
    t = i + lo - j * d
    if s == 1:
        return t if 0 <= t < m else -1
    if t < 0 or t % s != 0 or t // s >= m:
        return -1
    return t // s


@cuda_kernel
def _cover(c, iz, iy, ix, m, kern, stride, dil, lo):
    """For c in [0, kernel taps): the windows holding input position (iz, iy,
    ix), in row-major order of their output positions (the taps last to
    first), as (oz, oy, ox); (-1, -1, -1) where tap c of no window is there."""
    r = c // kern[2]
    ox = _cover1(ix, kern[2] - 1 - (c - r * kern[2]), m[2], stride[2], dil[2], lo[2])
    if ox < 0:                  # the axes one at a time: most taps miss on the first
        return -1, -1, -1
    oy = _cover1(iy, kern[1] - 1 - r % kern[1], m[1], stride[1], dil[1], lo[1])
    if oy < 0:
        return -1, -1, -1
    oz = _cover1(iz, kern[0] - 1 - r // kern[1], m[0], stride[0], dil[0], lo[0])
    if oz < 0:
        return -1, -1, -1
    return oz, oy, ox


@cuda_kernel
def avgpool_grad_cuda(k, g, out, n, m, kern, stride, dil, lo, hi, include_pad):
    """out[k] (input element k): the sum over the windows holding it of their
    gradient over their count."""
    t, iz, iy, ix = _split(k, n)
    acc = T(0)
    for c in range(kern[0] * kern[1] * kern[2]):
        oz, oy, ox = _cover(c, iz, iy, ix, m, kern, stride, dil, lo)
        if oz >= 0:
            w = ((t * m[0] + oz) * m[1] + oy) * m[2] + ox
            _, _, taps, padded = _window(w, n, m, kern, stride, dil, lo, hi)
            acc += g[w] / T(padded if include_pad else taps[0] * taps[1] * taps[2])
    out[k] = acc


@cuda_kernel
def unpool_windows_cuda(k, v, sw, out, n, m, kern, stride, dil, lo, hi, add):
    """out[k] (position k of the pool's input): the values of the windows
    holding it whose switch is there, summed (add) or the first's."""
    t, iz, iy, ix = _split(k, n)
    p = (iz * n[1] + iy) * n[2] + ix
    acc = T(0)
    found = False
    for c in range(kern[0] * kern[1] * kern[2]):
        oz, oy, ox = _cover(c, iz, iy, ix, m, kern, stride, dil, lo)
        if oz >= 0 and (add or not found):
            w = ((t * m[0] + oz) * m[1] + oy) * m[2] + ox
            if sw[w] == p:
                acc += v[w]
                found = True
    out[k] = acc


@cuda_kernel
def gather_first_windows_cuda(k, g, sw, out, n, m, kern, stride, dil, lo, hi):
    """out[k] (window k): g at its switch where it is the first window
    (row-major) holding that position to choose it, else 0."""
    plane = n[0] * n[1] * n[2]
    nw = m[0] * m[1] * m[2]
    t = k // nw
    p = sw[k]
    first = -1
    if p >= 0 and p < plane:
        _, iz, iy, ix = _split(p, n)
        for c in range(kern[0] * kern[1] * kern[2]):
            oz, oy, ox = _cover(c, iz, iy, ix, m, kern, stride, dil, lo)
            if oz >= 0 and first < 0:
                w = ((t * m[0] + oz) * m[1] + oy) * m[2] + ox
                if sw[w] == p:
                    first = w
    out[k] = g[t * plane + p] if first == k else T(0)


@cuda_kernel
def zero_cuda(k, a):
    a[k] = 0


@cuda_kernel
def unpool_rows_cuda(t, v, sw, out, nw, plane, add):
    """unpool's row t (one channel of one example; `out` zeroed) from one
    thread, the windows' geometry unknown: each of its nw values placed at its
    switch, the first window's where several chose one position (written
    last), or added; switches outside the plane are skipped."""
    for i in range(nw):
        w = i if add else nw - 1 - i
        p = sw[t * nw + w]
        if p >= 0 and p < plane:
            if add:
                out[t * plane + p] += v[t * nw + w]
            else:
                out[t * plane + p] = v[t * nw + w]


@cuda_kernel
def first_windows_cuda(t, sw, first, nw, plane):
    """first[t, p] (zeroed): 1 + the first window of row t to choose position
    p, from one thread per row (0: none chose it)."""
    for i in range(nw):
        w = nw - 1 - i
        p = sw[t * nw + w]
        if p >= 0 and p < plane:
            first[t * plane + p] = w + 1


@cuda_kernel
def gather_switches_cuda(k, g, sw, first, out, nw, plane, add):
    """out[k] (window k): g at its switch; without add only where the window
    is the first to choose it (`first_windows_cuda`), else 0."""
    t = k // nw
    p = sw[k]
    if p >= 0 and p < plane and (add or first[t * plane + p] == k - t * nw + 1):
        out[k] = g[t * plane + p]
    else:
        out[k] = T(0)


# ---- layers ------------------------------------------------------------------------

def _pool_attrs(ctx, name, x, k, stride, pad, ceil_mode, dilation):
    xs = ctx.shape(x)
    nd = len(xs) - 2
    if nd not in (1, 2, 3):
        ctx.fail(f"{name}: needs a [B, C, L], [B, C, H, W] or [B, C, D, H, W] input, got "
                 f"{fmt(xs)}")
    ks = _per_axis(ctx, f"{name}: kernel", k, nd)
    ss = ks if stride is None else _per_axis(ctx, f"{name}: stride", stride, nd)
    ds = _per_axis(ctx, f"{name}: dilation", dilation, nd)
    if isinstance(pad, int) or isinstance(pad, (list, tuple)):
        ps = side_pads(ctx, f"{name}: pad", pad, nd)
    else:
        mode = ctx.choice(pad, ("valid", "same", "same_lower"), "pad")
        if not all(known(n) for n in xs[2:]):
            ctx.fail(f"{name}: pad={mode} needs the input's spatial sizes, but {fmt(xs)} has "
                     f"a dynamic one", hint="give the padding as integers")
        ps = [0] * nd if mode == "valid" else [
            list(pad_amounts(mode, n, kk, s, d)) for n, kk, s, d in zip(xs[2:], ks, ss, ds)]
    attrs = {"kernel": ks, "stride": ss, "pad": ps, "ceil_mode": bool(ceil_mode)}
    if any(d != 1 for d in ds):
        attrs["dilation"] = ds
    return attrs


@layer("maxpool")
def maxpool_layer(ctx, x, k, stride=None, *, pad=0, dilation=1, ceil_mode=False,
                  switches=False):
    """Max over k (or [kh, kw]; [kd, kh, kw] over [B, C, D, H, W]: 3-d pooling)
    windows, stride defaulting to k.  pad: an int
    or [h, w] (both sides), each side [top, bottom, left, right] ([left, right]
    in 1-d), valid, same (output ceil(n / stride), the odd pad at the end: ONNX's
    SAME_UPPER) or same_lower (at the start).  dilation spaces a window's taps.
    With switches=true it returns (values, switches), the switches for `unpool`."""
    attrs = _pool_attrs(ctx, "maxpool", x, k, stride, pad, ceil_mode, dilation)
    y = ctx.emit("maxpool", [x], attrs)
    if switches:
        return y, ctx.emit("maxpool_switches", [x], attrs)
    return y


@layer("avgpool")
def avgpool_layer(ctx, x, k, stride=None, *, pad=0, dilation=1, ceil_mode=False,
                  count_include_pad=True):
    """Mean over k (or [kh, kw], or [kd, kh, kw] in 3-d) windows, stride
    defaulting to k; pad and
    dilation as maxpool's.  Padding counts in the mean unless
    count_include_pad=false (as PyTorch); with it, the count is the window's
    taps inside the padded input."""
    attrs = _pool_attrs(ctx, "avgpool", x, k, stride, pad, ceil_mode, dilation)
    attrs["count_include_pad"] = bool(count_include_pad)
    return ctx.emit("avgpool", [x], attrs)


def _global(ctx, name, op, x):
    xs = ctx.shape(x)
    if len(xs) < 3:
        ctx.fail(f"{name}: needs a [B, C, ...] input with spatial axes, got {fmt(xs)}")
    return ctx.emit(op, [x], {"axes": list(range(2, len(xs))), "keepdims": False})


@layer("global_avgpool")
def global_avgpool(ctx, x):
    """Mean over every spatial axis: [B, C, H, W] -> [B, C]."""
    return _global(ctx, "global_avgpool", "mean", x)


@layer("global_maxpool")
def global_maxpool(ctx, x):
    """Maximum over every spatial axis: [B, C, H, W] -> [B, C]; the gradient
    goes to the first maximum."""
    return _global(ctx, "global_maxpool", "max", x)


@layer("unpool", inputs=2)
def unpool_layer(ctx, v, switches, k, stride=None, *, pad=0, size=None):
    """Places values at the positions `maxpool(..., switches=true)` recorded, zeros
    elsewhere; output size (n-1)*stride - 2*pad + k per axis unless `size` is given.
    A position several overlapping windows chose gets one value, not their sum
    (as PyTorch's max_unpool2d and ONNX's MaxUnpool): the first window's."""
    vs = ctx.shape(v)
    nd = len(vs) - 2
    ks = _per_axis(ctx, "unpool: kernel", k, nd)
    ss = ks if stride is None else _per_axis(ctx, "unpool: stride", stride, nd)
    ps = _per_axis(ctx, "unpool: pad", pad, nd, minimum=0)
    if size is None:
        size = [(n - 1) * s - 2 * p + kk for n, s, p, kk in zip(vs[2:], ss, ps, ks)]
    else:
        size = _per_axis(ctx, "unpool: size", size, nd)
    return ctx.emit("unpool", [v, switches], {"size": size})


@layer("maxout")
def maxout(ctx, x, k):
    """Max over groups of k consecutive channels (axis 1): [B, C, ...] -> [B, C/k, ...]."""
    xs = ctx.shape(x)
    if not isinstance(k, int) or k < 1 or len(xs) < 2 or xs[1] % k:
        ctx.fail(f"maxout: {k!r} must be a positive integer dividing the {xs[1]} channels "
                 f"of {fmt(xs)}")
    r = ctx.emit("reshape", [x], {"shape": [xs[1] // k, k] + list(xs[2:])})
    return ctx.emit("max", [r], {"axes": [2], "keepdims": False})
