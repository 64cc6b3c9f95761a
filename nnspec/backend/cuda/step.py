"""A built program (passes/pipeline.py, the same passes and memory plan as
the CPU's) run on the device as a list of kernel launches.

Every value lives where the plan puts it: in a device arena per dtype
(`Plan.offset`, the CPU's layout), in the parameters (P), state (S) or, for
a gradient the plan pins there, in the gradients (G), all of them the
network's `Mirror`.  A call copies the batch in, launches each node's kernel
in order on `runtime.stream()`, copies gradients and state into place, then
runs the tail (the status kernel, the optimizer: what reads the step's
hyperparameters), and copies back only [loss, ok, clip scale].

Launchers are bound once per (batch size, arenas): every argument, device
pointer and grid is fixed then.  So from the second call on, the launches up
to the tail are captured once into a CUDA graph (with CuPy) and each later
call replays it: one launch instead of hundreds, which is what limits small
networks and recurrent loops on a GPU.  NNSPEC_CUDA_GRAPHS=0 launches one by
one; a capture that fails (an op that synchronises, say) does too, and
`CudaStep.no_graph` says why.
"""
from __future__ import annotations

import atexit
import functools
import os
import time

import numpy as np
from numba import cuda

from ...errors import DeviceError
from ...passes.memory import Plan
from ...ops import get_op
from ...ops.base import Op
from . import fused, ops
from .gemm import gemm_provider
from .kernels import kernels
from .runtime import MAX_BLOCKS, THREADS, blocks, cupy_stream, empty, stream

LEAVES = ("input", "param", "state")
WRITES = {"train": ("P", "S", "G", "M", "V"), "grad": ("G",), "accumulate": ("G", "S")}

GRAPHS = os.environ.get("NNSPEC_CUDA_GRAPHS", "1") != "0"

# NNSPEC_CUDA_PROFILE=1: every launch is followed by a synchronisation and
# timed; the seconds per op (and shape) are printed when the process ends
PROFILE: dict | None = {} if os.environ.get("NNSPEC_CUDA_PROFILE") == "1" else None


