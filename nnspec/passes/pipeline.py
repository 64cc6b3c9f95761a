"""The pass pipeline: what happens to a graph between the frontend and code
generation, in order.  Each pass takes and returns a `Build` (the graph plus
what the program kind needs); graphs are rebuilt, never mutated.

    build(graph, kind, dtype) -> Build      kind: infer | eval | grad | accumulate | train

grad: the loss's gradients; accumulate: the same and the new running
statistics (a data-parallel step's first half, train/dist.py); train: both
and the optimizer's update.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph
from . import canonical, dce, fusion, loop_results, memory, mode, sync_bn
from .autodiff import backward

TRAINING_KINDS = ("grad", "accumulate", "train")


@dataclass
class Build:
    graph: Graph
    kind: str                       # infer: outputs; eval: outputs + loss; grad, train
    dtype: str
    roots: list = field(default_factory=list)     # nodes the program must compute
    grads: dict = field(default_factory=dict)     # param id -> gradient node id
    updates: dict = field(default_factory=dict)   # state id -> node holding its new value
    plan: memory.Plan | None = None
    training: bool | None = None    # mode of batchnorm/dropout; None: by kind


def cast_dtype(b: Build) -> Build:
    b.graph = mode.cast(b.graph, b.dtype)
    return b


def specialise_mode(b: Build) -> Build:
    training = b.kind in TRAINING_KINDS if b.training is None else b.training
    b.graph = mode.specialise(b.graph, training=training)
    return b


def synchronise_batchnorm(b: Build) -> Build:
    b.graph = sync_bn.synchronise(b.graph)
    return b


def choose_roots(b: Build) -> Build:
    g = b.graph
    loss = g.meta.get("loss")
    if b.kind == "infer":
        b.roots = list(dict.fromkeys(g.outputs.values()))
    elif loss is None:
        raise ValueError(f"{b.kind} program: the graph has no loss (no train section)")
    elif b.kind == "eval":
        b.roots = list(dict.fromkeys(list(g.outputs.values()) + [loss]))
    else:
        b.roots = [loss]
    if b.kind in ("train", "accumulate"):
        b.updates = state_updates(g)
        b.roots += [n for n in b.updates.values() if n not in b.roots]
    return b


def differentiate(b: Build) -> Build:
    if b.kind in TRAINING_KINDS:
        loss = b.graph.meta["loss"]
        b.graph, b.grads = backward(b.graph, loss, b.graph.params)
        b.roots += [gn for gn in b.grads.values() if gn not in b.roots]
    return b


def eliminate_dead_code(b: Build) -> Build:
    b.graph = dce.dead_code(b.graph, b.roots)
    return b


def split_bias(b: Build) -> Build:
    b.graph = canonical.split_bias(b.graph)
    return b


def fuse_elementwise(b: Build) -> Build:
    b.graph = fusion.fuse_elementwise(b.graph, b.roots)
    return b


def place_loop_results(b: Build) -> Build:
    b.graph = loop_results.materialise(b.graph)
    return b


def plan_memory(b: Build) -> Build:
    pinned = {gn for gn in b.grads.values()
              if list(b.grads.values()).count(gn) == 1
              and b.graph.node(gn).op not in ("input", "param", "state", "const")}
    b.plan = memory.plan(b.graph, pinned=pinned, keep=b.roots)
    b.plan.pinned_grads = pinned
    return b


PIPELINE = [
    cast_dtype,           # a float32 spec may run in float64 (gradient checks); every node agrees
    specialise_mode,      # eval copy: batchnorm/dropout training=False, so no mode test at run time
    synchronise_batchnorm,  # sync_bn: batch statistics summed over the processes (allreduce)
    choose_roots,         # what the program computes: outputs, loss, new running statistics
    differentiate,        # train/grad: append the backward graph; the gradients become roots
    eliminate_dead_code,  # drop what no root needs (the loss in infer, unused outputs in train)
    split_bias,           # linear+bias -> linear, add: the add fuses with the activation after it
    fuse_elementwise,     # elementwise chains -> one typed loop each (one pass over memory)
    place_loop_results,   # a buffer (loop_output) for every result a compiled loop writes
    plan_memory,          # liveness-based slots in one arena per dtype, reused across steps
]


# what the NumPy interpreter runs when a graph cannot be compiled (dynamic
# axes other than B and T): the same graph, unfused and unplanned
REFERENCE_PIPELINE = PIPELINE[:PIPELINE.index(split_bias)]


def build(graph: Graph, kind: str, dtype: str | None = None, training=None,
          passes=None) -> Build:
    b = Build(graph, kind, np.dtype(dtype or graph.dtype).name, training=training)
    for p in PIPELINE if passes is None else passes:
        b = p(b)
    return b


def compilable(graph: Graph) -> str | None:
    """Why the CPU backend cannot compile the graph, or None."""
    for n in graph.nodes():
        if any(not isinstance(d, int) and d not in ("B", "T") for d in n.shape):
            return f"'{n.id}' has a dynamic axis {list(n.shape)}"
    return None


def state_updates(graph: Graph) -> dict:
    """state id -> the node whose value becomes the state's after a train step
    (batchnorm running statistics), from `graph.meta["state_updates"]` or the
    nodes with an `updates` attr naming a state leaf."""
    out = dict(graph.meta.get("state_updates", {}))
    for n in graph.nodes():
        target = n.attrs.get("updates") if isinstance(n.attrs, dict) else None
        if isinstance(target, str) and target in graph:
            out[target] = n.id
    return out
