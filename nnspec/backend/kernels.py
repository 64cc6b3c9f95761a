"""Kernels shared between steps: the code a step of calls runs besides the
op modules' kernels (fused elementwise loops, the step's reductions).

A step whose graph is large runs as a plain Python function calling compiled
kernels one after the other (codegen's `whole=False`), so that what Numba
compiles is each distinct kernel once, not the whole step.  Op kernels are
already shared: they live in the op modules and Numba caches each signature
of them.  The kernels a step generates (StepWriter.shared_kernel) go into
modules of their own in the cache,

    <cache dir>/kern_<sha256 of the module's text>.py     (cache.load)

one kernel each, named by the hash of their text: the same fused loop in
sixteen blocks of one network, or in two networks, is one module and is
compiled (for each signature it is called with) once.  The step module holds
each kernel's source and writes the file when it is missing.
"""
from __future__ import annotations

import numpy as np

from . import cache


def module_source(dtype: str, text: str) -> str:
    """The module of one kernel `text` (StepWriter.shared_kernel) for `dtype`."""
    from .codegen import FAST32
    return "\n".join([
        '"""nnspec kernel, shared by every step that calls it (backend/kernels.py).',
        'Generated; do not edit (the name is the hash of this text)."""',
        "import numpy as np",
        "from numba import njit, prange",
        "",
        f"T = np.{np.dtype(dtype).name}",
        FAST32 if dtype == "float32" else "",
        "",
        text])


def load(source: str):
    """The kernel module of `source` (module_source), from the cache."""
    mod = cache.load("kern", source)
    mod.SOURCE = source         # what a compiling process loads it from (precompile.py)
    return mod
