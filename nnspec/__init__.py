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

from .errors import DataError, DeviceError, NNSpecError, ShapeError, SpecError, TrainingError

__version__ = "0.1.0"


def lower(spec, *, set: dict | None = None, dtype: str = "float32", lib=None):
    """Spec -> IR graph, without compiling it.

    `spec` is a path (a `Path`, or a str with neither a newline nor a `{`)
    to a .nn, .yaml or .yml file, or spec text (a str holding a newline or a
    `{`).  `lib`: the folders imports may come from besides the spec's own
    (default: those in ``$NNSPEC_PATH``)."""
    from .frontend.load import load_text, lower_module, spec_source
    text, file = spec_source(spec)
    graph = lower_module(*load_text(text, file, lib=lib), set=set, dtype=dtype)
    graph.meta["source"] = text
    graph.meta["file"] = file
    graph.meta["set"] = dict(set or {})
    return graph


def compile(spec, *, dtype: str = "float32", set: dict | None = None, seed: int = 0,
            lib=None, device: str = "cpu"):
    """Spec (a path or text, as for `lower`) -> a compiled `Network`, run on
    `device`: "cpu", "cuda" (an NVIDIA GPU; `pip install 'nnspec[cuda]'`) or
    "auto" (the GPU when one is usable)."""
    from .model import Network
    return Network(lower(spec, set=set, dtype=dtype, lib=lib), dtype=dtype, seed=seed,
                   device=device)


def load(path):
    """Load a network saved with `net.save(path)` / `nnspec compile -o`."""
    from .train.nnc import load as _load
    return _load(path)


__all__ = ["compile", "load", "lower", "DataError", "DeviceError", "NNSpecError", "ShapeError",
           "SpecError", "TrainingError", "__version__"]
