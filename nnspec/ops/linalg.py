"""Dense layers: `linear` (y = x W^T + b over the last axis), the `matmul`
forms its gradient needs, and `sum_rows` for the bias gradient; and
`batch_matmul`, the spec's `matmul(a, b)` (NumPy's, batches broadcast).

Shapes: x [..., in], W [out, in] (PyTorch's layout), b [out] -> y [..., out].
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Gemm, Map, Op, Ref, T, blas_gemm, blas_small_gemm, broadcast,
                   cuda_kernel, flat, fmt, kernel, known, layer, num_threads, prange, prod,
                   register)
from .reduce import sum_stages


# ---- linear -----------------------------------------------------------------

class Linear(Op):
    name = "linear"

    def infer(self, attrs, shapes, dtypes):
        x, w = shapes[0], shapes[1]
        if len(w) != 2:
            raise ShapeError(f"linear: weight must be 2-D, got {fmt(w)}")
        if known(x[-1]) and x[-1] != w[1]:
            raise ShapeError(f"linear: input has {x[-1]} features (shape {fmt(x)}) "
                             f"but the weight expects {w[1]}")
        if len(shapes) == 3 and tuple(shapes[2]) != (w[0],):
            raise ShapeError(f"linear: bias {fmt(shapes[2])} does not match {w[0]} outputs")
        return tuple(x[:-1]) + (w[0],), dtypes[0]

    def reference(self, attrs, x, w, b=None):
        y = x @ w.T
        return y + b if b is not None else y

    def grad(self, gb, node, g):
        x, w = node.inputs[0], node.inputs[1]
        out = [gb.add("matmul", (g, w)) if gb.wants(0) else None,                # dx = g W
               gb.add("matmul", (g, x), {"ta": True}) if gb.wants(1) else None]  # dW = g^T x
        if len(node.inputs) == 3:
            out.append(gb.add("sum_rows", (g,)) if gb.wants(2) else None)  # db = row sums of g
        return out

    def kernel(self, attrs):
        return (linear_bias, ()) if attrs.get("bias", True) else (linear_nobias, ())

    def cuda(self, attrs, in_shapes, out_shape):
        """One GEMM over x's rows; with a bias, out starts as the bias in each
        row and the GEMM adds to it."""
        (n, k), rows = in_shapes[1], prod(in_shapes[0][:-1])
        out = Ref("out", (rows, n))
        gemm = Gemm(Ref("in0", (rows, k)), "in1", out, tb=True, accumulate=len(in_shapes) == 3)
        if len(in_shapes) == 2:
            return Cuda([gemm])
        return Cuda([Map(bias_rows, rows * n, ["in2", flat("out", out_shape)], (n,)), gemm])

    def macs(self, attrs, in_shapes, out_shape):
        return prod(d for d in in_shapes[0][1:] if known(d)) * in_shapes[1][0]


register(Linear())


# GEMMs of a few rows (a recurrent step, a small batch) run transposed:
# out^T = b^T a^T, then one transposing copy.  OpenBLAS is faster on the tall
# form: [8, 64] x [64, 256] 6.8 -> 3.4 us, [32, 320] x [320, 1024] 146 -> 120
# us on two threads; from 64 rows on, and for tiny products, the plain form
# wins.  (Measured on the benchmark machine, bench/ and BENCHMARKS.md.)
FEW_ROWS = (4, 32)
FEW_ROWS_MIN_MACS = 1 << 16


# A product's results must not depend on the BLAS's thread count: a step the
# pacer runs on one thread (backend/cores.py) gives the bits of the same step
# on every core.  OpenBLAS's serial and threaded drivers sum a product's K
# terms in blocks of their own choosing, alike up to GEMM_Q terms (448 in
# float32, 384 in float64 with its SkylakeX kernels) and differently above
# (a [128, 784] x [784, 512] product differed in its last bits).  Where a
# kernel's plan has more than one thread, products of more than GEMM_K terms
# run as GEMMs of GEMM_K terms each, added into the result by the BLAS
# (beta = 1): about 3% slower on one thread, up to 15% on two.
GEMM_K = 256


@kernel
def _operand(x):
    """(transposed, leading dimension) of the 2-D array x as the column-major
    BLAS operand that holds x^T: (0, ld) where x's rows are contiguous, (1, ld)
    where its columns are; (-1, 0) where neither is."""
    isz = x.itemsize
    r, c = x.shape[0], x.shape[1]
    if c == 1 or x.strides[1] == isz:
        return 0, max(x.strides[0] // isz, c, 1)
    if r == 1 or x.strides[0] == isz:
        return 1, max(x.strides[1] // isz, r, 1)
    return -1, 0


@kernel
def gemm(a, b, out):
    """out = a @ b for 2-D a [M, K], b [K, N] and out [M, N] with contiguous
    rows, as np.dot, but the same bits on any number of BLAS threads (GEMM_K)."""
    if a.shape[1] <= GEMM_K or num_threads() < 2:
        np.dot(a, b, out)
    elif _operand(a)[0] < 0 or _operand(b)[0] < 0:
        _gemm_k(np.ascontiguousarray(a), np.ascontiguousarray(b), out)
    else:
        _gemm_k(a, b, out)


@kernel
def _gemm_k(a, b, out):
    """gemm's product, GEMM_K terms at a time (a and b with a contiguous axis)."""
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    _, ldc = _operand(out)
    K, M, N = a.shape[1], out.shape[0], out.shape[1]
    for k0 in range(0, K, GEMM_K):      # out^T = b^T a^T, column-major
        k1 = min(K, k0 + GEMM_K)
        blas_gemm(tb, ta, N, M, k1 - k0, b[k0:k1], ldb, a[:, k0:k1], lda,
                  0.0 if k0 == 0 else 1.0, out, ldc)


