"""A training step as two halves of the batch, one per core.

A network whose examples never meet inside the step (no batch statistics, no
sum over the batch but the loss's mean) trains, on a machine of two cores or
more, as two forward-backward passes over the two halves of the batch's rows,
each on one thread with a one-thread BLAS, into two gradient arenas; then

    G = (n0 / n) G0 + (n1 / n) G1,   loss = (n0 / n) loss0 + (n1 / n) loss1

and the optimizer's update (backend/optim.py `update`).  The two threads meet
once per step, where the paired loops' threads (backend/loops.py) and
OpenBLAS's meet at every product.  On a quiet machine the benchmark's LSTM
steps as fast either way (23.0 against 23.6 ms) and its 784-512-256-10 MLP
10-20% slower split (2.5 against 2.15 ms: each half's products have half the
rows); beside a busy process per core, where a thread that has lost its core
holds up the other for a whole time slice at each meeting, their busy steps
took 1.7-2.1x their quiet ones split against 2.8-3.8x whole (BENCHMARKS.md,
"A busy machine: split steps").

The halves are the same computation whichever thread runs them: the pacer
(cores.py) runs both on one thread, one after the other, when that is
faster, with the same bits.  The split is decided by the network and the
batch size alone (`why_not`, SplitStep.split), never by the load, so two
runs of one seed stay bit-identical.  NNSPEC_SPLIT=0 turns it off.
"""
from __future__ import annotations

import copy
import os
import sys
import threading

import numpy as np
from numba import njit, prange

from . import optim

# ops in which an example meets none of the others (elementwise ops come from
# ops/elementwise.py's registry); loss reductions are checked apart (`why_not`)
ROW_OPS = frozenset({
    "input", "param", "const", "linear", "matmul", "batch_matmul", "vecmat", "outer",
    "matvec", "conv", "conv_transpose", "maxpool", "avgpool", "unpool", "reshape",
    "concat", "slice", "one_hot", "positions", "embedding", "broadcast_like",
    "fill_like", "loop", "loop_output", "softmax", "log_softmax"})
LOSS_OPS = frozenset({"cross_entropy", "nll"})
# at least this many rows in each half
MIN_ROWS = 8
# only whole-step programs split (a step of calls is a large network's: its
# kernels release no GIL, and the threads' meetings are few against their time)
WHOLE_ONLY = True


def enabled() -> bool:
    return os.environ.get("NNSPEC_SPLIT", "").strip() != "0"


def takes(program) -> bool:
    """Whether a compiled "accumulate" program can run the halves: a whole
    step (or, without WHOLE_ONLY, a step of calls), not the NumPy interpreter."""
    whole = getattr(program, "whole", None)
    return whole is not None and (whole or not WHOLE_ONLY)


def _row_ops() -> frozenset:
    from ..ops.base import OPS
    own = {n for n, op in OPS.items() if type(op).__module__ == "nnspec.ops.elementwise"}
    return ROW_OPS | own


def why_not(graph) -> str | None:
    """Why a network's training step cannot run as halves of its batch
    (None: it can): an op that mixes examples, a loss that is not a mean
    over them, a state the step updates, an input without a batch axis."""
    loss = graph.meta.get("loss")
    if loss is None:
        return "no loss"
    rows = _row_ops()
    # the loss and the terms added into it: where a mean over the batch may be
    terms, todo = set(), [loss]
    while todo:
        nid = todo.pop()
        terms.add(nid)
        n = graph.node(nid)
        if n.op in ("add", "sub"):
            todo += [i for i in n.inputs if i not in terms]
        elif n.op == "mul" and any(graph.node(i).op == "const" for i in n.inputs):
            todo += [i for i in n.inputs if i not in terms and graph.node(i).op != "const"]
    for nid in list(graph.inputs) + list(graph.targets):
        s = tuple(graph.shape(nid))
        if not s or s[0] != "B":
            return f"input {nid} has no batch axis"

    def check(g, top: bool):
        for n in g.nodes():
            if n.op == "state":
                return "the step updates a state"
            if n.op in LOSS_OPS:
                a = n.attrs
                if not top or n.id not in terms or a.get("reduction", "mean") != "mean" \
                        or a.get("weight") is not None or a.get("ignore_index") is not None:
                    return f"{n.op} is not a plain mean over the batch"
                continue
            if n.op == "mean" and top and n.id in terms:
                continue
            if n.op in ("sum", "mean", "max"):
                from ..ops.reduce import norm_axes
                axes = norm_axes(n.op, n.attrs.get("axes"), len(g.shape(n.inputs[0])))
                if 0 in axes:
                    return f"{n.op} over the batch"
                continue
            if n.op == "transpose" and list(n.attrs["perm"])[:1] == [0]:
                continue            # the batch axis stays first
            if n.op not in rows:
                return f"{n.op} is not known to keep examples apart"
            body = n.attrs.get("body")
            if body is not None and hasattr(body, "nodes"):
                why = check(body, False)
                if why:
                    return why
        return None

    return check(graph, True)


@njit(cache=True, parallel=True, error_model="numpy")
def _combine(g0, g1, a0, a1):
    """g0 = a0 g0 + a1 g1, elementwise (the same bits on any thread count)."""
    for i in prange(g0.size):
        g0[i] = a0 * g0[i] + a1 * g1[i]


