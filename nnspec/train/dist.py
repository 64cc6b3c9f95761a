"""Data-parallel training over MPI: one model, several processes.

    mpiexec -n 4 nnspec train SPEC            # any launch MPI supports
    nnspec train SPEC --workers 4             # mpiexec -n 4 on this machine
    fit(net, data, comm=MPI.COMM_WORLD)       # from a program of one's own

Every rank builds the same network from the same spec and loads the same
data; rank 0's weights and optimizer state are broadcast once, so the ranks
start equal.  Every rank draws the same shuffled order from the run's seed,
and each global batch is cut into one contiguous shard per rank (`shard`:
sizes differ by at most one; a rank whose shard is empty contributes zeros),
so no example moves between ranks.  A step is then:

    loss_r = forward + backward on the shard          (the compiled grad program)
    G_r   *= n_r / n                                   (the shard's share of the batch)
    G      = Allreduce(sum) of G_r                     (in buckets of BUCKET_BYTES)
    update P from G                                    (clipping on G's global norm)
    S      = rank 0's state                            (batch-norm running statistics)

The losses are means over a batch, so the weighted sum is exactly the
gradient of the global batch's mean loss: with float64, N ranks give one
process's weights up to the order of the additions.  Batch statistics are
each rank's own, as in PyTorch's DistributedDataParallel, whose buffer
broadcast the last line copies; with `sync_bn = true` in the train section
they are the whole batch's, summed over the ranks inside the step
(passes/sync_bn.py, ops/collective.py), and N ranks give one process's
weights, batch norm included.  The gradients are reduced after the whole
backward: a step is one compiled function, so there is no point at which to
overlap the reduction with it (BENCHMARKS.md has the cost).

Evaluation is sharded the same way and its sums are reduced (metrics.py).
Rank 0 alone prints, claims the run directory and writes the checkpoint,
metrics.json and curves.png; on `--resume` it reads the checkpoint and
broadcasts it, so a run can resume with any number of ranks.  A rank that
raises an error prints it and aborts the job (`abort`): the others would
otherwise wait in the next reduction forever; a rank that dies is reported
by the MPI launcher, which ends the others.

mpi4py is imported only here, and only when there is more than one process.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..errors import TrainingError

BUCKET_BYTES = 8 << 20        # a few large reductions, not one per parameter

# the job's size, as the launchers of MPI implementations set it: Open MPI's
# mpiexec, MPICH's and Intel MPI's Hydra (and srun --mpi=pmi2), MVAPICH's
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_size() -> int:
    """How many processes an MPI launcher started this one among (1 when none)."""
    for var in _SIZE_VARS:
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


def shard(rank: int, size: int, n: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of `n` rows that rank `rank` of `size` takes:
    contiguous, sizes that differ by at most one, the larger on the lower ranks."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise TrainingError(
            f"this process was started by an MPI launcher among {launched_size()}, but "
            f"mpi4py cannot be imported ({e}); install it with: pip install 'nnspec[mpi]'") \
            from None
    return MPI


class Dist:
    """The processes training one model together, over an mpi4py communicator."""

    def __init__(self, comm):
        self.MPI = _mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.reduce_seconds = 0.0       # time spent in gradient reductions

    @property
    def root(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows of `n`: `shard`."""
        return shard(self.rank, self.size, n)

    # ---- keeping the ranks equal -------------------------------------------------
    def bcast(self, obj):
        """A Python object from rank 0 (pickled by mpi4py between our own ranks)."""
        return self.comm.bcast(obj, root=0)

    def bcast_arrays(self, *arrays) -> None:
        """Rank 0's contents of each array, in place on every rank."""
        for a in arrays:
            if a.size:
                self.comm.Bcast(a, root=0)

    def bcast_network(self, net) -> None:
        """Rank 0's weights, state and optimizer slots, and its step count."""
        self.bcast_arrays(net._P, net._S, net._M, net._V)
        net._t = self.bcast(net._t)
        net._hp_key = None

    # ---- reductions --------------------------------------------------------------
    def allreduce(self, a: np.ndarray) -> None:
        """Sum `a` over the ranks, in place, in buckets of BUCKET_BYTES started
        together (the MPI library pipelines them)."""
        MPI = self.MPI
        flat = a.reshape(-1)
        step = max(1, BUCKET_BYTES // flat.itemsize)
        reqs = [self.comm.Iallreduce(MPI.IN_PLACE, flat[lo:lo + step], op=MPI.SUM)
                for lo in range(0, flat.size, step)]
        MPI.Request.Waitall(reqs)

    def sums(self, values) -> np.ndarray:
        """Float64 sums over the ranks of a few numbers."""
        a = np.asarray(values, np.float64).copy()
        if a.size:
            self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
        return a

    # ---- sync_bn: reductions inside the step -----------------------------------------
    def handles(self) -> np.ndarray:
        """The run-time array through which a compiled step calls MPI_Allreduce
        on this communicator (ops/collective.py's layout; the shard's entries
        are set per step)."""
        from ..ops import collective as c
        MPI = self.MPI
        a = np.zeros(c.COMM_SIZE, np.int64)
        a[c.FN] = _allreduce_address()
        a[c.COMM] = MPI._handleof(self.comm)
        a[c.DOUBLE], a[c.FLOAT] = MPI._handleof(MPI.DOUBLE), MPI._handleof(MPI.FLOAT)
        a[c.SUM] = MPI._handleof(MPI.SUM)
        return a

    def idle_reductions(self, net) -> None:
        """A rank whose shard is empty takes part in the reductions the others'
        step makes (sync_bn), with zeros, in the order the step makes them."""
        prog = net._program("accumulate")
        for node in prog.graph.nodes():
            if node.op == "allreduce":
                z = np.zeros(node.shape, node.dtype)
                self.comm.Allreduce(self.MPI.IN_PLACE, z, op=self.MPI.SUM)

    # ---- one step ----------------------------------------------------------------
    def train_step(self, net, xb: dict, yb: dict, lr: float, n_batch: int) -> float:
        """One step of the global batch of `n_batch` examples, of which `xb`,
        `yb` are this rank's shard: the loss of the whole batch, NaN or inf
        when it (or the gradient's norm) is not finite, and then no update,
        as `Network.train_step`."""
        G = net.grad_arena
        n = len(next(iter(yb.values()))) if yb else 0
        comm = net.collectives
        if comm is not None:            # sync_bn: the step reduces batch statistics too
            from ..ops import collective as c
            if comm[c.FN] == 0:
                comm[:] = self.handles()
            comm[c.SHARD], comm[c.BATCH] = n, n_batch
        if n:
            loss = net.accumulate_gradients(xb, yb) * (n / n_batch)
            G *= G.dtype.type(n / n_batch)
        else:
            loss = 0.0
            G[...] = 0
            if comm is not None:
                self.idle_reductions(net)
        t0 = time.perf_counter()
        self.allreduce(G)
        loss = float(self.sums([loss])[0])
        self.reduce_seconds += time.perf_counter() - t0
        if not np.isfinite(loss):
            return loss
        ok = net.apply_gradients(lr)
        if net.state:           # batch-norm running statistics: rank 0's
            self.bcast_arrays(net._S)
        return loss if ok else float("nan")

    def abort(self, code: int = 1) -> None:
        """End every rank of the job (after this one printed why)."""
        self.comm.Abort(code)


def _allreduce_address() -> int:
    """The address of MPI_Allreduce in the MPI library mpi4py loaded."""
    import ctypes

    from ..backend.jit import loaded_library
    lib = loaded_library(lambda p: os.path.basename(p).startswith("libmpi.so"),
                         "MPI_Allreduce")
    if lib is None:
        raise TrainingError("sync_bn: MPI_Allreduce was not found in the MPI library "
                            "mpi4py loaded (no libmpi.so in this process)")
    return ctypes.cast(lib.MPI_Allreduce, ctypes.c_void_p).value


def world(comm=None) -> Dist | None:
    """The data-parallel group for `comm` (an mpi4py communicator), or for the
    processes an MPI launcher started; None for a single process."""
    if comm is None:
        if launched_size() <= 1:
            return None
        comm = _mpi().COMM_WORLD
    if comm.Get_size() <= 1:
        return None
    return Dist(comm)


_current: list = []


def current() -> Dist | None:
    """The group of the command running now (set by the command line)."""
    return _current[0] if _current else None


def enter(d: Dist | None) -> None:
    _current[:] = [d] if d is not None else []
