"""The IR: a computation graph every pass and backend works on.

A `Graph` wraps a `networkx.DiGraph`.  Each node is one op application:

    node id  -> {op, inputs, attrs, shape, dtype, layer, loc}

* `inputs` is the ordered tuple of the node ids it reads (edges mirror it, so
  networkx algorithms see the dependencies; the tuple keeps order and repeats).
* `shape` is static.  Per-example dimensions are ints; the batch dimension is
  the symbol ``"B"`` and a dynamic time dimension the symbol ``"T"``, bound
  when a backend runs the graph.
* Leaves are nodes whose op is ``input``, ``param`` (trainable), ``state``
  (non-trainable, e.g. running statistics) or ``const``.
* A recurrence is one ``loop`` node whose ``attrs["body"]`` is a Graph, not a
  copy per step.

Invariant: nodes are added only after their inputs, so insertion order is a
topological order and lowering the same spec always gives the same graph.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator

import networkx as nx

from .errors import Loc, ShapeError

BATCH = "B"
TIME = "T"
LEAF_OPS = ("input", "param", "state", "const")

Shape = tuple
# meta keys that describe where a graph came from, not what it computes
NOT_HASHED = ("source", "file", "set", "sources")   # sources: a loaded .nnc's files


@dataclass(frozen=True)
class Node:
    """A read-only view of one node."""
    id: str
    op: str
    inputs: tuple
    attrs: dict
    shape: tuple
    dtype: str
    layer: str | None
    loc: Loc | None

    @property
    def size(self) -> int:
        """Number of elements per example (symbolic dims count as 1)."""
        n = 1
        for d in self.shape:
            if isinstance(d, int):
                n *= d
        return n


class Graph:
    def __init__(self, name: str = "net", dtype: str = "float32"):
        self.name = name
        self.dtype = dtype
        self.nx = nx.DiGraph()
        self.outputs: dict[str, str] = {}   # output name -> node id
        self.meta: dict[str, Any] = {}      # e.g. the train section, loss node

    # ---- building -------------------------------------------------------
    def unique(self, base: str) -> str:
        if base not in self.nx:
            return base
        i = 1
        while f"{base}_{i}" in self.nx:
            i += 1
        return f"{base}_{i}"

    def add(self, op: str, inputs=(), attrs: dict | None = None, *, name: str | None = None,
            layer: str | None = None, loc: Loc | None = None, shape=None, dtype=None) -> str:
        """Add one op node, inferring its shape and dtype from the op's rule
        unless given.  Returns the new node's id."""
        from .ops import get_op
        inputs = tuple(inputs)
        attrs = dict(attrs or {})
        for i in inputs:
            if i not in self.nx:
                raise KeyError(f"{op}: input node '{i}' is not in the graph")
        if shape is None or dtype is None:
            o = get_op(op)
            try:
                s, d = o.infer(attrs, [self.nx.nodes[i]["shape"] for i in inputs],
                               [self.nx.nodes[i]["dtype"] for i in inputs])
            except ShapeError as e:
                if e.loc is None:
                    e.loc = loc
                raise
            shape = s if shape is None else shape
            dtype = d if dtype is None else dtype
        nid = self.unique(name or layer or op)
        self.nx.add_node(nid, op=op, inputs=inputs, attrs=attrs, shape=tuple(shape),
                         dtype=dtype, layer=layer, loc=loc)
        for pos, i in enumerate(inputs):
            if self.nx.has_edge(i, nid):
                self.nx.edges[i, nid]["pos"].append(pos)
            else:
                self.nx.add_edge(i, nid, pos=[pos])
        return nid

    def input(self, name: str, shape, dtype: str | None = None, *, kind: str = "input",
              loc: Loc | None = None) -> str:
        return self.add("input", (), {"kind": kind}, name=name, shape=shape,
                        dtype=dtype or self.dtype, loc=loc)

    def param(self, name: str, shape, *, init="glorot", fan_in: int = 1, fan_out: int = 1,
              trainable: bool = True, layer: str | None = None, loc: Loc | None = None) -> str:
        op = "param" if trainable else "state"
        return self.add(op, (), {"init": init, "fan_in": int(fan_in), "fan_out": int(fan_out)},
                        name=name, shape=shape, dtype=self.dtype, layer=layer, loc=loc)

    def const(self, value, *, dtype: str | None = None) -> str:
        value = float(value) if dtype is None or dtype.startswith("float") else int(value)
        return self.add("const", (), {"value": value}, name="const", shape=(),
                        dtype=dtype or self.dtype)

    # ---- reading --------------------------------------------------------
    def node(self, nid: str) -> Node:
        d = self.nx.nodes[nid]
        return Node(nid, d["op"], d["inputs"], d["attrs"], d["shape"], d["dtype"],
                    d["layer"], d["loc"])

    def __contains__(self, nid) -> bool:
        return nid in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def nodes(self) -> Iterator[Node]:
        """All nodes in topological (insertion) order."""
        for nid in self.nx.nodes:
            yield self.node(nid)

    def ids(self, op: str | None = None) -> list[str]:
        return [n for n, d in self.nx.nodes(data=True) if op is None or d["op"] == op]

    @property
    def inputs(self) -> list[str]:
        return [n for n, d in self.nx.nodes(data=True)
                if d["op"] == "input" and d["attrs"].get("kind") == "input"]

    @property
    def targets(self) -> list[str]:
        return [n for n, d in self.nx.nodes(data=True)
                if d["op"] == "input" and d["attrs"].get("kind") == "target"]

    @property
    def params(self) -> list[str]:
        return self.ids("param")

    @property
    def state(self) -> list[str]:
        return self.ids("state")

    def consumers(self, nid: str) -> list[str]:
        return list(self.nx.successors(nid))

    def shape(self, nid: str) -> tuple:
        return self.nx.nodes[nid]["shape"]

    def dtype_of(self, nid: str) -> str:
        return self.nx.nodes[nid]["dtype"]

    def count(self, op: str) -> int:
        """Number of scalar values held by all leaves of one op ('param', 'state')."""
        total = 0
        for n in self.ids(op):
            total += self.node(n).size
        return total

    # ---- identity -------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-able canonical form (locations left out: moving a comment
        must not change the graph)."""
        nodes = []
        for n in self.nodes():
            attrs = {k: (v.to_dict() if isinstance(v, Graph) else v)
                     for k, v in sorted(n.attrs.items())}
            nodes.append({"id": n.id, "op": n.op, "inputs": list(n.inputs),
                          "attrs": attrs, "shape": list(n.shape), "dtype": n.dtype,
                          "layer": n.layer})
        return {"name": self.name, "dtype": self.dtype, "nodes": nodes,
                "outputs": dict(sorted(self.outputs.items())),
                "meta": _jsonable({k: v for k, v in self.meta.items()
                                   if k not in NOT_HASHED})}

    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def __repr__(self) -> str:
        lines = [f"graph {self.name} ({len(self)} nodes, {self.dtype})"]
        for n in self.nodes():
            args = ", ".join(n.inputs)
            attrs = ", ".join(f"{k}={v!r}" for k, v in sorted(n.attrs.items())
                              if not isinstance(v, Graph))
            lines.append(f"  {n.id}: {n.dtype}{list(n.shape)} = {n.op}({args}"
                         f"{'; ' + attrs if attrs else ''})")
        for k, v in self.outputs.items():
            lines.append(f"  output {k} = {v}")
        return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Graph):
        return x.to_dict()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)
