"""ONNX's backend interface over nnspec: a model is imported as a spec and run.

    from nnspec.onnx.backend import NnspecBackend
    rep = NnspecBackend.prepare(model)           # onnx.ModelProto
    outputs = rep.run([x])                       # or {name: array}

`prepare` imports the model in memory (importer.import_model: no files).  A
model whose weights are graph inputs (ONNX's node tests give a Conv's W as
one) is imported again at `run`, when their values are known: nnspec's
layers hold their weights.  `run` executes the eval-mode forward, by default
the compiled `Network.forward`; `reference=True` evaluates it with the NumPy
interpreter (backend/numpy_ref.py), the semantic definition the compiled
backend is tested against, without compiling anything.
"""
from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep

from ..errors import NNSpecError
from . import OnnxImportError
from .importer import import_model


class NnspecRep(BackendRep):
    def __init__(self, model, imported=None, reference: bool = False):
        self.model, self.imported, self.reference = model, imported, reference
        self.input_names = [i.name for i in model.graph.input
                            if i.name not in {t.name for t in model.graph.initializer}]

    def run(self, inputs, **kwargs):
        feeds = dict(zip(self.input_names, inputs)) if isinstance(inputs, (list, tuple)) \
            else dict(inputs)
        imp = self.imported or import_model(self.model, bind=feeds)
        data = imp.feeds(feeds)
        sizes = {v.shape[0] if v.ndim else None for v in data.values()}
        if None in sizes or len(sizes) > 1:
            raise OnnxImportError(f"the inputs' first axes {sorted(map(str, sizes))} are not "
                                  f"one batch axis: nnspec's inputs are [B, ...]")
        outs = _reference(imp, data) if self.reference else _compiled(imp, data)
        return tuple(outs[imp.outputs[o.name]] for o in self.model.graph.output)


def _reference(imp, data) -> dict:
    from ..backend.numpy_ref import run
    from ..passes.pipeline import REFERENCE_PIPELINE, build
    graph = build(imp.graph, "infer", imp.graph.dtype, passes=REFERENCE_PIPELINE).graph
    got = run(graph, {**data, **imp.weights}, list(graph.outputs.values()))
    return {name: got[nid] for name, nid in graph.outputs.items()}


def _compiled(imp, data) -> dict:
    return imp.network().forward(**data)


class NnspecBackend(Backend):
    @classmethod
    def prepare(cls, model, device: str = "CPU", reference: bool = False, **kwargs):
        super().prepare(model, device, **kwargs)
        try:
            imported = import_model(model)
        except NNSpecError:
            if not any(i.name not in {t.name for t in model.graph.initializer}
                       for i in model.graph.input):
                raise
            imported = None         # weights given as inputs: imported at run()
        return NnspecRep(model, imported, reference)

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = NnspecBackend.prepare
run_model = NnspecBackend.run_model
supports_device = NnspecBackend.supports_device
