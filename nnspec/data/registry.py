"""Named data sets.

A named data set is a function `(net) -> Split` registered with
`@register(name)`.  It returns arrays under the network's own names or under
the generic keys ``"input"`` / ``"target"`` (bound to the network's only input
/ target), either already split as ``(train, test)`` or as one dict that the
loader splits.  It gets the network so a task can size itself to it (a
sequence task reads ``T`` or the vocabulary from the input's shape).

A set may take keyword options, written as a call: ``digits(size=32,
channels=3)`` (the train section's `data = digits(size = 32, channels = 3)`
gives that text).  `net_args` says which of the network's arguments a set's
options fix (an image size, the classes), so training can set them.

The sequence tasks (adding, copy, reverse) register themselves in sequences.py,
the tree task (trees) in trees.py, the image and waveform sets in images.py
and waves.py.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError, did_you_mean

DATASETS: dict[str, Callable] = {}
NET_ARGS: dict[str, Callable] = {}     # name -> (**options) -> {network argument: value}

_HERE = Path(__file__).parent
_CALL = re.compile(r"^([A-Za-z_]\w*)\((.*)\)$", re.S)


def register(name: str, net_args: Callable | None = None):
    def deco(fn):
        DATASETS[name] = fn
        if net_args is not None:
            NET_ARGS[name] = net_args
        return fn
    return deco


def parse(text: str) -> tuple[str, dict]:
    """``"digits(size=32, channels=3)"`` -> ``("digits", {"size": 32, "channels": 3})``;
    a plain name has no options.  Options of a name that is not a set, or that
    its function does not take, are a DataError."""
    from ..cli import parse_value     # --set's reading of values
    m = _CALL.match(str(text).strip())
    if m is None or m.group(1) not in DATASETS:
        return str(text), {}            # a file's name may hold parentheses
    name, body = m.group(1), m.group(2).strip()
    opts = {}
    for item in filter(None, (x.strip() for x in body.split(","))):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not key.isidentifier():
            raise DataError(f"data '{text}': options are written name=value, got '{item}'")
        opts[key] = parse_value(value)
    params = inspect.signature(DATASETS[name]).parameters
    takes = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for key in opts:
        if key not in takes:
            hint = did_you_mean(key, takes)
            raise DataError(f"data set '{name}' has no option '{key}' (options: "
                            f"{', '.join(takes) or 'none'})" + (f"; {hint}" if hint else ""))
    return name, opts


def net_args(text) -> dict:
    """The network arguments a data set's options fix: ``{"size": 32, "classes": 10}``
    for ``digits(size=32)``; empty for sets and files that fix none."""
    name, opts = parse(text)
    return NET_ARGS[name](**opts) if name in NET_ARGS else {}


def _digits_args(size=None, **_):
    return {"classes": 10, **({"size": size} if size else {})}


@register("digits", _digits_args)
def digits(net=None, *, size: int | None = None, channels: int | None = None,
           limit: int | None = None) -> dict:
    """The 8x8 handwritten digits (UCI optdigits test set as shipped with
    scikit-learn's `load_digits`): 1,797 images, pixels scaled from 0..16 to
    [0, 1], float32 [1797, 64] (reshaped to [1, 8, 8] for a conv net by the
    loader), labels int64 0..9.  Options: `size` resizes each image to
    [size, size] (bilinear, images.resize), `channels` repeats it into that
    many channels ([N, channels, size, size]), `limit` keeps the first that
    many examples (for a short run of a large network)."""
    with np.load(_HERE / "digits.npz", allow_pickle=False) as f:
        x, y = f["images"], f["labels"]
    if limit is not None:
        x, y = x[:_whole(limit, "limit")], y[:limit]
    if size is not None or channels is not None:
        from .images import resize
        x = x.reshape(-1, 8, 8)
        if size is not None:
            x = resize(x, _whole(size, "size"))
        x = np.repeat(x[:, None], _whole(channels or 1, "channels"), axis=1)
    return {"input": x.astype(np.float32), "target": y}


def _whole(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"data option {what} should be a whole number >= 1, got {v!r}")
    return v