@atexit.register
def _print_profile():
    if not PROFILE:
        return
    total = sum(t for t, _ in PROFILE.values())
    print(f"\nCUDA step profile: {total * 1e3:.1f} ms over every timed call")
    for key, (t, c) in sorted(PROFILE.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {t * 1e3:9.2f} ms {c:6d} calls {100 * t / total:5.1f}%  {key}")


def _defines_cuda(op: str) -> bool:
    """The op module defines the op's CUDA kernel (`Op.cuda`), or the op is
    elementwise with a scalar expression (a fused kernel of its own)."""
    o = get_op(op)
    return type(o).cuda is not Op.cuda or _elementwise(op)


def _elementwise(op: str) -> bool:
    o = get_op(op)
    return op != "fused" and o.elementwise and isinstance(getattr(o, "expr", None), str)


def _concrete(shape, batch: int) -> tuple:
    return tuple(batch if d == "B" else d for d in shape)


class _Bound:
    """A step bound to one batch size and the mirror's arrays: the values'
    views, the node calls, the copies into G and S, the tail's scratch, and
    the CUDA graph of calls + copies once captured."""

    def __init__(self, v: dict, calls: list, copies: list, scratch: dict):
        self.v, self.calls, self.copies, self.scratch = v, calls, copies, scratch
        self.graph = None
        self.runs = 0


class CudaStep:
    def __init__(self, b, playout: dict, slayout: dict, optimizer: dict | None, mirror):
        self.build, self.kind, self.graph, self.dtype = b, b.kind, b.graph, b.dtype
        self.plan: Plan = b.plan
        self.playout, self.slayout = playout, slayout
        self.optimizer = dict(optimizer or {})
        self.mirror = mirror
        g = b.graph
        self.inputs = list(g.inputs) + list(g.targets)
        self.k = kernels(self.dtype)
        self.gemm = gemm_provider()
        self.nodes = [n for n in g.nodes() if n.op not in LEAVES]
        for n in self.nodes:          # every op must have a kernel: no silent fallback
            if not hasattr(self, f"_op_{n.op}") and not _defines_cuda(n.op):
                raise DeviceError(f"op '{n.op}' has no CUDA kernel yet (node '{n.id}'"
                                  + (f", layer '{n.layer}'" if n.layer else "")
                                  + "); run it with device cpu")
            if any(not isinstance(d, int) and d != "B" for d in n.shape):
                raise DeviceError(f"op '{n.op}' (node '{n.id}'): the CUDA backend runs "
                                  f"shapes of fixed sizes and a batch axis, not {list(n.shape)}")
        self.fused = {n.id: fused.kernel(n.attrs["body"], [g.shape(i) for i in n.inputs],
                                         n.shape, self.dtype)
                      for n in self.nodes if n.op == "fused"}
        for n in self.nodes:    # an elementwise op the fusion pass left alone (its broadcast)
            if _elementwise(n.op):
                body = [{"id": n.id, "op": n.op, "attrs": n.attrs,
                         "args": [f"in{j}" for j in range(len(n.inputs))]}]
                shapes = [g.shape(i) if fused.block_pattern(g.shape(i), n.shape) is not None
                          else n.shape for i in n.inputs]
                self.fused[n.id] = fused.kernel(body, shapes, n.shape, self.dtype)
        self.pinned = getattr(self.plan, "pinned_grads", set())
        self._bound: dict = {}
        self._last = None
        self._pool: dict | None = None    # scratch shared by the nodes of a binding
        self._specs: dict = {}            # (node, batch) -> its op's `Cuda` stages
        self.no_graph: str | None = None  # why the step runs without a CUDA graph

    # ---- where values live -------------------------------------------------------
    def _views(self, dev: dict, batch: int) -> dict:
        g, plan = self.graph, self.plan
        arenas = {dt: empty(plan.arena_size(dt, batch), dt)
                  for dt in set(plan.fixed) | set(plan.per_example)}
        owner = {gn: p for p, gn in self.build.grads.items()}
        v = {}
        for n in g.nodes():
            shape = _concrete(n.shape, batch)
            size = int(np.prod(shape, dtype=np.int64))
            if n.op == "input":
                v[n.id] = cuda.device_array(shape, np.dtype(n.dtype))
                continue
            if n.dtype == "loop":     # a loop's results live in its loop_output readers
                continue
            if n.op in ("param", "state"):
                arena, (off, _) = (dev["P"], self.playout[n.id]) if n.op == "param" \
                    else (dev["S"], self.slayout[n.id])
            elif n.id in self.pinned:
                arena, (off, _) = dev["G"], self.playout[owner[n.id]]
            else:
                arena, off = arenas[n.dtype], plan.offset(n.id, batch)
            v[n.id] = arena[off:off + size].reshape(shape) if shape else arena[off:off + 1]
        return v

    def _launcher(self, n):
        return getattr(self, f"_op_{n.op}", self._op_elementwise if _elementwise(n.op)
                       else self._op_defined)

    def _bind(self, dev: dict, batch: int) -> "_Bound":
        v = self._views(dev, batch)
        self._pool = self._scratch(batch)
        try:
            calls = [self._launcher(n)(n, v, batch) for n in self.nodes]
        finally:
            self._pool = None
        dt = np.dtype(self.dtype)
        scratch = {"part": empty(MAX_BLOCKS, dt), "sq": empty(1, dt), "st": empty(3, dt)}
        return _Bound(v, calls, self._copies(dev, v), scratch)

    def _cuda_spec(self, n, batch: int):
        """The op's `Cuda` stages at this batch size (asked once: the scratch
        pool and the launcher both read them)."""
        key = (n.id, batch)
        if key not in self._specs:
            g = self.graph
            self._specs[key] = get_op(n.op).cuda(
                n.attrs, [_concrete(g.shape(i), batch) for i in n.inputs],
                _concrete(n.shape, batch))
        return self._specs[key]

    def _scratch(self, batch: int) -> dict:
        """One scratch buffer per (temp index, dtype), the largest any node asks
        for: the nodes run one after another on one stream, so they share."""
        sizes: dict = {}
        for n in self.nodes:
            if self._launcher(n) != self._op_defined:
                continue
            for i, (size, dt) in enumerate(self._cuda_spec(n, batch).temps):
                key = (i, str(np.dtype(dt or self.dtype)))
                sizes[key] = max(sizes.get(key, 0), int(size))
        return {k: empty(size, k[1]) for k, size in sizes.items()}

    def _copies(self, dev, v) -> list:
        """The gradients and new state into G and S (device to device)."""
        b, out = self.build, []
        for p, gn in b.grads.items():
            if gn not in self.pinned:
                off, _ = self.playout[p]
                out.append((dev["G"][off:off + v[gn].size], v[gn].reshape(-1)))
        for s, nid in b.updates.items():
            off, _ = self.slayout[s]
            out.append((dev["S"][off:off + v[nid].size], v[nid].reshape(-1)))
        return [functools.partial(dst.copy_to_device, src, stream=stream()) for dst, src in out]

    # ---- a call ------------------------------------------------------------------
    def __call__(self, P, S, G, M, V, hp, feeds: dict):
        dev = self.mirror.take(P, S, G, M, V)
        xs = [feeds[n] for n in self.inputs]
        batch = next((x.shape[0] for n, x in zip(self.inputs, xs)
                      if self.graph.shape(n) and self.graph.shape(n)[0] == "B"), 1)
        key = (batch, self.mirror.gen)
        bound = self._bound.get(key)
        if bound is None:       # views of arrays the mirror replaced are let go
            self._bound = {k: b for k, b in self._bound.items() if k[1] == key[1]}
            bound = self._bound[key] = self._bind(dev, batch)
        v = bound.v
        for n, x in zip(self.inputs, xs):      # on the default stream, before the step's
            v[n].copy_to_device(np.ascontiguousarray(x))
        if PROFILE is not None:
            self._profiled(bound.calls, batch)
            for c in bound.copies:
                c()
        else:
            self._run(bound)
        self._last = (v, batch)
        loss, ok = self._tail(dev, v, bound.scratch, hp)
        self.mirror.ran(WRITES.get(self.kind, ()))
        return loss, ok

    def _run(self, bound: "_Bound") -> None:
        """The step up to its tail: the graph's replay, or its launches one by
        one (the first call, which compiles and loads every kernel, always)."""
        bound.runs += 1
        if bound.graph is None and bound.runs == 2 and GRAPHS and cupy_stream() is not None:
            bound.graph = self._capture(bound.calls + bound.copies)
        if bound.graph is not None:
            bound.graph.launch(stream=cupy_stream())
            return
        for call in bound.calls:
            call()
        for c in bound.copies:
            c()

    def _capture(self, calls: list):
        """`calls` captured into a CUDA graph (not run), or None where the
        capture failed (`no_graph` says why; the calls then run one by one)."""
        cs = cupy_stream()
        try:
            cs.begin_capture()
        except Exception as e:        # noqa: BLE001 (no graphs here: launch one by one)
            self.no_graph = f"capture did not begin ({type(e).__name__}: {e})"
            return None
        graph, why = None, None
        try:
            for c in calls:
                c()
        except Exception as e:        # noqa: BLE001
            why = f"{type(e).__name__}: {e}"
        try:
            graph = cs.end_capture()
        except Exception as e:        # noqa: BLE001
            why = why or f"{type(e).__name__}: {e}"
            graph = None
        if why is not None:
            self.no_graph, graph = f"capture failed ({why.splitlines()[0][:200]})", None
        return graph

    def _profiled(self, calls, batch):
        cuda.synchronize()
        for n, call in zip(self.nodes, calls):
            t = time.perf_counter()
            call()
            cuda.synchronize()
            key = f"{n.op} {list(_concrete(n.shape, batch))}"
            t0, c = PROFILE.get(key, (0.0, 0))
            PROFILE[key] = (t0 + time.perf_counter() - t, c + 1)

    def _tail(self, dev, v, scratch, hp):
        k, T = self.k, np.dtype(self.dtype).type
        loss_id = self.graph.meta.get("loss")
        if self.kind == "infer" or loss_id not in v:
            return T(0), True
        from .. import optim
        clip = T(hp[optim.CLIP]) if self.kind == "train" else T(0)
        if clip > 0:
            self._sum(dev["G"], scratch["sq"], scratch["part"], True, 1.0)
        st = scratch["st"]
        k.status[1, 1, stream()](v[loss_id].reshape(-1), scratch["sq"], clip, st)
        if self.kind == "train":
            self._update(dev, st, hp)
        host = st.copy_to_host()          # the one value back per step
        return T(host[0]), bool(host[1])

    def _update(self, dev, st, hp):
        from .. import optim
        h = {name: np.dtype(self.dtype).type(hp[getattr(optim, name)])
             for name in ("LR", "MOMENTUM", "BETA2", "EPS", "WEIGHT_DECAY", "STEP_SIZE",
                          "BC2_RSQRT")}
        P, G, M, V = dev["P"], dev["G"], dev["M"], dev["V"]
        grid = (blocks(P.size), THREADS, stream())
        name = self.optimizer.get("name", "sgd")
        if name == "sgd":
            self.k.sgd[grid](P, G, M, st, h["LR"], h["MOMENTUM"], h["WEIGHT_DECAY"],
                             bool(self.optimizer.get("nesterov", False)))
        elif name in ("adam", "adamw"):
            self.k.adam[grid](P, G, M, V, st, h["MOMENTUM"], h["BETA2"], h["EPS"],
                              h["WEIGHT_DECAY"], h["LR"], h["STEP_SIZE"], h["BC2_RSQRT"],
                              name == "adamw")
        else:
            raise DeviceError(f"optimizer '{name}' has no CUDA kernel yet")

    def value(self, nid: str, batch: int) -> np.ndarray:
        """The value of `nid` the last call left on the device, copied to the host."""
        v, _ = self._last
        return v[nid].copy_to_host()

    # ---- reductions ----------------------------------------------------------------
    def _sum(self, x, out, part, square: bool, scale: float):
        """out[0] = scale * sum(x (squared)): a sum per block, then one block."""
        n = x.size
        nb = blocks(n)
        T = np.dtype(self.dtype).type
        self.k.sum_part[nb, THREADS, stream()](x.reshape(-1), n, part, square)
        self.k.sum_final[1, THREADS, stream()](part, nb, out.reshape(-1), T(scale))

    # ---- one launcher per op: op_<name>(node, views, batch) -> call() ------------------
    def _op_elementwise(self, n, v, batch):
        """An elementwise op alone: each input fused.py cannot read in place (a
        broadcast that is not one block of the output's axes) is broadcast
        into a buffer of the output's shape first."""
        fn, extra = self.fused[n.id]
        shape = _concrete(n.shape, batch)
        o = v[n.id].reshape(-1)
        pre, ins = [], []
        for i in n.inputs:
            x = v[i]
            if fused.block_pattern(self.graph.shape(i), n.shape) is None:
                t = empty(o.size, x.dtype)
                pre.append(self._broadcast_call(x, t, _concrete(self.graph.shape(i), batch),
                                                shape, 1.0))
                x = t
            ins.append(x.reshape(-1))
        launch = functools.partial(fn[blocks(o.size), THREADS, stream()], o, o.size, *ins,
                                   *extra(shape))
        if not pre:
            return launch

        def call():
            for c in pre:
                c()
            launch()
        return call

    def _broadcast_call(self, g, o, gshape, shape, scale):
        """o [shape] = g [gshape] broadcast (NumPy's rules), times scale."""
        pad = (1,) * (len(shape) - len(gshape)) + tuple(gshape)
        strides, s = [0] * len(shape), 1
        for i in range(len(shape) - 1, -1, -1):
            strides[i] = s if pad[i] != 1 else 0
            s *= pad[i]
        gf, of = g.reshape(-1), o.reshape(-1)
        T = np.dtype(self.dtype).type
        shape_t, strides_t = tuple(int(d) for d in shape), tuple(strides)
        return functools.partial(self.k.broadcast[blocks(of.size), THREADS, stream()],
                                 gf, of, of.size, shape_t, strides_t, T(scale))

    def _op_defined(self, n, v, batch):
        """An op whose module defines its CUDA kernel (`Op.cuda`: stages)."""
        spec = self._cuda_spec(n, batch)
        calls = ops.launches(n, spec, [v[i] for i in n.inputs], v[n.id], self.dtype, self.gemm,
                             self._pool)
        if len(calls) == 1:
            return calls[0]

        def call():
            for c in calls:
                c()
        return call

    def _op_const(self, n, v, batch):
        o, val = v[n.id].reshape(-1), np.dtype(n.dtype).type(n.attrs["value"])
        return functools.partial(self.k.fill[blocks(o.size), THREADS, stream()], o, o.size, val)

    def _op_fused(self, n, v, batch):
        fn, extra = self.fused[n.id]
        shape = _concrete(n.shape, batch)
        o = v[n.id].reshape(-1)
        args = [o, o.size] + [v[i].reshape(-1) for i in n.inputs] + extra(shape)
        return functools.partial(fn[blocks(o.size), THREADS, stream()], *args)

    def _op_dropout_mask(self, n, v, batch):
        o = v[n.id].reshape(-1)
        T = np.dtype(self.dtype).type
        if not n.attrs.get("training", True):
            return functools.partial(self.k.fill[blocks(o.size), THREADS, stream()], o, o.size,
                                     T(1))
        step, p = v[n.inputs[1]].reshape(-1), float(n.attrs.get("p", 0.5))
        seed, keep = int(n.attrs.get("seed", 0)), T(1.0 / (1.0 - p))
        return functools.partial(self.k.dropout_mask[blocks(o.size), THREADS, stream()],
                                 step, o, o.size, p, seed, keep)

    # ---- recurrences: loop.py runs a loop's steps ---------------------------------------
    def _op_loop(self, n, v, batch):
        from .loop import forward
        return forward(self, n, v, batch)

    def _op_loop_grad(self, n, v, batch):
        from .loop import backward
        return backward(self, n, v, batch)

    def _op_loop_output(self, n, v, batch):
        """A loop's result: a view the loop writes when it runs."""
        return lambda: None
