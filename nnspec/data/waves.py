"""`tones`: a generated waveform task for next-sample prediction (WaveNet).

    data = tones(length = 512)      # x: one-hot [256, 512], next: int[512]

Each example is a mixture of one to three sine tones (seeded: the same every
run) with random frequencies, amplitudes and phases, scaled into [-0.9, 0.9]
and mu-law quantised to 256 levels, as the WaveNet paper quantises audio:
f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu), mu = 255.  The input is the
one-hot of samples 0..T-1 (channels first), the target the levels of
samples 1..T: each position predicts the next sample.
"""
from __future__ import annotations

import numpy as np

from .registry import _whole, register

TONES_SEED = 4321
QUANT = 256


def mu_law(x: np.ndarray, quant: int = QUANT) -> np.ndarray:
    """Values in [-1, 1] as int levels 0..quant-1."""
    mu = quant - 1
    f = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return np.clip(np.floor((f + 1) / 2 * mu + 0.5), 0, mu).astype(np.int64)


def mu_law_inverse(q: np.ndarray, quant: int = QUANT) -> np.ndarray:
    """Levels 0..quant-1 back to values in [-1, 1]."""
    mu = quant - 1
    f = 2 * np.asarray(q, np.float64) / mu - 1
    return np.sign(f) * np.expm1(np.abs(f) * np.log1p(mu)) / mu


def waves(n: int, length: int, seed: int = TONES_SEED) -> np.ndarray:
    """[n, length] mixtures of tones in [-0.9, 0.9]."""
    t = np.arange(length)
    out = np.zeros((n, length))
    for i in range(n):          # a generator per example: a smaller n keeps the first ones
        rng = np.random.default_rng([seed, i])
        for _ in range(rng.integers(1, 4)):
            freq = rng.uniform(0.005, 0.06)          # cycles per sample
            out[i] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
        out[i] *= 0.9 / max(np.abs(out[i]).max(), 1e-9)
    return out


def _tones_args(length=512, **_):
    return {"length": length, "quant": QUANT}


@register("tones", _tones_args)
def tones(net=None, *, length: int = 512, limit: int = 128) -> dict:
    """`limit` waveforms of `length` + 1 samples: one-hot inputs [256, length] and
    the next sample's level at each position."""
    n = _whole(limit, "limit")
    q = mu_law(waves(n, _whole(length, "length") + 1))
    x = np.zeros((n, QUANT, length), np.float32)
    np.put_along_axis(x, q[:, None, :-1], 1.0, axis=1)
    return {"input": x, "target": q[:, 1:]}
