"""Recurrence: `loop` runs a cell's step graph over a sequence, `loop_output`
reads one of its results, `loop_grad` is its backward pass (BPTT).

A `loop` node (built by frontend/lower.py `run_cell`) has

    inputs  seq[n_seq] + init[n_init] + captures[len(captures)] + ([mask] if attrs.mask)
    attrs   body          Graph of ONE step: `input` nodes of kind "step" (x[t]),
                          "carry" (h[t-1]) and "capture" (attrs.outer: the outer node);
                          body.outputs "state:<name>" -> new state, "out:<k>" -> output k
            reverse       run t = T-1 .. 0
            n_seq, n_init, states [{name, init: zeros|input, index}], state_inputs
            (body carry ids, state order), seq_inputs, captures (body ids, same order
            as the captured outer inputs), outputs ["out:0", ...]
            mask          optional: the last input is a [B, T] 0/1 mask; at a step with
                          mask 0 an example keeps its state and emits zeros
            bptt          optional k: truncated backpropagation (see `loop_grad`)
    value   {"seq": [out_k [B, T, ...]], "final": [state_s [B, ...]],
             "carry": [state_s before each step, [T, B, ...]],
             "saved": body node id -> its value at every step [T, B, ...]}
            Carries and saved values are time-major: only the loop's backward
            reads them, one step (a contiguous [B, ...] block) at a time.

`loop_output(loop; kind, index)` picks `value[kind][index]` (kind "saved"
picks `value["saved"][node]`).  Sequences are batch-first like every
activation (axis 0 is B); carries and saved values, which only the backward
pass reads, are time-major.

The gradient is IR like any other: `loop.grad` builds the body's backward graph
once (passes/autodiff.py `backward` seeded by the cotangents of the step's
outputs and new states, with respect to carries, step inputs and captures) and
emits one `loop_grad` node that runs it over the steps in reverse, plus a
`loop_output(kind="grad")` per input that gets a gradient.  Autodiff hands the
loop the gradients of its `loop_output` readers as a dict keyed by
`(kind, index)` (the `selects` protocol).

Saved activations: the body values the backward step reads (gate
activations, tanh(c), ...) are kept from the forward pass, one [T, B, ...]
buffer each (`loop_output(kind="saved", node=<body id>)`, inputs of the
loop_grad after its seeds), so the compiled backward does not run the
forward step again: memory is O(T * those values), the backward costs only
its own GEMMs.  (The NumPy reference of loop_grad recomputes them.)
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Op, register

KINDS = ("seq", "final", "carry", "saved", "grad")


# ---- the layout of a loop node's inputs ----------------------------------------

def split(attrs, xs):
    """(seqs, inits, captures, mask or None) from a loop's input list."""
    n_seq, n_init, n_cap = attrs["n_seq"], attrs["n_init"], len(attrs["captures"])
    a, b, c = n_seq, n_seq + n_init, n_seq + n_init + n_cap
    mask = xs[c] if attrs.get("mask") else None
    return list(xs[:a]), list(xs[a:b]), list(xs[b:c]), mask


def n_inputs(attrs) -> int:
    return attrs["n_seq"] + attrs["n_init"] + len(attrs["captures"]) + bool(attrs.get("mask"))


def steps(attrs, T: int):
    """(processing step i, time index t) pairs in the order the loop runs."""
    for i in range(T):
        yield i, (T - 1 - i if attrs["reverse"] else i)


def state_shape(body, carry, B: int) -> tuple:
    return tuple(B if d == "B" else d for d in body.shape(carry))


def blend(m, new, old):
    """mask * new + (1 - mask) * old, mask [B] broadcast over new's trailing axes."""
    m = m.reshape(m.shape + (1,) * (new.ndim - 1)).astype(new.dtype)
    return m * new + (1 - m) * old


def output_shape(graph, loop_id: str, kind: str, index: int) -> tuple[tuple, str]:
    """(shape, dtype) of `loop_output(loop_id; kind, index)` in `graph`."""
    n = graph.node(loop_id)
    body = n.attrs["body"]
    if n.op == "loop_grad":
        inp = n.inputs[index]
        return graph.shape(inp), graph.dtype_of(inp)
    seq = graph.shape(n.inputs[0])
    if kind == "seq":
        o = body.outputs[n.attrs["outputs"][index]]
    elif kind == "final":
        o = body.outputs["state:" + n.attrs["states"][index]["name"]]
    else:
        o = n.attrs["state_inputs"][index]
    s = body.shape(o)
    if kind == "final":
        shape = s
    elif kind == "seq":
        shape = (s[0], seq[1], *s[1:])
    else:                         # carry: time-major, read one step at a time
        shape = (seq[1], s[0], *s[1:])
    return tuple(shape), body.dtype_of(o)


