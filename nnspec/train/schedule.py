"""Learning-rate schedules, computed in Python once per step and handed to
`net.train_step` (the compiled step takes lr as an argument, so a schedule
never forces a recompile).

    {"name": None}                               constant lr
    {"name": "step", "every": 5, "gamma": 0.1}   lr * gamma ** (epoch // every)
    {"name": "step", "milestones": [10, 15], "gamma": 0.1}   x gamma at each listed epoch
    {"name": "cosine", "warmup": 0, "min_lr": 0.0}
        linear warmup over `warmup` steps (or `warmup_epochs`), then half a
        cosine from lr down to min_lr at the last step
"""
from __future__ import annotations

import math

from ..errors import TrainingError, did_you_mean

NAMES = (None, "constant", "step", "cosine")


def lr_at(schedule: dict | None, lr: float, step: int, steps_per_epoch: int,
          total_steps: int) -> float:
    """The learning rate for step `step` (0-based) of `total_steps`."""
    s = dict(schedule or {})
    name = s.get("name")
    if name in (None, "constant", "none"):
        return lr
    if name == "step":
        epoch = step // max(steps_per_epoch, 1)
        gamma = float(s.get("gamma", 0.1))
        if "milestones" in s:
            k = sum(epoch >= m for m in s["milestones"])
        else:
            k = epoch // max(int(s.get("every", s.get("step_size", 10))), 1)
        return lr * gamma ** k
    if name == "cosine":
        warmup = int(s.get("warmup", int(s.get("warmup_epochs", 0)) * steps_per_epoch))
        min_lr = float(s.get("min_lr", 0.0))
        if step < warmup:
            return lr * (step + 1) / warmup
        span = max(total_steps - 1 - warmup, 1)
        t = min((step - warmup) / span, 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))
    hint = did_you_mean(str(name), [n for n in NAMES if n])
    raise TrainingError(f"unknown learning-rate schedule '{name}' (known: step, cosine)"
                        + (f"; {hint}" if hint else ""))
