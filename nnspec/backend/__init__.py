"""Backends: `numpy_ref` interprets a graph with each op's NumPy reference;
`cpu` compiles it with Numba for the CPU, `cuda` for an NVIDIA GPU
(`compile_program` below chooses).  Numba is imported only here, lazily."""

import os as _os

# Parallel kernels' OpenMP workers sleep between regions instead of spinning:
# a spinning worker takes a core from the BLAS threads and the main thread
# (a 784-512-256-10 MLP step: 16 ms spinning, 2.1 ms passive on 2 busy cores).
# Read by libgomp when Numba first loads its OpenMP pool, so set it first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The BLAS that compiled kernels call (SciPy's OpenBLAS) gets its thread count
# per step from cpu.use_threads: one thread for small steps, every core for
# large ones (a 784-512-256 MLP step: 2.0 ms on 2 threads, 2.6 ms on one),
# and one thread where the BLAS's products are a small part of the step: its
# threads spin after each call and take the cores from the parallel kernels.
# Convolutions split the batch over Numba's threads and run the BLAS on one
# thread inside (ops/conv.py, through the hooks in backend/jit.py).


def compile_program(graph, kind: str, dtype: str, playout: dict, slayout: dict,
                    optimizer: dict | None = None, *, device: str = "cpu", mirror=None,
                    **options):
    """The one place that picks the backend compiling a program: `device`
    "cpu" (backend/cpu.py; `options` are its) or "cuda" (backend/cuda/, with
    `mirror`, the network's device copies of its arenas: `mirror_for`)."""
    if device == "cuda":
        from .cuda import compile_program as cuda_program
        return cuda_program(graph, kind, dtype, playout, slayout, optimizer, mirror)
    from .cpu import compile_program as cpu_program
    return cpu_program(graph, kind, dtype, playout, slayout, optimizer, **options)


def mirror_for(device: str):
    """What keeps a network's arenas on `device` between programs (None on the
    CPU, whose programs run on the host arrays themselves)."""
    if device == "cuda":
        from .cuda.runtime import Mirror
        return Mirror()
    return None
