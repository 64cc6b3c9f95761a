"""Compiling the `@kernel` functions of op modules with Numba, on demand.

Op modules are plain Python so that reading specs never imports Numba.  The
first time a backend needs a module's kernels, `compile_module` swaps each
marked function for a Numba dispatcher in place (like `numba.jit_module`), and
points the module's `prange` at `numba.prange`.  Kernels that call each other
by their global names then see dispatchers when Numba compiles them, and
`cache=True` keeps the machine code on disk between runs.
"""
from __future__ import annotations

import sys

_done: set[str] = set()


def compile_module(module) -> None:
    if module.__name__ in _done:
        return
    import numba
    module.prange = numba.prange
    for name, fn in list(vars(module).items()):
        opts = getattr(fn, "_nnspec_kernel", None)
        if opts is not None and callable(fn) and not hasattr(fn, "py_func"):
            disp = numba.njit(cache=True, parallel=opts["parallel"], error_model="numpy")(fn)
            disp._nnspec_kernel = opts
            setattr(module, name, disp)
    _done.add(module.__name__)


def jitted(fn):
    """The compiled form of a `@kernel` function (compiling its module first)."""
    module = sys.modules[fn.__module__]
    compile_module(module)
    return getattr(module, fn.__name__)
