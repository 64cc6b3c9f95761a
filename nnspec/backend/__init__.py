"""Backends: `numpy_ref` interprets a graph with each op's NumPy reference;
`cpu` compiles it with Numba.  Numba is imported only here, lazily."""

import os as _os

# Parallel kernels' OpenMP workers sleep between regions instead of spinning:
# a spinning worker takes a core from the BLAS threads and the main thread
# (a 784-512-256-10 MLP step: 16 ms spinning, 2.1 ms passive on 2 busy cores).
# Read by libgomp when Numba first loads its OpenMP pool, so set it first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The BLAS that compiled kernels call (SciPy's OpenBLAS, loaded when Numba first
# compiles np.dot) runs single-threaded unless the user says otherwise: on 2
# shared cores its threads lose far more than they gain (a conv weight-gradient
# GEMM, 32x288 with K=32768: 0.84 s threaded, 7.5 ms on one thread; a ResNet
# step 4 s vs 0.44 s; an MLP 784-512-256 step 2.1 ms vs 2.6 ms).  Numba's own
# parallel loops (prange) use the cores instead.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
