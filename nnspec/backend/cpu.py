"""The Numba CPU backend: a graph -> one compiled function per program.

    prog = compile_program(graph, "train", "float32", playout, slayout, optimizer)
    loss, ok = prog(P, S, G, M, V, hp, {"x": xb, "label": yb})

The graph goes through the pass pipeline (passes/pipeline.py), codegen.py
writes the whole step as one module in the cache dir (cache.py), and Numba
compiles it with cache=True, so a second process loads machine code from disk.
Work arenas are allocated once per batch size and reused.
"""
from __future__ import annotations

import json

import numpy as np

from ..passes.pipeline import build
from . import cache
from .codegen import StepWriter


def _code_key(b, optimizer, whole) -> str:
    """The parts of a build that decide its code (not the spec's text/meta)."""
    d = b.graph.to_dict()
    ident = {"nodes": d["nodes"], "outputs": d["outputs"], "loss": b.graph.meta.get("loss"),
             "roots": b.roots, "grads": b.grads, "updates": b.updates,
             "optimizer": _opt_structure(optimizer) if b.kind == "train" else None,
             "whole": whole,
             "plan": sorted((k, tuple(v.__dict__.values())) for k, v in b.plan.slots.items())}
    return json.dumps(ident, sort_keys=True, default=repr)


def _opt_structure(optimizer) -> dict:
    opt = dict(optimizer or {})
    return {"name": opt.get("name", "sgd"), "nesterov": bool(opt.get("nesterov", False))}


class CompiledStep:
    def __init__(self, b, playout, slayout, optimizer=None, whole=True):
        self.build = b
        self.kind = b.kind
        self.graph = b.graph
        self.plan = b.plan
        self.dtype = b.dtype
        g = b.graph
        self.inputs = [n for n in g.inputs] + [n for n in g.targets]
        writer = StepWriter(b, playout, slayout, self.inputs, optimizer, whole)
        self.arena_dtypes = writer.arenas
        k = cache.key(_code_key(b, optimizer, whole), b.dtype, b.kind, "step-v1")
        self.name = f"step_{_safe(g.name)}_{b.kind}_{k}"
        self._writer = writer
        self.module = cache.load(self.name, writer.write)
        self.path = self.module.__file__
        self.fn = self.module.step
        self._batch_arg = next((j for j, n in enumerate(self.inputs)
                                if g.shape(n) and g.shape(n)[0] == "B"), None)
        self._arenas: dict[int, list] = {}
        self._views: dict[tuple, np.ndarray] = {}

    def arenas(self, batch: int) -> list:
        a = self._arenas.get(batch)
        if a is None:
            a = [np.zeros(max(self.plan.arena_size(dt, batch), 1), dtype=dt)
                 for dt in self.arena_dtypes]
            self._arenas[batch] = a
        return a

    def value(self, nid: str, batch: int) -> np.ndarray:
        """The live array of a value left in a work arena by the last call."""
        key = (nid, batch)
        v = self._views.get(key)
        if v is None:
            s = self.plan.slots[nid]
            arena = self.arenas(batch)[self.arena_dtypes.index(s.dtype)]
            shape = tuple(batch if d == "B" else d for d in self.graph.shape(nid))
            n = int(np.prod(shape, dtype=np.int64))
            off = self.plan.offset(nid, batch)
            v = arena[off:off + n].reshape(shape)
            self._views[key] = v
        return v

    def __call__(self, P, S, G, M, V, hp, feeds: dict):
        xs = [feeds[n] for n in self.inputs]
        batch = xs[self._batch_arg].shape[0] if self._batch_arg is not None else 1
        return self.fn(P, S, G, M, V, hp, *self.arenas(batch), *xs)

    @property
    def source(self) -> str:
        with open(self.path) as f:
            return f.read()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40]


def compile_program(graph, kind: str, dtype: str, playout: dict, slayout: dict,
                    optimizer: dict | None = None, whole: bool = True,
                    training: bool | None = None) -> CompiledStep:
    b = build(graph, kind, dtype, training)
    return CompiledStep(b, playout, slayout, optimizer, whole)
