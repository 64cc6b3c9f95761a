"""ONNX model -> a readable `.nn` spec and its weights (`nnspec import`).

    imp = import_model(onnx.load("model.onnx"))     # in memory: Imported
    imp.text                                        # the spec
    imp.graph                                       # nnspec.lower(imp.text)
    imp.weights                                     # state_dict names -> arrays
    import_file("model.onnx", "net.nn")             # net.nn + net.npz (or net.nnc)

reader.py turns the ONNX nodes into layers (collecting every node it cannot
express), writer.py writes them as chains and blocks; the spec is then
lowered, and its parameters, created in the order the layers were written,
take the ONNX weights in that order (their shapes checked).  Nothing is
written unless all of it succeeds.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import OnnxImportError


@dataclass
class Imported:
    text: str                 # the spec
    graph: object             # its IR graph
    weights: dict             # parameter and state name -> array (as state_dict())
    inputs: dict              # ONNX input name -> the spec's input name
    outputs: dict             # ONNX output name -> the spec's output name
    squeezed: tuple = ()      # ONNX inputs [1, B, ...] the spec takes as [B, ...]

    def feeds(self, values: dict) -> dict:
        """ONNX input name -> array as the spec's inputs: an LSTM's initial_h
        given as a graph input [1, B, H] is the spec's [B, H]."""
        return {self.inputs[k]: np.asarray(v)[0] if k in self.squeezed else np.asarray(v)
                for k, v in values.items() if k in self.inputs}

    def network(self, dtype: str | None = None, device: str = "cpu"):
        """A compiled-on-demand `Network` holding the imported weights."""
        from ..model import Network
        net = Network(self.graph, dtype=dtype or self.graph.dtype, device=device)
        net.load_state_dict(self.weights)
        return net


def import_model(model, *, bind: dict | None = None, name: str | None = None) -> Imported:
    """`model` (an onnx.ModelProto) as a spec and weights.  `bind`: values of
    graph inputs that nnspec must hold as weights (the ONNX backend's node
    tests give a Conv's W as an input)."""
    from .. import lower
    from .reader import Reader, Unsupported
    from .writer import write
    r = Reader(model, bind)
    layers = r.read()
    dtype = _dtype(r)
    try:
        text, weights, inputs, outputs = write(r, layers, name or model.graph.name or "imported")
    except Unsupported as why:
        raise OnnxImportError(f"the ONNX model cannot be imported: {why}") from None
    graph = lower(text, dtype=dtype)
    leaves = [n for n in graph.nodes() if n.op in ("param", "state")]
    if len(leaves) != len(weights) or any(tuple(n.shape) != np.shape(w)
                                          for n, w in zip(leaves, weights)):
        got = [(n.id, list(n.shape)) for n in leaves]
        want = [list(np.shape(w)) for w in weights]
        raise OnnxImportError(f"internal: the written spec's parameters {got} do not match "
                              f"the ONNX weights' shapes {want}")
    state = {n.id: np.asarray(w, dtype=dtype) for n, w in zip(leaves, weights)}
    return Imported(text, graph, state, inputs, outputs,
                    tuple(i for i in r.inputs if i in r.leading_one and i in inputs))


def _dtype(r) -> str:
    for i in r.inputs:
        d = np.dtype(r.dtypes.get(i, np.float32))
        if d.kind == "f":
            return "float64" if d == np.float64 else "float32"
    return "float32"


def import_file(src, out, *, nnc: bool = False) -> Imported:
    """Read `src` (.onnx); write the spec to `out` and its weights beside it
    (`out` with .npz, or a .nnc holding spec and weights)."""
    import onnx
    try:
        model = onnx.load(str(src))
    except Exception as e:      # noqa: BLE001  (protobuf's errors have no common base)
        raise OnnxImportError(f"cannot read '{src}' as an ONNX model: {e}") from None
    out = Path(out)
    imp = import_model(model, name=Path(src).stem)
    from ..train.bundle import atomic_write
    weights = out.with_suffix(".nnc" if nnc else ".npz")
    if nnc:
        from ..train import nnc as nnc_file
        net = imp.network()
        atomic_write(out, lambda f: f.write(imp.text.encode()))
        nnc_file.save(net, weights, out)
    else:
        buf = io.BytesIO()
        np.savez(buf, **imp.weights)
        atomic_write(weights, lambda f: f.write(buf.getvalue()))
        atomic_write(out, lambda f: f.write(imp.text.encode()))
    return imp