@kernel
def dot(a, b, out):
    """out = a @ b for 2-D a [M, K], b [K, N] (C or F contiguous)."""
    m, n = out.shape
    if FEW_ROWS[0] <= m <= FEW_ROWS[1] and m * n * a.shape[1] >= FEW_ROWS_MIN_MACS:
        tmp = np.empty((n, m), out.dtype)
        gemm(b.T, a.T, tmp)
        if n * m <= 1 << 14:
            for i in range(m):
                for j in range(n):
                    out[i, j] = tmp[j, i]
        else:       # in blocks of 64 rows of tmp (in the L1 cache): [1024, 32] 15 -> 9 us
            _cols_back(tmp, out, 0, n, tmp[0], False)
    else:
        gemm(a, b, out)


@kernel
def linear_nobias(x, w, out):
    dot(x.reshape(-1, x.shape[-1]), w.T, out.reshape(-1, w.shape[0]))


@kernel(parallel=True)
def linear_bias(x, w, b, out):
    o = out.reshape(-1, w.shape[0])
    dot(x.reshape(-1, x.shape[-1]), w.T, o)
    for i in prange(o.shape[0]):
        for j in range(o.shape[1]):
            o[i, j] += b[j]


@cuda_kernel
def bias_rows(k, b, out, n):
    """out.flat[k] = b at k's column (out [rows, n])."""
    out[k] = b[k % n]


@layer("dense")
def dense(ctx, x, n: int, *, bias: bool = True, init="auto", bias_init=0.0):
    """Fully connected over the last axis: `dense(n)`; `bias_init=1` starts a gate open."""
    fan_in = ctx.shape(x)[-1]
    if not isinstance(n, int) or n < 1:
        ctx.fail(f"dense: the number of units must be a positive integer, got {n!r}")
    w = ctx.param("weight", (n, fan_in), init=init, fan_in=fan_in, fan_out=n)
    ins = [x, w]
    if bias:
        ins.append(ctx.param("bias", (n,), init=bias_init, fan_in=fan_in, fan_out=n))
    return ctx.emit("linear", ins, {"bias": bool(bias)})


# ---- matmul -----------------------------------------------------------------

