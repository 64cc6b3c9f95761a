"""Images: bilinear resizing (for `digits(size=...)`) and `shapes`, a
generated segmentation set.

    resize(x, 32)                  # [N, h, w] -> [N, 32, 32]
    data = shapes(size = 252)      # [1, 252, 252] images, int masks of the
                                   # network's output size (the centre crop)

`shapes` draws N images (seeded, the same every run) of Gaussian noise with
one to three discs and rectangles, each brighter than the noise by a random
contrast; the mask is 1 inside a shape, 0 outside.  A network with an
unpadded output (U-Net: 252 in, 68 out) is scored on the mask's centre, as
the paper's overlap-tile strategy predicts the centre of a larger input.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .bind import per_example
from .registry import _whole, register

SHAPES_SEED = 1234


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights, pixel centres aligned
    (align_corners=False, as PyTorch's and OpenCV's bilinear resize)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), lo), 1 - (src - lo))
    np.add.at(w, (np.arange(n_out), hi), src - lo)
    return w


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Images [N, h, w] resized to [N, size, size] by bilinear interpolation."""
    rows, cols = _weights(x.shape[1], size), _weights(x.shape[2], size)
    return np.einsum("oi,nij,pj->nop", rows, x.astype(np.float64), cols).astype(np.float32)


def _shapes_args(size=252, **_):
    return {"size": size, "classes": 2}


@register("shapes", _shapes_args)
def shapes(net=None, *, size: int = 252, limit: int = 256, noise: float = 0.5) -> dict:
    """`limit` noisy [1, size, size] images of discs and rectangles, with their
    masks cropped to the network's target (whole when there is no network)."""
    size, n = _whole(size, "size"), _whole(limit, "limit")
    x = np.empty((n, size, size), np.float32)
    mask = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):          # a generator per image: a smaller limit keeps the first ones
        rng = np.random.default_rng([SHAPES_SEED, i])
        x[i] = rng.normal(0.0, noise, (size, size))
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.08, 0.25) * size
            inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if rng.random() < 0.5 \
                else (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.4, 1.0))
            mask[i][inside] = 1
            x[i][inside] += rng.uniform(0.5, 1.0)
    out = _crop_size(net, size)
    lo = (size - out) // 2
    return {"input": x[:, None], "target": mask[:, lo:lo + out, lo:lo + out]}


def _crop_size(net, size: int) -> int:
    """The side of the network's only target's masks ([H, W]), else `size`."""
    targets = list(getattr(net, "targets", {}).values())
    shape = per_example(targets[0]) if len(targets) == 1 else ()
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        return size
    if shape[0] != shape[1] or shape[0] > size:
        raise DataError(f"shapes: the network's target is {list(shape)}; the masks are "
                        f"square crops of the [{size}, {size}] images")
    return shape[0]
