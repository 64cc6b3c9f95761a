"""`Network`: a compiled graph users call, train, save and load.

    net = Network(graph, dtype="float32", seed=0)
    y = net.forward(x=batch)["y"]              # eval mode
    loss = net.train_step({"x": xb}, {"label": yb}, lr=0.1)   # one compiled step
    loss, grads = net.gradients({"x": xb}, {"label": yb})     # train-mode fwd + bwd
    net.find_nonfinite({"x": xb}, {"label": yb})              # first non-finite node

API (stub; filled in by the CPU backend).
"""
from __future__ import annotations

import numpy as np

from .errors import DataError
from .ir import Graph


class Network:
    def __init__(self, graph: Graph, dtype: str | None = None, seed: int = 0):
        raise NotImplementedError("Network: being written")

    # names -> per-example shapes (batch axis shown as "B")
    inputs: dict
    targets: dict
    outputs: list
    params: dict
    state: dict

    def forward(self, **inputs) -> dict:
        """Eval-mode forward: output name -> array."""
        raise NotImplementedError

    def __call__(self, *args, **inputs):
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, d: dict) -> None:
        raise NotImplementedError

    def gradients(self, inputs: dict, targets: dict):
        """Train-mode forward and backward, no update: (loss, {param: grad})."""
        raise NotImplementedError

    def train_step(self, inputs: dict, targets: dict, lr: float) -> float:
        raise NotImplementedError

    def set_optimizer(self, name: str, **hyper) -> None:
        raise NotImplementedError

    def optimizer_state(self) -> dict:
        raise NotImplementedError

    def load_optimizer_state(self, d: dict) -> None:
        raise NotImplementedError

    def evaluate_batch(self, inputs: dict, targets: dict):
        """Eval-mode (loss, {output name: array})."""
        raise NotImplementedError

    def find_nonfinite(self, inputs: dict, targets: dict):
        """The first node (topological order) whose values are not finite,
        with its layer, or None."""
        raise NotImplementedError
