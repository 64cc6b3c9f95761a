"""What an op is, and the registries of ops and layers.

An op is defined in one place (one module under ``nnspec/ops``):

* ``infer(attrs, shapes, dtypes) -> (shape, dtype)``: the static shape rule;
  raises `ShapeError` saying which sizes met where.
* ``reference(attrs, *xs) -> ndarray``: the NumPy meaning of the op; tests
  and the NumPy interpreter use it.
* ``grad(gb, node, g) -> [input grad node or None, ...]``: the vector-Jacobian
  product, built from other ops with ``gb.add(...)`` so the backward graph is
  IR like the forward one.
* ``kernel(attrs) -> (fn, extra_args)``: the CPU kernel, a function in the
  same module marked ``@kernel`` with signature ``fn(*inputs, out, *extra_args)``
  that writes its result into ``out``.  Kernels are plain Python until the
  Numba backend compiles them (so ``nnspec check`` never imports Numba);
  inside a kernel use ``prange`` from this module for parallel loops,
  ``num_threads()`` for the size of the thread pool, and
  ``blas_get_threads()`` / ``blas_set_threads(k)`` to run BLAS calls
  single-threaded inside a ``prange`` (a threaded BLAS called from several
  threads at once oversubscribes the cores); ``blas_small_gemm()`` says
  whether small products are fast; ``mpi_allreduce(...)`` sums a buffer
  over the processes of an MPI job (ops/collective.py).
* ``macs(attrs, in_shapes, out_shape)``: multiply-adds per example, for
  ``nnspec inspect``.

A *layer* is what a spec calls (``conv2d(64, 3, pad=same)``): a function that
creates the layer's parameters and emits ops.  It lives in the same module as
its op, registered with ``@layer``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..errors import ShapeError

# Replaced by Numba's versions when the CPU backend compiles the kernels
# (backend/jit.py); these are what plain Python sees.
prange = range


def num_threads() -> int:
    return 1


def blas_get_threads() -> int:
    """The BLAS's thread count; 0 when it cannot be read and set."""
    return 0


def blas_set_threads(k: int) -> None:
    pass


def mpi_allreduce(fn: int, send: int, recv: int, count: int, datatype: int, op: int,
                  comm: int) -> int:
    """MPI_Allreduce(send, recv, count, datatype, op, comm) called through its
    address `fn`, every pointer and handle passed as a 64-bit integer (a
    pointer, or an int handle in the low half, as the C ABI passes them).
    Compiled kernels call LLVM's indirect call instead (backend/jit.py), so no
    address is baked into cached code; the collective ops hold the arguments
    in a run-time array (ops/collective.py)."""
    import ctypes
    i64 = ctypes.c_int64
    f = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                         i64, i64, i64)(fn)
    return f(send, recv, count, datatype, op, comm)


def blas_small_gemm() -> int:
    """1 where the BLAS has a fast path for small products (OpenBLAS's AVX-512
    kernels: a convolution then multiplies a few output rows at a time, in the
    cache), 0 where it packs its operands on every call (whole images are
    faster there)."""
    return 0

OPS: dict[str, "Op"] = {}
LAYERS: dict[str, "LayerDef"] = {}


def register(op: "Op") -> "Op":
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' registered twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> "Op":
    from . import load_all
    load_all()
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op named '{name}'") from None


def kernel(fn=None, *, parallel: bool = False, reassoc: bool = False):
    """Mark a module-level function as a CPU kernel (compiled by the backend,
    with ``parallel=True`` when asked; ``reassoc=True`` lets the compiler
    reorder floating-point sums and fuse multiply-adds, which vectorises
    reductions, while NaN and infinity keep their meaning)."""
    def mark(f):
        f._nnspec_kernel = {"parallel": parallel, "reassoc": reassoc}
        return f
    return mark(fn) if fn is not None else mark


class Op:
    name: str = ""
    arity: int | None = None          # number of inputs; None for any number
    differentiable: bool = True       # False for ops whose output is piecewise constant
    elementwise: bool = False

    def infer(self, attrs, shapes, dtypes):
        raise NotImplementedError(f"{self.name}: no shape rule")

    def reference(self, attrs, *xs):
        raise NotImplementedError(f"{self.name}: no reference")

    def grad(self, gb, node, g):
        raise NotImplementedError(f"{self.name}: no gradient")

    def kernel(self, attrs):
        raise NotImplementedError(f"{self.name}: no CPU kernel")

    def macs(self, attrs, in_shapes, out_shape) -> int:
        return 0

    def __repr__(self):
        return f"<op {self.name}>"


class LayerDef:
    """A spec-callable layer: `fn(ctx, *inputs, *args, **kwargs) -> node id`.

    `inputs` is how many tensors it takes first (None: any number, as concat).
    `spatial` marks layers that get a receptive-field row in `inspect`.
    """
    def __init__(self, name: str, fn: Callable, inputs: int | None, doc: str = ""):
        self.name, self.fn, self.inputs, self.doc = name, fn, inputs, doc


def layer(name: str, inputs: int | None = 1):
    def deco(fn):
        if name in LAYERS:
            raise ValueError(f"layer '{name}' registered twice")
        LAYERS[name] = LayerDef(name, fn, inputs, (fn.__doc__ or "").strip())
        return fn
    return deco


# ---- helpers for shape rules ------------------------------------------------

def known(d) -> bool:
    return isinstance(d, int)


def fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def same_shape(name: str, shapes) -> tuple:
    first = shapes[0]
    for s in shapes[1:]:
        if tuple(s) != tuple(first):
            raise ShapeError(f"{name}: shapes {fmt(first)} and {fmt(s)} must be equal")
    return tuple(first)


def broadcast(name: str, a, b) -> tuple:
    """NumPy broadcasting on shapes that may hold the symbols B and T."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ShapeError(f"{name}: cannot broadcast {fmt(a)} with {fmt(b)} "
                             f"(sizes {x} and {y} meet at axis -{i})")
    return tuple(reversed(out))


def conv_out(name: str, n: int, k: int, s: int, d: int, p_lo: int, p_hi: int, axis: str) -> int:
    """floor((n + p_lo + p_hi - d(k-1) - 1) / s) + 1, or a ShapeError naming the sizes."""
    span = d * (k - 1) + 1
    if not known(n):
        return n
    if n + p_lo + p_hi < span:
        raise ShapeError(
            f"{name}: input {axis} {n} (padded to {n + p_lo + p_hi}) is smaller than the "
            f"kernel's extent {span} (kernel {k}, dilation {d})")
    return (n + p_lo + p_hi - span) // s + 1


def pad_amounts(mode, n: int, k: int, s: int, d: int):
    """(lo, hi) padding for one spatial axis.  `mode` is 'valid', 'same',
    'same_lower', 'full', 'causal' or an int."""
    span = d * (k - 1) + 1
    if isinstance(mode, int):
        return mode, mode
    if mode == "valid":
        return 0, 0
    if mode == "full":
        return span - 1, span - 1
    if mode == "causal":
        return span - 1, 0
    if mode in ("same", "same_lower"):
        # output size ceil(n / s); the odd pad at the end (TensorFlow's, ONNX's
        # SAME_UPPER), or at the start with same_lower (ONNX's SAME_LOWER)
        if not known(n):
            total = span - 1
        else:
            out = -(-n // s)
            total = max((out - 1) * s + span - n, 0)
        lo = total // 2 if mode == "same" else total - total // 2
        return lo, total - lo
    raise ShapeError(f"unknown padding '{mode}'")


def prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def np_dtype(dtype: str):
    return np.dtype(dtype)
