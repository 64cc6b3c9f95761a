"""Convolutions, 1-d, 2-d and 3-d, and their transposes.

    conv(x, w[, b])                 x [B, C, (H,) W], w [O, C/groups, (kh,) kw], b [O]
    conv_grad_input(g, w, x)        dL/dx of conv (x only gives the shape)
    conv_grad_weight(x, g, w)       dL/dw of conv (w only gives the shape)
    conv_transpose(x, w[, b])       x [B, I, (H,) W], w [I, O/groups, (kh,) kw]

Attrs (all per spatial axis, lists of the same length as the kernel's axes):
`stride`, `dilation`, `pad` (each entry "valid", "same", "same_lower", "full",
"causal" or [lo, hi]), `groups`; conv_transpose has `pad` (an int or
[lo, hi] per axis) and integer `output_padding`.
Padding amounts are resolved from the input size when the kernel runs (a
"same" conv over a dynamic time axis).  Output size per axis is
floor((n + lo + hi - d(k-1) - 1) / s) + 1.

The three conv ops are each other's gradients (conv_grad_input is the adjoint
of conv in x, conv_grad_weight its adjoint in w), so every op here is
differentiable, twice.  conv_transpose(x, w) is conv_grad_input with the
conv's in/out roles swapped.

Kernels: im2col + one BLAS product per group and chunk of images, the
chunks split over Numba's threads with a one-thread BLAS each (`_plan`); a
1x1 convolution of stride 1 (ResNet's bottlenecks) is one GEMM per image in
NCHW itself, forward and both gradients (`_pointwise`); a 3x3 convolution of
stride 1 with 16+ channels on planes of 12x12 and more runs as Winograd
F(2x2, 3x3), forward and input gradient (`conv_wino_*`, chosen by
`kernel_for` from the shapes); with 16 or more
channels per group the forward, the stride-1 input gradient and the weight
gradient run channels-last, rows gathered in blocks of at most ROWS_MAX
floats (`_conv_rows`, `_grad_weight_rows`); 1-d runs as 2-d with H = 1; 3-d
runs as direct loops over the taps.
On CUDA (`Op.cuda`) every axis count runs as 3-d: im2col into a chunk of
columns and a GEMM per group (cuBLAS), then col2im for the input gradient;
small groups (depthwise) run direct, one output element per thread.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Gemm, Map, Op, Reduce, Ref, T, blas_get_threads, blas_set_threads,
                   blas_small_gemm, conv_out, cuda_kernel, flat, fmt, kernel, known, layer,
                   num_threads, pad_amounts, prange, prod, register)

PAD_CODES = {"explicit": 0, "same": 1, "valid": 2, "full": 3, "causal": 4, "same_lower": 5}
AXES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}
LAYOUT = {1: "L", 2: "H, W", 3: "D, H, W"}


# ---- attrs and shapes ------------------------------------------------------------

def _pads(attrs, ns, ks):
    """(lo, hi) per spatial axis for input sizes ns, kernel sizes ks."""
    out = []
    for p, n, k, s, d in zip(attrs["pad"], ns, ks, attrs["stride"], attrs["dilation"]):
        out.append(tuple(p) if isinstance(p, (list, tuple)) else pad_amounts(p, n, k, s, d))
    return out


def conv_out_shape(name, attrs, x, w) -> tuple:
    nd = len(w) - 2
    if len(x) != nd + 2:
        raise ShapeError(f"{name}: a {nd}-d convolution needs a [B, C, {LAYOUT[nd]}] input, "
                         f"got {fmt(x)}")
    groups = attrs.get("groups", 1)
    if known(x[1]) and x[1] != w[1] * groups:
        raise ShapeError(f"{name}: input has {x[1]} channels (shape {fmt(x)}) but the weight "
                         f"{fmt(w)} with groups={groups} expects {w[1] * groups}")
    if w[0] % groups:
        raise ShapeError(f"{name}: {w[0]} output channels do not split into {groups} groups")
    ks = w[2:]
    pads = _pads(attrs, x[2:], ks)
    axes = AXES[nd]
    sp = tuple(conv_out(name, n, k, s, d, lo, hi, ax) for n, k, s, d, (lo, hi), ax in
               zip(x[2:], ks, attrs["stride"], attrs["dilation"], pads, axes))
    return (x[0], w[0]) + sp


def _extra(attrs, nd):
    """Kernel arguments: per-axis int64 arrays (stride, dilation, pad code, pad
    lo, pad hi), 1-d padded out to 2-d with a unit H axis (3-d kept); then
    groups."""
    code, lo, hi = [], [], []
    for p in attrs["pad"]:
        if isinstance(p, (list, tuple)):
            code.append(0), lo.append(int(p[0])), hi.append(int(p[1]))
        else:
            code.append(PAD_CODES[p]), lo.append(0), hi.append(0)
    a = lambda xs, fill: np.asarray([fill] * (2 - nd) + list(xs), dtype=np.int64)  # noqa: E731
    return (a(attrs["stride"], 1), a(attrs["dilation"], 1), a(code, 0), a(lo, 0), a(hi, 0),
            int(attrs.get("groups", 1)))


def _spatial_axes(nd):
    return [0] + list(range(2, nd + 2))


class Conv(Op):
    name = "conv"

    def infer(self, attrs, shapes, dtypes):
        x, w = shapes[0], shapes[1]
        out = conv_out_shape(self.name, attrs, x, w)
        if len(shapes) == 3 and tuple(shapes[2]) != (w[0],):
            raise ShapeError(f"conv: bias {fmt(shapes[2])} does not match {w[0]} output channels")
        return out, dtypes[0]

    def reference(self, attrs, x, w, b=None):
        y = _ref_conv(attrs, x, w)
        return y + b.reshape((-1,) + (1,) * (x.ndim - 2)) if b is not None else y

    def grad(self, gb, node, g):
        x, w = node.inputs[:2]
        at = node.attrs
        out = [gb.add("conv_grad_input", (g, w, x), at) if gb.wants(0) else None,
               gb.add("conv_grad_weight", (x, g, w), at) if gb.wants(1) else None]
        if len(node.inputs) == 3:
            out.append(gb.add("sum", (g,), {"axes": _spatial_axes(len(node.shape) - 2)})
                       if gb.wants(2) else None)
        return out

    def kernel(self, attrs):
        if len(attrs["stride"]) == 3:
            return (conv3_bias if attrs.get("bias") else conv3_nobias), _extra_conv(attrs)
        return (conv_bias if attrs.get("bias") else conv_nobias), _extra_conv(attrs)

    def kernel_for(self, attrs, in_shapes, out_shape):
        if winograd_fits(attrs, in_shapes[0], in_shapes[1], out_shape):
            return (conv_wino_bias if attrs.get("bias") else conv_wino_nobias), \
                _extra_conv(attrs)
        return self.kernel(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        x, w = in_shapes[0], in_shapes[1]
        gm = _cuda_geometry(x, w, out_shape, _pads(attrs, x[2:], w[2:]), attrs)
        return _cuda_forward(gm, x[0], len(in_shapes) == 3)

    def macs(self, attrs, in_shapes, out_shape):
        w = in_shapes[1]
        return prod(d for d in out_shape[1:] if known(d)) * prod(w[1:])


def _extra_conv(attrs):
    return _extra(attrs, len(attrs["stride"]))


class ConvGradInput(Op):
    name = "conv_grad_input"

    def infer(self, attrs, shapes, dtypes):
        g, w, x = shapes
        want = conv_out_shape(self.name, attrs, x, w)
        if tuple(g) != want:
            raise ShapeError(f"{self.name}: gradient {fmt(g)} does not match the conv's "
                             f"output {fmt(want)}")
        return tuple(x), dtypes[0]

    def reference(self, attrs, g, w, x):
        return _ref_conv_grad_input(attrs, g, w, x.shape)

    def grad(self, gb, node, g2):
        g, w, x = node.inputs
        at = node.attrs
        return [gb.add("conv", (g2, w), at) if gb.wants(0) else None,
                gb.add("conv_grad_weight", (g2, g, w), at) if gb.wants(1) else None, None]

    def kernel(self, attrs):
        return (conv3_grad_input if len(attrs["stride"]) == 3 else conv_grad_input), \
            _extra_conv(attrs)

    def kernel_for(self, attrs, in_shapes, out_shape):
        g, w, x = in_shapes
        if winograd_fits(attrs, x, w, g, grad_input=True):
            return conv_wino_grad_input, _extra_conv(attrs)
        return self.kernel(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        g, w, x = in_shapes
        gm = _cuda_geometry(x, w, g, _pads(attrs, x[2:], w[2:]), attrs)
        return _cuda_back_data(gm, x[0], False)

    def macs(self, attrs, in_shapes, out_shape):
        return prod(d for d in in_shapes[0][1:] if known(d)) * prod(in_shapes[1][1:])


class ConvGradWeight(Op):
    name = "conv_grad_weight"

    def infer(self, attrs, shapes, dtypes):
        x, g, w = shapes
        want = conv_out_shape(self.name, attrs, x, w)
        if tuple(g) != want:
            raise ShapeError(f"{self.name}: gradient {fmt(g)} does not match the conv's "
                             f"output {fmt(want)}")
        return tuple(w), dtypes[0]

    def reference(self, attrs, x, g, w):
        return _ref_conv_grad_weight(attrs, x, g, w.shape)

    def grad(self, gb, node, g2):
        x, g, w = node.inputs
        at = node.attrs
        return [gb.add("conv_grad_input", (g, g2, x), at) if gb.wants(0) else None,
                gb.add("conv", (x, g2), at) if gb.wants(1) else None, None]

    def kernel(self, attrs):
        return (conv3_grad_weight if len(attrs["stride"]) == 3 else conv_grad_weight), \
            _extra_conv(attrs)

    def kernel_for(self, attrs, in_shapes, out_shape):
        x, g, w = in_shapes
        if winograd_fits(attrs, x, w, g, grad_weight=True):
            return conv_wino_grad_weight, _extra_conv(attrs)
        return self.kernel(attrs)

    def cuda(self, attrs, in_shapes, out_shape):
        x, g, w = in_shapes
        gm = _cuda_geometry(x, w, g, _pads(attrs, x[2:], w[2:]), attrs)
        return _cuda_back_weight(gm, x[0])

    def macs(self, attrs, in_shapes, out_shape):
        return prod(d for d in in_shapes[1][1:] if known(d)) * prod(out_shape[1:])


def transpose_out(name, attrs, x, w) -> tuple:
    nd = len(w) - 2
    if len(x) != nd + 2:
        raise ShapeError(f"{name}: a {nd}-d transposed convolution needs a [B, C, "
                         f"{LAYOUT[nd]}] input, got {fmt(x)}")
    groups = attrs.get("groups", 1)
    if known(x[1]) and x[1] != w[0]:
        raise ShapeError(f"{name}: input has {x[1]} channels (shape {fmt(x)}) but the weight "
                         f"{fmt(w)} expects {w[0]}")
    if w[0] % groups:
        raise ShapeError(f"{name}: {w[0]} input channels do not split into {groups} groups")
    sp = []
    for n, k, s, d, (lo, hi), op in zip(x[2:], w[2:], attrs["stride"], attrs["dilation"],
                                        _pairs(attrs["pad"]), attrs["output_padding"]):
        if op >= s:
            raise ShapeError(f"{name}: output_padding {op} must be smaller than the stride {s}")
        m = (n - 1) * s - lo - hi + d * (k - 1) + op + 1 if known(n) else n
        if known(m) and m < 1:
            raise ShapeError(f"{name}: input size {n} with kernel {k}, stride {s}, pad "
                             f"[{lo}, {hi}] gives an empty output ({m})")
        sp.append(m)
    return (x[0], w[1] * groups) + tuple(sp)


def _pairs(pad) -> list:
    """[lo, hi] per axis from entries that are an int (both sides) or [lo, hi]."""
    return [[p, p] if isinstance(p, int) else [int(p[0]), int(p[1])] for p in pad]


def _as_conv_attrs(attrs):
    """The conv whose input gradient a transposed conv computes."""
    return {"stride": attrs["stride"], "dilation": attrs["dilation"],
            "pad": _pairs(attrs["pad"]), "groups": attrs.get("groups", 1)}


class ConvTranspose(Op):
    name = "conv_transpose"

    def infer(self, attrs, shapes, dtypes):
        x, w = shapes[0], shapes[1]
        out = transpose_out(self.name, attrs, x, w)
        if len(shapes) == 3 and tuple(shapes[2]) != (out[1],):
            raise ShapeError(f"{self.name}: bias {fmt(shapes[2])} does not match "
                             f"{out[1]} output channels")
        return out, dtypes[0]

    def reference(self, attrs, x, w, b=None):
        shape = transpose_out(self.name, attrs, x.shape, w.shape)
        y = _ref_conv_grad_input(_as_conv_attrs(attrs), x, w, shape)
        return y + b.reshape((-1,) + (1,) * (x.ndim - 2)) if b is not None else y

    def grad(self, gb, node, g):
        x, w = node.inputs[:2]
        at = _as_conv_attrs(node.attrs)
        out = [gb.add("conv", (g, w), at) if gb.wants(0) else None,
               gb.add("conv_grad_weight", (g, x, w), at) if gb.wants(1) else None]
        if len(node.inputs) == 3:
            out.append(gb.add("sum", (g,), {"axes": _spatial_axes(len(node.shape) - 2)})
                       if gb.wants(2) else None)
        return out

    def kernel(self, attrs):
        if len(attrs["stride"]) == 3:
            fn = conv3_transpose_bias if attrs.get("bias") else conv3_transpose_nobias
        else:
            fn = conv_transpose_bias if attrs.get("bias") else conv_transpose_nobias
        return fn, _extra_conv(_as_conv_attrs(attrs))

    def cuda(self, attrs, in_shapes, out_shape):
        x, w = in_shapes[0], in_shapes[1]
        gm = _cuda_geometry(out_shape, w, x, _pairs(attrs["pad"]), attrs)
        return _cuda_back_data(gm, x[0], len(in_shapes) == 3)

    def macs(self, attrs, in_shapes, out_shape):
        return prod(d for d in in_shapes[0][1:] if known(d)) * prod(in_shapes[1][1:])


for _op in (Conv(), ConvGradInput(), ConvGradWeight(), ConvTranspose()):
    register(_op)


# ---- NumPy references (a strided view per kernel tap) ---------------------------

def _taps(attrs, xshape, wshape):
    """For each kernel tap, the slices of the padded input it reads; plus pads."""
    nd = len(wshape) - 2
    ns, ks = xshape[2:], wshape[2:]
    pads = _pads(attrs, ns, ks)
    outs = [conv_out("conv", n, k, s, d, lo, hi, "axis") for n, k, s, d, (lo, hi) in
            zip(ns, ks, attrs["stride"], attrs["dilation"], pads)]
    taps = []
    for idx in np.ndindex(*ks):
        sl = tuple(slice(i * d, i * d + (m - 1) * s + 1, s)
                   for i, d, s, m in zip(idx, attrs["dilation"], attrs["stride"], outs))
        taps.append((idx, sl))
    return pads, outs, taps, nd


def _padded(x, pads):
    return np.pad(x, [(0, 0), (0, 0)] + [(lo, max(hi, 0)) for lo, hi in pads])


def _ref_conv(attrs, x, w):
    pads, outs, taps, nd = _taps(attrs, x.shape, w.shape)
    xp = _padded(x, pads)
    G = attrs.get("groups", 1)
    B, O, Cg = x.shape[0], w.shape[0], w.shape[1]
    Og = O // G
    y = np.zeros((B, O) + tuple(outs), dtype=np.result_type(x, w))
    for g in range(G):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        for idx, sl in taps:
            y[:, g * Og:(g + 1) * Og] += np.einsum(
                "bc...,oc->bo...", xg[(Ellipsis,) + sl], w[(slice(g * Og, (g + 1) * Og),
                                                           slice(None)) + idx])
    return y


def _ref_conv_grad_input(attrs, g, w, xshape):
    pads, outs, taps, nd = _taps(attrs, xshape, w.shape)
    G = attrs.get("groups", 1)
    Og, Cg = w.shape[0] // G, w.shape[1]
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(xshape[2:], pads))
    dxp = np.zeros(tuple(xshape[:2]) + padded, dtype=np.result_type(g, w))
    for grp in range(G):
        for idx, sl in taps:
            dxp[(slice(None), slice(grp * Cg, (grp + 1) * Cg)) + sl] += np.einsum(
                "bo...,oc->bc...", g[:, grp * Og:(grp + 1) * Og],
                w[(slice(grp * Og, (grp + 1) * Og), slice(None)) + idx])
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, xshape[2:]))
    return dxp[(slice(None), slice(None)) + crop]


def _ref_conv_grad_weight(attrs, x, g, wshape):
    pads, outs, taps, nd = _taps(attrs, x.shape, wshape)
    xp = _padded(x, pads)
    G = attrs.get("groups", 1)
    Og, Cg = wshape[0] // G, wshape[1]
    dw = np.zeros(wshape, dtype=np.result_type(x, g))
    for grp in range(G):
        for idx, sl in taps:
            gs = g[:, grp * Og:(grp + 1) * Og]
            xs = xp[(slice(None), slice(grp * Cg, (grp + 1) * Cg)) + sl]
            dw[(slice(grp * Og, (grp + 1) * Og), slice(None)) + idx] = np.einsum(
                "bop,bcp->oc", gs.reshape(gs.shape[:2] + (-1,)), xs.reshape(xs.shape[:2] + (-1,)))
    return dw


# ---- kernels ---------------------------------------------------------------------

@kernel
def _pad_lo(code, lo, n, k, s, d):
    """The low padding of one axis (see base.pad_amounts)."""
    span = d * (k - 1) + 1
    if code == 0:
        return lo
    if code == 1 or code == 5:
        out = (n + s - 1) // s
        total = max((out - 1) * s + span - n, 0)
        return total // 2 if code == 1 else total - total // 2
    if code == 2:
        return 0
    return span - 1          # full, causal


@kernel
def _geom(x4, w4, stride, dil, code, lo):
    ph = _pad_lo(code[0], lo[0], x4.shape[2], w4.shape[2], stride[0], dil[0])
    pw = _pad_lo(code[1], lo[1], x4.shape[3], w4.shape[3], stride[1], dil[1])
    return ph, pw


@kernel
def _as4(a):
    # explicit sizes: Numba's parallel array analysis mishandles reshape(-1 ...)
    n0, n1, nl = a.shape[0], a.shape[1], a.shape[a.ndim - 1]
    return a.reshape((n0, n1, a.size // max(n0 * n1 * nl, 1), nl))


@kernel
def _chunk(B, P, K, tasks):
    """Images per GEMM.  Threads splitting the batch (each with a one-thread BLAS)
    keep their columns near 512 KB (in the core's L2; LeNet-5's first convolution
    runs 2x faster than with 1 MB); a single task with a threaded
    BLAS takes columns of about 4 MB, fewer larger calls (each wakes the BLAS's
    threads)."""
    cap = (1 << 17) if tasks > 1 else (1 << 20)
    return max(1, min((B + tasks - 1) // tasks, cap // max(P * K, 1)))


@kernel
def _plan(B, P, K, groups):
    """(images per GEMM, parallel tasks, the BLAS's thread count to restore or -1).
    Work splits over images when the BLAS can be made single-threaded for it (a
    threaded BLAS called from two threads at once oversubscribes the cores)."""
    bt = blas_get_threads()
    tasks = 1
    if bt > 0:
        tasks = num_threads()
    nb = _chunk(B, P, K, tasks)
    units = ((B + nb - 1) // nb) * groups
    tasks = max(1, min(tasks, units))
    if tasks == 1:
        nb = _chunk(B, P, K, 1)
        return nb, 1, -1
    if bt > 1:
        blas_set_threads(1)
        return nb, tasks, bt
    return nb, tasks, -1


@kernel
def _plan_heavy(B, P, K, Og, groups):
    """`_plan`, and where the weights are heavy (K Og >= ROWS_HEAVY floats per
    group: ResNet's 3x3 convolutions at 28 to 7 pixels, 128-512 channels) as
    many images per GEMM as ROWS_MAX allows: one image's 49-196 columns, or
    one row of 7-14, per pass over up to 9 MB of weights ran at 45-55 GF/s.
    (images per GEMM, tasks, the BLAS thread count to restore or -1, heavy)."""
    nb, tasks, restore = _plan(B, P, K, groups)
    heavy = K * Og >= ROWS_HEAVY
    if heavy:
        nb = max(nb, min((B + tasks - 1) // tasks, ROWS_MAX // max(P * K, 1)))
        tasks = max(1, min(tasks, ((B + nb - 1) // nb) * groups))
        if tasks == 1:
            _unplan(restore)
            restore = -1
    return nb, tasks, restore, heavy


@kernel
def _unplan(restore):
    if restore > 0:
        blas_set_threads(restore)


@kernel
def _inside(No, N, s, off):
    """The output positions o (of No) with 0 <= o s + off < N, as [o0, o1):
    along a row (ox, W) or a column (oy, H) of the input."""
    o0 = 0 if off >= 0 else min((-off + s - 1) // s, No)
    o1 = max(min(No, (N - 1 - off) // s + 1), o0)
    return o0, o1


# The copy loops below index with unsigned integers: a signed index (i + offset)
# makes Numba handle negative indices, and that stops LLVM vectorising the loop
# (10x slower im2col).

@kernel
def _zero(f, lo, hi):
    zero = f.dtype.type(0)
    for q in range(lo, hi):
        f[np.uint64(q)] = zero


@kernel
def _im2col(x4, b0, n, grp, Cg, kh, kw, Ho, Wo, sh, sw, dh, dw, ph, pw, cols):
    """cols[(c kh + i) kw + j, (t Ho + oy) Wo + ox] = x[b0 + t, grp Cg + c, oy sh - ph + i dh,
    ox sw - pw + j dw] (0 in the padding), for the n images from b0."""
    C, H, W = x4.shape[1], x4.shape[2], x4.shape[3]
    xf, cf = x4.reshape(x4.size), cols.reshape(cols.size)
    N, P = n * Ho * Wo, Ho * Wo
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = j * dw - pw
                ox0, ox1 = _inside(Wo, W, sw, off)
                d = i * dh - ph
                oy0, oy1 = _inside(Ho, H, sh, d)     # rows whose input row is inside
                for t in range(n):
                    cb = r * N + t * P
                    xc = ((b0 + t) * C + grp * Cg + c) * H * W
                    _zero(cf, cb, cb + oy0 * Wo)
                    _zero(cf, cb + oy1 * Wo, cb + P)
                    if sh == 1 and sw == 1 and Wo == W:
                        # rows oy0..oy1 are one run of x's plane shifted by d W + off;
                        # the columns outside [ox0, ox1) wrap to the next row: zeroed
                        s = xc + d * W + off - cb
                        lo, hi = cb + oy0 * Wo, cb + oy1 * Wo
                        a = min(max(lo, xc - s), hi)
                        e = max(min(hi, xc + H * W - s), a)
                        _zero(cf, lo, a)
                        for q in range(a, e):
                            cf[np.uint64(q)] = xf[np.uint64(q + s)]
                        _zero(cf, e, hi)
                        for oy in range(oy0, oy1):
                            _zero(cf, cb + oy * Wo, cb + oy * Wo + ox0)
                            _zero(cf, cb + oy * Wo + ox1, cb + (oy + 1) * Wo)
                    else:
                        for oy in range(oy0, oy1):
                            rb = cb + oy * Wo
                            xb = xc + (oy * sh + d) * W + off
                            _zero(cf, rb, rb + ox0)
                            if sw == 1:
                                for ox in range(ox0, ox1):
                                    cf[np.uint64(rb + ox)] = xf[np.uint64(xb + ox)]
                            else:
                                for ox in range(ox0, ox1):
                                    cf[np.uint64(rb + ox)] = xf[np.uint64(xb + ox * sw)]
                            _zero(cf, rb + ox1, rb + Wo)


@kernel
def _col2im(dcols, b0, n, grp, Cg, kh, kw, Ho, Wo, sh, sw, dh, dw, ph, pw, dx4):
    """The adjoint of _im2col: add the columns into dx (images b0.., group grp)."""
    C, H, W = dx4.shape[1], dx4.shape[2], dx4.shape[3]
    df, cf = dx4.reshape(dx4.size), dcols.reshape(dcols.size)
    N, P = n * Ho * Wo, Ho * Wo
    for t in range(n):
        for c in range(Cg):
            xc = ((b0 + t) * C + grp * Cg + c) * H * W
            for i in range(kh):
                d = i * dh - ph
                oy0, oy1 = _inside(Ho, H, sh, d)
                for j in range(kw):
                    r = (c * kh + i) * kw + j
                    off = j * dw - pw
                    ox0, ox1 = _inside(Wo, W, sw, off)
                    for oy in range(oy0, oy1):
                        cb = r * N + t * P + oy * Wo
                        xb = xc + (oy * sh + d) * W + off
                        if sw == 1:
                            for ox in range(ox0, ox1):
                                df[np.uint64(xb + ox)] += cf[np.uint64(cb + ox)]
                        else:
                            for ox in range(ox0, ox1):
                                df[np.uint64(xb + ox * sw)] += cf[np.uint64(cb + ox)]


@kernel
def _gather(g3, b0, n, grp, Og, gg):
    """gg[o, t P + p] = g[b0 + t, grp Og + o, p] (the chunk's output channels as rows)."""
    P = g3.shape[2]
    for o in range(Og):
        for t in range(n):
            src = g3[b0 + t, grp * Og + o]
            dst = gg[o]
            for p in range(P):
                dst[np.uint64(t * P + p)] = src[np.uint64(p)]


@kernel
def _flat3(a):
    n0, n1 = a.shape[0], a.shape[1]
    return a.reshape((n0, n1, a.size // max(n0 * n1, 1)))


@kernel
def _add_channel_bias(out, b):
    """out[:, c, ...] += b[c], over [B, C, ...] of any rank."""
    o3 = _flat3(out)
    for bb in range(o3.shape[0]):
        for c in range(o3.shape[1]):
            for p in range(o3.shape[2]):
                o3[bb, c, p] += b[c]


ROWS_MIN_C = 16     # input channels per group from which the forward runs channels-last


@kernel
def _to_hwc(x4, b0, n, xt):
    """xt[((t H + y) W + x) C + c] = x[b0 + t, c, y, x], in blocks of 16 pixels."""
    C, H, W = x4.shape[1], x4.shape[2], x4.shape[3]
    HW = H * W
    for t in range(n):
        xf = x4[b0 + t].reshape(C * HW)
        base = t * HW * C
        for q0 in range(0, HW, 16):
            q1 = min(q0 + 16, HW)
            for c in range(C):
                for q in range(q0, q1):
                    xt[np.uint64(base + q * C + c)] = xf[np.uint64(c * HW + q)]


@kernel
def _im2row(xt, H, W, C, grp, Cg, kh, kw, Ho, r0, r1, Wo, sh, sw, dh, dw, ph, pw, rows):
    """rows[(r - r0) Wo + ox, (i kw + j) Cg + c] = xt[t, oy sh - ph + i dh,
    ox sw - pw + j dw, grp Cg + c] (0 in the padding) for the output rows
    r = t Ho + oy from r0 to r1 (of the images in xt): runs of Cg values."""
    K = kh * kw * Cg
    rf = rows.reshape(rows.size)
    zero = rows.dtype.type(0)
    for r in range(r0, r1):
        t, oy = r // Ho, r % Ho
        for ox in range(Wo):
            rb = ((r - r0) * Wo + ox) * K
            for i in range(kh):
                iy = oy * sh - ph + i * dh
                for j in range(kw):
                    ix = ox * sw - pw + j * dw
                    cb = rb + (i * kw + j) * Cg
                    if iy >= 0 and iy < H and ix >= 0 and ix < W:
                        src = ((t * H + iy) * W + ix) * C + grp * Cg
                        for c in range(Cg):
                            rf[np.uint64(cb + c)] = xt[np.uint64(src + c)]
                    else:
                        for c in range(Cg):
                            rf[np.uint64(cb + c)] = zero


ROWS_BY_PIXEL_MAX_O = 64   # up to these output channels the product is [pixel, o]
# at most this many floats of gathered rows per task (8 MB in float32): VGG-16's
# 64-channel 3x3 convolutions at 224x224 gathered 115 MB per image and task
ROWS_MAX = 1 << 21
ROWS_HEAVY = 1 << 16    # weights of at least this many floats (256 KB) are "heavy"
ROWS_BLOCK = 1 << 14    # floats of gathered rows per small GEMM (64 KB: they stay in cache)


@kernel
def _rows_weights(w4, groups, flip, dtype):
    """The weights as the channels-last GEMM's other operand.
    Forward: [groups, o, (i, j, c)], each output channel's [c, (i, j)] block
    turned to [(i, j), c] (1x1 kernels: w itself).
    flip (the input gradient: a convolution of g with the kernels flipped and
    the in/out channels swapped): [groups, (i', j', o), c], "k-major", with
    (i', j') the flipped tap: a de-interleave of w's taps into kh kw runs, each
    written in w's own (o, c) order (1x1: w itself).  Laid out [c, (i', j', o)],
    as the forward's, the copy crossed 2.4M values at a stride of 18 KB at 512
    channels and took 4-5 ms of a 13-16 ms input gradient."""
    O, Cg, kh, kw = w4.shape
    Og = O // groups
    T = kh * kw
    if T == 1:
        return w4.reshape((groups, Og, Cg))
    wf = w4.reshape(O * Cg * T)
    if flip:
        wk = np.empty((groups, T * Og, Cg), dtype=dtype)
        for u in range(groups * Og):
            grp, o = u // Og, u % Og
            src = u * Cg * T
            for q in range(T):      # one run written at a time (their starts alias)
                row = wk[grp, (T - 1 - q) * Og + o]
                for c in range(Cg):
                    row[c] = wf[np.uint64(src + c * T + q)]
        return wk
    wr = np.empty((groups, Og, T * Cg), dtype=dtype)
    for u in range(groups * Og):
        grp, o = u // Og, u % Og
        row = wr[grp, o]
        src = u * Cg * T
        for q in range(T):
            for c in range(Cg):
                row[np.uint64(q * Cg + c)] = wf[np.uint64(src + c * T + q)]
    return wr


@kernel(parallel=True)
def _conv_rows(x4, wr, kh, kw, o3, bias, has_bias, sh, sw, dh, dw, ph, pw, Ho, Wo,
               by_pixel, kmajor):
    """The forward channels-last (weights from `_rows_weights`, [o, (i, j, c)], or
    with `kmajor` [(i, j, c), o]): each task turns its
    images to [H, W, C], gathers rows [pixel, (i, j, c)] (runs of C contiguous
    values) and multiplies them by the weights [o, (i, j, c)]: with `by_pixel`
    (up to ROWS_BY_PIXEL_MAX_O output channels) as rows x weights^T into
    [pixel, o], written out transposed (many rows and few columns, OpenBLAS's
    faster shape: 1.1x at 64 channels), above it as weights x rows^T into
    [o, pixel], the output's own order (within the machine's swing of the
    other at 128-2,048 channels).  Where the BLAS multiplies small products without packing them
    (blas_small_gemm) the rows go a few output rows at a time, in the cache:
    the gather and the GEMM 1.15x faster than with a whole image's rows (1.2 MB);
    with OpenBLAS's AVX2 kernels that is 1.4x slower, and they go an image at a
    time."""
    B, C, H, W = x4.shape
    groups = wr.shape[0]
    # (a swap of two names unpacked from wr.shape misleads Numba's array analysis)
    Og = wr.shape[2] if kmajor else wr.shape[1]
    K = wr.shape[1] if kmajor else wr.shape[2]
    Cg = K // (kh * kw)
    P = Ho * Wo
    nb, tasks, restore, heavy = _plan_heavy(B, P, K, Og, 1)
    nc = (B + nb - 1) // nb
    my = max(1, ROWS_BLOCK // max(Wo * K, 1)) if blas_small_gemm() and not heavy else \
        max(1, min(nb * Ho, ROWS_MAX // max(Wo * K, 1)))
    zero = o3.dtype.type(0)
    for task in prange(tasks):
        xt = np.empty(nb * H * W * C, dtype=o3.dtype)
        rowbuf = np.empty(my * Wo * K, dtype=o3.dtype)
        resbuf = np.empty(my * Wo * Og, dtype=o3.dtype)
        for u in range(task, nc, tasks):
            b0 = u * nb
            n = min(nb, B - b0)
            _to_hwc(x4, b0, n, xt)
            for grp in range(groups):
                for r0 in range(0, n * Ho, my):         # output rows of all n images
                    r1 = min(r0 + my, n * Ho)
                    m = (r1 - r0) * Wo
                    rows = rowbuf[:m * K].reshape((m, K))
                    _im2row(xt, H, W, C, grp, Cg, kh, kw, Ho, r0, r1, Wo, sh, sw, dh, dw,
                            ph, pw, rows)
                    # the product as [pixel, o] or [o, pixel]: element (i, o) at
                    # i si + o so
                    if by_pixel:
                        res = resbuf[:m * Og].reshape((m, Og))
                        if kmajor:
                            np.dot(rows, wr[grp], res)
                        else:
                            np.dot(rows, wr[grp].T, res)
                        si, so = Og, 1
                    else:
                        res = resbuf[:m * Og].reshape((Og, m))
                        if kmajor:
                            np.dot(wr[grp].T, rows.T, res)
                        else:
                            np.dot(wr[grp], rows.T, res)
                        si, so = 1, m
                    for r in range(r0, r1):
                        t, q = r // Ho, (r % Ho) * Wo
                        rb = (r - r0) * Wo
                        for o in range(Og):
                            add = bias[grp * Og + o] if has_bias else zero
                            orow = o3[b0 + t, grp * Og + o]
                            for p in range(Wo):
                                orow[np.uint64(q + p)] = \
                                    resbuf[np.uint64((rb + p) * si + o * so)] + add
    _unplan(restore)


# ---- Winograd F(2x2, 3x3) ---------------------------------------------------------
# A 3x3 convolution of stride 1 as 16 products of [O, C] by [C, tiles]: each 2x2
# block of outputs ("tile") from its 4x4 block of inputs d, as
#     Y = A^T [U (.) V] A,   V = B^T d B,   U = G w G^T
# (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
# 16 multiplies per tile and channel pair where the direct product has 36.
#     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
#     G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
#     A^T = [1 1 1 0; 0 1 -1 -1]
# The transforms run along rows of tiles, vectorised across the tiles of a row,
# into blocks of V and M [16, channels, tiles] that stay in the cache.

WINO_FLOATS = 1 << 17  # floats of V (or M) per block: 512 KB, about the core's L2
WINO_MIN_TILES = 64    # but at least this many tiles (columns of the GEMMs) per block
WINO_GW_SCALE = 4      # the weight gradient's blocks: 4x (its GEMMs' inner size)


# G w G^T for each 3x3 kernel w, as a [16, 9] matrix on w's 9 values (kron(G, G))
WINO_G = np.kron(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]),
                 np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]))


@kernel
def _wino_weights(w4, flip, dtype):
    """U [16, O, C] = G w[o, c] G^T, one product [16, 9] x [9, O C] of w as it
    lies; with `flip` (the input gradient: the kernels turned by 180 degrees,
    in and out channels swapped) U [16, C, O], each [O, C] transposed
    (`_group_transposed`)."""
    O, C = w4.shape[0], w4.shape[1]
    U = np.empty((16, O, C), dtype=dtype)
    np.dot(_wino_g(flip, dtype), w4.reshape((O * C, 9)).T, U.reshape((16, O * C)))
    return _group_transposed(U, dtype) if flip else U


@kernel
def _wino_g(flip, dtype):
    """WINO_G in `dtype`; with `flip`, its columns reversed (the 3x3 kernels
    turned by 180 degrees)."""
    G = np.empty((16, 9), dtype=dtype)
    for xi in range(16):
        for t in range(9):
            G[xi, t] = WINO_G[xi, 8 - t] if flip else WINO_G[xi, t]
    return G


@kernel
def _wino_in(x4, b, C, H, W, ph, pw, ty0, ty1, Tw, rows, V):
    """V[xi, c nt + (ty - ty0) Tw + tx] = (B^T d B)[xi] for the nt tiles of rows
    ty0 to ty1 of image b, d the 4x4 input block at (2 ty - ph, 2 tx - pw),
    zero outside the image.  `rows` [4, 2 Tw + 2]: four padded input rows."""
    nt = (ty1 - ty0) * Tw
    Wp = 2 * Tw + 2
    zero = V.dtype.type(0)
    x0 = min(max(0, pw), Wp)        # the padded columns an input column lands in
    x1 = max(min(Wp, W + pw), x0)
    for c in range(C):
        plane = x4[b, c]
        for ty in range(ty0, ty1):
            for i in range(4):
                iy = 2 * ty - ph + i
                row = rows[i]
                if iy < 0 or iy >= H:
                    for q in range(Wp):
                        row[q] = zero
                    continue
                src = plane[iy]
                for q in range(x0):
                    row[q] = zero
                for q in range(x0, x1):
                    row[np.uint64(q)] = src[np.uint64(q - pw)]
                for q in range(x1, Wp):
                    row[q] = zero
            r0, r1, r2, r3 = rows[0], rows[1], rows[2], rows[3]
            for q in range(Wp):     # B^T d: combinations of the rows, in place
                a0, a1, a2, a3 = r0[q], r1[q], r2[q], r3[q]
                r0[q] = a0 - a2
                r1[q] = a1 + a2
                r2[q] = a2 - a1
                r3[q] = a1 - a3
            off = c * nt + (ty - ty0) * Tw
            for i in range(4):      # (B^T d) B: combinations of the columns
                t = rows[i]
                v0, v1 = V[4 * i], V[4 * i + 1]
                v2, v3 = V[4 * i + 2], V[4 * i + 3]
                for tx in range(Tw):
                    q = np.uint64(2 * tx)
                    a0, a1 = t[q], t[q + np.uint64(1)]
                    a2, a3 = t[q + np.uint64(2)], t[q + np.uint64(3)]
                    k = np.uint64(off + tx)
                    v0[k] = a0 - a2
                    v1[k] = a1 + a2
                    v2[k] = a2 - a1
                    v3[k] = a1 - a3


@kernel
def _wino_out(M, o3, b, O, Ho, Wo, ty0, ty1, Tw, bias, has_bias):
    """out[b, o, 2 ty + u, 2 tx + v] = (A^T M A)[u, v] (+ bias[o]) for the nt
    tiles of rows ty0 to ty1, M [16, O nt] (the parts inside the output)."""
    zero = o3.dtype.type(0)
    nt = (ty1 - ty0) * Tw
    full = Wo // 2                  # tiles whose two columns are inside
    for o in range(O):
        add = bias[o] if has_bias else zero
        orow = o3[b, o]
        for ty in range(ty0, ty1):
            off = o * nt + (ty - ty0) * Tw
            y0 = 2 * ty * Wo
            for tx in range(Tw):
                k = np.uint64(off + tx)
                s0 = M[0, k] + M[4, k] + M[8, k]
                s1 = M[1, k] + M[5, k] + M[9, k]
                s2 = M[2, k] + M[6, k] + M[10, k]
                s3 = M[3, k] + M[7, k] + M[11, k]
                q = np.uint64(y0 + 2 * tx)
                orow[q] = s0 + s1 + s2 + add
                if tx < full:
                    orow[q + np.uint64(1)] = s1 - s2 - s3 + add
            if 2 * ty + 1 < Ho:
                y1 = y0 + Wo
                for tx in range(Tw):
                    k = np.uint64(off + tx)
                    t0 = M[4, k] - M[8, k] - M[12, k]
                    t1 = M[5, k] - M[9, k] - M[13, k]
                    t2 = M[6, k] - M[10, k] - M[14, k]
                    t3 = M[7, k] - M[11, k] - M[15, k]
                    q = np.uint64(y1 + 2 * tx)
                    orow[q] = t0 + t1 + t2 + add
                    if tx < full:
                        orow[q + np.uint64(1)] = t1 - t2 - t3 + add


@kernel
def _wino_task(x4, U, o3, bias, has_bias, ph, pw, Ho, Wo, rb, nblk, task, tasks):
    """Task `task` of `tasks` of a Winograd convolution (`_conv_wino`): o3 [B, O,
    Ho Wo] = the 3x3 stride-1 convolution of x4 [B, C, H, W] padded by (ph, pw)
    at the top and left, U from `_wino_weights`, for every tasks-th of the B
    nblk blocks of rb rows of tiles: each block's inputs transformed into V,
    16 GEMMs [O, C] x [C, tiles] into M, transformed back into o3."""
    C, H, W = x4.shape[1], x4.shape[2], x4.shape[3]
    O = U.shape[1]
    Th, Tw = (Ho + 1) // 2, (Wo + 1) // 2
    rows = np.empty((4, 2 * Tw + 2), dtype=o3.dtype)
    V = np.empty((16, C * rb * Tw), dtype=o3.dtype)
    M = np.empty((16, O * rb * Tw), dtype=o3.dtype)
    for u in range(task, x4.shape[0] * nblk, tasks):
        b, blk = u // nblk, u % nblk
        ty0 = blk * rb
        ty1 = min(ty0 + rb, Th)
        nt = (ty1 - ty0) * Tw
        _wino_in(x4, b, C, H, W, ph, pw, ty0, ty1, Tw, rows, V)
        for xi in range(16):
            np.dot(U[xi], V[xi, :C * nt].reshape((C, nt)), M[xi, :O * nt].reshape((O, nt)))
        _wino_out(M, o3, b, O, Ho, Wo, ty0, ty1, Tw, bias, has_bias)


WINO_MIN_PIXELS = 144  # outputs per plane from which Winograd runs (at 7x7: 0.6x)


WINO_GW_MAX_C = 64    # the weight gradient: where the in or the out channels are at most this
WINO_GW_MIN_C = 64    # and the other side has at least this many


def winograd_fits(attrs, x, w, out, grad_input=False, grad_weight=False) -> bool:
    """Whether a 2-d convolution of input shape x, weights w and output shape
    out (the batch unknown: "B") runs as Winograd F(2x2, 3x3) (`conv_wino_*`):
    3x3 kernels of stride 1, undilated, one group, 16+ channels in and out,
    output planes of at least WINO_MIN_PIXELS whose tiles overhang them by at
    most 1/8.  `grad_input`: the input gradient's (its "output" is x's plane,
    its padding 2 - the forward's, which must not be negative).  At batch 8
    Winograd takes 0.5x the time of the channels-last GEMMs at 56x56 (64
    channels) and 28x28 (128), 0.7-0.9x at 14x14 and 28x28 (256 and 512
    channels), 0.4-0.6x at VGG's 112x112 and 224x224; at 7x7, where a plane
    is 16 tiles, slower.  `grad_weight`: the weight gradient's, where it wins
    (measured at batch 8 against the general kernel: 0.54-0.62x at 56x56 and
    147x147 with 32-64 channels on one side, 0.75-0.91x at 14x14 to 224x224;
    where both sides have 96 channels or more, 0.8-1.6x, mostly slower;
    where both have 32 or fewer, the benchmark's small ResNet at 32x32 and
    16x16, its step went from 0.89-0.90x PyTorch's to 1.14x)."""
    if len(w) != 4 or tuple(w[2:]) != (3, 3) or list(attrs.get("stride", ())) != [1, 1] \
            or list(attrs.get("dilation", ())) != [1, 1] or int(attrs.get("groups", 1)) != 1:
        return False
    dims = list(x[1:]) + list(out[1:])
    if not all(isinstance(d, int) for d in dims) or min(x[1], out[1]) < ROWS_MIN_C:
        return False
    lo = [p[0] for p in _pads(attrs, x[2:], w[2:])]
    if grad_input and min(lo) > 2:
        return False
    if grad_weight and (min(x[1], out[1]) > WINO_GW_MAX_C
                        or max(x[1], out[1]) < WINO_GW_MIN_C):
        return False
    Ho, Wo = (x[2], x[3]) if grad_input else (out[2], out[3])
    tiles = 4 * ((Ho + 1) // 2) * ((Wo + 1) // 2)
    return Ho * Wo >= WINO_MIN_PIXELS and 8 * tiles <= 9 * Ho * Wo


@kernel(parallel=True)
def _conv_wino(x4, w4, flip, o3, bias, has_bias, ph, pw, Ho, Wo):
    """o3 [B, O, Ho Wo] = the 3x3 stride-1 convolution of x4 [B, C, H, W] padded
    by (ph, pw) at the top and left (zero beyond the image) with w4 [O, C, 3,
    3] (`flip`: w4 [C, O, 3, 3], the input gradient's): the images' blocks of
    tiles shared out over the tasks.  The weights are transformed after the
    BLAS is made single-threaded: transformed before, on its threads, the
    convolution at 56x56 ran 2x slower (13 ms against 6.3), the BLAS's idle
    threads spinning beside the tasks."""
    B = x4.shape[0]
    O = w4.shape[1] if flip else w4.shape[0]
    rb, nblk = _wino_blocks(x4.shape[1], O, Ho, Wo, 1)
    _, tasks, restore = _plan(B * nblk, 1, 1, 1)        # tasks <= B nblk
    U = _wino_weights(w4, flip, o3.dtype)
    for task in prange(tasks):
        _wino_task(x4, U, o3, bias, has_bias, ph, pw, Ho, Wo, rb, nblk, task, tasks)
    _unplan(restore)


# The Winograd convolutions are kernels of their own (Conv.kernel_for), not a
# branch of conv_nobias and the others: every kernel compiles again, in LLVM,
# all the code it reaches, and a branch added 6-10 s to conv_nobias and
# conv_bias, and 2-3 s to conv_grad_input, in every network.  They share
# _conv_wino, so backend/precompile.py compiles them in one process, as
# conv_nobias, conv_bias and conv_grad_input; the weight gradients share
# little with the others (conv_grad_weight 12.6 s alone, 12.1 after
# conv_nobias; conv_wino_grad_weight 9.3 and 8.1) and go where the load is least.
COMPILE_TOGETHER = (("conv_wino_nobias", "conv_wino_bias", "conv_wino_grad_input"),
                    ("conv_nobias", "conv_bias", "conv_grad_input"))
# seconds each kernel took to compile, one process, one signature (this project's
# two-core machine): backend/precompile.py hands out the longest first; and
# after another of its COMPILE_TOGETHER group in the same process
COMPILE_SECONDS = {"conv_nobias": 13, "conv_bias": 13, "conv_grad_weight": 13,
                   "conv_grad_input": 9, "conv_wino_nobias": 9, "conv_wino_bias": 9,
                   "conv_wino_grad_input": 5, "conv_wino_grad_weight": 9}
COMPILE_SECONDS_SHARED = {"conv_bias": 2, "conv_nobias": 2, "conv_grad_input": 5,
                          "conv_wino_bias": 1, "conv_wino_nobias": 1,
                          "conv_wino_grad_input": 1}
COMPILE_SECONDS_DEFAULT = 10


@kernel
def conv_wino_nobias(x, w, out, stride, dil, code, lo, hi, groups):
    x4, w4, o4 = _as4(x), _as4(w), _as4(out)
    ph, pw = _geom(x4, w4, stride, dil, code, lo)
    _conv_wino(x4, w4, False, _flat3(out), np.zeros(1, out.dtype), False, ph, pw,
               o4.shape[2], o4.shape[3])


@kernel
def conv_wino_bias(x, w, b, out, stride, dil, code, lo, hi, groups):
    x4, w4, o4 = _as4(x), _as4(w), _as4(out)
    ph, pw = _geom(x4, w4, stride, dil, code, lo)
    _conv_wino(x4, w4, False, _flat3(out), b, True, ph, pw, o4.shape[2], o4.shape[3])


@kernel
def conv_wino_grad_input(g, w, x, out, stride, dil, code, lo, hi, groups):
    """dx: the convolution of g, padded by 2 - the forward's padding, with the
    kernels flipped and their in/out channels swapped."""
    dx4, w4 = _as4(out), _as4(w)
    ph, pw = _geom(dx4, w4, stride, dil, code, lo)
    _conv_wino(_as4(g), w4, True, _flat3(out), np.zeros(1, out.dtype), False, 2 - ph, 2 - pw,
               dx4.shape[2], dx4.shape[3])


@kernel
def _wino_gout(g3, b, O, Ho, Wo, ty0, ty1, Tw, Gt):
    """Gt[xi, o nt + (ty - ty0) Tw + tx] = (A y A^T)[xi], y the 2x2 block of
    g[b, o] at (2 ty, 2 tx) (0 outside the output), A = [1 0; 1 1; 1 -1; 0 -1]:
    the weight gradient's transform of the output gradient, for the nt tiles
    of rows ty0 to ty1."""
    nt = (ty1 - ty0) * Tw
    zero = Gt.dtype.type(0)
    full = Wo // 2
    for o in range(O):
        grow = g3[b, o]
        for ty in range(ty0, ty1):
            off = o * nt + (ty - ty0) * Tw
            y0 = 2 * ty * Wo
            two = 2 * ty + 1 < Ho
            for tx in range(Tw):
                q = y0 + 2 * tx
                a0 = grow[np.uint64(q)]
                a1 = grow[np.uint64(q + 1)] if tx < full else zero
                c0 = grow[np.uint64(q + Wo)] if two else zero
                c1 = grow[np.uint64(q + Wo + 1)] if two and tx < full else zero
                k = np.uint64(off + tx)
                # rows of A y: y0, y0 + y1, y0 - y1, -y1; each row (a, b) times
                # A^T: a, a + b, a - b, -b
                s0, s1 = a0 + c0, a1 + c1
                d0, d1 = a0 - c0, a1 - c1
                Gt[0, k], Gt[1, k], Gt[2, k], Gt[3, k] = a0, a0 + a1, a0 - a1, -a1
                Gt[4, k], Gt[5, k], Gt[6, k], Gt[7, k] = s0, s0 + s1, s0 - s1, -s1
                Gt[8, k], Gt[9, k], Gt[10, k], Gt[11, k] = d0, d0 + d1, d0 - d1, -d1
                Gt[12, k], Gt[13, k], Gt[14, k], Gt[15, k] = -c0, -c0 - c1, c1 - c0, c1


@kernel
def _wino_gw_task(x4, g3, dU, ph, pw, Ho, Wo, rb, nblk, task, tasks):
    """Task `task` of `tasks` of a Winograd weight gradient (`_conv_wino_gw`):
    dU [16 O C] (flat) += Gt[xi] [O, tiles] x V[xi]^T [tiles, C] over its blocks
    of tiles, V the inputs' transform (`_wino_in`), Gt the output gradient's
    (`_wino_gout`)."""
    C, H, W = x4.shape[1], x4.shape[2], x4.shape[3]
    O = g3.shape[1]
    Th, Tw = (Ho + 1) // 2, (Wo + 1) // 2
    dt = dU.dtype
    rows = np.empty((4, 2 * Tw + 2), dtype=dt)
    cap = rb * Tw
    Vbuf, Gbuf = np.empty(16 * C * cap, dtype=dt), np.empty(16 * O * cap, dtype=dt)
    part = np.empty((O, C), dtype=dt)
    pf = part.reshape(O * C)
    for u in range(task, x4.shape[0] * nblk, tasks):
        b, blk = u // nblk, u % nblk
        ty0 = blk * rb
        ty1 = min(ty0 + rb, Th)
        nt = (ty1 - ty0) * Tw
        V, Gt = Vbuf[:16 * C * nt].reshape((16, C * nt)), Gbuf[:16 * O * nt].reshape((16, O * nt))
        _wino_in(x4, b, C, H, W, ph, pw, ty0, ty1, Tw, rows, V)
        _wino_gout(g3, b, O, Ho, Wo, ty0, ty1, Tw, Gt)
        for xi in range(16):
            np.dot(Gt[xi].reshape((O, nt)), V[xi].reshape((C, nt)).T, part)
            _add_at(dU, xi * O * C, pf)


@kernel(parallel=True)
def _conv_wino_gw(x4, g3, out, ph, pw, Ho, Wo):
    """out [O, C, 3, 3] = the weight gradient of the 3x3 stride-1 convolution
    of x4 padded by (ph, pw) whose output gradient is g3 [B, O, Ho Wo]: the
    tasks' sums dU [16, O, C] (each over its blocks of tiles), added, then
    dw[o, c] = G^T dU[o, c] G, one GEMM [O C, 16] x [16, 9] with kron(G, G)."""
    B, C = x4.shape[0], x4.shape[1]
    O = g3.shape[1]
    rb, nblk = _wino_blocks(C, O, Ho, Wo, WINO_GW_SCALE)
    _, tasks, restore = _plan(B * nblk, 1, 1, 1)        # tasks <= B nblk
    acc = np.zeros((tasks, 16 * O * C), dtype=out.dtype)
    for task in prange(tasks):
        _wino_gw_task(x4, g3, acc[task], ph, pw, Ho, Wo, rb, nblk, task, tasks)
    _unplan(restore)
    dU = np.empty((16, O * C), dtype=out.dtype)
    _sum_tasks(acc, dU.reshape(16 * O * C))
    np.dot(dU.T, _wino_g(False, out.dtype), out.reshape((O * C, 9)))


@kernel
def conv_wino_grad_weight(x, g, w, out, stride, dil, code, lo, hi, groups):
    x4, w4, g4 = _as4(x), _as4(out), _as4(g)
    ph, pw = _geom(x4, w4, stride, dil, code, lo)
    _conv_wino_gw(x4, _flat3(g), out, ph, pw, g4.shape[2], g4.shape[3])


@kernel
def _wino_blocks(C, O, Ho, Wo, scale):
    """(tile rows per block, blocks per image): blocks of about WINO_FLOATS of V
    and M, at least WINO_MIN_TILES tiles, the image's rows of tiles split
    evenly."""
    Th, Tw = (Ho + 1) // 2, (Wo + 1) // 2
    per = max(scale * WINO_FLOATS // (16 * max(C, O)), WINO_MIN_TILES)     # tiles per block
    rb = max(1, min(Th, per // Tw))                                # in rows of tiles
    nblk = (Th + rb - 1) // rb
    return (Th + nblk - 1) // nblk, nblk


@kernel
def _pointwise(x4, w4, o4, stride, ph, pw, groups):
    """A 1x1 convolution of stride 1, no padding and one group: per image the
    product w [O, C] x[b] [C, H W] in the layout's own order, no copies."""
    return (w4.shape[2] == 1 and w4.shape[3] == 1 and stride[0] == 1 and stride[1] == 1
            and ph == 0 and pw == 0 and groups == 1 and o4.shape[2] == x4.shape[2]
            and o4.shape[3] == x4.shape[3])


@kernel(parallel=True)
def _conv_pointwise(x4, wf, o3, bias, has_bias):
    """out[b] = wf [O, C] x[b] [C, P] (+ bias): one GEMM per image, images split
    over the tasks (ResNet-50's 1x1 convolutions: 1.5-3x the channels-last
    path, which copied x to [H, W, C] and gathered rows first)."""
    B, C, P = x4.shape[0], x4.shape[1], o3.shape[2]
    nb, tasks, restore = _plan(B, P, C, 1)
    for task in prange(tasks):
        for b in range(task, B, tasks):
            np.dot(wf, x4[b].reshape((C, P)), o3[b])
    _unplan(restore)
    if has_bias:
        _add_channel_bias(o3, bias)


@kernel(parallel=True)
def _conv(x, w, out, bias, has_bias, stride, dil, code, lo, hi, groups):
    x4, w4, o4 = _as4(x), _as4(w), _as4(out)
    ph, pw = _geom(x4, w4, stride, dil, code, lo)
    O, Cg, kh, kw = w4.shape
    Og, K = O // groups, Cg * kh * kw
    B, Ho, Wo = x4.shape[0], o4.shape[2], o4.shape[3]
    P = Ho * Wo
    o3 = _flat3(out)
    if _pointwise(x4, w4, o4, stride, ph, pw, groups):
        _conv_pointwise(x4, w4.reshape((O, Cg)), o3, bias, has_bias)
        return
    if Cg >= ROWS_MIN_C:
        _conv_rows(x4, _rows_weights(w4, groups, False, out.dtype), kh, kw, o3, bias, has_bias,
                   stride[0], stride[1], dil[0], dil[1], ph, pw, Ho, Wo,
                   Og <= ROWS_BY_PIXEL_MAX_O, False)
        return
    nb, tasks, restore = _plan(B, P, K, groups)
    nc = (B + nb - 1) // nb
    wf = w4.reshape((O, K))
    zero = out.dtype.type(0)
    for task in prange(tasks):
        colbuf = np.empty(K * nb * P, dtype=out.dtype)
        resbuf = np.empty(Og * nb * P, dtype=out.dtype)
        for u in range(task, nc * groups, tasks):
            grp, b0 = u // nc, (u % nc) * nb
            n = min(nb, B - b0)
            wg = np.ascontiguousarray(wf[grp * Og:(grp + 1) * Og])
            cols = colbuf[:K * n * P].reshape((K, n * P))
            _im2col(x4, b0, n, grp, Cg, kh, kw, Ho, Wo, stride[0], stride[1], dil[0], dil[1],
                    ph, pw, cols)
            if n == 1 and groups == 1:
                # one image's product is its output plane: no copy (ResNet's
                # 7x7 stem: 0.8M values per image)
                np.dot(wg, cols, o3[b0])
                if has_bias:
                    _add_channel_bias(o3[b0:b0 + 1], bias)
                continue
            res = resbuf[:Og * n * P].reshape((Og, n * P))
            np.dot(wg, cols, res)
            for t in range(n):
                for o in range(Og):
                    add = bias[grp * Og + o] if has_bias else zero
                    orow = o3[b0 + t, grp * Og + o]
                    rrow = res[o]
                    for p in range(P):
                        orow[np.uint64(p)] = rrow[np.uint64(t * P + p)] + add
    _unplan(restore)


@kernel
def conv_nobias(x, w, out, stride, dil, code, lo, hi, groups):
    _conv(x, w, out, np.zeros(1, out.dtype), False, stride, dil, code, lo, hi, groups)


@kernel
def conv_bias(x, w, b, out, stride, dil, code, lo, hi, groups):
    _conv(x, w, out, b, True, stride, dil, code, lo, hi, groups)


@kernel(parallel=True)
def _conv_back_data(g, w, dx, stride, dil, code, lo, groups):
    """dx = the adjoint of conv(., w) applied to g (dx's shape is the conv input's)."""
    g4, w4, dx4 = _as4(g), _as4(w), _as4(dx)
    ph, pw = _geom(dx4, w4, stride, dil, code, lo)
    O, Cg, kh, kw = w4.shape
    Og, K = O // groups, Cg * kh * kw
    B, Ho, Wo = g4.shape[0], g4.shape[2], g4.shape[3]
    P = Ho * Wo
    qh, qw = dil[0] * (kh - 1) - ph, dil[1] * (kw - 1) - pw
    H, W = dx4.shape[2], dx4.shape[3]
    if _pointwise(dx4, w4, g4, stride, ph, pw, groups):
        # dx[b] = w^T [C, O] g[b] [O, P]
        wt = w4.reshape((O, Cg)).T
        gp, dp = _flat3(g), _flat3(dx)
        nb, tasks, restore = _plan(B, P, O, 1)
        for task in prange(tasks):
            for b in range(task, B, tasks):
                np.dot(wt, gp[b], dp[b])
        _unplan(restore)
        return
    if (stride[0] == 1 and stride[1] == 1 and min(Og, Cg) >= ROWS_MIN_C and qh >= 0
            and qw >= 0 and 2 * H * W <= 3 * P):
        # stride 1: dx is the convolution of g, padded by (qh, qw), with the
        # kernels flipped and their in/out channels swapped: channels-last (where
        # both have 16+ channels, and the padding adds at most half the work)
        _conv_rows(g4, _rows_weights(w4, groups, True, dx.dtype), kh, kw, _flat3(dx),
                   np.zeros(1, dx.dtype), False, 1, 1, dil[0], dil[1], qh, qw, H, W,
                   Cg <= ROWS_BY_PIXEL_MAX_O, True)
        return
    # tasks own whole images (every group of them), so no two add into one dx
    nb, tasks, restore = _plan(B, P, K, 1)
    nc = (B + nb - 1) // nb
    wt = _group_transposed(w4.reshape((groups, Og, K)), dx.dtype)
    g3 = _flat3(g)
    dflat = dx.reshape(dx.size)
    per = dx.size // max(B, 1)
    for task in prange(tasks):
        ggbuf = np.empty(Og * nb * P, dtype=dx.dtype)
        dcbuf = np.empty(K * nb * P, dtype=dx.dtype)
        for u in range(task, nc, tasks):
            b0 = u * nb
            n = min(nb, B - b0)
            _zero(dflat, b0 * per, (b0 + n) * per)
            for grp in range(groups):
                wg = wt[grp]
                gg = ggbuf[:Og * n * P].reshape((Og, n * P))
                _gather(g3, b0, n, grp, Og, gg)
                dcols = dcbuf[:K * n * P].reshape((K, n * P))
                np.dot(wg, gg, dcols)
                _col2im(dcols, b0, n, grp, Cg, kh, kw, Ho, Wo, stride[0], stride[1],
                        dil[0], dil[1], ph, pw, dx4)
    _unplan(restore)


@kernel
def _group_transposed(w3, dtype):
    """[G, K, Og] = each group's [Og, K] transposed, once per call, in tiles of
    16 x 16.  The input gradient's tasks each copied w^T
    themselves, for every chunk of images: 1.2M values read at a stride of 9 KB
    per image at 512 channels (ResNet-18's stride-2 convolutions)."""
    G, Og, K = w3.shape
    wt = np.empty((G, K, Og), dtype=dtype)
    nk = (K + 15) // 16
    for u in range(G * nk):
        grp, k0 = u // nk, (u % nk) * 16
        k1 = min(k0 + 16, K)
        for o0 in range(0, Og, 16):
            for k in range(k0, k1):
                for o in range(o0, min(o0 + 16, Og)):
                    wt[grp, k, o] = w3[grp, o, k]
    return wt


@kernel
def conv_grad_input(g, w, x, out, stride, dil, code, lo, hi, groups):
    _conv_back_data(g, w, out, stride, dil, code, lo, groups)


@kernel(parallel=True)
def conv_grad_weight(x, g, w, out, stride, dil, code, lo, hi, groups):
    x4, w4 = _as4(x), _as4(out)
    ph, pw = _geom(x4, w4, stride, dil, code, lo)
    O, Cg, kh, kw = w4.shape
    Og, K = O // groups, Cg * kh * kw
    g4, g3 = _as4(g), _flat3(g)
    B, Ho, Wo = x4.shape[0], g4.shape[2], g4.shape[3]
    P = Ho * Wo
    if Cg >= ROWS_MIN_C and K * P > ROWS_MAX:
        # an image's columns over the cap (VGG-16's first convolutions: 115 MB per
        # task): channels-last in blocks; below it the columns are 1.1-1.7x faster
        _grad_weight_rows(x4, g3, w4, kh, kw, stride[0], stride[1], dil[0], dil[1], ph, pw,
                          Ho, Wo, groups)
        return
    if _pointwise(x4, w4, g4, stride, ph, pw, groups):
        # dw = sum over images of g[b] [O, P] x[b]^T [P, C]: no copies
        x3 = _flat3(x)
        nb, tasks, restore = _plan(B, P, O, 1)
        acc = np.zeros((tasks, O, Cg), dtype=out.dtype)
        for task in prange(tasks):
            part = np.empty((O, Cg), dtype=out.dtype)
            pf = part.reshape(O * Cg)
            mine = acc[task].reshape(O * Cg)
            for b in range(task, B, tasks):
                np.dot(g3[b], x3[b].T, part)
                _add_at(mine, 0, pf)
        _unplan(restore)
        _sum_tasks(acc, out.reshape(O * K))
        return
    nb, tasks, restore, _ = _plan_heavy(B, P, K, Og, groups)
    nc = (B + nb - 1) // nb
    # each task sums its images' products cols gg^T into its own dw^T [K, O] (the
    # GEMM's faster orientation: 1.1-1.2x gg cols^T), transposed once at the end;
    # with one group a task's first product is its sum's start (every task has one)
    acc = np.empty((tasks, K, O), dtype=out.dtype) if groups == 1 else \
        np.zeros((tasks, K, O), dtype=out.dtype)
    for task in prange(tasks):
        colbuf = np.empty(K * nb * P, dtype=out.dtype)
        ggbuf = np.empty(Og * nb * P, dtype=out.dtype)
        part = np.empty((K, Og), dtype=out.dtype)
        pf = part.reshape(K * Og)
        mine = acc[task].reshape(K * O)
        first = groups == 1
        for u in range(task, nc * groups, tasks):
            grp, b0 = u // nc, (u % nc) * nb
            n = min(nb, B - b0)
            cols = colbuf[:K * n * P].reshape((K, n * P))
            gg = ggbuf[:Og * n * P].reshape((Og, n * P))
            _im2col(x4, b0, n, grp, Cg, kh, kw, Ho, Wo, stride[0], stride[1], dil[0],
                    dil[1], ph, pw, cols)
            if n == 1 and groups == 1:      # one image's g is gg itself
                gg = g3[b0]
            else:
                _gather(g3, b0, n, grp, Og, gg)
            if first:
                np.dot(cols, gg.T, acc[task])
                first = False
            else:
                np.dot(cols, gg.T, part)
                for k in range(K):
                    for o in range(Og):
                        mine[np.uint64(k * O + grp * Og + o)] += pf[np.uint64(k * Og + o)]
    _unplan(restore)
    _sum_transposed(acc, out.reshape((O, K)))


@kernel(parallel=True)
def _sum_transposed(acc, of):
    """of [O, K] = the sum of the tasks' acc[task] [K, O], transposed in tiles of
    16 x 16 (a plain strided pass took milliseconds at 512 channels, 3x3),
    tiles of output channels in parallel (serial, the sum took 10+ ms there)."""
    tasks, K, O = acc.shape
    for ob in prange((O + 15) // 16):
        o0 = ob * 16
        for k0 in range(0, K, 16):
            for o in range(o0, min(o0 + 16, O)):
                for k in range(k0, min(k0 + 16, K)):
                    v = acc[0, k, o]
                    for task in range(1, tasks):
                        v += acc[task, k, o]
                    of[o, k] = v


@kernel(parallel=True)
def _grad_weight_rows(x4, g3, out, kh, kw, sh, sw, dh, dw, ph, pw, Ho, Wo, groups):
    """The weight gradient channels-last, as the forward's `_conv_rows`: each task
    turns its images to [H, W, C], gathers rows [pixel, (i, j, c)] a block of
    output rows at a time (at most ROWS_MAX floats) and adds g's block [o, pixel]
    times them, [o, (i, j, c)], into its own sum; the sums are added and laid
    out as w [o, c, i, j] at the end.  Its columns in NCHW order took a whole
    image at a time (VGG-16's first 3x3 convolutions: 115 MB per task)."""
    B, C, H, W = x4.shape
    O, Cg = out.shape[0], out.shape[1]
    Og, K = O // groups, Cg * kh * kw
    P = Ho * Wo
    nb, tasks, restore = _plan(B, P, K, 1)
    nc = (B + nb - 1) // nb
    my = max(1, min(nb * Ho, ROWS_MAX // max(Wo * max(K, Og), 1)))
    acc = np.zeros((tasks, O, K), dtype=out.dtype)
    for task in prange(tasks):
        xt = np.empty(nb * H * W * C, dtype=out.dtype)
        rowbuf = np.empty(my * Wo * K, dtype=out.dtype)
        ggbuf = np.empty(Og * my * Wo, dtype=out.dtype)
        part = np.empty((Og, K), dtype=out.dtype)
        pf = part.reshape(Og * K)
        mine = acc[task].reshape(O * K)
        for u in range(task, nc, tasks):
            b0 = u * nb
            n = min(nb, B - b0)
            _to_hwc(x4, b0, n, xt)
            for grp in range(groups):
                for r0 in range(0, n * Ho, my):
                    r1 = min(r0 + my, n * Ho)
                    m = (r1 - r0) * Wo
                    rows = rowbuf[:m * K].reshape((m, K))
                    _im2row(xt, H, W, C, grp, Cg, kh, kw, Ho, r0, r1, Wo, sh, sw, dh, dw,
                            ph, pw, rows)
                    gg = ggbuf[:Og * m].reshape((Og, m))
                    for o in range(Og):
                        dst = gg[o]
                        for r in range(r0, r1):
                            src = g3[b0 + r // Ho, grp * Og + o]
                            q, rb = (r % Ho) * Wo, (r - r0) * Wo
                            for p in range(Wo):
                                dst[np.uint64(rb + p)] = src[np.uint64(q + p)]
                    np.dot(gg, rows, part)
                    _add_at(mine, grp * Og * K, pf)
    _unplan(restore)
    total = np.empty((O, K), dtype=out.dtype)
    _sum_tasks(acc, total.reshape(O * K))
    for o in range(O):         # [(i, j, c)] -> [c, i, j]
        row = total[o]
        for c in range(Cg):
            for i in range(kh):
                for j in range(kw):
                    out[o, c, i, j] = row[np.uint64((i * kw + j) * Cg + c)]


@kernel
def _add_at(dst, base, src):
    """dst[base:base + src.size] += src (a task's product into its own sum)."""
    for q in range(src.size):
        dst[np.uint64(base + q)] += src[np.uint64(q)]


@kernel
def _sum_tasks(acc, of):
    """of = the sum of the tasks' parts acc[task] (each of.size long)."""
    a = acc.reshape(acc.size)
    n = of.size
    for q in range(n):
        v = a[np.uint64(q)]
        for task in range(1, acc.shape[0]):
            v += a[np.uint64(task * n + q)]
        of[np.uint64(q)] = v


@kernel
def conv_transpose_nobias(x, w, out, stride, dil, code, lo, hi, groups):
    _conv_back_data(x, w, out, stride, dil, code, lo, groups)


@kernel
def conv_transpose_bias(x, w, b, out, stride, dil, code, lo, hi, groups):
    _conv_back_data(x, w, out, stride, dil, code, lo, groups)
    _add_channel_bias(out, b)


# ---- 3-d: direct loops over the taps (no im2col, no BLAS) ---------------------------
# Correct at any size, but not tuned: each output sums its C/groups * kd kh kw
# taps in turn.  Tasks split the work so that none writes where another does:
# the forward by (image, output channel), the input gradient by image, the
# weight gradient by output channel.

@kernel
def _lo3(x, w, stride, dil, code, lo):
    """The low padding of each of the three axes."""
    return (_pad_lo(code[0], lo[0], x.shape[2], w.shape[2], stride[0], dil[0]),
            _pad_lo(code[1], lo[1], x.shape[3], w.shape[3], stride[1], dil[1]),
            _pad_lo(code[2], lo[2], x.shape[4], w.shape[4], stride[2], dil[2]))


@kernel
def _tap3(z, y, x, i, j, k, stride, dil, pads, shape):
    """The input position output (z, y, x) reads through tap (i, j, k), and
    whether it lies inside the input (else it is padding)."""
    zi = z * stride[0] - pads[0] + i * dil[0]
    yi = y * stride[1] - pads[1] + j * dil[1]
    xi = x * stride[2] - pads[2] + k * dil[2]
    inside = 0 <= zi < shape[2] and 0 <= yi < shape[3] and 0 <= xi < shape[4]
    return zi, yi, xi, inside


@kernel(parallel=True)
def _conv3(x, w, out, bias, has_bias, stride, dil, code, lo, groups):
    O, Cg, kd, kh, kw = w.shape
    pads = _lo3(x, w, stride, dil, code, lo)
    Og = O // groups
    for t in prange(x.shape[0] * O):
        b, o = t // O, t % O
        c0 = (o // Og) * Cg
        for z in range(out.shape[2]):
            for y in range(out.shape[3]):
                for q in range(out.shape[4]):
                    acc = bias[o] if has_bias else out.dtype.type(0)
                    for c in range(Cg):
                        for i in range(kd):
                            for j in range(kh):
                                for k in range(kw):
                                    zi, yi, xi, inside = _tap3(z, y, q, i, j, k, stride, dil,
                                                               pads, x.shape)
                                    if inside:
                                        acc += x[b, c0 + c, zi, yi, xi] * w[o, c, i, j, k]
                    out[b, o, z, y, q] = acc


@kernel(parallel=True)
def _conv3_back_data(g, w, dx, stride, dil, code, lo, groups):
    """dx = the adjoint of conv(., w) applied to g."""
    O, Cg, kd, kh, kw = w.shape
    pads = _lo3(dx, w, stride, dil, code, lo)
    Og = O // groups
    per = dx.size // max(dx.shape[0], 1)
    df = dx.reshape(dx.size)
    for b in prange(dx.shape[0]):
        for p in range(b * per, (b + 1) * per):
            df[p] = 0
        for o in range(O):
            c0 = (o // Og) * Cg
            for z in range(g.shape[2]):
                for y in range(g.shape[3]):
                    for q in range(g.shape[4]):
                        gv = g[b, o, z, y, q]
                        for c in range(Cg):
                            for i in range(kd):
                                for j in range(kh):
                                    for k in range(kw):
                                        zi, yi, xi, inside = _tap3(z, y, q, i, j, k, stride,
                                                                   dil, pads, dx.shape)
                                        if inside:
                                            dx[b, c0 + c, zi, yi, xi] += gv * w[o, c, i, j, k]


@kernel
def conv3_nobias(x, w, out, stride, dil, code, lo, hi, groups):
    _conv3(x, w, out, np.zeros(1, out.dtype), False, stride, dil, code, lo, groups)


@kernel
def conv3_bias(x, w, b, out, stride, dil, code, lo, hi, groups):
    _conv3(x, w, out, b, True, stride, dil, code, lo, groups)


@kernel
def conv3_grad_input(g, w, x, out, stride, dil, code, lo, hi, groups):
    _conv3_back_data(g, w, out, stride, dil, code, lo, groups)


@kernel(parallel=True)
def conv3_grad_weight(x, g, w, out, stride, dil, code, lo, hi, groups):
    O, Cg, kd, kh, kw = out.shape
    pads = _lo3(x, out, stride, dil, code, lo)
    Og = O // groups
    for o in prange(O):
        c0 = (o // Og) * Cg
        for c in range(Cg):
            for i in range(kd):
                for j in range(kh):
                    for k in range(kw):
                        acc = out.dtype.type(0)
                        for b in range(x.shape[0]):
                            for z in range(g.shape[2]):
                                for y in range(g.shape[3]):
                                    for q in range(g.shape[4]):
                                        zi, yi, xi, inside = _tap3(z, y, q, i, j, k, stride,
                                                                   dil, pads, x.shape)
                                        if inside:
                                            acc += g[b, o, z, y, q] * x[b, c0 + c, zi, yi, xi]
                        out[o, c, i, j, k] = acc


@kernel
def conv3_transpose_nobias(x, w, out, stride, dil, code, lo, hi, groups):
    _conv3_back_data(x, w, out, stride, dil, code, lo, groups)


@kernel
def conv3_transpose_bias(x, w, b, out, stride, dil, code, lo, hi, groups):
    _conv3_back_data(x, w, out, stride, dil, code, lo, groups)
    _add_channel_bias(out, b)


# ---- CUDA kernels ------------------------------------------------------------------
# Every axis count runs as 3-d (1-d and 2-d get unit leading axes), over one
# geometry tuple `gm` (`_cuda_geometry`).  Convolutions with one group, or
# with groups of 16 or more channels on both sides, are GEMM-shaped: im2col
# of a chunk of images into columns [C K, n P] (K taps, P output positions),
# one `Gemm` per group (cuBLAS on a GPU), then the columns' gather back
# (col2im) for the input gradient.  Other grouped convolutions (depthwise)
# run direct: each output element loops over its taps, the input gradient's
# over the outputs that read it, the weight gradient is a `Reduce` per weight
# over the batch's output positions.  A chunk of one image reads and writes
# the op's arrays in place ([O, P] of one image is a matrix), and a pointwise
# (1x1, stride 1, unpadded) conv's columns are then its input itself.

# Scratch of a GEMM-shaped kernel (the nodes of a step share it: they run one
# after another): the columns of as many images as make about CUDA_WIDTH
# columns, at most CUDA_SCRATCH elements (at least one image).  Wide: a
# GEMM of 64K columns keeps a GPU busy, and each chunk is several launches.
CUDA_WIDTH = 1 << 16
CUDA_SCRATCH = 1 << 25
# Grouped convolutions run as GEMMs per group when both sides of a group have
# at least this many channels.
CUDA_GEMM_CHANNELS = 16


def _cuda_geometry(x, w, out, pads, attrs) -> tuple:
    """(C, D, H, W, O, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw,
    C/groups, O/groups) of the conv from x [B, C, ...] to out [B, O, ...]
    through w [O, C/groups, ...] with low pads `pads` (lo, hi per axis)."""
    nd = len(w) - 2

    def three(v, fill):
        return [fill] * (3 - nd) + [int(i) for i in v]
    groups = int(attrs.get("groups", 1))
    return tuple([int(x[1])] + three(x[2:], 1) + [int(w[0])] + three(out[2:], 1)
                 + three(w[2:], 1) + three(attrs["stride"], 1) + three(attrs["dilation"], 1)
                 + three([lo for lo, _ in pads], 0) + [int(w[1]), int(w[0]) // groups])


def _cuda_sizes(gm) -> tuple:
    """(C, O, taps, input positions, output positions, C/groups * taps, O/groups,
    groups) per image."""
    C, D, H, W, O, OD, OH, OW, KD, KH, KW = gm[:11]
    K = KD * KH * KW
    return C, O, K, D * H * W, OD * OH * OW, gm[20] * K, gm[21], O // gm[21]


def _cuda_gemm_shaped(gm) -> bool:
    groups = gm[4] // gm[21]
    return groups == 1 or min(gm[20], gm[21]) >= CUDA_GEMM_CHANNELS


def _cuda_plan(gm, B):
    """(images per chunk, whether GEMMs read and write the op's arrays in place
    (one image per chunk; and a pointwise conv's columns are its input), the
    scratch sizes)."""
    C, O, K, S, P = _cuda_sizes(gm)[:5]
    nb = max(1, min(B, -(-CUDA_WIDTH // P), CUDA_SCRATCH // (max(C * K, O) * P)))
    pointwise = (K == 1 and gm[1:4] == gm[5:8] and gm[11:14] == (1, 1, 1)
                 and gm[17:20] == (0, 0, 0))
    in_place = nb == 1 and pointwise
    temps = ([] if in_place else [C * K * nb * P]) + ([] if nb == 1 else [O * nb * P])
    return nb, in_place, temps


def _cuda_blocks(name, rows, N, base=0):
    """Per group g, a Ref to rows [g rows, (g + 1) rows) of `name` seen as a
    matrix [groups rows, N] from element `base`."""
    return lambda g: Ref(name, (rows, N), base + g * rows * N)


def _cuda_cols(stages, gm, name, b0, n, in_place):
    """The columns of images [b0, b0 + n) of `name`: per group g, a Ref to its
    rows [C/groups K, n P]; im2col's stage appended where they are scratch."""
    C, O, K, S, P, CgK = _cuda_sizes(gm)[:6]
    N = n * P
    if in_place:
        return _cuda_blocks(name, CgK, N, b0 * C * S)
    stages.append(Map(cuda_im2col, C * N, [Ref(name, (n * C * S,), b0 * C * S),
                                               Ref("tmp0", (C * K * N,))], (gm, N)))
    return _cuda_blocks("tmp0", CgK, N)


def _cuda_rows(stages, gm, name, b0, n, nb):
    """Output-side rows [O, n P] of images [b0, b0 + n) of `name` [B, O, P]
    (a view for one image, else gathered into tmp1): per group g, a Ref to its
    rows [O/groups, n P]."""
    O, P, Og = gm[4], _cuda_sizes(gm)[4], gm[21]
    N = n * P
    if nb == 1:
        return _cuda_blocks(name, Og, N, b0 * O * P)
    stages.append(Map(cuda_swap, O * N, [Ref(name, (n * O * P,), b0 * O * P),
                                         Ref("tmp1", (O * N,))], (O, n, P)))
    return _cuda_blocks("tmp1", Og, N)


def _cuda_forward(gm, B, bias):
    """conv: out [B, O, P] from in0 [B, C, S], in1 [O, C/groups, K] (+ in2 [O])."""
    C, O, K, S, P, CgK, Og, G = _cuda_sizes(gm)
    b = [flat("in2", (O,))] if bias else []
    if not _cuda_gemm_shaped(gm):
        fn = cuda_conv_direct_bias if bias else cuda_conv_direct
        return Cuda([Map(fn, B * O * P, [flat("in0", (B * C * S,)), flat("in1", (O * CgK,))]
                         + b + [flat("out", (B * O * P,))], (gm,))])
    nb, in_place, temps = _cuda_plan(gm, B)
    stages, w = [], _cuda_blocks("in1", Og, CgK)
    for b0 in range(0, B, nb):
        n = min(nb, B - b0)
        N = n * P
        cols = _cuda_cols(stages, gm, "in0", b0, n, in_place)
        dst = _cuda_blocks("out", Og, N, b0 * O * P) if nb == 1 else _cuda_blocks("tmp1", Og, N)
        stages += [Gemm(w(g), cols(g), dst(g)) for g in range(G)]
        if nb > 1:
            stages.append(Map(cuda_swap_bias if bias else cuda_swap, n * O * P,
                              [Ref("tmp1", (O * N,))] + b
                              + [Ref("out", (n * O * P,), b0 * O * P)], (n, O, P)))
    if nb == 1 and bias:
        stages.append(Map(cuda_add_bias, B * O * P, b + [flat("out", (B * O * P,))], (O, P)))
    return Cuda(stages, temps)


def _cuda_back_data(gm, B, bias):
    """conv_grad_input (and conv_transpose, with bias): out [B, C, S] = the
    adjoint of the conv gm describes applied to in0 [B, O, P], through in1
    [O, C/groups, K] (+ in2 [C])."""
    C, O, K, S, P, CgK, Og, G = _cuda_sizes(gm)
    b = [flat("in2", (C,))] if bias else []
    if not _cuda_gemm_shaped(gm):
        return Cuda([Map(cuda_back_bias if bias else cuda_back, B * C * S,
                         [flat("in0", (B * O * P,)), flat("in1", (O * CgK,))] + b
                         + [flat("out", (B * C * S,))], (gm, 0))])
    nb, in_place, temps = _cuda_plan(gm, B)
    stages, w = [], _cuda_blocks("in1", Og, CgK)
    for b0 in range(0, B, nb):
        n = min(nb, B - b0)
        N = n * P
        rows = _cuda_rows(stages, gm, "in0", b0, n, nb)
        cols = _cuda_blocks("out", CgK, N, b0 * C * S) if in_place else \
            _cuda_blocks("tmp0", CgK, N)
        stages += [Gemm(w(g), rows(g), cols(g), ta=True) for g in range(G)]
        if not in_place:
            dcols = Ref("tmp0", (C * K * N,))
            stages.append(Map(cuda_back_bias if bias else cuda_back, n * C * S, [dcols, dcols] + b
                              + [Ref("out", (n * C * S,), b0 * C * S)], (gm, N)))
    if in_place and bias:
        stages.append(Map(cuda_add_bias, B * C * S, b + [flat("out", (B * C * S,))], (C, S)))
    return Cuda(stages, temps)


def _cuda_back_weight(gm, B):
    """conv_grad_weight: out [O, C/groups, K] from in0 [B, C, S] and in1 [B, O, P]."""
    C, O, K, S, P, CgK, Og, G = _cuda_sizes(gm)
    if not _cuda_gemm_shaped(gm):
        return Cuda([Reduce(cuda_wgrad_term, cuda_wgrad_finish, O * CgK, B * P,
                            [flat("in0", (B * C * S,)), flat("in1", (B * O * P,)),
                             flat("out", (O * CgK,))], (gm,))])
    nb, in_place, temps = _cuda_plan(gm, B)
    stages, dw = [], _cuda_blocks("out", Og, CgK)
    for b0 in range(0, B, nb):
        n = min(nb, B - b0)
        cols = _cuda_cols(stages, gm, "in0", b0, n, in_place)
        rows = _cuda_rows(stages, gm, "in1", b0, n, nb)
        stages += [Gemm(rows(g), cols(g), dw(g), tb=True, accumulate=b0 > 0) for g in range(G)]
    return Cuda(stages, temps)


@cuda_kernel
def cu_split(k, a, b, c):
    """k as (rest, i, j, l) with l fastest, over three axes of sizes a, b, c
    (a == 1, a 2-d or 1-d conv's depth, skips two divisions: on a GPU they are
    most of an index's cost)."""
    l = k % c
    r = k // c
    j = r % b
    r = r // b
    if a == 1:
        return r, 0, j, l
    return r // a, r % a, j, l


@cuda_kernel
def cu_in(o, t, s, d, p, n):
    """The input index output o reads through tap t (stride s, dilation d, low
    pad p, n inputs), or -1 in the padding."""
    i = o * s - p + t * d
    if i < 0 or i >= n:
        return -1
    return i


@cuda_kernel
def cu_out(i, t, s, d, p, n):
    """The output index that reads input i through tap t (n outputs), or -1
    where none does."""
    u = i + p - t * d
    if s == 1:
        return u if 0 <= u < n else -1
    if u < 0 or u % s != 0 or u // s >= n:
        return -1
    return u // s


@cuda_kernel
def cu_conv_at(k, x, w, gm):
    """out.flat[k] of the conv, without bias: its group's channels times its taps."""
    C, D, H, W, O, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw, Cg, Og = gm
    bo, oz, oy, ox = cu_split(k, OD, OH, OW)
    o = bo % O
    c0 = (bo // O) * C + (o // Og) * Cg
    acc = T(0)
    for c in range(Cg):
        for i in range(KD):
            zi = cu_in(oz, i, sd, dd, pd, D)
            if zi >= 0:
                for j in range(KH):
                    yi = cu_in(oy, j, sh, dh, ph, H)
                    if yi >= 0:
                        for q in range(KW):
                            xi = cu_in(ox, q, sw, dw, pw, W)
                            if xi >= 0:
                                acc += (x[(((c0 + c) * D + zi) * H + yi) * W + xi]
                                        * w[(((o * Cg + c) * KD + i) * KH + j) * KW + q])
    return acc


@cuda_kernel
def cuda_conv_direct(k, x, w, out, gm):
    out[k] = cu_conv_at(k, x, w, gm)


@cuda_kernel
def cuda_conv_direct_bias(k, x, w, b, out, gm):
    out[k] = cu_conv_at(k, x, w, gm) + b[(k // (gm[5] * gm[6] * gm[7])) % gm[4]]


@cuda_kernel
def cu_back_at(k, src, w, gm, N):
    """dx.flat[k] of the conv's adjoint in x: over the outputs that read input
    k, each through its tap, src there; that is, for N > 0, src is columns
    [C K, N] of N / P images in im2col's layout (col2im; w is not read), and
    for N == 0, src is g [B, O, P], each output times its tap's weight, summed
    over the group's output channels."""
    C, D, H, W, O, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw, Cg, Og = gm
    bc, zi, yi, xi = cu_split(k, D, H, W)
    c = bc % C
    cc = c % Cg
    o0 = (c // Cg) * Og
    ob = (bc // C) * O
    ib = (bc // C) * OD
    acc = T(0)
    for i in range(KD):
        oz = cu_out(zi, i, sd, dd, pd, OD)
        if oz >= 0:
            for j in range(KH):
                oy = cu_out(yi, j, sh, dh, ph, OH)
                if oy >= 0:
                    for q in range(KW):
                        ox = cu_out(xi, q, sw, dw, pw, OW)
                        if ox >= 0 and N > 0:
                            acc += src[(((c * KD + i) * KH + j) * KW + q) * N
                                       + ((ib + oz) * OH + oy) * OW + ox]
                        elif ox >= 0:
                            for o in range(o0, o0 + Og):
                                acc += (src[(((ob + o) * OD + oz) * OH + oy) * OW + ox]
                                        * w[(((o * Cg + cc) * KD + i) * KH + j) * KW + q])
    return acc


@cuda_kernel
def cuda_back(k, src, w, out, gm, N):
    """conv_grad_input and col2im (see cu_back_at)."""
    out[k] = cu_back_at(k, src, w, gm, N)


@cuda_kernel
def cuda_back_bias(k, src, w, b, out, gm, N):
    """conv_transpose with a bias and its col2im (see cu_back_at)."""
    out[k] = cu_back_at(k, src, w, gm, N) + b[(k // (gm[1] * gm[2] * gm[3])) % gm[0]]


@cuda_kernel
def cuda_wgrad_term(r, j, x, g, out, gm):
    """Term j (image, output position) of weight r's gradient: g there times
    the input it read through r's tap (0 in the padding)."""
    C, D, H, W, O, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw, Cg, Og = gm
    oc, i, jj, q = cu_split(r, KD, KH, KW)
    o = oc // Cg
    c = (o // Og) * Cg + oc % Cg
    b, oz, oy, ox = cu_split(j, OD, OH, OW)
    zi = cu_in(oz, i, sd, dd, pd, D)
    yi = cu_in(oy, jj, sh, dh, ph, H)
    xi = cu_in(ox, q, sw, dw, pw, W)
    if zi < 0 or yi < 0 or xi < 0:
        return T(0)
    return (g[(((b * O + o) * OD + oz) * OH + oy) * OW + ox]
            * x[(((b * C + c) * D + zi) * H + yi) * W + xi])


@cuda_kernel
def cuda_wgrad_finish(r, total, x, g, out, gm):
    out[r] = total


@cuda_kernel
def cuda_im2col(k, x, cols, gm, N):
    """cols [C K, N] of n images x [n, C, D, H, W] (N = n P), channel c = k // N
    at column k % N (image P + output position): its K rows c K + tap, the
    input each tap reads there (0 in the padding).  One index split per K
    values; neighbouring threads write neighbouring columns."""
    C, D, H, W, O, OD, OH, OW, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw, Cg, Og = gm
    col = k % N
    c = k // N
    bl, oz, oy, ox = cu_split(col, OD, OH, OW)
    base = (bl * C + c) * D
    at = c * KD * KH * KW * N + col
    for i in range(KD):
        zi = cu_in(oz, i, sd, dd, pd, D)
        for j in range(KH):
            yi = cu_in(oy, j, sh, dh, ph, H)
            for q in range(KW):
                xi = cu_in(ox, q, sw, dw, pw, W)
                v = T(0)
                if zi >= 0 and yi >= 0 and xi >= 0:
                    v = x[((base + zi) * H + yi) * W + xi]
                cols[at] = v
                at += N


@cuda_kernel
def cuda_swap(k, src, dst, A, M, P):
    """dst [A, M, P] from src [M, A, P]."""
    p = k % P
    r = k // P
    dst[k] = src[((r % M) * A + r // M) * P + p]


@cuda_kernel
def cuda_swap_bias(k, src, b, dst, A, M, P):
    """dst [A, M, P] from src [M, A, P], plus b [M]."""
    p = k % P
    r = k // P
    dst[k] = src[((r % M) * A + r // M) * P + p] + b[r % M]


@cuda_kernel
def cuda_add_bias(k, b, out, C, S):
    """out [B, C, S] += b [C]."""
    out[k] += b[(k // S) % C]


# ---- layers ------------------------------------------------------------------------

def _per_axis(ctx, what, v, nd, minimum=1):
    """An int or a list of nd ints, as a list of nd ints >= minimum."""
    vs = [v] * nd if isinstance(v, int) and not isinstance(v, bool) else v
    if (not isinstance(vs, (list, tuple)) or len(vs) != nd
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum
                       for i in vs)):
        ctx.fail(f"{what} must be an integer >= {minimum}"
                 + (f" or a list of {nd} such integers" if nd > 1 else "") + f", got {v!r}")
    return list(vs)


def side_pads(ctx, what, pad, nd):
    """Explicit padding as (lo, hi) per axis: an int or a list of nd ints (both
    sides alike; kept as ints), or a list of 2 nd ints, the sides in order
    ([top, bottom, left, right]; in 1-d [left, right])."""
    if isinstance(pad, (list, tuple)) and len(pad) == 2 * nd:
        if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pad):
            return [[pad[2 * i], pad[2 * i + 1]] for i in range(nd)]
    elif isinstance(pad, (list, tuple)) and len(pad) == nd or isinstance(pad, int):
        if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0
               for p in (pad if isinstance(pad, (list, tuple)) else [pad])):
            return [pad] * nd if isinstance(pad, int) else list(pad)
    sides = "[left, right]" if nd == 1 else "[top, bottom, left, right]" if nd == 2 else \
        f"a list of {2 * nd} (both sides of each axis)"
    ctx.fail(f"{what} must be an integer >= 0, "
             + (f"a list of {nd} such integers (per axis), " if nd > 1 else "")
             + f"or {sides}; got {pad!r}", hint="integers >= 0, one per axis or one per side")


def _pad_attr(ctx, layer_name, pad, nd):
    if isinstance(pad, int) and not isinstance(pad, bool) or isinstance(pad, (list, tuple)):
        return _pairs(side_pads(ctx, f"{layer_name}: pad", pad, nd))
    modes = ("valid", "same", "same_lower", "full") + (("causal",) if nd == 1 else ())
    return [ctx.choice(pad, modes, "pad")] * nd


def _emit_conv(ctx, name, x, nd, out, k, stride, pad, dilation, groups, bias, init, bias_init):
    xs = ctx.shape(x)
    if len(xs) != nd + 2:
        ctx.fail(f"{name}: needs a [B, C, {LAYOUT[nd]}] input, got {fmt(xs)}")
    cin = xs[1]
    if not isinstance(out, int) or out < 1:
        ctx.fail(f"{name}: the number of output channels must be a positive integer, got {out!r}")
    if not isinstance(groups, int) or groups < 1 or cin % groups or out % groups:
        ctx.fail(f"{name}: groups={groups!r} must divide both the {cin} input and the {out} "
                 f"output channels")
    ks = _per_axis(ctx, f"{name}: kernel", k, nd)
    attrs = {"stride": _per_axis(ctx, f"{name}: stride", stride, nd),
             "dilation": _per_axis(ctx, f"{name}: dilation", dilation, nd),
             "pad": _pad_attr(ctx, name, pad, nd), "groups": groups, "bias": bool(bias)}
    rf = prod(ks)
    w = ctx.param("weight", (out, cin // groups, *ks), init=init, fan_in=cin // groups * rf,
                  fan_out=out * rf)
    ins = [x, w]
    if bias:
        ins.append(ctx.param("bias", (out,), init=bias_init, fan_in=cin // groups * rf,
                             fan_out=out * rf))
    return ctx.emit("conv", ins, attrs)


@layer("conv1d")
def conv1d(ctx, x, out, k, *, stride=1, pad="valid", dilation=1, groups=1, bias=True,
           init="auto", bias_init=0.0):
    """1-d convolution over [B, C, L]: `conv1d(32, 5, pad=causal, dilation=2)`.
    pad: valid, same (output ceil(L / stride), the odd pad at the end, ONNX's
    SAME_UPPER), same_lower (the odd pad at the start), full, causal (all
    padding before), an int, or [left, right]."""
    return _emit_conv(ctx, "conv1d", x, 1, out, k, stride, pad, dilation, groups, bias, init,
                      bias_init)


@layer("conv2d")
def conv2d(ctx, x, out, k, *, stride=1, pad="valid", dilation=1, groups=1, bias=True,
           init="auto", bias_init=0.0):
    """2-d convolution over [B, C, H, W]: `conv2d(64, 3, pad=same)`; k, stride,
    dilation and pad take an int or [h, w]; pad also valid, same, same_lower,
    full, or each side [top, bottom, left, right]; groups=C is depthwise.
    Weight [out, in/groups, kh, kw]."""
    return _emit_conv(ctx, "conv2d", x, 2, out, k, stride, pad, dilation, groups, bias, init,
                      bias_init)


@layer("conv3d")
def conv3d(ctx, x, out, k, *, stride=1, pad="valid", dilation=1, groups=1, bias=True,
           init="auto", bias_init=0.0):
    """3-d convolution over [B, C, D, H, W] (volumes, video): `conv3d(16, 3,
    pad=same)`; k, stride, dilation and pad take an int or [d, h, w]; pad also
    valid, same, same_lower, full, or each side [front, back, top, bottom,
    left, right].  Weight [out, in/groups, kd, kh, kw].  Direct loops: fine
    for small volumes, not tuned for large ones."""
    return _emit_conv(ctx, "conv3d", x, 3, out, k, stride, pad, dilation, groups, bias, init,
                      bias_init)


def _emit_transpose(ctx, name, x, nd, out, k, stride, pad, output_padding, dilation, groups,
                    bias, init, bias_init):
    xs = ctx.shape(x)
    if len(xs) != nd + 2:
        ctx.fail(f"{name}: needs a [B, C, {LAYOUT[nd]}] input, got {fmt(xs)}")
    cin = xs[1]
    if not isinstance(out, int) or out < 1:
        ctx.fail(f"{name}: the number of output channels must be a positive integer, got {out!r}")
    if not isinstance(groups, int) or groups < 1 or cin % groups or out % groups:
        ctx.fail(f"{name}: groups={groups!r} must divide both the {cin} input and the {out} "
                 f"output channels")
    ks = _per_axis(ctx, f"{name}: kernel", k, nd)
    attrs = {"stride": _per_axis(ctx, f"{name}: stride", stride, nd),
             "dilation": _per_axis(ctx, f"{name}: dilation", dilation, nd),
             "pad": side_pads(ctx, f"{name}: pad", pad, nd),
             "output_padding": _per_axis(ctx, f"{name}: output_padding", output_padding, nd,
                                         minimum=0),
             "groups": groups, "bias": bool(bias)}
    rf = prod(ks)
    w = ctx.param("weight", (cin, out // groups, *ks), init=init, fan_in=out // groups * rf,
                  fan_out=cin * rf)
    ins = [x, w]
    if bias:
        ins.append(ctx.param("bias", (out,), init=bias_init, fan_in=out // groups * rf,
                             fan_out=cin * rf))
    return ctx.emit("conv_transpose", ins, attrs)


@layer("conv1d_transpose")
def conv1d_transpose(ctx, x, out, k, *, stride=1, pad=0, output_padding=0, dilation=1,
                     groups=1, bias=True, init="auto", bias_init=0.0):
    """Transposed 1-d convolution: output length (L-1)*stride - 2*pad +
    dilation*(k-1) + output_padding + 1 (pad=[left, right]: their sum for
    2*pad).  Weight [in, out/groups, k]."""
    return _emit_transpose(ctx, "conv1d_transpose", x, 1, out, k, stride, pad, output_padding,
                           dilation, groups, bias, init, bias_init)


@layer("conv2d_transpose")
def conv2d_transpose(ctx, x, out, k, *, stride=1, pad=0, output_padding=0, dilation=1,
                     groups=1, bias=True, init="auto", bias_init=0.0):
    """Transposed 2-d convolution (as PyTorch's ConvTranspose2d): each output
    size is (n-1)*stride - 2*pad + dilation*(k-1) + output_padding + 1; pad
    may give each side, [top, bottom, left, right] (ONNX's pads), which crops
    the full output by those amounts.  Weight [in, out/groups, kh, kw]."""
    return _emit_transpose(ctx, "conv2d_transpose", x, 2, out, k, stride, pad, output_padding,
                           dilation, groups, bias, init, bias_init)


@layer("conv3d_transpose")
def conv3d_transpose(ctx, x, out, k, *, stride=1, pad=0, output_padding=0, dilation=1,
                     groups=1, bias=True, init="auto", bias_init=0.0):
    """Transposed 3-d convolution (as PyTorch's ConvTranspose3d): each output
    size is (n-1)*stride - 2*pad + dilation*(k-1) + output_padding + 1; pad may
    give each side.  Weight [in, out/groups, kd, kh, kw]."""
    return _emit_transpose(ctx, "conv3d_transpose", x, 3, out, k, stride, pad, output_padding,
                           dilation, groups, bias, init, bias_init)


@layer("separable_conv2d")
def separable_conv2d(ctx, x, out, k, *, stride=1, pad="valid", dilation=1, bias=True,
                     init="auto", bias_init=0.0):
    """Depthwise k x k convolution (no bias) then a 1x1 pointwise convolution to
    `out` channels (Xception).  Parameters: depthwise.weight, pointwise.weight,
    pointwise.bias."""
    cin = ctx.shape(x)[1]
    sub = _Prefixed(ctx, "depthwise.")
    d = _emit_conv(sub, "separable_conv2d", x, 2, cin, k, stride, pad, dilation, cin, False,
                   init, 0.0)
    return _emit_conv(_Prefixed(ctx, "pointwise."), "separable_conv2d", d, 2, out, 1, 1, "valid",
                      1, 1, bias, init, bias_init)


class _Prefixed:
    """A layer context whose parameters get a name prefix (for composite layers)."""

    def __init__(self, ctx, prefix):
        self._ctx, self._prefix = ctx, prefix

    def param(self, suffix, *a, **kw):
        return self._ctx.param(self._prefix + suffix, *a, **kw)

    def state(self, suffix, *a, **kw):
        return self._ctx.state(self._prefix + suffix, *a, **kw)

    def __getattr__(self, name):
        return getattr(self._ctx, name)
