"""What every CUDA program shares: Numba's CUDA target, the device's name in
cache keys, launch sizes, and `Mirror`, the device copies of a network's
arenas.

A network's parameters (P), state (S), gradients (G) and optimizer slots (M,
V) live on the device between steps.  The host arrays (`net.params`, ...)
are brought up to date by `Mirror.pull` (`Network.sync`, which reading
`net.params` or `net.state` calls), and pushed again before the next
program runs: whichever side was written last holds the values.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import types

import numpy as np

# numba-cuda 0.30 registers an implementation of np.row_stack when its target
# first compiles; NumPy 2.5 removed that alias of np.vstack (an AttributeError
# then stops every kernel's compile).  Restored here, before that happens.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import config as _numba_config, cuda  # noqa: E402

from ..device import simulated  # noqa: E402

# small launches (a bias of 64 values, a loss) are by design, not a fault to warn of
_numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


def _shared_arrays_per_block() -> None:
    """Under the simulator, one shared array per call site and block, whichever
    thread asks first.  The simulator's own `cuda.shared.array` looks the
    array up and stores a new one without a lock: two threads of a block
    starting together could each get an array of their own, and a block
    reduction then summed part of its values (an intermittent miss, more
    likely on a loaded machine, where Python switches threads at any point)."""
    from numba.core.types import Type
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    if getattr(shared, "_nnspec_locked", False):
        return
    unlocked = shared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:                  # dynamic shared memory: one buffer already
            return unlocked(self, shape, dtype)
        if isinstance(dtype, Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(site)
            if res is None:
                res = self._allocations[site] = np.empty(shape, dtype)
        return res

    shared.array = array
    shared._nnspec_locked = True


class _Gate:
    """A simulated block's barrier: its threads wait on a condition until all
    of those still running have arrived; a thread that has finished counts
    no more (as the simulator's own polling has it)."""

    def __init__(self, n: int):
        self.cond = threading.Condition()
        self.alive, self.waiting, self.generation = n, 0, 0
        self.abort = False
        self.first = None           # the first thread's exception

    def wait(self):
        with self.cond:
            if self.abort:
                raise RuntimeError("abort flag set on syncthreads call")
            gen = self.generation
            self.waiting += 1
            if self.waiting == self.alive:
                self._open()
            while gen == self.generation and not self.abort:
                self.cond.wait()
            if self.abort:
                raise RuntimeError("abort flag set on syncthreads clear")

    def _open(self):
        self.waiting, self.generation = 0, self.generation + 1
        self.cond.notify_all()

    def leave(self, exception):
        with self.cond:
            self.alive -= 1
            if exception is not None and self.first is None:
                self.first, self.abort = exception, True
            if self.alive and self.waiting == self.alive:
                self._open()
            self.cond.notify_all()


def _blocks_without_polling() -> None:
    """Under the simulator, a block's threads meet at a `_Gate`.  The
    simulator's own block manager finds out that every thread waits at a
    barrier by polling them in a loop, which holds the interpreter lock the
    threads need: most of a simulated training step's time went there."""
    from numba.cuda.simulator import kernel

    block, thread = kernel.BlockManager, kernel.BlockThread
    if getattr(block, "_nnspec_gated", False):
        return
    thread_run = thread.run

    def run_thread(self):
        try:
            thread_run(self)
        finally:
            self._manager.gate.leave(self.exception)

    def syncthreads(self):
        self._manager.gate.wait()

    def run_block(self, grid_point, *args):
        def target():
            self._f(*args)
        points = list(np.ndindex(*self._block_dim))
        gate = self.gate = _Gate(len(points))
        threads = [thread(target, self, grid_point, p, self._debug) for p in points]
        for t in threads:
            t.start()
        with gate.cond:
            while gate.alive:
                gate.cond.wait()
        for t in threads:
            t.join()
        if gate.first is not None:
            raise gate.first[0].with_traceback(gate.first[1])

    thread.run, thread.syncthreads = run_thread, syncthreads
    block.run = run_block
    block._nnspec_gated = True


if simulated():
    _shared_arrays_per_block()
    _blocks_without_polling()


# Threads per block.  The simulator runs each thread as a Python thread, so
# it gets small blocks; a reduction's block size is its shared array's length.
THREADS = 8 if simulated() else 256
MAX_BLOCKS = 2 if simulated() else 4096


# ---- the stream every launch goes on ------------------------------------------------
# One blocking stream per process (not the legacy default stream, which no
# CUDA graph can capture; blocking, so the default stream's copies -- the
# batch in, the loss and `Mirror`'s arenas back -- stay ordered with it).
# With CuPy it is CuPy's stream (CuPy captures CUDA graphs on it: step.py),
# Numba's kernels launch on it through `cuda.external_stream`, and cuBLAS's
# handle (gemm.py) is bound to it.


@functools.lru_cache(maxsize=None)
def _streams() -> tuple:
    """(Numba's handle of the stream, CuPy's or None)."""
    if not simulated():
        try:
            import cupy
            cs = cupy.cuda.Stream(non_blocking=False)
            return cuda.external_stream(cs.ptr), cs
        except Exception:          # noqa: BLE001 (no CuPy, or a CuPy without this GPU)
            pass
    return cuda.stream(), None


def stream():
    """The stream nnspec's kernels launch on (`kernel[grid, block, stream()]`)."""
    return _streams()[0]


def stream_ptr() -> int:
    """The stream's CUstream, as an integer."""
    cs = _streams()[1]
    if cs is not None:
        return int(cs.ptr)
    h = stream().handle
    return int(getattr(h, "value", None) or int(h))


def cupy_stream():
    """CuPy's handle of that stream, or None without CuPy (or under the simulator)."""
    return _streams()[1]


@functools.lru_cache(maxsize=None)
def arch() -> str:
    """The device architecture, part of every generated kernel's cache key
    ("sm_90"; "sim" under the simulator)."""
    if simulated():
        return "sim"
    cc = cuda.get_current_device().compute_capability
    return f"sm_{cc[0]}{cc[1]}"


# NNSPEC_CUDA_RECORD=<file>: every kernel launched appends its module's file,
# its name and its arguments' types (one JSON line each, once per process);
# `python -m nnspec.backend.cuda.ptx <file>` then compiles each of them for
# a real GPU's architecture, which the simulator never does.
RECORD = os.environ.get("NNSPEC_CUDA_RECORD")
_recorded: set = set()


def arg_type(a) -> list:
    """A launch argument's type, as ptx.py rebuilds it."""
    if isinstance(a, (bool, np.bool_)):
        return ["bool"]
    if isinstance(a, (int, np.integer)):
        return ["int64"] if isinstance(a, int) else [np.dtype(type(a)).name]
    if isinstance(a, (float, np.floating)):
        return ["float64"] if isinstance(a, float) else [np.dtype(type(a)).name]
    if isinstance(a, tuple):
        return ["tuple", [arg_type(x) for x in a]]
    if hasattr(a, "dtype") and hasattr(a, "shape"):
        return ["array", np.dtype(a.dtype).name, len(a.shape)]
    raise TypeError(f"a CUDA launch argument of type {type(a).__name__}")


class _Recorder:
    def __init__(self, fn, path: str, name: str):
        self.fn, self.path, self.name = fn, path, name

    def __getitem__(self, grid):
        launch = self.fn[grid]

        def call(*args):
            rec = json.dumps([self.path, self.name, [arg_type(a) for a in args]])
            if rec not in _recorded:
                _recorded.add(rec)
                with open(RECORD, "a") as f:
                    f.write(rec + "\n")
            return launch(*args)
        return call


def watched(module):
    """`module`'s kernels, each recording its launches' types when
    NNSPEC_CUDA_RECORD names a file; the module itself otherwise."""
    if not RECORD:
        return module
    ns = dict(vars(module))
    for k, v in vars(module).items():
        if type(v).__name__ in ("FakeCUDAKernel", "CUDADispatcher") and \
                not getattr(v, "_device", False) and not k.startswith("_"):
            ns[k] = _Recorder(v, module.__file__, k)
    return types.SimpleNamespace(**ns)


def blocks(n: int) -> int:
    """Blocks for a grid-stride loop over n elements."""
    return max(1, min(-(-int(n) // THREADS), MAX_BLOCKS))


def empty(n: int, dtype) -> "cuda.devicearray.DeviceNDArray":
    """Device memory of n elements, uninitialised; under the simulator filled
    with NaN (ints: a large negative number), so a kernel that reads memory
    it never wrote shows it in the tests."""
    dt = np.dtype(dtype)
    if simulated():
        fill = np.nan if dt.kind == "f" else np.iinfo(dt).min // 2 if dt.kind in "iu" else 0
        return cuda.to_device(np.full(max(int(n), 1), fill, dt))
    return cuda.device_array(max(int(n), 1), dtype=dt)


class Mirror:
    """The device copies of one network's P, S, G, M and V.  `take` returns
    them, copying the host's in first where the host was written last (or
    is a new array: a new optimizer's slots); `ran(written)` records what a
    program changed there; `pull` copies that back to the host."""

    NAMES = ("P", "S", "G", "M", "V")

    def __init__(self):
        self.host: tuple = ()
        self.dev: dict = {}
        self.gen = 0                 # bumped when the device arrays are new ones
        self.on_device = False       # the device holds the newest values
        self.dirty: set = set()      # arenas a program wrote since the last pull

    def take(self, *host) -> dict:
        if self.on_device and all(a is b for a, b in zip(host, self.host)):
            return self.dev
        if self.dev and all(self.dev[k].shape == a.shape and self.dev[k].dtype == a.dtype
                            for k, a in zip(self.NAMES, host)):
            for k, a in zip(self.NAMES, host):
                self.dev[k].copy_to_device(a)
        else:
            self.dev = {k: cuda.to_device(a) for k, a in zip(self.NAMES, host)}
            self.gen += 1
        self.host, self.on_device, self.dirty = host, True, set()
        return self.dev

    def ran(self, written) -> None:
        self.dirty |= set(written)

    def pull(self) -> None:
        if not self.on_device:
            return
        for k, a in zip(self.NAMES, self.host):
            if k in self.dirty:
                self.dev[k].copy_to_host(a)
        # the host may be written next: the next program copies it in again
        self.on_device, self.dirty = False, set()