class SplitStep:
    """A training program's interface (`step(P, S, G, M, V, hp, feeds)` ->
    (loss, ok)) over an "accumulate" program run on halves of the batch."""

    splits = True           # the pacer times it, whatever threads its halves use

    def __init__(self, program, G, optimizer: dict):
        from ..memory import touch
        self.programs = [program, _twin(program)]
        self.G1 = np.zeros_like(G)
        touch(self.G1)
        self.optimizer = dict(optimizer)
        self.worker = None
        self._splits: dict = {}          # batch -> whether it splits

    # what memory.step_bytes reads: the halves' arenas are about the whole
    # batch's (two halves of n/2 rows)
    @property
    def plan(self):
        return self.programs[0].plan

    @property
    def arena_dtypes(self):
        return self.programs[0].arena_dtypes

    @property
    def _steps(self):
        return self.programs[0]._steps

    def split(self, batch: int) -> bool:
        """Whether a batch of this size runs as halves: each at least MIN_ROWS
        rows, and a step that would not run on one thread by itself."""
        s = self._splits.get(batch)
        if s is None:
            s = self._splits[batch] = (batch >= 2 * MIN_ROWS
                                       and self.programs[0].threads_for(batch)[0] != 1)
        return s

    def __call__(self, P, S, G, M, V, hp, feeds: dict):
        from .cpu import _threads
        n = next(iter(feeds.values())).shape[0]
        if not self.split(n):
            loss, _ = self.programs[0](P, S, G, M, V, hp, feeds)
            return self._update(float(loss), P, G, M, V, hp)
        h = (n + 1) // 2
        halves = [{k: v[:h] for k, v in feeds.items()}, {k: v[h:] for k, v in feeds.items()}]
        args = [(P, S, G, M, V, hp, halves[0]), (P, S, self.G1, M, V, hp, halves[1])]
        # on two threads, but not for the pacer's one-thread step, a first call
        # (its compiling: the second half's program shares the compiled code),
        # or a thread pool that two threads may not enter at once
        two = getattr(_threads, "cap", None) != 1 and not self.programs[0]._fresh \
            and _concurrent()
        if two:
            w = self._worker()
            w.start(_half, self.programs[1], args[1])
            try:
                loss0 = _half(self.programs[0], args[0])
            finally:
                loss1 = w.join()
        else:
            loss0, loss1 = (_half(p, a) for p, a in zip(self.programs, args))
        T = G.dtype.type
        a0, a1 = T(h / n), T((n - h) / n)
        loss = float(a0) * loss0 + float(a1) * loss1
        if not two or hp[optim.CLIP] > 0 or not np.isfinite(loss):
            _combine(G, self.G1, a0, a1)       # (clipping: the norm of the whole sum first)
            return self._update(loss, P, G, M, V, hp)
        # the sum and the update are memory-bound: each thread takes half the
        # parameters (elementwise: the same bits as in one piece)
        mid = (G.size // 2) // 64 * 64
        self.worker.start(self._finish, mid, G.size, a0, a1, P, G, M, V, hp)
        try:
            self._finish(0, mid, a0, a1, P, G, M, V, hp)
        finally:
            self.worker.join()
        return loss, True

    def _finish(self, lo, hi, a0, a1, P, G, M, V, hp):
        """The weighted sum and the update (no clipping) of parameters lo:hi."""
        _combine(G[lo:hi], self.G1[lo:hi], a0, a1)
        optim.update(P[lo:hi], G[lo:hi], M[lo:hi], V[lo:hi] if V.size == P.size else V, hp,
                     self.optimizer)

    def _update(self, loss, P, G, M, V, hp):
        """The update from G, or none for a non-finite loss."""
        if not np.isfinite(loss):
            return loss, False
        return loss, optim.update(P, G, M, V, hp, self.optimizer)

    def _worker(self):
        if self.worker is None:
            self.worker = _Worker()
        return self.worker


_layer: list = []


def _concurrent() -> bool:
    """Whether two threads may run parallel kernels at once: Numba's OpenMP
    and TBB thread pools allow it, its own "workqueue" ends the process (known
    once a parallel kernel has run: until then, no)."""
    if not _layer:
        import numba
        try:
            _layer.append(numba.threading_layer() in ("omp", "tbb"))
        except ValueError:          # not chosen yet
            return False
    return _layer[0]


def _half(program, args) -> float:
    """One half on this thread, its kernels on one thread (cpu.py `only`)."""
    from .cpu import _threads
    _threads.only = (1, 1)
    try:
        loss, _ = program(*args)
    finally:
        _threads.only = None
    return float(loss)


def _twin(program):
    """A second instance of a compiled program: the same compiled function,
    its own work arenas."""
    t = copy.copy(program)
    t._bound, t._arenas, t._views = {}, {}, {}
    t._fresh = False        # compiled (or loaded) by the first half's first call
    return t


class _Worker:
    """The thread that runs the second half and the update of the second
    half of the parameters (a daemon: it holds nothing that needs an orderly
    end)."""

    def __init__(self):
        self.go, self.done = threading.Event(), threading.Event()
        self.job = self.out = self.error = None
        threading.Thread(target=self._loop, daemon=True, name="nnspec-half").start()

    def start(self, fn, *args):
        """Run fn(*args) on the worker thread."""
        self.job, self.out, self.error = (fn, args), None, None
        self.done.clear()
        self.go.set()

    def join(self):
        """fn's result, or its exception raised here."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.out

    def _loop(self):
        while True:
            self.go.wait()
            self.go.clear()
            fn, args = self.job
            try:
                self.out = fn(*args)
            except BaseException as e:      # noqa: BLE001 -- handed to the caller
                self.error = e
            self.job = None
            self.done.set()


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
