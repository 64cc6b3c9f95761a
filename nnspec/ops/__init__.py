"""The op registry: every module in this package defines ops and the layers
that emit them; importing the package's modules fills `OPS` and `LAYERS`."""
from __future__ import annotations

import importlib
import pkgutil

from .base import LAYERS, OPS, LayerDef, Op, get_op, kernel, layer, register

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name != "base":
            importlib.import_module(f"{__name__}.{m.name}")


def all_ops() -> dict:
    load_all()
    return OPS


def all_layers() -> dict:
    load_all()
    return LAYERS


__all__ = ["LAYERS", "OPS", "LayerDef", "Op", "get_op", "kernel", "layer", "register",
           "load_all", "all_ops", "all_layers"]
