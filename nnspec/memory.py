"""How much memory a network needs and how much the machine has, so that a
network too large for it is refused before anything is allocated, and running
out of memory in training says what would fit.

    check_fits(graph, "float32")          # TrainingError if the weights cannot fit at all
    out_of_memory(net, batch=512)         # the TrainingError to raise on MemoryError

    zeros(n, "float32")                   # a large array on 2 MB pages where it can be
    touch(a, b)                           # map their pages now, on every core

A network holds its parameters four times (values, gradients and two
optimizer slots: Adam's moments, or SGD's momentum and a spare) plus its
state; a step adds its work arenas, which grow with the batch
(`passes/memory.Plan.arena_size`).
"""
from __future__ import annotations

import mmap
import os
import threading

import numpy as np

from .errors import TrainingError

PARAM_COPIES = 4        # P, G, M, V in model.Network


def available_bytes() -> int | None:
    """MemAvailable plus free swap from /proc/meminfo; None where there is none."""
    try:
        with open("/proc/meminfo") as f:
            info = {k: v for k, _, v in (line.partition(":") for line in f)}
        return sum(int(info.get(k, "0 kB").split()[0]) * 1024
                   for k in ("MemAvailable", "SwapFree"))
    except (OSError, ValueError, IndexError):
        return None


def fmt_bytes(n: float) -> str:
    if n < 1000:
        return f"{n:,.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:,.1f} {unit}"
    return f"{n / 1000:,.1f} TB"


def weight_bytes(graph, dtype: str) -> int:
    item = np.dtype(dtype).itemsize
    return (PARAM_COPIES * graph.count("param") + graph.count("state")) * item


def check_fits(graph, dtype: str) -> None:
    """Refuse a network whose parameters and state, once, need more memory than
    is available: what `Network` fills at once (its gradient and optimizer
    arrays are zeros the system maps only when training writes them)."""
    need = (graph.count("param") + graph.count("state")) * np.dtype(dtype).itemsize
    have = available_bytes()
    if have is not None and need > have:
        sets = ", ".join(f"{k}={v}" for k, v in (graph.meta.get("set") or {}).items())
        raise TrainingError(
            f"the network's {graph.count('param'):,} parameters need {fmt_bytes(need)}"
            f"{f' with {sets}' if sets else ''}; this machine has {fmt_bytes(have)} available")


def step_bytes(net, batch: int) -> int | None:
    """What `net` needs to train at `batch`: its weights and the training
    step's work arenas; None before the step is built (no plan yet)."""
    step = getattr(net, "_train", None)
    plan, dtypes = getattr(step, "plan", None), getattr(step, "arena_dtypes", None)
    if plan is None or dtypes is None:
        return None
    steps = getattr(step, "_steps", 1)      # a sequence's length, as last run
    return weight_bytes(net.graph, net.dtype) + sum(
        plan.arena_size(dt, batch, steps) * np.dtype(dt).itemsize for dt in dtypes)


def out_of_memory(net, batch: int) -> TrainingError:
    """The error for a MemoryError while training `net` at `batch`: what the
    network needs at this batch and the largest batch that fits."""
    need, have = step_bytes(net, batch), available_bytes()
    if need is None or have is None:
        return TrainingError(f"out of memory training at batch {batch}; try a smaller --batch")
    msg = (f"out of memory: the network needs {fmt_bytes(need)} for batch {batch}; "
           f"this machine has {fmt_bytes(have)} available")
    per_example = step_bytes(net, 2) - step_bytes(net, 1)
    fits = (have - step_bytes(net, 0)) // per_example if per_example > 0 else 0
    fits = min(int(fits), batch - 1)
    if fits < 1:
        return TrainingError(msg + " (not enough for batch 1)")
    return TrainingError(msg + f"; try --batch {1 << (fits.bit_length() - 1)}")


HUGE_MIN = 16 << 20          # bytes from which `zeros` maps an array on huge pages
HUGE_PAGE = 2 << 20


def zeros(n: int, dtype) -> np.ndarray:
    """np.zeros(n, dtype); an array of HUGE_MIN bytes or more (a large network's
    parameters, gradients, momentum, work arenas) is a private anonymous
    mapping of its own, aligned to 2 MB and advised to use transparent huge
    pages where the kernel offers them only on request (the "madvise" mode).
    Its pages are still mapped only when first written, but 512 at a time: a
    step's first touch of 1 GB took 0.1-0.2 s this way, against 0.15-3.4 s
    through calloc (whose block does not start on a 2 MB boundary).
    NNSPEC_HUGEPAGES=0 turns this off."""
    dtype = np.dtype(dtype)
    nbytes = int(n) * dtype.itemsize
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if (nbytes < HUGE_MIN or advise is None or not hasattr(mmap, "MAP_ANONYMOUS")
            or os.environ.get("NNSPEC_HUGEPAGES", "").strip() == "0"):
        return np.zeros(n, dtype)
    try:
        m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return np.zeros(n, dtype)
    try:
        m.madvise(advise)
    except OSError:
        pass                  # no transparent huge pages here: plain pages
    start = np.frombuffer(m, np.uint8, count=1).ctypes.data
    return np.frombuffer(m, dtype, count=int(n), offset=(-start) % HUGE_PAGE)


def touch(*arrays) -> None:
    """Map every page of each large array now, the array's parts on
    different cores, leaving its values as they are (each page's first byte
    is or-ed with 0).  For arrays about to be written whole (the parameters
    before their initial values, a training step's gradients, optimizer
    slots and arenas).  A first write maps pages one fault at a time, and on
    a virtual machine whose host backs memory only when it is first touched
    a fault costs about 2 ms per 2 MB page: 1.3 s per 600 MB on one core
    here, 0.6-0.7 s on two.  Arrays under HUGE_MIN bytes, or not contiguous,
    are left alone."""
    from .backend.cores import available
    cores = max(1, available())
    parts = []
    for a in arrays:
        if a.nbytes < HUGE_MIN or not a.flags.c_contiguous:
            continue
        u = a.reshape(-1).view(np.uint8)
        step = -(-a.nbytes // cores // HUGE_PAGE) * HUGE_PAGE
        parts += [u[lo:lo + step:4096] for lo in range(0, a.nbytes, step)]
    shares = [parts[i::cores] for i in range(min(cores, len(parts)))]

    def run(share):
        for v in share:
            np.bitwise_or(v, 0, out=v)
    threads = [threading.Thread(target=run, args=(s,)) for s in shares[1:]]
    for t in threads:
        t.start()
    if shares:
        run(shares[0])
    for t in threads:
        t.join()
