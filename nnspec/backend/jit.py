"""Compiling the `@kernel` functions of op modules with Numba, on demand.

Op modules are plain Python so that reading specs never imports Numba.  The
first time a backend needs a module's kernels, `compile_module` swaps each
marked function for a Numba dispatcher in place (like `numba.jit_module`), and
points the module's `prange` at `numba.prange`.  Kernels that call each other
by their global names then see dispatchers when Numba compiles them, and
`cache=True` keeps the machine code on disk between runs (beside the module,
or in NUMBA_CACHE_DIR), stamped with the module's sources and those it
imports, and rebuilt when it fails to load (cache.recovering_cache).

The module's `prange`, `num_threads`, `blas_get_threads`, `blas_set_threads`,
`blas_small_gemm`, `blas_gemm` and `mpi_allreduce` (plain-Python stand-ins from
ops/base.py) become Numba's:
the BLAS ones call SciPy's OpenBLAS (the BLAS behind np.dot in compiled code)
through symbols registered with LLVM by name, so kernels that use them still
cache (an address baked into the code would not survive a new process).
"""
from __future__ import annotations

import os
import sys

_done: set[str] = set()


_hooks: dict = {}


def loaded_library(matches, symbol: str):
    """A shared library this process has loaded whose path `matches(path)`
    and that exports `symbol`, as a ctypes library; None when there is none
    (or /proc/self/maps cannot be read)."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({p for p in (ln.split()[-1] for ln in f)
                            if p.startswith("/") and matches(p)})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if getattr(lib, symbol, None) is not None:
            return lib
    return None


def _openblas():
    """SciPy's OpenBLAS (the BLAS behind np.dot in compiled code) as a ctypes
    library, or None when it is not loaded."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library np.dot uses)
    except ImportError:
        return None
    return loaded_library(lambda p: "scipy_openblas" in p and "scipy.libs" in p,
                          "scipy_openblas_get_num_threads")


def openblas_threads():
    """(get, set) thread-count functions of SciPy's OpenBLAS as ctypes
    functions, or None when it is not loaded or does not export them."""
    import ctypes
    lib = _openblas()
    if lib is None:
        return None
    get = getattr(lib, "scipy_openblas_get_num_threads", None)
    put = getattr(lib, "scipy_openblas_set_num_threads", None)
    if get is None or put is None:
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put


# OpenBLAS kernel sets with a small-matrix GEMM path (no packing for small products);
# NNSPEC_BLAS_SMALL_GEMM=0 or 1 overrides the choice (the tests run both ways)
SMALL_GEMM_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def openblas_core() -> str:
    """The kernel set SciPy's OpenBLAS runs (lower case), or "" if unknown."""
    import ctypes
    lib = _openblas()
    fn = getattr(lib, "scipy_openblas_get_corename", None) if lib is not None else None
    if fn is None:
        return ""
    fn.restype, fn.argtypes = ctypes.c_char_p, []
    return (fn() or b"").decode().strip().lower()


