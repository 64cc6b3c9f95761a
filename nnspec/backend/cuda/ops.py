"""The CUDA kernels ops define themselves (`Op.cuda`, ops/base.py) as launches.

An op's `cuda(attrs, in_shapes, out_shape)` returns a `Cuda`: stages over
its arrays at concrete shapes.  Here each stage becomes a call:

* `Map(fn, n, args, extra)`: a kernel whose grid-stride loop calls the
  device function `fn(k, *args, *extra)` for k in [0, n);
* `Reduce(term, finish, rows, count, args, extra)`: one block per row, each
  thread summing `term(r, j, ...)` over its share of j, a shared-memory tree
  over the block (`_block_reduce`), then `finish(r, total, ...)` on thread 0
  (ops whose rows are few and long split them themselves: reduce.split_parts);
* `Gemm(a, b, out, ta, tb, accumulate)`: the GEMM provider (gemm.py).

The kernel module's text holds the bodies' own source (every `@cuda_kernel`
function of the op's module that the body names, transitively) and the
launcher, rendered per dtype and architecture: `cache.load` names it by the
hash of that text, so an edited body is a new entry, and equal stages of
any network share one compiled kernel.
"""
from __future__ import annotations

import functools
import inspect
import re
import sys
import textwrap

import numpy as np

from ...errors import DeviceError
from ...ops.base import Gemm, Map, Reduce, Ref
from .. import cache
from .runtime import MAX_BLOCKS, THREADS, arch, blocks, empty, stream, watched

HEAD = '''"""nnspec CUDA kernel: {what}, {dtype}, {arch}."""
import math

import numpy as np
from numba import cuda, {dtype} as DT

T = np.{dtype}
RED = {threads}

'''

REDUCE_HELPER = '''
@cuda.jit(device=True)
def _block_reduce(sh, v):
    """The sum of v over the block's threads, returned to each."""
    i = cuda.threadIdx.x
    sh[i] = v
    cuda.syncthreads()
    s = RED // 2
    while s > 0:
        if i < s:
            sh[i] = sh[i] + sh[i + s]
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r

'''

MAP = '''
@cuda.jit(cache=True)
def launch(n{params}):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        {fn}(k{params})
'''

REDUCE = '''
@cuda.jit(cache=True)
def launch(rows, count{params}):
    sh = cuda.shared.array(RED, DT)
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        s = T(0)
        for j in range(cuda.threadIdx.x, count, RED):
            s += {term}(r, j{params})
        s = _block_reduce(sh, s)
        if cuda.threadIdx.x == 0:
            {finish}(r, s{params})
'''


def _marked(module) -> dict:
    return {name: f for name, f in vars(module).items()
            if callable(f) and getattr(f, "_nnspec_cuda", False)
            and getattr(f, "__module__", None) == module.__name__}


def _body_source(fn) -> str:
    src = textwrap.dedent(inspect.getsource(fn))
    lines = [ln for ln in src.splitlines() if not ln.startswith("@")]
    return "@cuda.jit(device=True)\n" + "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _functions(fns: tuple) -> str:
    """The source of `fns` and every `@cuda_kernel` function of their modules
    they name, transitively, each as a device function."""
    for f in fns:
        if not getattr(f, "_nnspec_cuda", False):
            raise TypeError(f"{f.__module__}.{f.__name__} is not marked @cuda_kernel")
    module = sys.modules[fns[0].__module__]
    marked = _marked(module)
    seen: dict = {}
    todo = list(fns)
    while todo:
        f = todo.pop()
        if f.__name__ in seen:
            continue
        seen[f.__name__] = src = _body_source(f)
        for name, g in marked.items():
            if name not in seen and re.search(rf"\b{name}\s*\(", src):
                todo.append(g)
    return "\n\n".join(seen[k] for k in sorted(seen))


@functools.lru_cache(maxsize=None)
def _launcher(kind: str, fns: tuple, nargs: int, dtype: str):
    params = "".join(f", a{i}" for i in range(nargs))
    what = f"{fns[0].__module__.rsplit('.', 1)[-1]}." + "/".join(f.__name__ for f in fns)
    text = HEAD.format(what=what, dtype=dtype, arch=arch(), threads=THREADS)
    text += _functions(fns) + "\n"
    if kind == "map":
        text += MAP.format(params=params, fn=fns[0].__name__)
    else:
        text += REDUCE_HELPER + REDUCE.format(params=params, term=fns[0].__name__,
                                              finish=fns[1].__name__)
    return watched(cache.load(f"cuda_{arch()}_op", text)).launch


def view(a, ref: Ref):
    """`ref`'s view of the device array a (contiguous)."""
    if ref.shape is None and ref.offset == 0:
        return a
    shape = tuple(int(d) for d in (a.shape if ref.shape is None else ref.shape))
    size = int(np.prod(shape, dtype=np.int64))
    if ref.offset + size > a.size:
        raise DeviceError(f"CUDA view {ref} beyond its array of {a.size} elements")
    flat = a.reshape(a.size) if a.ndim != 1 else a
    return flat[ref.offset:ref.offset + size].reshape(shape) if shape else \
        flat[ref.offset:ref.offset + 1]


def _scalar(x, T):
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return np.int64(x)
    if isinstance(x, (float, np.floating)):
        return T(x)
    if isinstance(x, (tuple, list)):
        return tuple(_scalar(v, T) for v in x)
    raise TypeError(f"a CUDA stage's extra argument must be a number or a tuple, not {x!r}")


def launches(node, spec, ins: list, out, dtype: str, gemm, pool: dict | None = None) -> list:
    """The calls running `spec` (an op's `Cuda`) with inputs `ins` and output
    `out` (device arrays): a list of zero-argument functions.  Its temps are
    the front of `pool`'s buffers ((index, dtype) -> device array) where
    given, else new arrays."""
    T = np.dtype(dtype).type
    arrays = {f"in{i}": a for i, a in enumerate(ins)}
    arrays["out"] = out
    for i, (size, dt) in enumerate(spec.temps):
        key = (i, str(np.dtype(dt or dtype)))
        arrays[f"tmp{i}"] = pool[key][:max(int(size), 1)] if pool and key in pool else \
            empty(size, dt or dtype)

    def resolve(ref: Ref):
        if ref.name not in arrays:
            raise DeviceError(f"op '{node.op}' (node '{node.id}'): its CUDA kernel names "
                              f"'{ref.name}', which it does not have")
        return view(arrays[ref.name], ref)

    calls = []
    for st in spec.stages:
        if isinstance(st, Gemm):
            a, b, o = (resolve(r) for r in (st.a, st.b, st.out))
            calls.append(gemm.bind(a, b, o, st.ta, st.tb, accumulate=st.accumulate))
            continue
        args = tuple(resolve(r) for r in st.args) + tuple(_scalar(x, T) for x in st.extra)
        if isinstance(st, Map):
            if st.n <= 0:
                continue
            fn = _launcher("map", (st.fn,), len(args), dtype)
            calls.append(functools.partial(fn[blocks(st.n), THREADS, stream()], np.int64(st.n),
                                           *args))
        elif isinstance(st, Reduce):
            if st.rows <= 0:
                continue
            fn = _launcher("reduce", (st.term, st.finish), len(args), dtype)
            grid = (min(st.rows, MAX_BLOCKS), THREADS, stream())
            calls.append(functools.partial(fn[grid], np.int64(st.rows), np.int64(st.count),
                                           *args))
        else:
            raise TypeError(f"op '{node.op}': unknown CUDA stage {st!r}")
    return calls
