"""nnspec: neural networks written as specs, compiled to fast kernels.

    import nnspec
    net = nnspec.compile("specs/mlp.nn")          # or spec text
    net.fit(epochs=5)                              # train on the spec's data and settings
    net.evaluate()                                 # loss and accuracy on the test split
    classes = net.predict(x)                       # class indices (or every output)
    scores = net(x)                                # the output, for a network with one input
    net.save("mlp.nnc"); net = nnspec.load("mlp.nnc")

Reading and checking specs imports neither Numba nor the backends.
"""
from __future__ import annotations

from .errors import DataError, NNSpecError, ShapeError, SpecError, TrainingError

__version__ = "0.1.0"


def lower(spec, *, set: dict | None = None, dtype: str = "float32"):
    """Spec (a path or text) -> IR graph, without compiling it."""
    from .frontend import load_graph
    graph = load_graph(spec, set=set, dtype=dtype)
    src = _source_of(spec)
    graph.meta["source"] = src["text"]
    graph.meta["file"] = src["file"]
    graph.meta["set"] = dict(set or {})
    return graph


def compile(spec, *, dtype: str = "float32", set: dict | None = None, seed: int = 0):
    """Spec (a path to a .nn/.yaml file, or spec text) -> a compiled `Network`."""
    from .model import Network
    return Network(lower(spec, set=set, dtype=dtype), dtype=dtype, seed=seed)


def load(path):
    """Load a network saved with `net.save(path)` / `nnspec compile -o`."""
    from .train.nnc import load as _load
    return _load(path)


def _source_of(spec):
    from pathlib import Path
    try:
        if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec
                                      and spec.endswith((".nn", ".yaml", ".yml"))):
            return {"file": str(spec), "text": Path(spec).read_text()}
    except OSError:
        pass
    return {"file": "<spec>", "text": str(spec)}


__all__ = ["compile", "load", "lower", "DataError", "NNSpecError", "ShapeError", "SpecError",
           "TrainingError", "__version__"]