class _Saved:
    """Loop.reference's saved values: body node id -> [T, B, ...], stacked on
    demand from the per-step values."""

    def __init__(self, per_step):
        self.per_step = per_step

    def __getitem__(self, nid):
        return np.stack([v[nid] for v in self.per_step], axis=0)


def saved_values(body, bwd) -> list:
    """The body values the backward graph reads: forward nodes (not inputs)
    with a reader among the backward nodes."""
    out = []
    for n in body.nodes():
        if n.op in ("input", "const") or not str(n.dtype).startswith("float"):
            continue
        if any(c not in body for c in bwd.consumers(n.id)):
            out.append(n.id)
    return out


# ---- loop -------------------------------------------------------------------------

class Loop(Op):
    name = "loop"
    tuple_valued = True           # its value is a dict of arrays, read by loop_output

    def infer(self, attrs, shapes, dtypes):
        if len(shapes) != n_inputs(attrs):
            raise ShapeError(f"loop: expects {n_inputs(attrs)} inputs (sequences, initial "
                             f"states, captures, mask), got {len(shapes)}")
        return (), "loop"

    def reference(self, attrs, *xs):
        from ..backend.numpy_ref import run
        body = attrs["body"]
        seqs, inits, caps, mask = split(attrs, xs)
        B, T = seqs[0].shape[:2]
        state = []
        for s, spec in enumerate(attrs["states"]):
            carry = attrs["state_inputs"][s]
            if spec["init"] == "input":
                state.append(np.asarray(inits[spec["index"]]))
            else:
                state.append(np.zeros(state_shape(body, carry, B), body.dtype_of(carry)))
        new_ids = [body.outputs["state:" + st["name"]] for st in attrs["states"]]
        out_ids = [body.outputs[k] for k in attrs["outputs"]]
        outs = [[None] * T for _ in out_ids]
        carries = [[None] * T for _ in state]
        fixed = dict(zip(attrs["captures"], caps))
        every = [n.id for n in body.nodes() if n.op != "input"]
        per_step = [None] * T
        for _, t in steps(attrs, T):
            feeds = dict(fixed)
            feeds.update({sid: x[:, t] for sid, x in zip(attrs["seq_inputs"], seqs)})
            feeds.update(zip(attrs["state_inputs"], state))
            vals = run(body, feeds, every)
            per_step[t] = vals
            for s, prev in enumerate(state):
                carries[s][t] = prev
            new = [vals[n] for n in new_ids]
            ys = [vals[n] for n in out_ids]
            if mask is not None:
                new = [blend(mask[:, t], v, p) for v, p in zip(new, state)]
                ys = [blend(mask[:, t], y, np.zeros_like(y)) for y in ys]
            state = new
            for k, y in enumerate(ys):
                outs[k][t] = y
        return {"seq": [np.stack(o, axis=1) for o in outs], "final": state,
                "carry": [np.stack(c, axis=0) for c in carries],
                "saved": _Saved(per_step)}

    def grad(self, gb, node, g):
        return build_loop_grad(gb, node, g)


register(Loop())


# ---- loop_output --------------------------------------------------------------------

class LoopOutput(Op):
    """loop_output(loop; kind, index): one result of a loop or loop_grad node.
    Its gradient is collected by autodiff and handed to the loop (`selects`)."""
    name = "loop_output"
    arity = 1
    selects = True

    def infer(self, attrs, shapes, dtypes):
        if dtypes[0] != "loop":
            raise ShapeError(f"loop_output: reads a loop node, got a {dtypes[0]} value")
        if attrs.get("kind") not in KINDS:
            raise ShapeError(f"loop_output: kind must be one of {', '.join(KINDS)}, "
                             f"got {attrs.get('kind')!r}")
        if "shape" not in attrs:
            # the result's shape lives in the loop's body, which a shape rule cannot see
            raise ShapeError("loop_output: give shape= and dtype= when adding it "
                             "(nnspec.ops.loop.output_shape computes them)")
        return tuple(attrs["shape"]), attrs.get("dtype", "float32")

    def reference(self, attrs, value):
        if attrs["kind"] == "saved":
            return value["saved"][attrs["node"]]
        return value[attrs["kind"]][attrs["index"]]

    def part(self, node):
        """Which part of the loop's cotangent this reader's gradient is."""
        return node.attrs["kind"], node.attrs["index"]

    def grad(self, gb, node, g):
        raise AssertionError("loop_output: autodiff passes its gradient to the loop "
                             "(the `selects` protocol), it has no rule of its own")