def hooks() -> dict:
    """Numba's versions of the kernel-side hooks in ops/base.py."""
    if not _hooks:
        import ctypes

        import llvmlite.binding as llvm
        import numba
        from numba import types
        fns = openblas_threads()
        if fns is None:          # stand-ins: "unknown" (0), and setting does nothing
            keep = (numba.cfunc(types.intc())(lambda: 0),
                    numba.cfunc(types.void(types.intc))(lambda k: None))
            addrs = [f.address for f in keep]
        else:
            keep = fns
            addrs = [ctypes.cast(f, ctypes.c_void_p).value for f in fns]
        llvm.add_symbol("nnspec_blas_get_threads", addrs[0])
        llvm.add_symbol("nnspec_blas_set_threads", addrs[1])
        # a constant of this process, read through a symbol like the others so
        # that cached kernels do not keep the value of the process that compiled them
        forced = os.environ.get("NNSPEC_BLAS_SMALL_GEMM", "").strip()
        small = (forced == "1" if forced in ("0", "1")
                 else openblas_core() in SMALL_GEMM_CORES)
        small_fn = numba.cfunc(types.intc())(lambda: 1 if small else 0)
        keep = tuple(keep) + (small_fn,)
        llvm.add_symbol("nnspec_blas_small_gemm", small_fn.address)
        # The threads a kernel plans its work for (its tasks, its parts): set
        # by cpu.use_threads, and kept when the pacer (cores.py) runs a step
        # on fewer threads than planned.  A kernel's results depend on its
        # plan alone, never on how many threads run it.
        from numba.np.ufunc import parallel
        parallel._launch_threads()
        planned_fn = numba.cfunc(types.intc())(_planned_reader())
        keep = tuple(keep) + (planned_fn,)
        llvm.add_symbol("nnspec_num_threads", planned_fn.address)
        # the threads that run this thread's parallel loops now (numba.get_num_threads
        # would bake its address in)
        llvm.add_symbol("nnspec_real_threads",
                        ctypes.cast(parallel._get_num_threads, ctypes.c_void_p).value)
        _hooks.update(
            mpi_allreduce=_mpi_allreduce_intrinsic(),
            blas_gemm=_blas_gemm_intrinsic(),
            prange=numba.prange,
            num_threads=types.ExternalFunction("nnspec_num_threads", types.intc()),
            real_threads=types.ExternalFunction("nnspec_real_threads", types.intc()),
            blas_get_threads=types.ExternalFunction("nnspec_blas_get_threads", types.intc()),
            blas_set_threads=types.ExternalFunction("nnspec_blas_set_threads",
                                                    types.void(types.intc)),
            blas_small_gemm=types.ExternalFunction("nnspec_blas_small_gemm", types.intc()),
            _keep=keep)
    return _hooks


# the planned thread count (`planned_threads`), in memory of its own: read by
# compiled code through `nnspec_num_threads`, set from Python
_planned = None


def set_planned_threads(n: int) -> None:
    """The thread count kernels plan their work for, from now on (>= 1)."""
    _planned_cell().value = max(int(n), 1)


def planned_threads() -> int:
    return _planned_cell().value


def _planned_cell():
    global _planned
    if _planned is None:        # at first: as cpu.use_threads(0) sets
        import ctypes

        from .cores import chosen_threads
        _planned = ctypes.c_int32(chosen_threads())
    return _planned


def _planned_reader():
    """A function of no arguments returning the planned thread count, for a
    cfunc compiled in this process (the cell's address is a constant of its
    code; cached kernels reach it by the symbol's name)."""
    import ctypes

    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
    addr = ctypes.addressof(_planned_cell())

    @intrinsic
    def load_i32(typingctx, a):
        def codegen(context, builder, signature, values):
            ptr = builder.inttoptr(values[0], ir.IntType(32).as_pointer())
            v = builder.load_atomic(ptr, "monotonic", 4)
            return v
        return types.intc(types.int64), codegen

    def planned():
        return load_i32(addr)
    return planned


