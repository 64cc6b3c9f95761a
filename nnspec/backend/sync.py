"""Two threads stepping through a loop together: atomics for Numba code.

A recurrent loop runs T small steps one after another.  Waking a sleeping
thread pool for each step's products costs more than they take (about 150 us
on the benchmark machine against 35 us for the LSTM's recurrent product), and
OpenBLAS's own threads, split and packed afresh per call, reach about 60% of
the rate.  Instead a large loop (backend/loops.py, "paired" loops) runs
inside one parallel region of two threads: each takes half the batch rows of
the elementwise work and half the columns of each product (OpenBLAS on one
thread, its small-matrix path where it has one), and they meet at barriers,
a spin on a shared counter that backs off to yielding the core (`backoff`),
around each product.

`pair(sync, q)` is the handshake that starts it: thread 0 and thread 1 agree
to run together, or thread 0 goes on alone, never both waiting for each other
(a thread pool may run both halves of a `prange(2)` one after the other on one
thread).  A thread alone computes both threads' parts, in order, so the loop's
results do not depend on whether its partner came (backend/loops.py).  `sync`
is an int64 array of zeros, fresh for each region.
"""
from __future__ import annotations

import sys

import platform

import numpy as np

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import hooks

_H = hooks()
num_threads = _H["num_threads"]
real_threads = _H["real_threads"]
blas_get_threads = _H["blas_get_threads"]
blas_set_threads = _H["blas_set_threads"]


def _yield_symbol():
    """`nnspec_yield`: the C library's sched_yield, or a no-op where it has
    none; registered by name so cached code links to this process's."""
    import ctypes
    import ctypes.util

    import llvmlite.binding as llvm
    import numba
    addr = None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        addr = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError):
        pass
    keep = None
    if addr is None:
        keep = numba.cfunc(types.intc())(lambda: 0)
        addr = keep.address
    llvm.add_symbol("nnspec_yield", addr)
    return keep


_keep = _yield_symbol()
os_yield = types.ExternalFunction("nnspec_yield", types.intc())

_MACHINE = platform.machine().lower()


def _slot(context, builder, sig, args):
    arr = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, sig.args[0], arr, [args[1]])


@intrinsic
def load(typingctx, a, i):
    """a[i], read atomically (acquire)."""
    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig, args)
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(a, i), codegen


@intrinsic
def add(typingctx, a, i, v):
    """a[i] += v atomically; returns the old value."""
    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig, args)
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")
    return types.int64(a, i, types.int64), codegen


@intrinsic
def cas(typingctx, a, i, old, new):
    """a[i] = new if a[i] == old, atomically; returns whether it did."""
    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig, args)
        res = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)
    return types.boolean(a, i, types.int64, types.int64), codegen


@intrinsic
def pause(typingctx):
    """The CPU's spin-wait hint."""
    def codegen(context, builder, sig, args):
        if _MACHINE in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _MACHINE in ("aarch64", "arm64"):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(ir.IntType(32), 1)])      # YIELD
        return context.get_dummy_value()
    return types.none(), codegen


# handshake states in sync[0]
_OPEN, _WAITING, _PAIRED, _ALONE = 0, 1, 2, 3
# How a thread waits for the other: it spins SPIN looks at a shared counter
# (pause between looks, about 0.1 ms: a quiet machine's waits end there),
# then gives its core away between looks (sched_yield: on a busy machine the
# other thread of ours may be waiting for a core).  The handshake gives up
# after YIELDS more looks (about 1 ms on a quiet machine: longer than a
# sleeping thread takes to wake).  Sleeping between looks instead (usleep
# 50 us after 1024 yields) made the paired LSTM step slower beside a busy
# process per core, 431 against 269 ms: the sleeper sees the other thread
# arrive late, and that one then waits for it at the next barrier.
SPIN = 1 << 12
YIELDS = 1 << 10


@njit(cache=True, inline="always")
def backoff(looks):
    """Between two looks at a shared counter, the `looks`-th: pause, or yield."""
    if looks < SPIN:
        pause()
    else:
        os_yield()


@njit(cache=True)
def pair(sync, q):
    """Called by threads 0 and 1 of a two-thread region: the number of threads
    that run the loop together (2, or 1 when thread 1 did not come in time, or
    0 for a thread 1 that came too late and has nothing to do)."""
    if q == 0:
        for i in range(SPIN + YIELDS):
            if load(sync, 0) != _OPEN:
                break
            backoff(i)
        while True:
            s = load(sync, 0)
            if s == _WAITING and cas(sync, 0, _WAITING, _PAIRED):
                return 2
            if s == _OPEN and cas(sync, 0, _OPEN, _ALONE):
                return 1
            if s == _ALONE:
                return 1
    if not cas(sync, 0, _OPEN, _WAITING):
        return 0
    for i in range(SPIN + YIELDS):
        if load(sync, 0) == _PAIRED:
            return 2
        backoff(i)
    if cas(sync, 0, _WAITING, _ALONE):
        return 0
    return 2


@njit(cache=True)
def wait(sync, i, v):
    """Until sync[i] >= v: spinning, then giving the core away between looks
    (the other thread may have lost its core to another process: a busy
    machine)."""
    looks = 0
    while load(sync, i) < v:
        backoff(looks)
        looks += 1


@njit(cache=True, inline="always")
def barrier(sync, n, k):
    """The k-th barrier (k = 1, 2, ... counted by each thread) of n threads."""
    if n > 1:
        add(sync, 1, 1)
        if load(sync, 1) < k * n:
            wait(sync, 1, k * n)
    return k + 1


LINE = 64                   # bytes in a cache line


@njit(cache=True)
def empty64(shape, dtype):
    """np.empty(shape, dtype) starting on a cache line.  Numba aligns arrays
    to 32 bytes only; where two threads write neighbouring parts of one array
    (each its half of a product's columns), a line holding both halves moves
    between the cores at every write: the LSTM's recurrent product took
    twice as long, depending on where the allocator put it."""
    n = 1
    for s in shape:
        n *= s
    buf = np.empty(n + LINE, dtype)
    off = ((LINE - buf.ctypes.data % LINE) % LINE) // buf.itemsize
    return buf[off:off + n].reshape(shape)


# a loop pairs its threads from this many multiply-adds per call (its products'
# over all steps): below, waking the second thread costs more than it saves
PAIR_MIN_MACS = 1 << 25


@njit(cache=True)
def threads_for(rows, macs):
    """How many threads a loop of `rows` batch rows and `macs` multiply-adds
    runs on: 2 when the second thread is worth waking, else 1."""
    if rows >= 2 and macs >= PAIR_MIN_MACS and num_threads() >= 2:
        return 2
    return 1


@njit(cache=True)
def blas_single(nq):
    """Before a paired region: the BLAS on one thread (each of ours calls it);
    returns the count to restore, or 0."""
    if nq < 2:
        return 0
    bt = blas_get_threads()
    if bt > 1:
        blas_set_threads(1)
        return bt
    return 0


@njit(cache=True)
def blas_restore(bt):
    if bt > 1:
        blas_set_threads(bt)


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