class MatMul(Op):
    """matmul(a, b): a [..., k] @ b [k, n] -> [..., n]  (tb: b is [n, k]).
    With ta, a [..., m] and b [..., n] are flattened to rows and a^T b is
    formed: [m, n] (the weight-gradient form)."""
    name = "matmul"

    def infer(self, attrs, shapes, dtypes):
        a, b = shapes
        if attrs.get("ta"):
            if tuple(a[:-1]) != tuple(b[:-1]):
                raise ShapeError(f"matmul: rows of {fmt(a)} and {fmt(b)} differ")
            return (a[-1], b[-1]), dtypes[0]
        k, n = (b[1], b[0]) if attrs.get("tb") else (b[0], b[1])
        if known(a[-1]) and a[-1] != k:
            raise ShapeError(f"matmul: inner sizes differ: {fmt(a)} @ {fmt(b)}")
        return tuple(a[:-1]) + (n,), dtypes[0]

    def reference(self, attrs, a, b):
        if attrs.get("ta"):
            return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])
        return a @ (b.T if attrs.get("tb") else b)

    def grad(self, gb, node, g):
        a, b = node.inputs
        if attrs_ta(node):        # y = a^T b: da = b g^T, db = a g
            pair = [("matmul", (b, g), {"tb": True}), ("matmul", (a, g), {})]
        elif node.attrs.get("tb"):  # y = a b^T: da = g b, db = g^T a
            pair = [("matmul", (g, b), {}), ("matmul", (g, a), {"ta": True})]
        else:                     # y = a b
            pair = [("matmul", (g, b), {"tb": True}), ("matmul", (a, g), {"ta": True})]
        return [gb.add(*p) if gb.wants(i) else None for i, p in enumerate(pair)]

    def kernel(self, attrs):
        if attrs.get("ta"):
            return matmul_tn, ()
        return (matmul_nt, ()) if attrs.get("tb") else (matmul_nn, ())

    def cuda(self, attrs, in_shapes, out_shape):
        """One GEMM, a and out seen as rows (with ta, b too)."""
        a, b = in_shapes
        rows = prod(a[:-1])
        if attrs.get("ta"):
            return Cuda([Gemm(Ref("in0", (rows, a[-1])), Ref("in1", (rows, b[-1])), "out",
                              ta=True)])
        return Cuda([Gemm(Ref("in0", (rows, a[-1])), "in1", Ref("out", (rows, out_shape[-1])),
                          tb=bool(attrs.get("tb")))])

    def macs(self, attrs, in_shapes, out_shape):
        return prod(d for d in in_shapes[0] if known(d)) * in_shapes[1][-1]


def attrs_ta(node) -> bool:
    return bool(node.attrs.get("ta"))


register(MatMul())


@kernel
def matmul_nn(a, b, out):
    dot(a.reshape(-1, a.shape[-1]), b, out.reshape(-1, b.shape[1]))


@kernel
def matmul_nt(a, b, out):
    dot(a.reshape(-1, a.shape[-1]), b.T, out.reshape(-1, b.shape[0]))


@kernel
def matmul_tn(a, b, out):
    gemm(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]), out)


# ---- batch_matmul: the spec's matmul(a, b) ---------------------------------------

def _swap(x, t):
    return np.swapaxes(x, -1, -2) if t else x


