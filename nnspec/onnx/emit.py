"""Writing one ONNX graph: nodes, constants, and the names IR values get in it.

An `Emitter` holds the nodes of one graph (the model's, or a Scan body's)
and `names`, IR node id -> ONNX value name.  Constants (weights, shapes,
axes) always go to the model's root graph as initializers: a Scan body sees
them as outer-scope values, so one weight is stored once however many
graphs read it.  Value names are unique across the whole model (ONNX does
not let a body shadow an outer name); an IR id is kept as the name where it
is free, so a weight's name is its `state_dict` name.

Dynamic sizes: `dim("B")` is the batch size as an int64 [1] tensor, read
with Shape from the first graph input that has the symbol.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import ExportError

OPSET = 18
IR_VERSION = 9          # what onnx >= 1.15 and onnxruntime >= 1.17 read
DIM_NAMES = {"B": "batch", "T": "time"}


def elem_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def value_info(name: str, dtype, shape) -> onnx.ValueInfoProto:
    dims = [DIM_NAMES.get(d, d) if isinstance(d, str) else int(d) for d in shape]
    return helper.make_tensor_value_info(name, elem_type(dtype), dims)


class Emitter:
    def __init__(self, root: "Emitter | None" = None, prefix: str = ""):
        self.root = root or self
        self.prefix = prefix
        self.nodes: list = []
        self.names: dict = {}            # IR id -> ONNX name (or a loop's results)
        if root is None:
            self.used: set = set()
            self.inits: list = []
            self._consts: dict = {}
            self.dim_sources: dict = {}  # "B" -> (input name, axis)
            self._dims: dict = {}

    # ---- names ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        base = self.prefix + base
        used = self.root.used
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    def child(self, prefix: str) -> "Emitter":
        """An emitter for a body graph, its names under `prefix`."""
        return Emitter(self.root, prefix)

    # ---- nodes ------------------------------------------------------------------
    def op(self, op_type: str, inputs, hint: str, n_out: int = 1, out=None, **attrs):
        """Add a node; its output name (a list of names when n_out > 1).  `out`
        names the (single) output instead of a fresh name from `hint`."""
        outs = [out] if out is not None else [self.fresh(hint if n_out == 1 else f"{hint}:{k}")
                                              for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self.fresh(f"{hint}/{op_type}"), **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, hint: str = "const", dtype=None) -> str:
        """An initializer of the root graph; small constants are shared."""
        a = np.asarray(value, dtype=dtype)
        root = self.root
        key = (a.dtype.str, a.shape, a.tobytes()) if a.size <= 64 else None
        if key is not None and key in root._consts:
            return root._consts[key]
        name = root.fresh(hint)
        root.inits.append(numpy_helper.from_array(a, name))
        if key is not None:
            root._consts[key] = name
        return name

    def ints(self, *values) -> str:
        return self.const(np.asarray(values, np.int64), "ints")

    # ---- dynamic sizes -------------------------------------------------------------
    def dim(self, sym: str) -> str:
        """The size of symbolic axis `sym` ("B", "T") as an int64 [1] tensor."""
        root = self.root
        if sym not in root._dims:
            if sym not in root.dim_sources:
                raise ExportError(f"no input of the network has a '{sym}' axis to take "
                                  f"its size from")
            name, axis = root.dim_sources[sym]
            shape = root.op("Shape", [name], f"{name}.shape")
            root._dims[sym] = root.op("Slice", [shape, root.ints(axis), root.ints(axis + 1)],
                                      f"{name}.{DIM_NAMES.get(sym, sym)}")
        return root._dims[sym]

    def shape_of(self, shape) -> str:
        """An int64 tensor holding `shape` (ints and symbols) at run time."""
        if all(isinstance(d, int) for d in shape):
            return self.ints(*shape)
        parts = [self.dim(d) if isinstance(d, str) else self.ints(d) for d in shape]
        return self.root.op("Concat", parts, "shape", axis=0)

    def fill(self, shape, value, dtype, hint: str) -> str:
        """A tensor of `shape` (symbols allowed) filled with `value`."""
        v = numpy_helper.from_array(np.asarray([value], dtype=dtype))
        return self.op("ConstantOfShape", [self.shape_of(shape)], hint, value=v)
