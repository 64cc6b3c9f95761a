"""Reading an ONNX graph as nnspec layers: the first half of `nnspec import`.

Each ONNX node becomes at most one `Layer`: a call of the language written as
text (`conv2d(16, 3, pad=1)`, a chain stage, or `{0} + {1}`, an expression
over named values), the ONNX values it reads and the one it makes, and its
weights in the order the layer's parameters are created when the spec is
lowered (weight, bias; batch norm's running statistics last).  The converter
of each op type is in `CONVERTERS` (reader_ops.py), with the attributes it
understands; any other attribute, input or op is an error for that node, all
collected and raised as one `OnnxImportError`.

Nodes whose inputs are all constants are evaluated here (ONNX's reference
evaluator), and so are `Shape` and what reads it (Gather, Concat, Unsqueeze,
...) with the batch size kept as the symbol "B" (a dynamic time axis "T"):
PyTorch's `x.view(x.size(0), -1)` becomes `reshape`, and a `ConstantOfShape`
of zeros of such a shape is a view that a Scan reads as zeros.

A pattern spanning several nodes (a tree cell's one-hots before its Scan,
reader_tree.py; a masked cell's Where nodes in its body) marks the nodes it
absorbs in `skip` and may give others a converter of its own (`special`).

Some tensors are *views* of a value rather than values: a sequence
transposed time-major for an LSTM node, the node's `[T, 1, B, H]` output
(`[T, 2, B, H]` both ways) and `[1, B, H]` final states, a zero `Pad` in
front of a convolution.  Only the nodes that undo or absorb
a view may read one (`Reader.data(name, accept=...)`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import OnnxImportError

B = "B"                  # the batch size in a folded shape
T = "T"                  # the size of the time axis (nnspec allows one dynamic axis more)


class Unsupported(Exception):
    """Why one node cannot be imported (the message names the attribute)."""


@dataclass
class Layer:
    name: str                 # identifier, from the ONNX node's name
    op: str                   # the ONNX op type
    inputs: list              # the values it reads (ONNX names)
    output: str               # the value it makes
    call: str                 # "dense(10)" (stage) or "{0} + {1}" (expression)
    stage: bool = True        # a chain stage `x -> call`, else an expression
    weights: list = field(default_factory=list)
    defs: tuple = ()          # cells and blocks the call needs (names in DEFINITIONS)


_IDENT = re.compile(r"[^A-Za-z0-9_]+")


def identifier(name: str, op_type: str = "") -> str:
    """An ONNX name as an identifier: a trailing "/OpType" dropped (nnspec's and
    PyTorch's node names end with it), other characters as "_"."""
    if op_type and name.endswith("/" + op_type):
        name = name[:-len(op_type) - 1]
    s = _IDENT.sub("_", name).strip("_")
    if not s:
        s = op_type.lower() or "v"
    return s if s[0].isalpha() else "n_" + s


class Reader:
    def __init__(self, model, bind: dict | None = None):
        import onnx
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:           # noqa: BLE001  (shapes then come from the model as given)
            pass
        self.model = model
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          18)
        self.bind = dict(bind or {})
        self.consts: dict = {}      # name -> ndarray (object arrays may hold "B")
        self.shapes, self.dtypes = {}, {}
        self._graph(model.graph)

    def subgraph(self, graph) -> "Reader":
        """A reader of a body graph (a Scan's step): the outer graph's constants
        and shapes are its too, as ONNX's outer-scope values."""
        sub = object.__new__(Reader)
        sub.model, sub.opset, sub.bind = self.model, self.opset, self.bind
        sub.consts, sub.shapes, sub.dtypes = dict(self.consts), dict(self.shapes), \
            dict(self.dtypes)
        sub._graph(graph)
        return sub

    def _graph(self, graph) -> None:
        import onnx
        self.graph = graph
        for t in self.graph.initializer:
            self.consts[t.name] = onnx.numpy_helper.to_array(t)
        for vi in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            tt = vi.type.tensor_type
            if not tt.HasField("shape"):
                continue
            self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else
                                         (d.dim_param or "?") for d in tt.shape.dim)
            self.dtypes[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        self.inputs = [i.name for i in self.graph.input if i.name not in self.consts]
        self.outputs = [o.name for o in self.graph.output]
        self.views: dict = {}       # name -> (value, view, info)
        self.layers: list[Layer] = []
        self.producer: dict = {}    # value -> Layer
        self.used_inputs: set = set()
        self.weight_inputs: set = set()     # bound inputs read as weights
        self.skip: set = set()      # nodes another converter absorbed
        self.special: dict = {}     # id(node) -> a converter replacing its op's (a pattern's)
        self.poisoned: set = set()
        self.errors: list[str] = []
        self.names: set = set()
        self.cells: dict = {}       # a cell's sequence value -> its state names
        self.finals: dict = {}      # a final-state value -> (the cell's sequence, state)
        self.definitions: dict = {}     # cells read from Scan bodies: name -> text
        self.leading_one: set = set()   # graph inputs [1, B, ...] read as [B, ...]
        self.uses: dict = {}
        for n in self.graph.node:
            for i in n.input:
                self.uses.setdefault(i, []).append(n)

    # ---- the walk -----------------------------------------------------------------------
    def read(self) -> list[Layer]:
        from .reader_tree import find_trees
        find_trees(self)
        self.walk()
        for o in self.outputs:
            if o in self.poisoned:
                continue
            if o in self.consts:
                self.errors.append(f"output '{o}' is a constant: a network's outputs depend "
                                   f"on its inputs")
            elif o in self.views and self.views[o][1] is not None:
                self.errors.append(f"output '{o}' is a {self.views[o][1]} view nnspec cannot "
                                   f"return")
        if self.errors:
            raise OnnxImportError(f"{len(self.errors)} node(s) of the ONNX model cannot be "
                                  f"imported:\n  " + "\n  ".join(self.errors))
        from .reader_cells import join_ways
        join_ways(self)
        return self.layers

    def walk(self) -> None:
        """Convert every node, collecting in `errors` those that cannot be."""
        from .reader_ops import CONVERTERS, fold
        for k, node in enumerate(self.graph.node):
            if id(node) in self.skip:
                continue
            if any(i in self.poisoned for i in node.input if i):
                self.poisoned.update(node.output)
                continue
            self.node = node
            try:
                if id(node) in self.special:
                    self.special[id(node)](self, node)
                    continue
                if fold(self, node):
                    continue
                conv = CONVERTERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
                if conv is None:
                    raise Unsupported(f"op {node.op_type} is not supported by nnspec's importer")
                conv.check(node, self)
                conv.fn(self, node)
            except (Unsupported, ValueError, IndexError, KeyError, TypeError) as why:
                label = node.name or f"#{k}"
                if not isinstance(why, Unsupported):    # a malformed node
                    why = f"cannot be read ({type(why).__name__}: {why})"
                self.errors.append(f"node '{label}' (op {node.op_type}): {why}")
                self.poisoned.update(node.output)

    # ---- reading a node's inputs ------------------------------------------------------
    def has(self, node, k: int) -> bool:
        return len(node.input) > k and node.input[k] != ""

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const(self, name: str, what: str = "input") -> np.ndarray:
        """A constant operand (an initializer, a folded value, or, in the ONNX
        backend, an input given as data)."""
        if name in self.consts:
            return self.consts[name]
        if name in self.bind:
            self.weight_inputs.add(name)
            return np.asarray(self.bind[name])
        raise Unsupported(f"{what} '{name}' must be a constant (an initializer): nnspec "
                          f"layers hold their weights")

    def data(self, name: str, accept=()) -> str:
        """The value a node reads as data; a view only where the node accepts it."""
        if name in self.consts:
            raise Unsupported(f"input '{name}' is a constant tensor of shape "
                              f"{list(np.shape(self.consts[name]))} where nnspec needs one "
                              f"computed from the network's inputs")
        base, view, _ = self.views.get(name, (name, None, None))
        if view is not None and view not in accept:
            raise Unsupported(f"input '{name}' is a {view} view ({self.views[name][2]}) that "
                              f"this node cannot read")
        if base in self.inputs:
            self.used_inputs.add(base)
        return base

    def view(self, name: str):
        return self.views.get(name, (name, None, None))

    def alias(self, out: str, base: str, view=None, info=None) -> None:
        self.views[out] = (base, view, info)

    def attrs(self, node) -> dict:
        import onnx
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def shape(self, name: str) -> tuple:
        """The ONNX shape of a value (batch axis first)."""
        base = self.views.get(name, (name,))[0]
        for n in (name, base):
            if n in self.shapes:
                return self.shapes[n]
        if name in self.consts:
            return tuple(np.shape(self.consts[name]))
        raise Unsupported(f"the shape of '{name}' is unknown (ONNX shape inference gave none)")

    def example_shape(self, name: str) -> tuple:
        s = self.shape(name)
        if name in self.leading_one:        # [1, B, ...]: an LSTM's initial_h as an input
            s = s[1:]
        if not s:
            raise Unsupported(f"'{name}' is a scalar: nnspec values have a batch axis first")
        return s[1:]

    # ---- making layers -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def emit(self, node, call: str, inputs, *, stage=True, weights=(), defs=(), output=None,
             name=None) -> Layer:
        layer = Layer(self.fresh(name or identifier(node.name, node.op_type)), node.op_type,
                      list(inputs), output or node.output[0], call, stage, list(weights),
                      tuple(defs))
        self.layers.append(layer)
        self.producer[layer.output] = layer
        return layer

    def only_consumer(self, name: str):
        """The one node reading `name`, or None (also when it is a graph output)."""
        readers = self.uses.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0]