class BatchMatMul(Op):
    """batch_matmul(a, b; ta, tb): np.matmul over the last two axes, the axes
    before them broadcast as NumPy does ([B, h, m, k] @ [B, 1, k, n] ->
    [B, h, m, n]); ta / tb transpose a's / b's last two axes first (the
    gradient's forms).  Each input is a stack of matrices (2 axes or more)."""
    name = "batch_matmul"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        a, b = tuple(shapes[0]), tuple(shapes[1])
        if len(a) < 2 or len(b) < 2:
            raise ShapeError(f"batch_matmul: needs matrices (2 axes or more), got {fmt(a)} "
                             f"and {fmt(b)}")
        m, ka = (a[-1], a[-2]) if attrs.get("ta") else (a[-2], a[-1])
        kb, n = (b[-1], b[-2]) if attrs.get("tb") else (b[-2], b[-1])
        if not (known(ka) and known(kb)) or ka != kb:
            raise ShapeError(f"batch_matmul: inner sizes differ: {fmt(a)} @ {fmt(b)} "
                             f"({ka} and {kb})")
        return broadcast(self.name, a[:-2], b[:-2]) + (m, n), dtypes[0]

    def reference(self, attrs, a, b):
        return np.matmul(_swap(a, attrs.get("ta")), _swap(b, attrs.get("tb")))

    def grad(self, gb, node, g):
        # y = A B with A = a or a^T, B = b or b^T: dA = g B^T, dB = A^T g, each
        # transposed back where the input was, and summed over the axes the
        # input was broadcast along
        a, b = node.inputs
        ta, tb = bool(node.attrs.get("ta")), bool(node.attrs.get("tb"))
        pair = [(b, g, {"ta": tb, "tb": True}) if ta else (g, b, {"tb": not tb}),
                (g, a, {"ta": True, "tb": ta}) if tb else (a, g, {"ta": not ta})]
        out = []
        for i, (x, y, at) in enumerate(pair):
            if not gb.wants(i):
                out.append(None)
                continue
            d = gb.add("batch_matmul", (x, y), {k: v for k, v in at.items() if v})
            like = node.inputs[i]
            if gb.graph.shape(d) != gb.graph.shape(like):
                d = gb.add("sum_to", (d, like))
            out.append(d)
        return out

    def kernel(self, attrs):
        return batch_matmul, (bool(attrs.get("ta")), bool(attrs.get("tb")))

    def cuda(self, attrs, in_shapes, out_shape):
        """A GEMM per output matrix, or one over a's rows when every matrix of a
        meets the same b; more than CUDA_GEMMS matrices run as one Map, a
        thread per output element."""
        a, b, out = tuple(in_shapes[0]), tuple(in_shapes[1]), tuple(out_shape)
        ta, tb = bool(attrs.get("ta")), bool(attrs.get("tb"))
        M, N = out[-2:]
        K = a[-2] if ta else a[-1]
        lead = out[:-2]
        nmat = prod(lead)
        sa, sb = _lead_steps(a, lead), _lead_steps(b, lead)
        if not ta and not any(sb) and prod(a[:-2]) == nmat:
            return Cuda([Gemm(Ref("in0", (nmat * M, K)), Ref("in1", b[-2:]),
                              Ref("out", (nmat * M, N)), tb=tb)])
        if nmat <= CUDA_GEMMS:
            stages = []
            for i in range(nmat):
                ia = ib = 0
                for d, size in enumerate(lead):     # output matrix i's index along axis d
                    q = i // prod(lead[d + 1:]) % size
                    ia, ib = ia + q * sa[d], ib + q * sb[d]
                stages.append(Gemm(Ref("in0", a[-2:], ia * M * K), Ref("in1", b[-2:], ib * K * N),
                                   Ref("out", (M, N), i * M * N), ta, tb))
            return Cuda(stages)
        # element (m, k) of matrix i of a at i's offset + m * am + k * ak; of b, (k, n)
        am, ak = (1, M) if ta else (K, 1)
        bk, bn = (1, K) if tb else (N, 1)
        return Cuda([Map(batch_matmul_cuda, nmat * M * N,
                         [flat("in0", a), flat("in1", b), flat("out", out)],
                         (lead or (1,), tuple(s * M * K for s in sa) or (0,),
                          tuple(s * K * N for s in sb) or (0,), M, N, K, am, ak, bk, bn))])

    def macs(self, attrs, in_shapes, out_shape):
        a = in_shapes[0]
        return prod(d for d in out_shape[1:] if known(d)) * (a[-2] if attrs.get("ta") else a[-1])


register(BatchMatMul())


# batch_matmul on CUDA: up to this many output matrices run as a GEMM each
CUDA_GEMMS = 4


def _lead_steps(x, lead) -> tuple:
    """The step between x's matrices along each of the output's leading axes
    `lead` (0 where x is broadcast along it; x's leading axes right-aligned)."""
    xl = (1,) * (len(lead) - len(x) + 2) + tuple(x[:-2])
    return tuple(prod(xl[d + 1:]) if xl[d] != 1 else 0 for d in range(len(lead)))


