"""The CUDA kernels every program shares, for one dtype: row softmax and its
gradient, the cross-entropy and NLL losses and their gradients, sums (all elements, per
column), broadcasts, fills, dropout masks, and the optimizer's clipping and
updates.

Each reduction is a block-level tree in shared memory (`_block_reduce`),
never atomics on one address: a softmax row is one block, a column sum is
one block, a sum over everything is a sum per block into `part` and one
block over the parts.  The text below is rendered per dtype
and block size and loaded through the disk cache (`backend/cache.py`), its
name carrying the device architecture: `kernels(dtype)`.
"""
from __future__ import annotations

import functools

from .. import cache
from .runtime import THREADS, arch, watched

TEMPLATE = '''"""nnspec CUDA kernels, {dtype}, {threads} threads per block, {arch}."""
import math

import numpy as np
from numba import cuda, {dtype} as DT

T = np.{dtype}
RED = {threads}


@cuda.jit(device=True)
def _block_reduce(sh, v, biggest):
    """The sum (the max with `biggest`) of v over the block's threads, returned
    to each: a tree in shared memory, halving the threads at each level."""
    i = cuda.threadIdx.x
    sh[i] = v
    cuda.syncthreads()
    s = RED // 2
    while s > 0:
        if i < s:
            sh[i] = max(sh[i], sh[i + s]) if biggest else sh[i] + sh[i + s]
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _row_lse(sh, x, i, C):
    """(max, log-sum-exp - max) of row i of x [n, C]: one block."""
    m = x[i, 0]
    for j in range(cuda.threadIdx.x, C, RED):
        m = max(m, x[i, j])
    m = _block_reduce(sh, m, True)
    s = T(0)
    for j in range(cuda.threadIdx.x, C, RED):
        s += math.exp(x[i, j] - m)
    return m, math.log(_block_reduce(sh, s, False))


@cuda.jit(cache=True)
def softmax_rows(x, out, n, C, log):
    sh = cuda.shared.array(RED, DT)
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        m, lse = _row_lse(sh, x, i, C)
        for j in range(cuda.threadIdx.x, C, RED):
            z = x[i, j] - m - lse
            out[i, j] = z if log else math.exp(z)


@cuda.jit(cache=True)
def softmax_grad_rows(g, y, out, n, C, log):
    sh = cuda.shared.array(RED, DT)
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        s = T(0)
        for j in range(cuda.threadIdx.x, C, RED):
            s += g[i, j] if log else g[i, j] * y[i, j]
        s = _block_reduce(sh, s, False)
        for j in range(cuda.threadIdx.x, C, RED):
            out[i, j] = g[i, j] - math.exp(y[i, j]) * s if log else y[i, j] * (g[i, j] - s)


@cuda.jit(cache=True)
def xent_rows(z, t, rows, n, C):
    """rows[i] = log-sum-exp(z[i]) - z[i, t[i]]; cross_entropy is their mean."""
    sh = cuda.shared.array(RED, DT)
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        m, lse = _row_lse(sh, z, i, C)
        if cuda.threadIdx.x == 0:
            rows[i] = lse + m - z[i, t[i]]


@cuda.jit(cache=True)
def xent_grad(g, z, t, out, n, C):
    sh = cuda.shared.array(RED, DT)
    scale = g[0] / T(n)
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        m, lse = _row_lse(sh, z, i, C)
        for j in range(cuda.threadIdx.x, C, RED):
            v = math.exp(z[i, j] - m - lse) * scale
            out[i, j] = v - scale if j == t[i] else v


@cuda.jit(cache=True)
def nll_rows(lp, t, rows, n):
    """rows[i] = -lp[i, t[i]]; nll is their mean."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        rows[i] = -lp[i, t[i]]


@cuda.jit(cache=True)
def nll_grad(g, t, out, n, C):
    v = -g[0] / T(n)
    for k in range(cuda.grid(1), n * C, cuda.gridsize(1)):
        out[k // C, k % C] = v if k % C == t[k // C] else T(0)


@cuda.jit(cache=True)
def sum_part(x, n, part, square):
    """part[block] = the block's share of sum(x) (of x * x with `square`)."""
    sh = cuda.shared.array(RED, DT)
    s = T(0)
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        s += x[k] * x[k] if square else x[k]
    s = _block_reduce(sh, s, False)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x] = s


@cuda.jit(cache=True)
def sum_final(part, nparts, out, scale):
    """out[0] = sum(part) * scale: one block."""
    sh = cuda.shared.array(RED, DT)
    s = T(0)
    for k in range(cuda.threadIdx.x, nparts, RED):
        s += part[k]
    s = _block_reduce(sh, s, False)
    if cuda.threadIdx.x == 0:
        out[0] = s * scale


@cuda.jit(cache=True)
def sum_rows(x, out, n, C):
    """out[j] = sum_i x[i, j]: one block per column (the bias gradients)."""
    sh = cuda.shared.array(RED, DT)
    for j in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        s = T(0)
        for i in range(cuda.threadIdx.x, n, RED):
            s += x[i, j]
        s = _block_reduce(sh, s, False)
        if cuda.threadIdx.x == 0:
            out[j] = s


@cuda.jit(cache=True)
def broadcast(g, out, n, shape, gstride, scale):
    """out [shape] = g read with strides gstride (0 along broadcast axes), times scale."""
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = k
        gi = 0
        for d in range(len(shape) - 1, -1, -1):
            gi += (r % shape[d]) * gstride[d]
            r //= shape[d]
        out[k] = g[gi] * scale


@cuda.jit(cache=True)
def fill(out, n, v):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[k] = v


@cuda.jit(device=True)
def _splitmix(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@cuda.jit(cache=True)
def dropout_mask(step, out, n, p, seed, keep):
    """ops/norm.py's dropout_mask: the same counter-based uniforms (splitmix64
    of seed, step and the element's index), so the CPU's masks exactly."""
    key = _splitmix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(int(step[0])))
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        u = np.float64(_splitmix(key + np.uint64(j)) >> np.uint64(11)) * 1.1102230246251565e-16
        out[j] = keep if u >= p else T(0)


@cuda.jit(cache=True)
def add_rows(out, b, n, C):
    """out [n, C] = b broadcast over the rows (a bias, before a GEMM adds to it)."""
    for k in range(cuda.grid(1), n * C, cuda.gridsize(1)):
        out[k // C, k % C] = b[k % C]


@cuda.jit(cache=True)
def status(loss, sq, clip, st):
    """st = [loss, ok, scale]: ok when the loss (and, clipping, the gradients'
    squared norm sq) is finite; scale < 1 clips the gradients' global norm."""
    if cuda.grid(1) == 0:
        ok = math.isfinite(loss[0])
        scale = T(1)
        if ok and clip > T(0):
            ok = math.isfinite(sq[0])
            c = clip / (math.sqrt(sq[0]) + T(1e-6))
            if c < T(1):
                scale = c
        st[0] = loss[0]
        st[1] = T(1) if ok else T(0)
        st[2] = scale


@cuda.jit(cache=True)
def sgd(p, g, buf, st, lr, mu, wd, nesterov):
    """backend/optim.py's sgd, skipped when st[1] (ok) is 0."""
    if st[1] == T(0):
        return
    scale = st[2]
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        if mu == T(0):
            p[i] -= lr * (g[i] * scale + wd * p[i])
        elif nesterov:
            d = g[i] * scale + wd * p[i]
            b = mu * buf[i] + d
            buf[i] = b
            p[i] -= lr * (d + mu * b)
        else:
            b = mu * buf[i] + g[i] * scale + wd * p[i]
            buf[i] = b
            p[i] -= lr * b


@cuda.jit(cache=True)
def adam(p, g, m, v, st, b1, b2, eps, wd, lr, step, rs, decoupled):
    """backend/optim.py's adam and adamw, skipped when st[1] (ok) is 0."""
    if st[1] == T(0):
        return
    scale = st[2]
    one = T(1)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        d = g[i] * scale
        if decoupled:
            p[i] *= one - lr * wd
        else:
            d += wd * p[i]
        mi = b1 * m[i] + (one - b1) * d
        vi = b2 * v[i] + (one - b2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (math.sqrt(vi) * rs + eps)
'''


@functools.lru_cache(maxsize=None)
def kernels(dtype: str):
    """The module of shared kernels for `dtype` ("float32" or "float64")."""
    text = TEMPLATE.format(dtype=dtype, threads=THREADS, arch=arch())
    return watched(cache.load(f"cuda_{arch()}_kernels", text))
