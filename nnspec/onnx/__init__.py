"""ONNX: a network's inference graph written as an ONNX model.

    from nnspec.onnx import export, to_model
    export(net, "model.onnx")          # same as net.export_onnx("model.onnx")
    model = to_model(net)              # the checked onnx.ModelProto

Needs the `onnx` package (``pip install 'nnspec[onnx]'``); nothing else in
nnspec imports it.  See docs/onnx.md.
"""
from __future__ import annotations

from ..errors import NNSpecError


class ExportError(NNSpecError):
    """A network, or a part of one, that cannot be written as ONNX."""


def _require():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("exporting to ONNX needs the onnx package: "
                          "pip install 'nnspec[onnx]'") from None


def to_model(net, *, check: bool = True):
    """`net`'s eval-mode forward graph and current weights as an onnx.ModelProto
    (opset 18), checked with onnx.checker unless `check` is False."""
    _require()
    from .convert import to_model as build
    return build(net, check=check)


def export(net, path) -> None:
    """Write `net` to `path` as ONNX (atomically)."""
    _require()
    from .convert import export as write
    write(net, path)


class OnnxImportError(NNSpecError):
    """An ONNX model, or nodes of one, that nnspec's language cannot express."""
