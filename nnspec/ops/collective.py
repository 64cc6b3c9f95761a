"""Collective ops: sums over the processes of a data-parallel job.

allreduce(x, comm; weighted)
    The sum of x over the ranks of the MPI job that `comm` describes; x
    itself in a single process.  Batch norm with `sync_bn`
    (passes/sync_bn.py) sums its per-channel statistics with it.
    weighted: the backward form.  Each rank's gradients are of its own
    shard's mean loss, and the step weights them by the shard's share
    w_r = n_r / n of the batch afterwards (train/dist.py); a gradient that
    crosses ranks must be weighted the same way, and is returned in the
    rank's own scale:  out = (sum over ranks of w_r * x_r) / w_self.
    The gradient of allreduce is allreduce(weighted) of the gradient.

comm is an int64 [COMM_SIZE] input the program is fed (model.Network; every
entry 0 in a single process), filled by train/dist.py:
    [FN]      the address of MPI_Allreduce (0: a single process)
    [COMM]    the communicator's handle; [DOUBLE], [FLOAT]: the datatypes'
    [SUM]     MPI_SUM's handle
    [SHARD], [BATCH]: this rank's rows and the global batch's (w_self)
The kernel calls MPI_Allreduce through the address it reads (ops/base.py's
`mpi_allreduce`; an LLVM indirect call when compiled), so cached machine code
holds no address of the process that compiled it.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Op, fmt, kernel, mpi_allreduce, register

COMM_INPUT = "mpi.comm"      # the program input holding the handles (not a spec name)
COMM_SIZE = 8
FN, COMM, DOUBLE, FLOAT, SUM, SHARD, BATCH = range(7)


class AllReduce(Op):
    name = "allreduce"
    arity = 2

    def infer(self, attrs, shapes, dtypes):
        if tuple(shapes[1]) != (COMM_SIZE,) or dtypes[1] != "int64":
            raise ShapeError(f"allreduce: comm must be int64 [{COMM_SIZE}], got "
                             f"{dtypes[1]} {fmt(shapes[1])}")
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x, comm):
        out = np.empty_like(x)
        allreduce(np.ascontiguousarray(x), np.ascontiguousarray(comm, np.int64), out,
                  bool(attrs.get("weighted", False)))
        return out

    def grad(self, gb, node, g):
        if node.attrs.get("weighted"):
            raise NotImplementedError("allreduce: the weighted (backward) form has no gradient")
        return [gb.add("allreduce", (g, node.inputs[1]), {"weighted": True}), None]

    def kernel(self, attrs):
        return allreduce, (bool(attrs.get("weighted", False)),)


register(AllReduce())


@kernel
def allreduce(x, comm, out, weighted):
    xs = x.reshape(-1)
    o = out.reshape(-1)
    if comm[FN] == 0:                  # a single process: the sum of one
        for i in range(o.size):
            o[i] = xs[i]
        return
    T = out.dtype.type
    w = T(comm[SHARD]) / T(comm[BATCH])
    send = xs * w if weighted else xs
    dt = comm[DOUBLE] if out.itemsize == 8 else comm[FLOAT]
    rc = mpi_allreduce(comm[FN], send.ctypes.data, o.ctypes.data, o.size, dt, comm[SUM],
                       comm[COMM])
    if rc != 0:
        raise RuntimeError("MPI_Allreduce failed inside the training step")
    if weighted:
        for i in range(o.size):
            o[i] = o[i] / w
