"""The Numba CPU backend: a graph -> one compiled function per program.

    prog = compile_program(graph, "train", "float32", playout, slayout, optimizer)
    loss, ok = prog(P, S, G, M, V, hp, {"x": xb, "label": yb})

The graph goes through the pass pipeline (passes/pipeline.py), codegen.py
writes the whole step as one module in the cache dir (cache.py), and Numba
compiles it with cache=True, so a second process loads machine code from disk.
Work arenas are allocated once per batch size and reused.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..memory import touch, zeros
from ..passes.pipeline import build
from . import cache, notice
from .precompile import precompile
from .codegen import PAR_MIN_LOOP_STEP, PAR_MIN_WORK, StepWriter, work_estimate

_threads = threading.local()
_planner = [None]       # the Python thread whose program set the planned thread count last


def use_threads(n: int, blas: int | None = None) -> None:
    """Numba's and the BLAS's thread counts for this thread's next steps (0:
    all; `blas` defaults to `n`).  A small step runs on one thread: waking a
    second costs more than it saves, and far more when the machine is busy.
    (Numba's setting is per thread and cannot be changed from cached code, so
    it is set here, only when it changes.)

    Kernels plan their work (tasks, parts of a sum) for Numba's count as
    chosen here; `cores.limit` may then run them on fewer threads (a busy
    machine), with the same plan and so the same results."""
    want = (n, n if blas is None else blas)
    if getattr(_threads, "n", None) != want or _planner[0] != threading.get_ident():
        import numba
        from .jit import set_planned_threads
        if not hasattr(_threads, "default"):     # the cores this process can use
            from .cores import chosen_threads
            _threads.default = chosen_threads()
        k, b = (min(m, _threads.default) if m else _threads.default for m in want)
        cap = getattr(_threads, "cap", None) or k
        set_planned_threads(k)          # for the whole process: its last setter noted
        _planner[0] = threading.get_ident()
        numba.set_num_threads(min(k, cap))
        blas_threads(min(b, cap))
        _threads.n = want


_blas_set = []


def blas_threads(k: int) -> None:
    """Set the thread count of SciPy's OpenBLAS (the BLAS behind np.dot in
    compiled code), when it is loaded and exposes the setter; the environment
    variable NNSPEC_BLAS_THREADS caps it."""
    cap = os.environ.get("NNSPEC_BLAS_THREADS")
    if cap:
        k = min(k, max(int(cap), 1))
    if not _blas_set:
        from .jit import openblas_threads
        fns = openblas_threads()
        if fns is None:
            return                 # not loaded yet: looked up again next time
        _blas_set.append(fns[1])
    _blas_set[0](int(k))


_malloc_kept = []


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for the next step instead of returning it
    to the system.  Compiled code allocates its temporaries (a loop's stacked
    projections and gate gradients, a convolution's columns) with malloc at
    every call; above glibc's thresholds they were unmapped or trimmed when
    freed and faulted in again at the next step (an LSTM of hidden 256, batch
    32, T = 64: 4,864 page faults, 7 of its 23 ms).  Raises the mmap threshold
    to glibc's maximum (32 MB) and the trim threshold to 1 GB, once per
    process; not where the MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_
    variable sets them, and nothing where the C library is not glibc."""
    import ctypes
    if _malloc_kept:
        return
    _malloc_kept.append(True)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


