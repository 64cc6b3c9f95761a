"""Backends: `numpy_ref` interprets a graph with each op's NumPy reference;
`cpu` compiles it with Numba.  Numba is imported only here, lazily."""
