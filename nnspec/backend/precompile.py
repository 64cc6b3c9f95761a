"""Compiling a step of calls' kernels on every core, before its first run.

A step of calls (codegen's `whole=False`) is a Python function that calls
compiled kernels one after the other: the op modules' kernels and the
shared kernels of backend/kernels.py.  Each kernel compiles when it is first
called, one after the other, and a large network's first step spends
minutes there (GoogLeNet: the convolution's forward, input-gradient and
weight-gradient kernels alone take 75 s of CPU).  The kernels are
independent, so before the first run:

1. a dry run of the step with recorders in place of its kernels lists every
   (kernel, argument types) it calls: the step does nothing else than cut
   views of its arenas, so the dry run costs milliseconds and writes nothing
   but the gradient buffer G (which every step overwrites) and a copy of
   the state S;
2. the kernels this process has not compiled yet and finds in the disk
   cache it loads there and then (a warm first step starts no worker: a
   worker would load them too, and this process again at first call); the
   others are shared out between this process and `jobs - 1` worker
   processes (`python -m nnspec.backend.precompile`, reading their share
   from stdin), longest first (kernels an op module groups in its
   COMPILE_TOGETHER to one process); each compiles its share with Numba's
   `cache=True`, so what a worker compiled this process then loads from
   the disk cache;
3. the first run finds every kernel compiled or on disk.

With the notices on (backend/notice.py) it says "compiling 23 kernels on 2
cores: 7/23".  Ctrl-C stops the workers with the step.  NNSPEC_COMPILE_JOBS
caps the processes (1: compile in this process alone, on first call, as a
whole step does); the default is the cores this process may use (its affinity
mask and cgroup quota, cores.py).
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import types

import numpy as np


def jobs() -> int:
    """How many processes compile: the cores this process may use
    (cores.py), at most NNSPEC_COMPILE_JOBS."""
    from .cores import available
    n = available()
    cap = os.environ.get("NNSPEC_COMPILE_JOBS", "").strip()
    if cap.isdigit() and int(cap) >= 1:
        n = min(n, int(cap))
    return max(n, 1)


class _Recorder:
    """Stands for a kernel in the dry run: notes the argument types."""

    def __init__(self, calls: dict, key):
        self.calls, self.key = calls, key

    def __call__(self, *args):
        if self.key is not None:
            import numba
            self.calls.setdefault(self.key, set()).add(tuple(numba.typeof(a) for a in args))
        return np.float64(0)      # a reduction's value (sumsq): finite, read as a number


class _Module:
    """An op module (or the optimizer's) in the dry run: its kernels are recorders."""

    def __init__(self, module, calls: dict):
        self._module, self._calls = module, calls

    def __getattr__(self, name):
        v = getattr(self._module, name)
        if hasattr(v, "py_func"):
            return _Recorder(self._calls, ("op", self._module.__name__, name))
        return v


def calls_of(step, args) -> dict:
    """(kind, where, name) -> set of argument-type tuples: every kernel the
    step of calls `step` (a CompiledStep) calls with `args`, by a dry run."""
    mod = step.module
    calls: dict = {}
    fake = dict(vars(mod))
    for name, v in vars(mod).items():
        if isinstance(v, types.ModuleType) and v.__name__.startswith(
                ("nnspec.ops.", "nnspec.backend.optim")):
            fake[name] = _Module(v, calls)
        elif hasattr(v, "py_func"):          # a shared kernel, or a loop of the step's own
            source = getattr(sys.modules.get(v.py_func.__module__), "SOURCE", None)
            key = ("kernel", source, name) if source is not None else None
            fake[name] = _Recorder(calls, key)
    dry = types.FunctionType(step.fn.__code__, fake, "dry_step")
    P, S, G, M, V, hp, *rest = args
    dry(P, S.copy(), G, M, V, hp, *rest)
    return calls


def _dispatcher(kind, where, name):
    if kind == "op":
        from .jit import compile_module
        module = importlib.import_module(where)
        compile_module(module)
    else:
        from . import kernels
        module = kernels.load(where)
    return getattr(module, name)


def _cost(task, shared=False) -> float:
    """A guess of a task's compile time in seconds, to hand out the longest
    first: what its op module's COMPILE_SECONDS says (measured; a
    convolution's kernels take 8-14 s, a pool's 3-5) or its
    COMPILE_SECONDS_DEFAULT, else 1 (a fused loop, a small op), per
    signature; `shared`: after another kernel of its COMPILE_TOGETHER group,
    what COMPILE_SECONDS_SHARED says where it says something.  With every
    heavy kernel counted alike, Inception-v3's three general convolution
    kernels (37 s) could go to one process and its pools and Winograd kernels
    (31 s) to the other."""
    kind, where, name, sigs = task
    per = 1
    if kind == "op":
        module = importlib.import_module(where)
        per = getattr(module, "COMPILE_SECONDS", {}).get(
            name, getattr(module, "COMPILE_SECONDS_DEFAULT", 1))
        if shared:
            per = getattr(module, "COMPILE_SECONDS_SHARED", {}).get(name, per)
    return per * len(sigs)


def _units(tasks) -> list:
    """The tasks in units that go to one process together, the longest
    first: the kernels an op module names in one of its COMPILE_TOGETHER
    groups share most of their code, and the others compile in less time
    where the first has compiled it (conv_nobias 13 s, then conv_bias 2 s
    and conv_grad_input 5).  Other tasks are units of one."""
    units, at = [], {}
    for t in tasks:
        kind, where, name, _ = t
        key = None
        if kind == "op":
            for i, group in enumerate(getattr(importlib.import_module(where),
                                              "COMPILE_TOGETHER", ())):
                if name in group:
                    key = (where, i)
        if key is None:
            units.append([t])
        elif key in at:
            at[key].append(t)
        else:
            at[key] = [t]
            units.append(at[key])
    return [sorted(u, key=_cost, reverse=True) for u in units]


def _unit_cost(unit) -> float:
    """The unit's first task alone, the others after it (`_units` orders)."""
    return sum(_cost(t, shared=i > 0) for i, t in enumerate(unit))


def on_disk(d, sig) -> bool:
    """Whether Numba's disk cache lists machine code of dispatcher `d` for
    argument types `sig` (its index, read alone: nothing is loaded)."""
    cache = getattr(d, "_cache", None)
    index = getattr(cache, "_cache_file", None)
    if index is None:                      # no cache (NullCache)
        return False
    try:
        return cache._index_key(sig, d.targetctx.codegen()) in index._load_index()
    except Exception:                      # an unreadable index: the workers compile it
        return False


def compile_tasks(tasks, done=None) -> None:
    """Compile each (kind, where, name, signatures); `done()` after each."""
    for kind, where, name, sigs in tasks:
        d = _dispatcher(kind, where, name)
        for sig in sigs:
            d.compile(sig)
        if done is not None:
            done()


def precompile(step, args, progress=None) -> int:
    """Compile, on every core, the kernels the step of calls `step` needs for
    `args` and this process has not compiled; returns how many there were.
    `progress(done, total, cores)` is told along the way."""
    n_jobs = jobs()
    if n_jobs < 2:
        return 0
    try:
        calls = calls_of(step, args)
    except Exception:           # a step the dry run cannot follow compiles as it runs
        return 0
    tasks = []
    for (kind, where, name), sigs in calls.items():
        d = _dispatcher(kind, where, name)
        new = sorted((s for s in sigs if s not in d.overloads), key=str)
        for sig in [s for s in new if on_disk(d, s)]:
            d.compile(sig)                 # loads it: no worker need start for it
            new.remove(sig)
        if new:
            tasks.append((kind, where, name, new))
    if len(tasks) < 2:
        return 0
    units = sorted(_units(tasks), key=_unit_cost, reverse=True)
    shares = [[] for _ in range(min(n_jobs, len(units)))]
    loads = [0] * len(shares)
    for u in units:                      # longest first, each to the least loaded
        j = loads.index(min(loads))
        shares[j] += u
        loads[j] += _unit_cost(u)
    total, count = len(tasks), [0]

    def done():
        count[0] += 1
        if progress is not None:
            progress(count[0], total, len(shares))

    workers = [subprocess.Popen([sys.executable, "-m", "nnspec.backend.precompile"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for _ in shares[1:]]
    try:
        for w, share in zip(workers, shares[1:]):
            w.stdin.write(pickle.dumps(share))
            w.stdin.close()
        compile_tasks(shares[0], done)
        for w in workers:
            for line in w.stdout:
                if line.strip() == b"done":
                    done()
            w.wait()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    return total


def _worker() -> None:
    """A worker process: compile the share of tasks read from stdin, saying
    "done" after each (a failed task is compiled again by the step itself)."""
    tasks = pickle.loads(sys.stdin.buffer.read())
    for task in tasks:
        try:
            compile_tasks([task])
        except Exception:
            pass
        sys.stdout.write("done\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _worker()
