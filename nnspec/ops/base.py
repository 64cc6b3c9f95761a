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
  whether small products are fast; ``blas_gemm(...)`` is the BLAS GEMM with
  leading dimensions and beta; ``mpi_allreduce(...)`` sums a buffer
  over the processes of an MPI job (ops/collective.py).
* ``cuda(attrs, in_shapes, out_shape) -> Cuda``: the CUDA kernel, as stages
  over the op's arrays at concrete shapes (the batch size filled in): `Map`
  (one device-function call per output element), `Reduce` (a sum per row,
  one thread block each, in shared memory) and `Gemm` (cuBLAS or the tiled
  fallback).  Their bodies are functions of the same module marked
  ``@cuda_kernel``: plain Python over indices, scalars and arrays that
  backend/cuda compiles as device functions; they never run on the host.
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


def blas_gemm(ta: int, tb: int, m: int, n: int, k: int, a, lda: int, b, ldb: int,
              beta: float, c, ldc: int) -> int:
    """The BLAS GEMM in its column-major form: C = op(A) op(B) + beta C, where
    A, B and C start at the first elements of the arrays a, b and c, have
    leading dimensions lda, ldb, ldc (in elements), and op transposes where
    ta / tb are nonzero; C is m x n, op(A) m x k.  (Compiled kernels call
    the BLAS np.dot calls, backend/jit.py.)"""
    from scipy.linalg import blas as _blas

    def view(x, rows, cols, ld):          # column-major rows x cols from x's first element
        return np.lib.stride_tricks.as_strided(x, (rows, cols), (x.itemsize, ld * x.itemsize))
    ar, ac = (k, m) if ta else (m, k)
    br, bc = (n, k) if tb else (k, n)
    A, B, C = view(a, ar, ac, lda), view(b, br, bc, ldb), view(c, m, n, ldc)
    f = _blas.sgemm if c.dtype == np.float32 else _blas.dgemm
    C[...] = f(1.0, A, B, beta=beta, c=np.array(C, order="F"), trans_a=ta, trans_b=tb)
    return 0


def blas_small_gemm() -> int:
    """1 where the BLAS has a fast path for small products (OpenBLAS's AVX-512
    kernels: a convolution then multiplies a few output rows at a time, in the
    cache), 0 where it packs its operands on every call (whole images are
    faster there)."""
    return 0

# The float type of the program a CUDA kernel body runs in (`T(0)` is a zero
# of the program's dtype, where a bare 0.0 would be float64): backend/cuda
# defines it where it compiles the bodies; this is what plain Python sees.
T = float


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


def cuda_kernel(fn):
    """Mark a module-level function as the body of a CUDA kernel stage.

    A `Map` body ``fn(k, *arrays, *extra)`` computes (and writes) element k of
    its output; a `Reduce` term ``fn(r, j, *arrays, *extra) -> value`` is term
    j of row r's sum and its finish ``fn(r, total, *arrays, *extra)`` writes
    the row's result.  A body may index arrays, do arithmetic, call `math`,
    min, max, abs, int, `T` and other ``@cuda_kernel`` functions of its module;
    backend/cuda/ops.py compiles it (and those) as device functions."""
    fn._nnspec_cuda = True
    return fn


class Ref:
    """An array a stage reads or writes: one of the op's inputs ("in0", ...),
    its output ("out") or a scratch buffer ("tmp0", ... from `Cuda.temps`),
    seen with `shape` (default: its own) from element `offset` of its memory
    (the arrays are contiguous)."""
    __slots__ = ("name", "shape", "offset")

    def __init__(self, name: str, shape: tuple | None = None, offset: int = 0):
        self.name, self.shape, self.offset = name, shape, int(offset)

    def __repr__(self):
        return f"Ref({self.name!r}, {self.shape}, {self.offset})"


def flat(name: str, shape) -> Ref:
    """`name`'s array seen as one axis of prod(shape) elements."""
    return Ref(name, (prod(shape),))


def _refs(args) -> tuple:
    return tuple(a if isinstance(a, Ref) else Ref(a) for a in args)


class Map:
    """`fn(k, *args, *extra)` for k in [0, n), in parallel: a grid-stride loop."""
    def __init__(self, fn, n: int, args, extra=()):
        self.fn, self.n, self.args, self.extra = fn, int(n), _refs(args), tuple(extra)


class Reduce:
    """For each row r in [0, rows): total = sum of `term(r, j, *args, *extra)`
    over j in [0, count), one thread block per row reducing in shared memory
    (no atomics), then `finish(r, total, *args, *extra)`."""
    def __init__(self, term, finish, rows: int, count: int, args, extra=()):
        self.term, self.finish = term, finish
        self.rows, self.count = int(rows), int(count)
        self.args, self.extra = _refs(args), tuple(extra)


class Gemm:
    """out (+)= op(a) @ op(b) on 2-D refs; op transposes where ta / tb."""
    def __init__(self, a, b, out, ta: bool = False, tb: bool = False,
                 accumulate: bool = False):
        self.a, self.b, self.out = _refs((a, b, out))
        self.ta, self.tb, self.accumulate = bool(ta), bool(tb), bool(accumulate)


class Cuda:
    """An op's CUDA kernel: `stages` run in order; `temps` are the sizes (and
    dtypes, None for the program's) of the scratch buffers "tmp0", ..."""
    def __init__(self, stages, temps=()):
        self.stages = list(stages)
        self.temps = [t if isinstance(t, tuple) else (t, None) for t in temps]


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

    def kernel_for(self, attrs, in_shapes, out_shape):
        """`kernel(attrs)`, or a kernel chosen for these shapes (the batch axis
        "B" and a time axis "T" unknown): where one algorithm serves only some
        shapes, its kernel of its own, so that the others do not compile it."""
        return self.kernel(attrs)

    def cuda(self, attrs, in_shapes, out_shape) -> "Cuda":
        raise NotImplementedError(f"{self.name}: no CUDA kernel")

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
