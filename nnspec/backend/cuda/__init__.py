"""The CUDA backend: a graph -> programs that run on an NVIDIA GPU through
Numba's CUDA target (the `numba-cuda` package; `pip install 'nnspec[cuda]'`).

    prog = compile_program(graph, "train", "float32", playout, slayout, optimizer, mirror)
    loss, ok = prog(P, S, G, M, V, hp, {"x": xb, "label": yb})   # as backend/cpu.py's

The graph goes through the same pass pipeline as the CPU's (fusion, memory
plan); `step.CudaStep` launches one kernel per node: fused elementwise
chains (`fused.py`, from each op's `Elementwise.expr`), reductions in
shared memory and the optimizer (`kernels.py`), GEMMs through `gemm.py`
(cuBLAS via CuPy, or a tiled kernel).  Parameters, gradients, optimizer
slots and work arenas stay on the device (`runtime.Mirror`).  An op without
a CUDA kernel is a DeviceError naming it: nothing falls back to the CPU.

Runs under Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set before Numba is
imported), which is how the tests check it on machines without a GPU.
"""
from __future__ import annotations


def compile_program(graph, kind: str, dtype: str, playout: dict, slayout: dict,
                    optimizer: dict | None, mirror, training: bool | None = None):
    from ...passes.pipeline import PIPELINE, build, compilable, synchronise_batchnorm
    from .step import CudaStep
    from ...errors import DeviceError
    why = compilable(graph)
    if why is not None:
        raise DeviceError(f"the CUDA backend cannot run this graph: {why}")
    # one process per GPU, and no MPI here: sync_bn's statistics are the batch's own
    b = build(graph, kind, dtype, training,
              passes=[p for p in PIPELINE if p is not synchronise_batchnorm])
    return CudaStep(b, playout, slayout, optimizer, mirror)
