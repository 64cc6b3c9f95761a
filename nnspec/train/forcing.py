"""Teacher forcing and scheduled sampling: the masks a trainer feeds a network
whose cells have a teacher (see nnspec/frontend/teacher.py).

    p = probability(cfg.teacher_forcing, step)      # the spec's setting at this step
    xb.update(masks(net, xb, p, rng))               # f[b, t] = 1: step t reads the teacher

Each example and step reads the teacher with probability p (Bengio et al.
2015: per token, the coin flipped anew each step), except the first step:
there is no previous target, so it always reads the state's initial value.
p = 1 is teacher forcing, p = 0 free-running; the masks a network is not
given are zeros, so evaluation and prediction run free-running.
"""
from __future__ import annotations

import numpy as np

from ..frontend.teacher import probability

__all__ = ["probability", "masks"]


def masks(net, inputs: dict, p: float, rng: np.random.Generator | None = None) -> dict:
    """One 0/1 mask per teacher-forced cell of `net`, sized to the batch `inputs`.
    A p strictly between 0 and 1 draws from `rng`; 0 and 1 draw nothing."""
    out = {}
    for name in getattr(net, "forcing", ()):
        f = net.blank(name, inputs)
        if f is None:
            continue                  # the network's own error about `inputs` follows
        if p >= 1:
            f[:, 1:] = 1
        elif p > 0:
            f[:, 1:] = rng.random(f[:, 1:].shape) < p
        out[name] = f
    return out
