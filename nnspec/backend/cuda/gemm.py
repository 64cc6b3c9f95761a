"""GEMMs on the device behind one small interface:

    g = gemm_provider()                  # cuBLAS where it loads, else the tiled kernel
    call = g.bind(a, b, out, ta=False, tb=True)   # out = op(a) @ op(b), 2-D device arrays
    call = g.bind(a, b, out, ta, tb, accumulate=True)   # out += op(a) @ op(b)
    call()                               # as often as the step runs
    g(a, b, out, ...)                    # bind and call once

A provider is any object with those two methods (and a `name`): dense layers,
convolutions and their gradients go through it, so a later one (cuDNN,
nvmath-python) replaces the ones below without touching the programs.
`bind` does everything that does not change between calls (shapes, device
pointers, the cuBLAS arguments), so a call is one library call.

* `CublasGemm`: cuBLAS's GEMM (ctypes, a handle of its own on
  `runtime.stream()`), on Numba's device arrays' memory in place (no
  copies), row-major as column-major with the operands swapped,
  `accumulate` as beta = 1: no temporaries, so a captured CUDA graph
  replays exactly these calls.  Full float32 by default;
  NNSPEC_CUDA_TF32=1 lets float32 GEMMs round their inputs to TF32 on the
  tensor cores (about 1e-3 relative, as PyTorch's cuDNN convolutions do by
  default).
* `TiledGemm`: a numba.cuda kernel, each block a TILE x TILE tile of `out`
  accumulated from shared-memory tiles of a and b; what runs where CuPy is
  absent.  Its source is rendered per dtype and tile and cached on disk
  like every generated kernel.
* `HostGemm`: under the simulator, NumPy's matmul on the arrays' memory.
"""
from __future__ import annotations

import ctypes
import functools
import os

from .. import cache
from ..device import simulated
from ...errors import DeviceError
from .runtime import arch, empty, stream, stream_ptr, watched

TEMPLATE = '''"""nnspec tiled GEMM, {dtype}, {tile}x{tile} tiles, {arch}."""
import numpy as np
from numba import cuda, {dtype} as DT

T = np.{dtype}
TILE = {tile}


@cuda.jit(cache=True)
def gemm(a, b, out, M, N, K, ta, tb, acc):
    """out [M, N] (+)= op(a) [M, K] @ op(b) [K, N]; op transposes where ta / tb."""
    sa = cuda.shared.array((TILE, TILE), DT)
    sb = cuda.shared.array((TILE, TILE), DT)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    s = T(0)
    for k0 in range(0, K, TILE):
        ka = k0 + tx
        if row < M and ka < K:
            sa[ty, tx] = a[ka, row] if ta else a[row, ka]
        else:
            sa[ty, tx] = T(0)
        kb = k0 + ty
        if col < N and kb < K:
            sb[ty, tx] = b[col, kb] if tb else b[kb, col]
        else:
            sb[ty, tx] = T(0)
        cuda.syncthreads()
        for j in range(TILE):
            s += sa[ty, j] * sb[j, tx]
        cuda.syncthreads()
    if row < M and col < N:
        if acc:
            out[row, col] += s
        else:
            out[row, col] = s
'''


def _dims(a, b, ta: bool, tb: bool) -> tuple[int, int, int]:
    M, K = (a.shape[1], a.shape[0]) if ta else a.shape
    N = b.shape[0] if tb else b.shape[1]
    return M, N, K


class Provider:
    name = "?"

    def bind(self, a, b, out, ta: bool = False, tb: bool = False, accumulate: bool = False):
        return functools.partial(self._run, a, b, out, ta, tb, accumulate)

    def __call__(self, a, b, out, ta: bool = False, tb: bool = False,
                 accumulate: bool = False) -> None:
        self.bind(a, b, out, ta, tb, accumulate)()


