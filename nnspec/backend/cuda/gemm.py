"""GEMMs on the device behind one small interface:

    g = gemm_provider()                  # CuPy's cuBLAS where it works, else the tiled kernel
    g(a, b, out, ta=False, tb=True)      # out = op(a) @ op(b), 2-D device arrays
    g(a, b, out, ta, tb, accumulate=True)   # out += op(a) @ op(b)

A provider is any callable with that signature (and a `name`): dense layers
and their gradients go through it, so a later one (cuDNN, nvmath-python)
replaces both below without touching the programs.

* `CupyGemm`: cuBLAS through CuPy, reading and writing Numba's device arrays
  in place through `__cuda_array_interface__` (no copies), on the same
  (default) stream as the kernels.
* `TiledGemm`: a numba.cuda kernel, each block a TILE x TILE tile of `out`
  accumulated from shared-memory tiles of a and b; what runs where CuPy is
  absent.  Its source is rendered per dtype and tile and cached on disk
  like every generated kernel.
* `HostGemm`: under the simulator, NumPy's matmul on the arrays' memory.
"""
from __future__ import annotations

import functools
import os

from .. import cache
from ..device import simulated
from .runtime import arch, watched

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


class TiledGemm:
    name = "tiled"

    def __init__(self, tile: int | None = None):
        self.tile = tile or (4 if simulated() else 16)

    @functools.lru_cache(maxsize=None)
    def _kernel(self, dtype: str):
        text = TEMPLATE.format(dtype=dtype, tile=self.tile, arch=arch())
        return watched(cache.load(f"cuda_{arch()}_gemm", text)).gemm

    def __call__(self, a, b, out, ta: bool = False, tb: bool = False,
                 accumulate: bool = False) -> None:
        M, N, K = _dims(a, b, ta, tb)
        t = self.tile
        grid = (-(-N // t), -(-M // t))
        self._kernel(str(out.dtype))[grid, (t, t)](a, b, out, M, N, K, ta, tb, accumulate)


class HostGemm:
    """The simulator's stand-in for cuBLAS: NumPy's matmul on the memory
    under the simulated device arrays.  A library GEMM, as cuBLAS is on a
    GPU; the tiled kernel, run by the simulator thread by thread, made the
    convolution tests minutes long, and is tested on its own."""
    name = "host"

    def __call__(self, a, b, out, ta: bool = False, tb: bool = False,
                 accumulate: bool = False) -> None:
        import numpy as np
        A, B, O = (getattr(x, "_ary", x) for x in (a, b, out))
        A, B = (A.T if ta else A), (B.T if tb else B)
        if accumulate:
            O += A @ B
        else:
            np.matmul(A, B, out=O)


class CupyGemm:
    name = "cublas"

    def __init__(self):
        import cupy
        self.cp = cupy

    def __call__(self, a, b, out, ta: bool = False, tb: bool = False,
                 accumulate: bool = False) -> None:
        cp = self.cp
        A, B, O = cp.asarray(a), cp.asarray(b), cp.asarray(out)   # views, no copies
        A, B = (A.T if ta else A), (B.T if tb else B)
        if accumulate:
            O += cp.matmul(A, B)
        else:
            cp.matmul(A, B, out=O)


@functools.lru_cache(maxsize=None)
def gemm_provider():
    """cuBLAS through CuPy when it imports and sees a GPU, else the tiled
    kernel; NumPy's under the simulator.  NNSPEC_CUDA_GEMM=tiled|cublas
    forces one."""
    want = os.environ.get("NNSPEC_CUDA_GEMM", "").strip()
    if want == "tiled":
        return TiledGemm()
    if simulated():
        return HostGemm()
    try:
        provider = CupyGemm()
        provider.cp.cuda.runtime.getDeviceCount()
        return provider
    except Exception:              # noqa: BLE001 (no CuPy, or a CuPy without a GPU)
        if want == "cublas":
            raise
        return TiledGemm()