class CompiledStep:
    def __init__(self, b, playout, slayout, optimizer=None, whole=True):
        self.build = b
        self.whole = whole          # one compiled function, or Python calling kernels
        self.kind = b.kind
        self.graph = b.graph
        self.plan = b.plan
        self.dtype = b.dtype
        g = b.graph
        self.inputs = [n for n in g.inputs] + [n for n in g.targets]
        keep_freed_memory()
        writer = StepWriter(b, playout, slayout, self.inputs, optimizer, whole)
        self.arena_dtypes = writer.arenas
        # named by the hash of its text (cache.py): a step's code is all in it
        self.module = cache.load(f"step_{_safe(g.name)}_{b.kind}", writer.write())
        self.path = self.module.__file__
        self.name = os.path.splitext(os.path.basename(self.path))[0]
        self.fn = self.module.step
        self._batch_arg = next((j for j, n in enumerate(self.inputs)
                                if g.shape(n) and g.shape(n)[0] == "B"), None)
        # sequences: the arena's time part is sized per (batch, T)
        self._steps_arg = next((j for j, n in enumerate(self.inputs)
                                if tuple(g.shape(n))[:2] == ("B", "T")), None)
        self._steps = 1
        self._work = work_estimate(b.graph)
        self._paired = getattr(self.module, "PAIRED_LOOPS", 0) > 0
        self._bound: dict = {}
        self._arenas: dict[int, list] = {}
        self._views: dict[tuple, np.ndarray] = {}
        self._fresh = True

    def arenas(self, batch: int, steps: int = 1) -> list:
        a = self._arenas.get((batch, steps))
        if a is None:
            a = [zeros(max(self.plan.arena_size(dt, batch, steps), 1), dt)
                 for dt in self.arena_dtypes]
            touch(*a)
            self._arenas[(batch, steps)] = a
        return a

    def value(self, nid: str, batch: int) -> np.ndarray:
        """The live array of a value left in a work arena by the last call."""
        steps = self._steps
        key = (nid, batch, steps)
        v = self._views.get(key)
        if v is None:
            s = self.plan.slots[nid]
            arena = self.arenas(batch, steps)[self.arena_dtypes.index(s.dtype)]
            shape = tuple(batch if d == "B" else steps if d == "T" else d
                          for d in self.graph.shape(nid))
            n = int(np.prod(shape, dtype=np.int64))
            off = self.plan.offset(nid, batch, steps)
            v = arena[off:off + n].reshape(shape)
            self._views[key] = v
        return v

    def threads_for(self, batch: int) -> tuple:
        """(Numba's, the BLAS's) thread counts for a step of `batch` rows, as
        use_threads takes them: 1, or 0 for all."""
        per_ex, fixed, loops, step, gemm = self._work
        work = batch * per_ex + fixed
        if batch * step >= PAR_MIN_LOOP_STEP:
            work += batch * loops
        n = 1 if work < PAR_MIN_WORK else 0
        # A threaded BLAS only where its products are most of the work: its
        # threads spin after each call and take the cores from the parallel
        # kernels (LeNet-5: 4.3 ms with a threaded BLAS, 3.2 ms without).
        blas = n if 2 * batch * gemm >= work else 1
        # Loops whose products run on two threads of ours (backend/loops.py)
        # call the BLAS on one thread; where they are most of the step, the
        # rest does too: OpenBLAS's threads spin for a while after each call,
        # and a spinning thread halves the paired loop's speed.
        if self._paired and batch >= 2 and 2 * batch * loops >= work:
            blas = 1
        return n, blas

    def __call__(self, P, S, G, M, V, hp, feeds: dict):
        xs = [feeds[n] for n in self.inputs]
        batch = xs[self._batch_arg].shape[0] if self._batch_arg is not None else 1
        key = batch
        if self._steps_arg is not None:     # sequences: arenas per (batch, T)
            key = (batch, xs[self._steps_arg].shape[1])
            self._steps = key[1]
        bound = self._bound.get(key)
        if bound is None:       # first call at this batch size: arenas and threads
            bound = self._bound[key] = (tuple(self.arenas(batch, self._steps)),
                                        self.threads_for(batch))
        arenas, n = bound
        n = getattr(_threads, "only", None) or n     # a half of a split step (split.py)
        if getattr(_threads, "n", None) != n or _planner[0] != threading.get_ident():
            use_threads(*n)
        if self._fresh:            # Numba compiles it, or loads it from the cache
            self._fresh = False
            # The lock covers compiling, not running: a step of a job over MPI
            # (sync_bn) waits inside for the other ranks, which may be waiting
            # for the lock.
            args = (P, S, G, M, V, hp, *arenas, *xs)
            with cache.compiling(self.name), notice.compiling(self.kind):
                if not self.whole:     # its kernels compiled on every core first
                    precompile(self, args, notice.kernel_progress())
                else:
                    import numba
                    self.fn.compile(tuple(numba.typeof(a) for a in args))
        out = self.fn(P, S, G, M, V, hp, *arenas, *xs)
        if not _blas_set:          # the first call loaded the BLAS: set it next time
            _threads.n = None
        return out

    @property
    def source(self) -> str:
        with open(self.path) as f:
            return f.read()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40]