@cuda_kernel
def batch_matmul_cuda(k, a, b, out, lead, sa, sb, M, N, K, am, ak, bk, bn):
    """out.flat[k]: element (m, n) of output matrix i = the dot product of
    row m of a's matrix and column n of b's (their offsets sa, sb per axis
    of `lead`, the output's leading axes)."""
    n = k % N
    m = k // N % M
    i = k // (M * N)
    ia = m * am
    ib = n * bn
    for d in range(len(lead) - 1, -1, -1):
        q = i % lead[d]
        ia += q * sa[d]
        ib += q * sb[d]
        i //= lead[d]
    s = T(0)
    for j in range(K):
        s += a[ia + j * ak] * b[ib + j * bk]
    out[k] = s


@kernel
def _stack(x, L):
    """x as [matrices, rows, cols], and the step between its matrices along
    each of the L leading axes of the output (0 where x is broadcast)."""
    r, c = x.shape[x.ndim - 2], x.shape[x.ndim - 1]
    st = np.zeros(L, np.int64)
    s = 1
    for k in range(x.ndim - 2):
        ax = x.ndim - 3 - k
        if x.shape[ax] != 1:
            st[L - 1 - k] = s
        s *= x.shape[ax]
    return x.reshape((x.size // (r * c), r, c)), st


@kernel
def batch_matmul(a, b, out, ta, tb):
    L = out.ndim - 2
    M, N = out.shape[L], out.shape[L + 1]
    lead = np.empty(L, np.int64)
    nmat = 1
    for k in range(L):
        lead[k] = out.shape[k]
        nmat *= out.shape[k]
    inner = np.ones(L, np.int64)
    for k in range(L - 2, -1, -1):
        inner[k] = inner[k + 1] * lead[k + 1]
    a3, sa = _stack(a, L)
    b3, sb = _stack(b, L)
    o3 = out.reshape((nmat, M, N))
    for i in range(nmat):
        ia, ib = 0, 0
        for k in range(L):
            q = (i // inner[k]) % lead[k]
            ia += q * sa[k]
            ib += q * sb[k]
        if ta and tb:
            gemm(a3[ia].T, b3[ib].T, o3[i])
        elif ta:
            gemm(a3[ia].T, b3[ib], o3[i])
        elif tb:
            gemm(a3[ia], b3[ib].T, o3[i])
        else:
            gemm(a3[ia], b3[ib], o3[i])


@layer("matmul", inputs=2)
def matmul_layer(ctx, a, b):
    """Matrix product over the last two axes, the axes before them broadcast
    as NumPy's matmul and ONNX's MatMul: [B, h, m, k] and [B, 1, k, n] ->
    [B, h, m, n].  Each input is a batch of matrices, [B, m, k] or more axes."""
    sa, sb = ctx.shape(a), ctx.shape(b)
    for x in (sa, sb):
        if len(x) < 3:
            ctx.fail(f"matmul: each input is a batch of matrices [B, m, k]; got {fmt(x)}",
                     hint="reshape a batch of vectors [B, k] to [B, 1, k] (a row) or "
                          "[B, k, 1] (a column)")
    if len(sa) != len(sb):
        # NumPy aligns the last axes: the batch axis of one would meet a
        # matrix-stack axis of the other
        ctx.fail(f"matmul: {fmt(sa)} and {fmt(sb)} differ in rank",
                 hint="give both the same number of axes, with 1 where one is broadcast "
                      "(reshape [B, m, k] to [B, 1, m, k])")
    return ctx.emit("batch_matmul", [a, b], {})


# ---- sum_rows -----------------------------------------------------------------

class SumRows(Op):
    """Sum over every axis but the last: [..., n] -> [n]."""
    name = "sum_rows"

    def infer(self, attrs, shapes, dtypes):
        return (shapes[0][-1],), dtypes[0]

    def reference(self, attrs, x):
        return x.reshape(-1, x.shape[-1]).sum(axis=0)

    def grad(self, gb, node, g):
        return [gb.add("broadcast_like", (g, node.inputs[0]))]

    def kernel(self, attrs):
        return sum_rows, ()

    def cuda(self, attrs, in_shapes, out_shape):
        x = in_shapes[0]
        return Cuda(*sum_stages("in0", x, tuple(range(len(x) - 1)), "out"))


register(SumRows())


@kernel
def sum_rows(x, out):
    x2 = x.reshape(-1, x.shape[-1])
    out[:] = 0
    for i in range(x2.shape[0]):
        for j in range(x2.shape[1]):
            out[j] += x2[i, j]


# ---- a loop's products on two threads (backend/loops.py, paired loops) --------
# Each of the two threads calls these for its part q of nq: rows r0:r1 of the
# batch, or a block of a product's output columns, with OpenBLAS on one thread.
# A product x W^T of a few rows runs as W's column blocks times x^T (the tall
# form OpenBLAS multiplies best; each thread lays out its rows of x^T, the
# second half from a cache line on: pair_pad), in blocks of at most SMALL_MACS
# multiply-adds where OpenBLAS has its small-matrix path (no packing: the
# LSTM's [32, 256] x [256, 1024] in 35 us on two threads, 47 us in
# OpenBLAS's own two threads plus a 9 us transposing copy).

SMALL_MACS = 1 << 19


@kernel
def pair_pad(B, itemsize):
    """Columns left empty between the two threads' halves of a [K, B] x^T
    buffer, so that the second half (rows B // 2 on) starts on a cache line:
    halves sharing a line would move it between the cores at every write.
    None where the plan has one thread (a split step's half): at 16 rows the
    8 empty columns of a [K, 24] buffer made its products a third larger."""
    if num_threads() < 2:
        return 0
    return (-(B // 2)) % max(1, 64 // itemsize)


@kernel
def _xt_col(i, B, W):
    """The column of batch row i in a [K, W] x^T buffer (W = B + pair_pad)."""
    return i + W - B if i >= B // 2 else i


@kernel
def rows_t(x, xt, r0, r1):
    """x[r0:r1]^T into xt [K, B + pad] for x [B, K]: row i to column i, or
    i + pad from B // 2 on (pair_pad); 64 columns of x at a time."""
    B, K = x.shape[0], x.shape[1]
    W = xt.shape[1]
    xf, tf = x.reshape(x.size), xt.reshape(xt.size)
    for c0 in range(0, K, 64):
        c1 = min(c0 + 64, K)
        for i in range(r0, r1):
            j = _xt_col(i, B, W)
            for c in range(c0, c1):
                tf[np.uint64(c * W + j)] = xf[np.uint64(i * K + c)]


@kernel
def gather_w(parts, starts, transposed, out, q, nq):
    """Rows of part q of a loop's derived weight (backend/loops.py _recipe):
    out = concat_k(parts[k][:, starts[k]:starts[k] + width]), or its
    transpose; in one pass from the captured weights."""
    R = out.shape[0]
    r0, r1 = q * R // nq, (q + 1) * R // nq
    off = 0
    for k in range(len(parts)):
        p = parts[k]
        n, s = p.shape[0], starts[k]
        if transposed:          # out[i, off + j] = p[j, s + i], 64 rows of p at a time
            for j0 in range(0, n, 64):
                for i in range(r0, r1):
                    for j in range(j0, min(j0 + 64, n)):
                        out[i, off + j] = p[j, s + i]
        else:
            for i in range(max(r0, off), min(r1, off + n)):
                for j in range(out.shape[1]):
                    out[i, j] = p[i - off, s + j]
        off += n


@kernel
def _cols_gemm(xt, w, tmp, q, nq):
    """tmp[j0:j1] = w[j0:j1] @ xt for part q's columns; returns (j0, j1)."""
    n, k = w.shape
    m = xt.shape[1]
    rows = n
    if blas_small_gemm():
        rows = max(8, SMALL_MACS // max(m * k, 1))
        rows -= rows % 8
    u = max(8, 64 // tmp.itemsize)      # parts start on a cache line of out's rows
    units = (n + u - 1) // u
    j0 = min(n, (q * units // nq) * u)
    j1 = min(n, ((q + 1) * units // nq) * u)
    for r in range(j0, j1, rows):
        np.dot(w[r:min(r + rows, j1)], xt, tmp[r:min(r + rows, j1)])
    return j0, j1


@kernel
def _cols_back(tmp, out, j0, j1, b, has_bias):
    """out[:, j0:j1] = tmp[j0:j1]^T (+ b[j0:j1]), 64 columns at a time; tmp
    [N, B + pad] has rows_t's layout (pair_pad)."""
    m, n = out.shape
    W = tmp.shape[1]
    o, t = out.reshape(out.size), tmp.reshape(tmp.size)
    for c0 in range(j0, j1, 64):
        for i in range(m):
            ti = _xt_col(i, m, W)
            for j in range(c0, min(c0 + 64, j1)):
                v = t[np.uint64(j * W + ti)]
                if has_bias:
                    v += b[j]
                o[np.uint64(i * n + j)] = v


@kernel
def cols_part(xt, w, out, tmp, q, nq):
    """Columns of part q of out [B, N] = x w^T, from xt = x^T [K, B] (rows_t)
    and w [N, K]; tmp [N, B] is the product's transpose, shared."""
    j0, j1 = _cols_gemm(xt, w, tmp, q, nq)
    _cols_back(tmp, out, j0, j1, tmp[0], False)


@kernel
def cols_part_bias(xt, w, b, out, tmp, q, nq):
    """cols_part, plus the bias b [N]."""
    j0, j1 = _cols_gemm(xt, w, tmp, q, nq)
    _cols_back(tmp, out, j0, j1, b, True)


@kernel
def linear_rows(x, w, b, has_bias, out, q, nq):
    """Rows of part q of out = x w^T (+ b) over x's rows (a hoisted projection)."""
    x2, o2 = x.reshape(-1, x.shape[-1]), out.reshape(-1, w.shape[0])
    r = x2.shape[0]
    r0, r1 = q * r // nq, (q + 1) * r // nq
    if r1 > r0:
        np.dot(x2[r0:r1], w.T, o2[r0:r1])
        if has_bias:
            for i in range(r0, r1):
                for j in range(o2.shape[1]):
                    o2[i, j] += b[j]


@kernel
def matmul_tn_part(a, b, parts, q, nq):
    """parts[q] = a^T b over part q of the rows (a [..., N], b [..., M])."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    r = a2.shape[0]
    r0, r1 = q * r // nq, (q + 1) * r // nq
    np.dot(a2[r0:r1].T, b2[r0:r1], parts[q])


@kernel
def sum_rows_part(x, parts, q, nq):
    """parts[q] = the sums of part q of x's rows."""
    x2 = x.reshape(-1, x.shape[-1])
    r = x2.shape[0]
    p = parts[q]
    p[:] = 0
    for i in range(q * r // nq, (q + 1) * r // nq):
        for j in range(x2.shape[1]):
            p[j] += x2[i, j]


@kernel
def sum_parts(parts, out, q, nq):
    """Part q of out's elements = the sum of the nq partial results."""
    o = out.reshape(out.size)
    p = parts.reshape(parts.shape[0], o.size)
    n = o.size
    for j in range(q * n // nq, (q + 1) * n // nq):
        acc = p[0, j]
        for k in range(1, nq):
            acc += p[k, j]
        o[j] = acc


@kernel
def add_parts(parts, off, k, g, q, nq):
    """g += rows off:off+k of the sum of the nq partial results, part q of
    the rows (a capture's gradient straight from the partial sums)."""
    pf = parts.reshape(parts.shape[0], parts.shape[1], -1)
    gf = g.reshape(k, -1)
    for r in range(q * k // nq, (q + 1) * k // nq):
        for c in range(gf.shape[1]):
            acc = pf[0, off + r, c]
            for j in range(1, nq):
                acc += pf[j, off + r, c]
            gf[r, c] += acc
