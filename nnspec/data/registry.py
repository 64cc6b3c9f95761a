"""Named data sets.

A named data set is a function `(net) -> Split` registered with
`@register(name)`.  It returns arrays under the network's own names or under
the generic keys ``"input"`` / ``"target"`` (bound to the network's only input
/ target), either already split as ``(train, test)`` or as one dict that the
loader splits.  It gets the network so a task can size itself to it (a
sequence task reads ``T`` or the vocabulary from the input's shape).

The sequence tasks (adding, copy, reverse) register themselves in sequences.py,
the tree task (trees) in trees.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

DATASETS: dict[str, Callable] = {}

_HERE = Path(__file__).parent


def register(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


@register("digits")
def digits(net=None) -> dict:
    """The 8x8 handwritten digits (UCI optdigits test set as shipped with
    scikit-learn's `load_digits`): 1,797 images, pixels scaled from 0..16 to
    [0, 1], float32 [1797, 64] (reshaped to [1, 8, 8] for a conv net by the
    loader), labels int64 0..9."""
    with np.load(_HERE / "digits.npz", allow_pickle=False) as f:
        return {"input": f["images"], "target": f["labels"]}
