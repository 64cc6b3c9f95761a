"""Backends: `numpy_ref` interprets a graph with each op's NumPy reference;
`cpu` compiles it with Numba.  Numba is imported only here, lazily."""

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