register(LoopOutput())


# ---- loop_grad ------------------------------------------------------------------------

class LoopGrad(Op):
    """Backpropagation through time over a loop's steps, in reverse.

    inputs  the forward loop's inputs, then its carries ([T, B, ...] per state),
            then one cotangent per key of attrs.seeds
    attrs   the forward loop's attrs, plus
            bwd     Graph: the body, seed inputs ("d[<body output key>]") and the
                    backward nodes; outputs "grad:<i>" -> gradient of body input i,
                    where i numbers the loop's inputs (a carry stands for its state)
            seeds   body output keys ("out:0", "state:h") with a given cotangent
            wants   loop input positions that get a gradient
    value   {"grad": [gradient of loop input i, or None]}

    Truncation (attrs.bptt = k): steps are cut into windows of k in the order
    the loop runs them (steps 0..k-1, k..2k-1, ...); the cotangent of a carry
    crosses from step i back to step i-1 only when both lie in one window.
    Parameters still sum contributions from every step, and the initial state
    gets a gradient only through the first window.

    Mask: a masked step passes its state's cotangent straight to the previous
    step and contributes nothing else (exact for new = m f(prev) + (1 - m) prev).
    """
    name = "loop_grad"
    differentiable = False
    tuple_valued = True

    def infer(self, attrs, shapes, dtypes):
        return (), "loop"

    def reference(self, attrs, *xs):
        from ..backend.numpy_ref import run
        body, bwd = attrs["body"], attrs["bwd"]
        n_in = n_inputs(attrs)
        S = len(attrs["states"])
        seqs, inits, caps, mask = split(attrs, xs[:n_in])
        carries = xs[n_in:n_in + S]
        given = dict(zip(attrs["seeds"], xs[n_in + S:]))
        B, T = seqs[0].shape[:2]
        k = attrs.get("bptt") or 0
        state_keys = ["state:" + st["name"] for st in attrs["states"]]
        out_keys = [key for key in attrs["seeds"] if key.startswith("out:")]
        seed_ids = bwd.meta["seeds"]
        wants = list(attrs["wants"])
        grads = {i: np.zeros_like(xs[i], dtype=body.dtype) for i in wants}
        gstate = []
        for key, carry in zip(state_keys, attrs["state_inputs"]):
            z = np.zeros(state_shape(body, carry, B), body.dtype_of(carry))
            gstate.append(given.get(key, z))
        n_seq, n_init = attrs["n_seq"], attrs["n_init"]
        cap0 = n_seq + n_init
        fixed = dict(zip(attrs["captures"], caps))
        carry_pos = [n_in + s for s in range(S)]      # "grad:<i>" names for carries
        want_out = [f"grad:{i}" for i in wants if i < n_seq or i >= cap0]
        want_out += [f"grad:{i}" for i in carry_pos]
        want_out = [o for o in want_out if o in bwd.outputs]
        for i, t in reversed(list(steps(attrs, T))):
            feeds = dict(fixed)
            feeds.update({sid: x[:, t] for sid, x in zip(attrs["seq_inputs"], seqs)})
            feeds.update({c: carries[s][t] for s, c in enumerate(attrs["state_inputs"])})
            m = mask[:, t] if mask is not None else None
            for s, key in enumerate(state_keys):
                gs = gstate[s]
                feeds[seed_ids[key]] = gs if m is None else blend(m, gs, np.zeros_like(gs))
            for key in out_keys:
                go = given[key][:, t]
                feeds[seed_ids[key]] = go if m is None else blend(m, go, np.zeros_like(go))
            vals = run(bwd, feeds, [bwd.outputs[o] for o in want_out])
            got = {o: vals[bwd.outputs[o]] for o in want_out}
            for j in wants:
                name = f"grad:{j}"
                if name not in got:
                    continue
                if j < n_seq:
                    grads[j][:, t] += got[name]
                elif j >= cap0:
                    grads[j] += got[name]
            new_g = []
            for s in range(S):
                gp = got.get(f"grad:{carry_pos[s]}")
                gp = np.zeros_like(gstate[s]) if gp is None else gp
                if m is not None:
                    gp = gp + blend(m, np.zeros_like(gstate[s]), gstate[s])
                if k and i % k == 0 and i > 0:       # window boundary: cut
                    gp = np.zeros_like(gp)
                new_g.append(gp)
            gstate = new_g
        for s, spec in enumerate(attrs["states"]):
            j = n_seq + spec["index"] if spec["init"] == "input" else None
            if j is not None and j in grads:
                grads[j] = gstate[s].astype(body.dtype, copy=False)
        return {"grad": [grads.get(i) for i in range(n_in)]}


