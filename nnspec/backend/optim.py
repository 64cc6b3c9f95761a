"""Optimizer updates over the flat parameter arena, called from compiled steps.

Parameters, their gradients and each optimizer slot share one layout (the
parameter arena's), so an update is one loop over flat arrays whatever the
network.  Hyper-parameters come in `hp`, an array of the parameters' dtype
(indices below), so changing the learning rate never recompiles; PyTorch's
semantics:

    sgd:   d = g + wd p;  buf = mu buf + d;  d = d + mu buf (nesterov) or buf;  p -= lr d
    adam:  d = g + wd p;  m = b1 m + (1-b1) d;  v = b2 v + (1-b2) d^2
           p -= (lr / (1-b1^t)) m / (sqrt(v) / sqrt(1-b2^t) + eps)
    adamw: as adam with d = g, and p *= 1 - lr wd first

`g` is first multiplied by `scale` (global-norm clipping; 1 when off).
Arrays of at least PAR_MIN elements use the parallel variants.
"""
from __future__ import annotations

import sys

import numpy as np
from numba import njit, prange

LR, MOMENTUM, BETA2, EPS, WEIGHT_DECAY, CLIP, STEP_SIZE, BC2_RSQRT = range(8)
HP_SIZE = 8
PAR_MIN = 1 << 16
_BLOCK = 1024


@njit(cache=True, error_model="numpy")
def _sumsq_serial(g):
    T = g.dtype.type
    total = T(0)
    for s in range(0, g.size, _BLOCK):      # blocked: float32 partial sums stay accurate
        part = T(0)
        for i in range(s, min(s + _BLOCK, g.size)):
            part += g[i] * g[i]
        total += part
    return total


@njit(cache=True, parallel=True, error_model="numpy")
def _sumsq_par(g):
    T = g.dtype.type
    nb = (g.size + _BLOCK - 1) // _BLOCK
    parts = np.zeros(nb, g.dtype)
    for b in prange(nb):
        part = T(0)
        for i in range(b * _BLOCK, min((b + 1) * _BLOCK, g.size)):
            part += g[i] * g[i]
        parts[b] = part
    total = T(0)
    for b in range(nb):
        total += parts[b]
    return total


@njit(cache=True, error_model="numpy")
def sumsq(g):
    if g.size >= PAR_MIN:
        return _sumsq_par(g)
    return _sumsq_serial(g)


@njit(cache=True, error_model="numpy")
def _sgd_serial(p, g, buf, lr, mu, wd, scale, nesterov):
    if mu == 0:
        for i in range(p.size):
            p[i] -= lr * (g[i] * scale + wd * p[i])
    elif nesterov:
        for i in range(p.size):
            d = g[i] * scale + wd * p[i]
            b = mu * buf[i] + d
            buf[i] = b
            p[i] -= lr * (d + mu * b)
    else:
        for i in range(p.size):
            b = mu * buf[i] + g[i] * scale + wd * p[i]
            buf[i] = b
            p[i] -= lr * b


@njit(cache=True, parallel=True, error_model="numpy")
def _sgd_par(p, g, buf, lr, mu, wd, scale, nesterov):
    if mu == 0:
        for i in prange(p.size):
            p[i] -= lr * (g[i] * scale + wd * p[i])
    elif nesterov:
        for i in prange(p.size):
            d = g[i] * scale + wd * p[i]
            b = mu * buf[i] + d
            buf[i] = b
            p[i] -= lr * (d + mu * b)
    else:
        for i in prange(p.size):
            b = mu * buf[i] + g[i] * scale + wd * p[i]
            buf[i] = b
            p[i] -= lr * b


@njit(cache=True, error_model="numpy")
def sgd(p, g, buf, hp, scale, nesterov):
    if p.size >= PAR_MIN:
        _sgd_par(p, g, buf, hp[LR], hp[MOMENTUM], hp[WEIGHT_DECAY], scale, nesterov)
    else:
        _sgd_serial(p, g, buf, hp[LR], hp[MOMENTUM], hp[WEIGHT_DECAY], scale, nesterov)


@njit(cache=True, error_model="numpy")
def _adam_serial(p, g, m, v, b1, b2, eps, wd, lr, step, rs, scale, decoupled):
    T = p.dtype.type
    one = T(1)
    for i in range(p.size):
        d = g[i] * scale
        if decoupled:
            p[i] *= one - lr * wd
        else:
            d += wd * p[i]
        mi = b1 * m[i] + (one - b1) * d
        vi = b2 * v[i] + (one - b2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi) * rs + eps)


@njit(cache=True, parallel=True, error_model="numpy")
def _adam_par(p, g, m, v, b1, b2, eps, wd, lr, step, rs, scale, decoupled):
    T = p.dtype.type
    one = T(1)
    for i in prange(p.size):
        d = g[i] * scale
        if decoupled:
            p[i] *= one - lr * wd
        else:
            d += wd * p[i]
        mi = b1 * m[i] + (one - b1) * d
        vi = b2 * v[i] + (one - b2) * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi) * rs + eps)


@njit(cache=True, error_model="numpy")
def adam(p, g, m, v, hp, scale, decoupled):
    args = (hp[MOMENTUM], hp[BETA2], hp[EPS], hp[WEIGHT_DECAY], hp[LR], hp[STEP_SIZE],
            hp[BC2_RSQRT], scale, decoupled)
    if p.size >= PAR_MIN:
        _adam_par(p, g, m, v, *args)
    else:
        _adam_serial(p, g, m, v, *args)


def update(P, G, M, V, hp, optimizer: dict) -> bool:
    """One optimizer step from the gradients in `G`, called from Python (the
    NumPy reference steps, and data-parallel training after the gradients are
    averaged): the same clipping and updates a compiled train step makes.
    Returns False, leaving the weights alone, when the gradient's norm is not
    finite."""
    T = P.dtype.type
    scale = T(1)
    clip = hp[CLIP]
    if clip > 0:
        sq = sumsq(G)
        if not np.isfinite(sq):
            return False
        c = T(clip / (np.sqrt(sq) + T(1e-6)))
        if c < T(1):
            scale = c
    name = optimizer.get("name", "sgd")
    if name == "sgd":
        sgd(P, G, M, hp, scale, bool(optimizer.get("nesterov", False)))
    elif name in ("adam", "adamw"):
        adam(P, G, M, V, hp, scale, name == "adamw")
    else:
        raise ValueError(f"unknown optimizer '{name}'")
    return True


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