class TiledGemm(Provider):
    name = "tiled"

    def __init__(self, tile: int | None = None):
        self.tile = tile or (4 if simulated() else 16)

    @functools.lru_cache(maxsize=None)
    def _kernel(self, dtype: str):
        text = TEMPLATE.format(dtype=dtype, tile=self.tile, arch=arch())
        return watched(cache.load(f"cuda_{arch()}_gemm", text)).gemm

    def _run(self, a, b, out, ta, tb, accumulate) -> None:
        M, N, K = _dims(a, b, ta, tb)
        t = self.tile
        grid = (-(-N // t), -(-M // t))
        self._kernel(str(out.dtype))[grid, (t, t), stream()](a, b, out, M, N, K, ta, tb,
                                                             accumulate)


class HostGemm(Provider):
    """The simulator's stand-in for cuBLAS: NumPy's matmul on the memory
    under the simulated device arrays.  A library GEMM, as cuBLAS is on a
    GPU; the tiled kernel, run by the simulator thread by thread, made the
    convolution tests minutes long, and is tested on its own."""
    name = "host"

    def _run(self, a, b, out, ta, tb, accumulate) -> None:
        import numpy as np
        A, B, O = (getattr(x, "_ary", x) for x in (a, b, out))
        A, B = (A.T if ta else A), (B.T if tb else B)
        if accumulate:
            O += A @ B
        else:
            np.matmul(A, B, out=O)


class CublasGemm(Provider):
    """cuBLAS called through ctypes on a handle of its own, bound to
    `runtime.stream()`: CuPy's bindings refuse to run during a stream capture,
    which is how a step becomes a CUDA graph (step.py)."""
    name = "cublas"

    def __init__(self):
        import numpy as np
        lib = _libcublas()
        c = ctypes
        for fn in ("cublasSgemm_v2", "cublasDgemm_v2"):
            getattr(lib, fn).argtypes = [c.c_void_p, c.c_int, c.c_int, c.c_int, c.c_int,
                                         c.c_int, c.c_void_p, c.c_void_p, c.c_int, c.c_void_p,
                                         c.c_int, c.c_void_p, c.c_void_p, c.c_int]
            getattr(lib, fn).restype = c.c_int
        self.lib, self.handle = lib, c.c_void_p()
        _ok(lib.cublasCreate_v2(c.byref(self.handle)), "cublasCreate")
        _ok(lib.cublasSetStream_v2(self.handle, c.c_void_p(stream_ptr())), "cublasSetStream")
        # a workspace of its own, so that nothing allocates while a graph is captured
        self.workspace = empty(WORKSPACE // 4, np.float32)
        if hasattr(lib, "cublasSetWorkspace_v2"):
            _ok(lib.cublasSetWorkspace_v2(self.handle, c.c_void_p(_ptr(self.workspace)),
                                          c.c_size_t(WORKSPACE)), "cublasSetWorkspace")
        if os.environ.get("NNSPEC_CUDA_TF32") == "1":      # float32 GEMMs on tensor cores
            _ok(lib.cublasSetMathMode(self.handle, 3), "cublasSetMathMode")   # TF32_TENSOR_OP
        # alpha and beta: host scalars cuBLAS reads at the call (or at the capture)
        self.scalars = {np.dtype(t): (np.ones(1, t), np.zeros(1, t))
                        for t in (np.float32, np.float64)}
        self.fn = {np.dtype(np.float32): lib.cublasSgemm_v2,
                   np.dtype(np.float64): lib.cublasDgemm_v2}

    def bind(self, a, b, out, ta: bool = False, tb: bool = False, accumulate: bool = False):
        import numpy as np
        M, N, K = _dims(a, b, ta, tb)
        dt = np.dtype(out.dtype)
        for x in (a, b, out):
            if x.ndim != 2 or not x.is_c_contiguous() or np.dtype(x.dtype) != dt:
                raise ValueError(f"cuBLAS GEMM: operands must be C-contiguous 2-d {dt} "
                                 f"arrays, not {x.dtype} {x.shape}")
        if M == 0 or N == 0:
            return lambda: None
        one, zero = self.scalars[dt]
        c = ctypes
        # out [M, N] row-major is out^T [N, M] column-major = op(b)^T op(a)^T
        args = (self.handle, int(tb), int(ta), N, M, K,
                c.c_void_p(one.ctypes.data), c.c_void_p(_ptr(b)), max(1, b.shape[1]),
                c.c_void_p(_ptr(a)), max(1, a.shape[1]),
                c.c_void_p((one if accumulate else zero).ctypes.data), c.c_void_p(_ptr(out)),
                max(1, N))
        fn = self.fn[dt]

        def call():
            rc = fn(*args)
            if rc:
                raise DeviceError(f"cuBLAS GEMM {M}x{N}x{K} failed (cublasStatus {rc})")
        return call


WORKSPACE = 32 << 20        # bytes; cuBLAS asks for at most 32 MiB on Hopper


def _ok(rc: int, what: str) -> None:
    if rc:
        raise DeviceError(f"{what} failed (cublasStatus {rc})")


@functools.lru_cache(maxsize=None)
def _libcublas():
    """The cuBLAS library: the one already in the process (CuPy loads it
    from its wheel), else the loader's."""
    try:
        import cupy
        cupy.cuda.device.get_cublas_handle()        # loads CuPy's libcublas
    except Exception:          # noqa: BLE001 (no CuPy: the loader's copy below)
        pass
    paths = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "libcublas.so" in ln
                            and "libcublasLt" not in ln})
    except OSError:
        pass
    import ctypes.util
    names = paths + [n for n in (ctypes.util.find_library("cublas"), "libcublas.so.13",
                                 "libcublas.so.12", "libcublas.so") if n]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise DeviceError("cuBLAS (libcublas.so) was not found")


def _ptr(x) -> int:
    return int(x.__cuda_array_interface__["data"][0])


@functools.lru_cache(maxsize=None)
def gemm_provider():
    """cuBLAS where its library loads (CuPy's wheel brings it), else the tiled
    kernel; NumPy's under the simulator.  NNSPEC_CUDA_GEMM=tiled|cublas
    forces one."""
    want = os.environ.get("NNSPEC_CUDA_GEMM", "").strip()
    if want == "tiled":
        return TiledGemm()
    if simulated():
        return HostGemm()
    try:
        return CublasGemm()
    except Exception:              # noqa: BLE001 (no libcublas, or it cannot start here)
        if want == "cublas":
            raise
        return TiledGemm()