# Programs of more kernel calls than this run as a Python function calling the
# compiled kernels (a step of calls) instead of one compiled function: Numba's
# time to compile a whole step grows faster than its size (ResNet-18 at 32x32,
# 61 calls: 48 s of CPU for its inference step against 5 s as calls, of which
# most is compiling kernels every later network shares), while a call from
# Python costs a few microseconds, nothing against the milliseconds of a large
# network's convolutions.  Below it (the MLPs, LeNet-5, the benchmark's small
# ResNet, the recurrent cells) the whole step wins: their steps take tens of
# microseconds to a few milliseconds, and the overhead of calls would show.
# NNSPEC_DRIVER=whole or calls overrides the choice; NNSPEC_DRIVER=reference
# runs every program with the NumPy interpreter (ReferenceStep: nothing to
# compile; the oracle other backends' tests compare with).
WHOLE_MAX_CALLS = 90


def kernel_calls(graph) -> int:
    """How many kernel calls a built program's step makes (its nodes that
    compute something)."""
    return sum(1 for n in graph.nodes()
               if n.op not in ("input", "param", "state", "const", "loop_output"))


def choose_whole(b) -> bool:
    """Whether the built program `b` runs as one compiled function."""
    import os
    forced = os.environ.get("NNSPEC_DRIVER", "").strip()
    if forced in ("whole", "calls"):
        return forced == "whole"
    return kernel_calls(b.graph) <= WHOLE_MAX_CALLS


def compile_program(graph, kind: str, dtype: str, playout: dict, slayout: dict,
                    optimizer: dict | None = None, whole: bool | None = None,
                    training: bool | None = None):
    """A CompiledStep, or a ReferenceStep (same interface, NumPy) for graphs
    the code generator does not handle yet (recurrences).  `whole`: one
    compiled function, or a Python function of calls; None chooses by size
    (choose_whole)."""
    import os
    from ..passes.pipeline import REFERENCE_PIPELINE, compilable
    reason = compilable(graph)
    if reason is None and os.environ.get("NNSPEC_DRIVER", "").strip() == "reference":
        reason = "NNSPEC_DRIVER=reference"
    if reason is not None:
        b = build(graph, kind, dtype, training, passes=REFERENCE_PIPELINE)
        return ReferenceStep(b, playout, slayout, optimizer, reason)
    b = build(graph, kind, dtype, training)
    return CompiledStep(b, playout, slayout, optimizer, choose_whole(b) if whole is None else whole)


class ReferenceStep:
    """A program run node by node by the NumPy interpreter (backend/numpy_ref),
    with the compiled optimizer update; slow, but every graph runs."""

    def __init__(self, b, playout, slayout, optimizer, reason: str):
        self.build, self.kind, self.graph, self.dtype = b, b.kind, b.graph, b.dtype
        self.playout, self.slayout = playout, slayout
        self.optimizer = dict(optimizer or {})
        self.reason = reason
        self.inputs = list(b.graph.inputs) + list(b.graph.targets)
        self._last: dict = {}

    def value(self, nid: str, batch: int):
        return self._last[nid]

    def __call__(self, P, S, G, M, V, hp, feeds: dict):
        from . import numpy_ref, optim
        vals = dict(feeds)
        for lay, arena in ((self.playout, P), (self.slayout, S)):
            for nid, (off, shape) in lay.items():
                vals[nid] = arena[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
        roots = list(dict.fromkeys(self.build.roots))
        with np.errstate(all="ignore"):
            out = numpy_ref.run(self.graph, vals, roots)
        self._last = out
        for p, gn in self.build.grads.items():
            off, shape = self.playout[p]
            G[off:off + out[gn].size] = out[gn].ravel()
        for s_, nid in self.build.updates.items():
            off, shape = self.slayout[s_]
            S[off:off + out[nid].size] = out[nid].ravel()
        loss_id = self.graph.meta.get("loss")
        T = np.dtype(self.dtype).type
        loss = T(out[loss_id]) if loss_id in out and self.kind != "infer" else T(0)
        ok = bool(np.isfinite(loss))
        if self.kind == "train" and ok:
            ok = optim.update(P, G, M, V, hp, self.optimizer)
        return loss, ok