def _blas_gemm_intrinsic():
    """ops/base.py's `blas_gemm` for compiled code: Numba's own entry to the
    BLAS GEMM (numba_xxgemm, what np.dot calls), with the operands' leading
    dimensions and beta given."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
    from numba.np.linalg import ensure_blas, get_blas_kind

    @intrinsic
    def blas_gemm(typingctx, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
        ints = (ta, tb, m, n, k, lda, ldb, ldc)
        arrays = (a, b, c)
        if not (all(isinstance(x, types.Integer) for x in ints)
                and all(isinstance(x, types.Array) for x in arrays)
                and isinstance(beta, (types.Float, types.Integer))):
            return None
        dtype = c.dtype
        if dtype not in (types.float32, types.float64) or a.dtype != dtype or b.dtype != dtype:
            return None
        ensure_blas()
        sig = types.int32(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, values):
            ll_char, ll_void_p = ir.IntType(8), ir.IntType(8).as_pointer()
            intp = context.get_value_type(types.intp)
            fnty = ir.FunctionType(ir.IntType(32), [ll_char, ll_char, ll_char, intp, intp, intp,
                                                    ll_void_p, ll_void_p, intp, ll_void_p, intp,
                                                    ll_void_p, ll_void_p, intp])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
            args = signature.args

            def as_int(j):
                return context.cast(builder, values[j], args[j], types.intp)

            def trans(j):
                t = builder.icmp_signed("!=", as_int(j), ir.Constant(intp, 0))
                return builder.select(t, ir.Constant(ll_char, ord("t")),
                                      ir.Constant(ll_char, ord("n")))

            def data(j):
                arr = context.make_array(args[j])(context, builder, values[j])
                return builder.bitcast(arr.data, ll_void_p)
            one = cgutils.alloca_once_value(builder, context.get_constant(dtype, 1.0))
            bv = cgutils.alloca_once_value(builder,
                                           context.cast(builder, values[9], args[9], dtype))
            kind = ir.Constant(ll_char, ord(get_blas_kind(dtype)))
            return builder.call(fn, [kind, trans(0), trans(1), as_int(2), as_int(3), as_int(4),
                                     builder.bitcast(one, ll_void_p), data(5), as_int(6),
                                     data(7), as_int(8), builder.bitcast(bv, ll_void_p),
                                     data(10), as_int(11)])
        return sig, codegen
    return blas_gemm


def _mpi_allreduce_intrinsic():
    """ops/base.py's `mpi_allreduce` for compiled code: an indirect call to
    the address in its first argument, int (*)(void *, void *, int, i64, i64,
    i64), the handles passed as 64-bit integers (a pointer, or an int handle
    in the low half, as the C ABI passes both on x86-64 and AArch64)."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def mpi_allreduce(typingctx, fn, send, recv, count, datatype, op, comm):
        args = (fn, send, recv, count, datatype, op, comm)
        if not all(isinstance(a, types.Integer) for a in args):
            return None
        sig = types.int32(*args)

        def codegen(context, builder, signature, values):
            i64, i32, ptr = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
            v = [context.cast(builder, x, t, types.int64)
                 for x, t in zip(values, signature.args)]
            fnty = ir.FunctionType(i32, [ptr, ptr, i32, i64, i64, i64])
            f = builder.inttoptr(v[0], fnty.as_pointer())
            return builder.call(f, [builder.inttoptr(v[1], ptr), builder.inttoptr(v[2], ptr),
                                    builder.trunc(v[3], i32), v[4], v[5], v[6]])
        return sig, codegen
    return mpi_allreduce


def _unliteral_calls(disp) -> None:
    """Compile the kernel's calls from other kernels for the arguments' plain
    types: a constant argument (`False`, `1`) is typed by Numba as its literal
    value, and each set of literals compiled a kernel of its own, and again
    all it calls.  Measured in the convolution kernels: `_conv` twice (bias or
    not), `_conv_rows` three times, `_plan` three, `_chunk` four; conv_bias
    took 9.6 s after conv_nobias, where it shares all its code."""
    from numba.core import types

    get = disp.get_call_template

    def get_call_template(args, kws):
        return get(tuple(types.unliteral(a) for a in args),
                   {k: types.unliteral(v) for k, v in kws.items()})
    disp.get_call_template = get_call_template


def compile_module(module) -> None:
    if module.__name__ in _done:
        return
    import numba

    from . import cache
    for name, fn in hooks().items():
        if name in vars(module):
            setattr(module, name, fn)
    for name, fn in list(vars(module).items()):
        opts = getattr(fn, "_nnspec_kernel", None)
        if opts is not None and callable(fn) and not hasattr(fn, "py_func"):
            fast = {"reassoc", "contract"} if opts.get("reassoc") else False
            # a module's own helpers (_name) are called from compiled code only:
            # no Python or C entry points to build (1-2 s of a convolution's 13-15)
            inner = {"no_cpython_wrapper": True, "no_cfunc_wrapper": True} \
                if name.startswith("_") else {}
            disp = numba.njit(cache=True, parallel=opts["parallel"], error_model="numpy",
                              fastmath=fast, **inner)(fn)
            disp._cache = cache.recovering_cache(fn)
            disp._nnspec_kernel = opts
            _unliteral_calls(disp)
            setattr(module, name, disp)
    _done.add(module.__name__)


def jitted(fn):
    """The compiled form of a `@kernel` function (compiling its module first)."""
    module = sys.modules[fn.__module__]
    compile_module(module)
    return getattr(module, fn.__name__)


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
