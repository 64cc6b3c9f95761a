"""The CUDA kernels every program shares, for one dtype: the sum of all
elements (the loss's mean, the gradients' squared norm), broadcasts, fills,
dropout masks, and the optimizer's clipping and updates.  The ops' own
kernels are in their modules (`Op.cuda`, run by ops.py).

A sum over everything is a block-level tree in shared memory per block
(`_block_reduce`, ops.py's), into `part`, then one block over the parts:
never atomics on one address.  The text below is rendered per dtype
and block size and loaded through the disk cache (`backend/cache.py`), its
name carrying the device architecture: `kernels(dtype)`.
"""
from __future__ import annotations

import functools

from .. import cache
from .ops import REDUCE_HELPER
from .runtime import THREADS, arch, watched

TEMPLATE = '''"""nnspec CUDA kernels, {dtype}, {threads} threads per block, {arch}."""
import math

import numpy as np
from numba import cuda, {dtype} as DT

T = np.{dtype}
RED = {threads}


{reduce}

@cuda.jit(cache=True)
def sum_part(x, n, part, square):
    """part[block] = the block's share of sum(x) (of x * x with `square`)."""
    sh = cuda.shared.array(RED, DT)
    s = T(0)
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        s += x[k] * x[k] if square else x[k]
    s = _block_reduce(sh, s)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x] = s


@cuda.jit(cache=True)
def sum_final(part, nparts, out, scale):
    """out[0] = sum(part) * scale: one block."""
    sh = cuda.shared.array(RED, DT)
    s = T(0)
    for k in range(cuda.threadIdx.x, nparts, RED):
        s += part[k]
    s = _block_reduce(sh, s)
    if cuda.threadIdx.x == 0:
        out[0] = s * scale


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
    text = TEMPLATE.format(dtype=dtype, threads=THREADS, arch=arch(), reduce=REDUCE_HELPER)
    return watched(cache.load(f"cuda_{arch()}_kernels", text))