register(LoopGrad())


def backward_body(attrs, seeds, wrt_positions):
    """The body's backward graph: the body, one seed input per body output key
    (every state, plus the outputs in `seeds`), and gradients named
    "grad:<loop input position>" (carries: n_inputs + state index)."""
    from ..passes.autodiff import backward, copy_graph
    body = attrs["body"]
    g = copy_graph(body)
    g.outputs = {}
    pairs = []
    keys = ["state:" + st["name"] for st in attrs["states"]]
    keys += [k for k in seeds if k.startswith("out:")]
    for key in keys:
        nid = body.outputs[key]
        pairs.append((nid, g.input(f"d[{key}]", body.shape(nid), body.dtype_of(nid),
                                   kind="seed"), key))
    n_seq, n_init = attrs["n_seq"], attrs["n_init"]
    wrt = {}
    for i in wrt_positions:
        if i < n_seq:
            wrt[attrs["seq_inputs"][i]] = i
        elif i >= n_seq + n_init:
            wrt[attrs["captures"][i - n_seq - n_init]] = i
    for s, carry in enumerate(attrs["state_inputs"]):
        wrt[carry] = n_inputs(attrs) + s
    wrt = {b: i for b, i in wrt.items() if body.dtype_of(b).startswith("float")}
    gg, grads = backward(g, None, list(wrt), seeds=[(n, s) for n, s, _ in pairs])
    gg.meta["seeds"] = {key: s for _, s, key in pairs}
    for b, gid in grads.items():
        gg.outputs[f"grad:{wrt[b]}"] = gid
    return gg


def build_loop_grad(gb, node, g):
    """loop.grad: g maps (kind, index) of the loop's readers to their gradients."""
    graph, attrs = gb.graph, node.attrs
    seeds = {}
    for (kind, index), gid in g.items():
        if kind == "seq":
            seeds[attrs["outputs"][index]] = gid
        elif kind == "final":
            seeds["state:" + attrs["states"][index]["name"]] = gid
        else:
            raise AssertionError(f"loop: no gradient flows through its {kind} results")
    n_seq, n_init = attrs["n_seq"], attrs["n_init"]
    n_main = n_seq + n_init + len(attrs["captures"])
    wants = [i for i in range(n_main) if gb.wants(i)
             and graph.dtype_of(node.inputs[i]).startswith("float")]
    if not wants:
        return [None] * len(node.inputs)
    keys = sorted(seeds)
    bwd = backward_body(attrs, keys, wants)
    carries = []
    for s in range(len(attrs["states"])):
        shape, dtype = output_shape(graph, node.id, "carry", s)
        carries.append(gb.add("loop_output", (node.id,), {"kind": "carry", "index": s,
                                                          "shape": shape, "dtype": dtype},
                              shape=shape, dtype=dtype))
    saved = saved_values(attrs["body"], bwd)
    kept = []
    for j, nid in enumerate(saved):
        s = attrs["body"].shape(nid)
        shape, dtype = (graph.shape(node.inputs[0])[1], *s), attrs["body"].dtype_of(nid)
        kept.append(gb.add("loop_output", (node.id,), {"kind": "saved", "index": j, "node": nid,
                                                        "shape": shape, "dtype": dtype},
                           shape=shape, dtype=dtype))
    lg_attrs = dict(attrs, bwd=bwd, seeds=keys, wants=wants, saved=saved)
    lg = gb.add("loop_grad", list(node.inputs) + carries + [seeds[k] for k in keys] + kept,
                lg_attrs, shape=(), dtype="loop")
    out = [None] * len(node.inputs)
    for i in wants:
        inp = node.inputs[i]
        shape, dtype = graph.shape(inp), graph.dtype_of(inp)
        out[i] = gb.add("loop_output", (lg,), {"kind": "grad", "index": i,
                                               "shape": shape, "dtype": dtype},
                        shape=shape, dtype=dtype)
    return out
