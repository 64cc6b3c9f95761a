"""Leaves of the graph: inputs, trainable parameters, state and constants.
Their values come from outside the graph, so they have no shape rule (the
graph gives the shape when it adds them) and no kernel."""
from __future__ import annotations

import numpy as np

from .base import Op, register


class Leaf(Op):
    arity = 0

    def __init__(self, name):
        self.name = name

    def reference(self, attrs, *xs):
        raise TypeError(f"{self.name}: a leaf has no reference; its value is given")

    def grad(self, gb, node, g):
        return []


for _n in ("input", "param", "state"):
    register(Leaf(_n))


class Const(Leaf):
    def reference(self, attrs, *xs):
        return np.asarray(attrs["value"])


register(Const("const"))
