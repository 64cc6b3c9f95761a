"""Recurrent loops on the device: a `loop` node (ops/loop.py) runs its body
graph of one step T times, a `loop_grad` its backward body over the steps
in reverse, each step as a list of kernel launches.  CudaStep's `_op_loop`
and `_op_loop_grad` bind them through `forward` and `backward` here.

    once per call     the derived weights (passes/loop_body.py: captures
                      stacked, sliced, transposed), the hoisted input
                      projections (one GEMM over all B*T rows), the states'
                      initial values (an input, or zeros)
    each step t       x[:, t] (strided in [B, T, ...]) and the hoisted rows
                      copied into step buffers; the carry into its time-major
                      stack; the body's launches; the saved values into
                      their stacks; the outputs into out[:, t]; the new
                      states (masked: blended with the old)

The body goes through the CPU's body passes (passes/loop_body.py
`optimise`), so both backends run the same graph, and its nodes through
CudaStep's own launchers (`BodyStep`): fused kernels, the GEMM provider, the
ops' `Op.cuda` stages.  They are bound once, to step buffers; what moves
with t goes through the small copy kernels below, whose offset is a launch
argument.  Neither the kernels nor the launches bound depend on T: the
Python loop over the steps only launches.

Buffers the loop writes are its `loop_output` readers' (passes/loop_results.py):
sequences [B, T, ...], final states [B, ...], carries and saved values
[T, B, ...].  A final state's buffer is the running state itself.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ...errors import DeviceError
from ...ops import get_op
from ...ops.base import Op, T, cuda_kernel
from ...ops.loop import n_inputs, split
from ...ops.shape import transpose_cuda
from ...passes import dce
from ...passes.loop_body import DERIVED, on_features, optimise, weight_like, with_saved
from ...passes.util import add_raw, copy_node, empty_like
from .. import loops as cpu_loops
from . import ops
from .runtime import THREADS, blocks, empty, stream
from .step import CudaStep, _concrete, _elementwise


# ---- copy kernels: row blocks of one array into another ---------------------------

@cuda_kernel
def gather_rows(k, dst, src, width, stride, off):
    """dst[k] = row k // width, column k % width of src's rows `stride` apart from `off`."""
    dst[k] = src[off + (k // width) * stride + k % width]


@cuda_kernel
def scatter_rows(k, dst, src, width, stride, off):
    """gather_rows' adjoint: src[k] into dst's rows `stride` apart from `off`."""
    dst[off + (k // width) * stride + k % width] = src[k]


@cuda_kernel
def gather_masked(k, dst, src, width, stride, mask, off, mstride, moff):
    """gather_rows times the row's mask, mask[moff + row * mstride]."""
    r = k // width
    dst[k] = T(mask[moff + r * mstride]) * src[off + r * stride + k % width]


@cuda_kernel
def scatter_masked(k, dst, src, width, stride, mask, off, mstride, moff):
    """scatter_rows times the row's mask."""
    r = k // width
    dst[off + r * stride + k % width] = T(mask[moff + r * mstride]) * src[k]


@cuda_kernel
def blend(k, h, new, width, mask, mstride, moff):
    """h = m new + (1 - m) h, m the row's mask (a masked step keeps its state)."""
    m = T(mask[moff + (k // width) * mstride])
    h[k] = m * new[k] + (T(1) - m) * h[k]


@cuda_kernel
def keep(k, gs, gp, width, mask, mstride, moff):
    """gs = gp + (1 - m) gs: a state's cotangent passes a masked step unchanged."""
    m = T(mask[moff + (k // width) * mstride])
    gs[k] = gp[k] + (T(1) - m) * gs[k]


@cuda_kernel
def add_into(k, dst, src):
    """dst += src."""
    dst[k] = dst[k] + src[k]


def _flat(a):
    return a.reshape(a.size) if a.ndim != 1 else a


class Launcher:
    """The copy kernels above for one dtype, as calls: `map(fn, n, *args)`
    binds everything; `each(fn, n, *args, at=...)` makes a call of the step
    t whose offsets `at(t)` (a tuple, the last arguments) are computed when
    it launches."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    def _kernel(self, fn, nargs: int, n: int):
        kern = ops._launcher("map", (fn,), nargs, self.dtype)
        return kern[blocks(n), THREADS, stream()], np.int64(n)

    def map(self, fn, n: int, *args):
        args = tuple(_arg(a) for a in args)
        kern, n64 = self._kernel(fn, len(args), n)
        return lambda: kern(n64, *args)

    def each(self, fn, n: int, *args, at):
        args = tuple(_arg(a) for a in args)
        kern, n64 = self._kernel(fn, len(args) + len(at(0)), n)
        return lambda t: kern(n64, *args, *(np.int64(x) for x in at(t)))


def _arg(a):
    if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
        return np.int64(a)
    if isinstance(a, tuple):
        return tuple(np.int64(x) for x in a)
    return _flat(a) if hasattr(a, "copy_to_host") else a


# ---- a body graph's nodes as launches ------------------------------------------------

class BodyStep(CudaStep):
    """CudaStep's launchers over a loop body (or backward body) graph: its
    checks (every op has a kernel, shapes of fixed sizes and B), its fused
    kernels, and slices and concatenations of features as column copies (as
    the CPU's loop writer does)."""

    def __init__(self, parent: CudaStep, graph):
        graph = _colcat_as_concat(graph)
        b = SimpleNamespace(kind="body", graph=graph, dtype=parent.dtype, plan=None,
                            grads={}, updates={}, roots=[])
        super().__init__(b, {}, {}, None, None)
        self.copies = Launcher(self.dtype)

    def launch(self, n, v: dict, batch: int):
        """The call running body node n over the buffers v."""
        own = getattr(self, f"_op_{n.op}", None)
        if own is None:
            own = self._op_elementwise if _elementwise(n.op) else self._op_defined
        return own(n, v, batch)

    def _other(self, n, v, batch):
        """A slice or concat along another axis: the op's own CUDA kernel."""
        if type(get_op(n.op)).cuda is Op.cuda:
            raise DeviceError(f"op '{n.op}' along axis {n.attrs.get('axis')} has no CUDA "
                              f"kernel yet (node '{n.id}' of a loop body); run it with "
                              f"device cpu")
        return self._op_defined(n, v, batch)

    def _op_slice(self, n, v, batch):
        if not on_features(n):
            return self._other(n, v, batch)
        src, o = v[n.inputs[0]], v[n.id]
        return self.copies.map(gather_rows, o.size, o, src, n.shape[-1],
                               self.graph.shape(n.inputs[0])[-1], n.attrs.get("start") or 0)

    def _op_concat(self, n, v, batch):
        """Columns side by side (a concat of features; `colcat`): each input
        into its columns of the output."""
        if not on_features(n):
            return self._other(n, v, batch)
        o, off, calls = v[n.id], 0, []
        for i in n.inputs:
            x = v[i]
            k = self.graph.shape(i)[-1]
            calls.append(self.copies.map(scatter_rows, x.size, o, x, k, n.shape[-1], off))
            off += k

        def call():
            for c in calls:
                c()
        return call


def _colcat_as_concat(graph):
    """`colcat` (passes/loop_body.py's columns side by side, no op of its
    own) as the concat of features it is."""
    if not any(n.op == "colcat" for n in graph.nodes()):
        return graph
    g = empty_like(graph)
    for n in graph.nodes():
        if n.op == "colcat":
            add_raw(g, n.id, "concat", n.inputs, {"axis": len(n.shape) - 1}, n.shape, n.dtype,
                    n.layer, n.loc)
        else:
            copy_node(g, graph, n.id)
    return g


# ---- what forward and backward share ---------------------------------------------

class _Loop:
    """A loop (or loop_grad) node's body bound to device buffers: `V` maps
    body ids to arrays (captures: the loop's inputs; the rest step buffers),
    `pre` the calls made once per call, `each` those of a step (f(t))."""

    def __init__(self, step: CudaStep, node, body, inputs: list, batch: int):
        self.step, self.node, self.a = step, node, node.attrs
        self.bs = BodyStep(step, body)
        self.graph, self.batch = self.bs.graph, batch
        self.c = self.bs.copies
        self.k = step.k
        seqs, self.inits, caps, self.mask = split(self.a, inputs[:n_inputs(self.a)])
        self.seqs = seqs
        self.T = int(seqs[0].shape[1])
        self.V = dict(zip(self.a["captures"], caps))
        self.pre, self.each = [], []
        self.hoisted = {}
        self._derived()

    # buffers
    def buffer(self, nid: str):
        """A step buffer for body node nid (its shape, B filled in)."""
        g = self.graph
        shape = _concrete(g.shape(nid), self.batch)
        dt = g.dtype_of(nid)
        dt = self.step.dtype if str(dt).startswith("float") else dt
        a = empty(int(np.prod(shape, dtype=np.int64)), dt)
        return a.reshape(shape) if shape else a

    def bind(self, nid: str, arr=None):
        if nid not in self.V:
            self.V[nid] = self.buffer(nid) if arr is None else arr
        return self.V[nid]

    def fill(self, a, value=0):
        a = _flat(a)
        val = np.dtype(a.dtype).type(value)
        kern = self.k.fill[blocks(a.size), THREADS, stream()]
        return lambda: kern(a, a.size, val)

    def copy(self, dst, src):
        """dst = src, arrays of one size."""
        return self.c.map(scatter_rows, src.size, dst, src, src.size, 0, 0)

    def put(self, stack, src):
        """f(t): src into block t of a time-major stack [T, ...]."""
        n = src.size
        return self.c.each(scatter_rows, n, stack, src, n, 0, at=lambda t: (t * n,))

    def take(self, dst, stack):
        """f(t): block t of a time-major stack into dst."""
        n = dst.size
        return self.c.each(gather_rows, n, dst, stack, n, 0, at=lambda t: (t * n,))

    def take_seq(self, dst, seq):
        """f(t): seq[:, t] of a batch-first [B, T, ...] into dst [B, ...]."""
        w, T_ = dst.size // self.batch, self.T
        return self.c.each(gather_rows, dst.size, dst, seq, w, T_ * w, at=lambda t: (t * w,))

    def _mask_at(self, t):
        return (self.T, t)           # mask [B, T]: row b's at b * T + t

    # the derived weights, once per call
    def _derived(self):
        g = self.graph
        used = {i for n in g.nodes() for i in n.inputs}
        for n in g.nodes():
            if n.op == "input" and n.attrs.get("kind") in DERIVED and n.id in used:
                self._make(n.id)

    def _make(self, nid: str):
        if nid in self.V:
            return self.V[nid]
        a = self.graph.node(nid).attrs
        dst = self.bind(nid)
        if a["kind"] == "wcat":       # parts stacked along axis 0: contiguous blocks
            off = 0
            for p in a["parts"]:
                src = self._make(p)
                self.pre.append(self.c.map(scatter_rows, src.size, dst, src, src.size, 0, off))
                off += src.size
        elif a["kind"] == "wslice":   # columns start:stop
            src = self._make(a["src"])
            cols = self.graph.shape(a["src"])[-1]
            self.pre.append(self.c.map(gather_rows, dst.size, dst, src, a["stop"] - a["start"],
                                       cols, a["start"]))
        else:                         # wT
            src = self._make(a["src"])
            rows, cols = self.graph.shape(a["src"])
            self.pre.append(self.c.map(transpose_cuda, dst.size, src, dst, (cols, rows),
                                       (1, cols)))
        return dst

    # step inputs and the hoisted projections
    def step_inputs(self):
        """x[t] of each sequence read in the loop into its step buffer, and the
        hoisted projections: linear(x[t], W) of every step as one GEMM before
        the loop ([B*T, out] rows, batch-first), its rows of step t copied
        into the node's step buffer."""
        g, a = self.graph, self.a
        steps, caps = set(a["seq_inputs"]), weight_like(g, a["captures"])
        for n in g.nodes():
            if cpu_loops._hoistable(g, n, steps, caps):
                k = a["seq_inputs"].index(n.inputs[0])
                shape = _concrete(n.shape, self.batch)
                P = empty(int(np.prod(shape, dtype=np.int64)) * self.T, self.step.dtype)
                fake = dict(self.V)
                fake[n.inputs[0]], fake[n.id] = self.seqs[k], P
                # the node's launcher with B*T rows for B
                self.pre.append(self.bs.launch(n, fake, self.batch * self.T))
                self.each.append(self.take_seq(self.bind(n.id), P))
                self.hoisted[n.id] = P
        read = self.read()
        for k, sid in enumerate(a["seq_inputs"]):
            if sid in read:
                self.each.append(self.take_seq(self.bind(sid), self.seqs[k]))

    def read(self) -> set:
        """The body values the loop reads: inputs of the nodes it computes, outputs."""
        g = self.graph
        out = {i for n in g.nodes() if n.id not in self.hoisted for i in n.inputs}
        return out | set(g.outputs.values())

    def body_calls(self, skip=()):
        """The body's nodes (not inputs, hoisted or in `skip`) bound to their
        buffers, in order: each step's, or the prologue's for those that do
        not change from step to step."""
        todo = [n for n in self.graph.nodes()
                if n.op != "input" and n.id not in self.hoisted and n.id not in skip]
        for n in todo:
            self.bind(n.id)
        for n in todo:
            for i in n.inputs:
                if i not in self.V:
                    raise DeviceError(f"loop '{self.node.id}': body value '{i}' is not bound")
        # loop-invariant values (constants, what only the weights make) once per call
        fixed = {m.id for m in self.graph.nodes() if m.op == "input"
                 and m.attrs.get("kind") in ("capture",) + DERIVED}
        for n in todo:
            call = self.bs.launch(n, self.V, self.batch)
            if all(i in fixed for i in n.inputs):
                fixed.add(n.id)
                self.pre.append(call)
            else:
                self.each.append(lambda t, c=call: c())

    def assign(self, pairs, masked: bool):
        """f(t) calls setting each dst to its src (forward: blended with the
        mask): through temporaries when a src is another pair's dst."""
        if any(s is d2 for d1, s in pairs for d2, _ in pairs if d2 is not d1):
            tmp = []
            for d, s in pairs:
                if s is d:
                    continue
                x = empty(s.size, s.dtype).reshape(s.shape)
                self.each.append(lambda t, c=self.copy(x, s): c())
                tmp.append((d, x))
            pairs = tmp
        for d, s in pairs:
            if s is d:
                continue
            if masked:
                w = d.size // self.batch
                self.each.append(self.c.each(blend, d.size, d, s, w, self.mask,
                                             at=self._mask_at))
            else:
                self.each.append(lambda t, c=self.copy(d, s): c())

    def run(self, order):
        """The call: the prologue, then each step's launches in `order`."""
        pre, each = self.pre, self.each

        def call():
            for c in pre:
                c()
            for t in order:
                for c in each:
                    c(t)
        return call


def _readers(graph, nid: str) -> dict:
    return {(r.attrs["kind"], r.attrs["index"]): r
            for r in map(graph.node, graph.consumers(nid))}


def _order(a: dict, T_: int, backward: bool) -> list:
    """Time indices in the order the loop (or its backward) visits them."""
    ts = [T_ - 1 - i if a["reverse"] else i for i in range(T_)]
    return ts[::-1] if backward else ts


# ---- loop ------------------------------------------------------------------------------

def forward(step: CudaStep, n, v: dict, batch: int):
    """The call running `loop` node n: every result into its reader's buffer."""
    g, a = step.graph, n.attrs
    readers = _readers(g, n.id)
    saved = sorted(key for key in readers if key[0] == "saved")
    saved_ids = [readers[key].attrs["node"] for key in saved]
    kept = set(step.build.roots) | set(g.outputs.values())
    K, S = len(a["outputs"]), len(a["states"])
    used = [k for k in range(K) if g.consumers(readers[("seq", k)].id)
            or readers[("seq", k)].id in kept]
    src = a["body"]
    roots = [src.outputs["state:" + st["name"]] for st in a["states"]]
    roots += [src.outputs[a["outputs"][k]] for k in used] + saved_ids
    body = optimise(src, list(src.outputs.values()) + saved_ids, a["captures"])
    body = dce.dead_code(body, roots + [m.id for m in body.nodes() if m.op == "input"])
    lp = _Loop(step, n, body, [v[i] for i in n.inputs], batch)
    # the running states: the final readers' buffers
    hs = []
    for s, (spec, cid) in enumerate(zip(a["states"], a["state_inputs"])):
        h = v[readers[("final", s)].id]
        hs.append(lp.bind(cid, h))
        lp.pre.append(lp.copy(h, lp.inits[spec["index"]]) if spec["init"] == "input"
                      else lp.fill(h))
    lp.step_inputs()
    for s in range(S):
        lp.each.append(lp.put(v[readers[("carry", s)].id], hs[s]))
    lp.body_calls()
    for key, nid in zip(saved, saved_ids):
        lp.each.append(lp.put(v[readers[key].id], lp.V[nid]))
    T_ = lp.T
    for k in used:
        y, out = lp.V[body.outputs[a["outputs"][k]]], v[readers[("seq", k)].id]
        w = y.size // batch
        if lp.mask is None:
            lp.each.append(lp.c.each(scatter_rows, y.size, out, y, w, T_ * w,
                                     at=lambda t, w=w: (t * w,)))
        else:
            lp.each.append(lp.c.each(scatter_masked, y.size, out, y, w, T_ * w, lp.mask,
                                     at=lambda t, w=w: (t * w, T_, t)))
    new = [lp.V[body.outputs["state:" + st["name"]]] for st in a["states"]]
    lp.assign(list(zip(hs, new)), lp.mask is not None)
    return lp.run(_order(a, T_, False))


# ---- loop_grad ------------------------------------------------------------------------

def backward(step: CudaStep, n, v: dict, batch: int):
    """The call running `loop_grad` node n (ops/loop.py LoopGrad): per step in
    reverse, the backward body seeded by the state's cotangent and the
    outputs' at t (masked: times the mask); sequence gradients into
    g[:, t], the captures' summed over the steps, the state's cotangent
    carried one step back (through masked steps unchanged, cut at `bptt`
    window boundaries).

    Gradients that are sums over the steps of GEMMs with a per-step
    cotangent G (dW = sum_t G[t]^T y[t], db = the rows of every G[t], dx[t] =
    G[t] W; backend/loops.py `_after_loop`) are not formed in the loop: G is
    stacked over the steps, and after the loop one GEMM over all T*B rows
    gives each, as on the CPU."""
    g, a = step.graph, n.attrs
    n_seq, n_in, S = a["n_seq"], n_inputs(a), len(a["states"])
    seeds, wants, saved = list(a["seeds"]), list(a["wants"]), list(a.get("saved", ()))
    xs = [v[i] for i in n.inputs]
    carries = xs[n_in:n_in + S]
    given = dict(zip(seeds, xs[n_in + S:n_in + S + len(seeds)]))
    kept = dict(zip(saved, xs[n_in + S + len(seeds):]))     # saved values, [T, B, ...]
    readers = _readers(g, n.id)
    grads = {i: v[readers[("grad", i)].id] for i in wants}
    raw = with_saved(a["bwd"], saved)
    post, stacked = cpu_loops._after_loop(a, raw)
    skip = {m for _, nodes in post.values() for m in nodes}
    names = [f"grad:{i}" for i in wants + [n_in + s for s in range(S)]]
    roots = [raw.outputs[o] for o in names if o in raw.outputs and raw.outputs[o] not in post]
    roots += list(stacked)
    body = dce.dead_code(raw, roots + [m.id for m in raw.nodes() if m.op == "input"])
    body = optimise(body, roots, a["captures"], skip)
    lp = _Loop(step, n, body, xs, batch)
    for i in wants:
        lp.pre.append(lp.fill(grads[i]))
    gs = _seeds(lp, given)
    read = lp.read()
    for s, cid in enumerate(a["state_inputs"]):
        if cid in read:
            lp.each.append(lp.take(lp.bind(cid), carries[s]))
    for nid, stack in kept.items():
        if nid in read:
            lp.each.append(lp.take(lp.bind(nid), stack))
    lp.step_inputs()
    lp.body_calls(skip)
    _step_grads(lp, grads, post)
    after = _after(lp, raw, post, stacked, kept, carries, grads)
    _carry_back(lp, gs)
    for s, spec in enumerate(a["states"]):
        j = n_seq + spec["index"] if spec["init"] == "input" else None
        if j is not None and j in wants:
            after.append(lp.copy(grads[j], gs[s]))
    run = lp.run(_order(a, lp.T, True))

    def call():
        run()
        for c in after:
            c()
    return call


def _seeds(lp: _Loop, given: dict) -> list:
    """The seeds of each step: the states' cotangents (the buffers `gs`,
    returned, carried back from step to step; from the final states'
    cotangents or zeros) and the outputs' at t; masked, times the mask."""
    a, body, B, T_ = lp.a, lp.graph, lp.batch, lp.T
    seed_ids, masked = body.meta["seeds"], lp.mask is not None
    gs = []
    for st in a["states"]:
        key = "state:" + st["name"]
        sid = seed_ids[key]
        buf = lp.buffer(sid)
        gs.append(buf)
        lp.pre.append(lp.copy(buf, given[key]) if key in given else lp.fill(buf))
        if masked:
            w = buf.size // B
            lp.each.append(lp.c.each(gather_masked, buf.size, lp.bind(sid), buf, w, w, lp.mask,
                                     at=lambda t: (0, T_, t)))
        else:
            lp.bind(sid, buf)
    for key in a["seeds"]:
        if key.startswith("out:"):
            d, e = given[key], lp.bind(seed_ids[key])
            w = e.size // B
            if masked:
                lp.each.append(lp.c.each(gather_masked, e.size, e, d, w, T_ * w, lp.mask,
                                         at=lambda t, w=w: (t * w, T_, t)))
            else:
                lp.each.append(lp.take_seq(e, d))
    return gs


def _step_grads(lp: _Loop, grads: dict, post: dict):
    """Gradients formed in the loop: a sequence's into g[:, t], a capture's
    added up."""
    a, body = lp.a, lp.graph
    n_seq, cap0 = a["n_seq"], a["n_seq"] + a["n_init"]
    for i, gi in grads.items():
        out = body.outputs.get(f"grad:{i}")
        if out is None or out in post:
            continue
        got = lp.V[out]
        if i < n_seq:
            w = got.size // lp.batch
            lp.each.append(lp.c.each(scatter_rows, got.size, gi, got, w, lp.T * w,
                                     at=lambda t, w=w: (t * w,)))
        elif i >= cap0:
            lp.each.append(lambda t, c=lp.c.map(add_into, got.size, gi, got): c())


def _carry_back(lp: _Loop, gs: list):
    """The states' cotangents for the step before: the carries' gradients
    (masked: plus (1 - m) times the cotangent, which passes a masked step);
    zero across a `bptt` window boundary."""
    a, body, T_ = lp.a, lp.graph, lp.T
    n_in = n_inputs(a)
    pairs = []
    for s, buf in enumerate(gs):
        out = body.outputs.get(f"grad:{n_in + s}")
        gp = lp.V[out] if out is not None else None
        if lp.mask is not None:
            if gp is None:
                gp = empty(buf.size, buf.dtype)
                lp.pre.append(lp.fill(gp))
            w = buf.size // lp.batch
            lp.each.append(lp.c.each(keep, buf.size, buf, gp, w, lp.mask, at=lp._mask_at))
        elif gp is None:
            lp.each.append(lambda t, c=lp.fill(buf): c())
        else:
            pairs.append((buf, gp))
    lp.assign(pairs, False)
    k = a.get("bptt") or 0
    if k:           # truncated BPTT: no cotangent crosses a window boundary
        cuts = [lp.fill(x) for x in gs]
        # t -> the processing index i of its step (the forward's order)
        index = {t: i for i, t in enumerate(_order(a, T_, False))}

        def cut(t):
            i = index[t]
            if i % k == 0 and i > 0:
                for c in cuts:
                    c()
        lp.each.append(cut)


def _after(lp: _Loop, raw, post: dict, stacked: dict, kept: dict, carries: list,
           grads: dict) -> list:
    """The gradients summed over the steps (`_after_loop`'s trees, leaves
    matmul(G, y; ta), sum_rows(G) and matmul(G, W) added up), as GEMMs over
    every step's rows after the loop: each G is stacked [T, B, ...] as the
    loop computes it, y is a stack already (a saved value, a carry, the
    sequence made time-major once).  Returns the calls after the loop."""
    if not post:
        return []
    a, B, T_ = lp.a, lp.batch, lp.T
    rows, dt, gemm = T_ * B, lp.step.dtype, lp.step.gemm
    big = dict(kept)
    big.update(zip(a["state_inputs"], carries))
    for gid in stacked:
        if gid not in big:
            x = lp.V[gid]
            big[gid] = empty(x.size * T_, x.dtype)
            lp.each.append(lp.put(big[gid], x))
    leaves = {root: [raw.node(m) for m in nodes if raw.node(m).op != "add"]
              for root, (_, nodes) in post.items()}
    read = {i for ms in leaves.values() for m in ms for i in m.inputs}
    for k, sid in enumerate(a["seq_inputs"]):      # [B, T, ...] -> [T, B, ...], once
        if sid in read:
            x = lp.seqs[k]
            big[sid] = empty(x.size, x.dtype)
            lp.pre.append(_swap01(lp.c, big[sid], x, B, T_))
    if any(m.op == "sum_rows" for ms in leaves.values() for m in ms):
        ones = empty(rows, dt)
        lp.pre.append(lp.fill(ones, 1))

    def two(arr, cols):
        return _flat(arr).reshape((arr.size // cols, cols))
    calls = []
    for root, (i, _) in post.items():
        if i >= a["n_seq"]:     # a capture's gradient: each leaf added into it
            for m in leaves[root]:
                G = raw.shape(m.inputs[0])[-1]
                if m.op == "sum_rows":          # the rows' sum: ones [1, rows] G
                    calls.append(_gemm(gemm, two(ones, rows), two(big[m.inputs[0]], G),
                                       two(grads[i], G), False, True))
                else:                           # G^T y
                    Y = raw.shape(m.inputs[1])[-1]
                    calls.append(_gemm(gemm, two(big[m.inputs[0]], G), two(big[m.inputs[1]], Y),
                                       two(grads[i], Y), True, True))
        else:                   # a sequence's: G W over the steps' rows, back to [B, T, ...]
            F = raw.shape(root)[-1]
            tmp = empty(grads[i].size, dt)
            for j, m in enumerate(leaves[root]):
                G = raw.shape(m.inputs[0])[-1]
                calls.append(_gemm(gemm, two(big[m.inputs[0]], G), two(lp.V[m.inputs[1]], F),
                                   two(tmp, F), False, j > 0))
            calls.append(_swap01(lp.c, grads[i], tmp, T_, B))
    return calls


def _swap01(c: Launcher, dst, src, d0: int, d1: int):
    """dst [d1, d0, ...] = src [d0, d1, ...], its first two axes swapped."""
    inner = src.size // (d0 * d1)
    return c.map(transpose_cuda, src.size, src, dst, (d1, d0, inner), (inner, d1 * inner, 1))


def _gemm(gemm, a, b, out, ta: bool, accumulate: bool):
    return gemm.bind(a, b, out, ta, False, accumulate=accumulate)
