"""Teacher forcing of a fed-back cell state: `x -> jordan(n, k, teacher = prev)`.

With `teacher = S` (a [B, T, ...] sequence) a cell's step reads, wherever the
body says y[t-1],

    f[t] * S[t] + (y[t-1] - f[t] * y[t-1])   =   f[t] * S[t] + (1 - f[t]) * y[t-1]

(written so that f = 1 reads S[t] and f = 0 reads y[t-1] exactly, with no
rounding from the other term) where f is a 0/1 mask [B, T, 1, ...]: a hidden
input of the network (marked with the attr `teacher_forcing`, listed in
`graph.meta["teacher_forcing"]`) that the trainer draws per example and step
(nnspec/train/forcing.py) and that is zeros when nothing gives it, so
`forward`, `eval` and `predict` run free-running.  The blend is four elementwise nodes in the step's body graph,
fed by two more sequence inputs of the loop (S and f): the loop op and its
BPTT need nothing new, and the gradient flows through the blend like through
any other node.  The state itself (the loop's carry and final value) stays
the model's own output; only what the step reads is replaced.

The train setting `teacher_forcing` (a probability, or one of the decays made
by the built-ins below) says how the trainer draws f.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from ..errors import Loc, SpecError, did_you_mean
from ..ir import BATCH
from ..ops.base import fmt
from .values import Builtin, Symbol, Tensor, type_name

MASK = "teacher_forcing"         # the attr marking a mask input, and the train setting


@dataclass
class Teacher:
    """A cell application's `teacher=` while its body is lowered."""
    outer: str                   # the teacher sequence, a node of the network graph
    shape: tuple                 # its shape per step (after [B, T])
    loc: Loc | None              # where `teacher=` is written
    state: str | None            # the state it stands in for (None: the cell's only one)
    named: bool                  # state given by teacher_state=
    state_loc: Loc | None
    step: str | None = None      # body input: S[t]
    force: str | None = None     # body input: f[t]
    read: str | None = None      # body node that y[t-1] reads: the blend


def option(opts: dict, locs: dict, g, seq: str, loc) -> Teacher | None:
    """The `teacher=` and `teacher_state=` options of a cell call (None without them)."""
    state_loc = locs.get("teacher_state", loc)
    if opts.get("teacher") is None:
        if opts.get("teacher_state") is not None:
            raise SpecError("teacher_state names the state a teacher stands in for; give "
                            "the teacher too: teacher = SEQUENCE", state_loc)
        return None
    where = locs.get("teacher", loc)
    t = opts["teacher"]
    if not isinstance(t, Tensor):
        raise SpecError(f"teacher takes a sequence [B, T, ...] of the fed-back state's "
                        f"values, got {type_name(t)}", where)
    shape, dtype = t.graph.shape(t.nid), t.graph.dtype_of(t.nid)
    if not dtype.startswith("float"):
        raise SpecError(f"the teacher is a float sequence (it stands in for a state); got "
                        f"{dtype} {fmt(shape)}", where,
                        "class indices feed back as their one-hot vectors: "
                        "teacher = one_hot(prev, classes)")
    steps = g.shape(seq)[1]
    if len(shape) < 3 or shape[1] != steps:
        raise SpecError(f"the teacher has shape {fmt(shape)}; it holds the state's value "
                        f"at each step of the sequence: [B, {steps}, ...]", where)
    name = opts.get("teacher_state")
    if name is not None:
        name = name.name if isinstance(name, (Symbol, Builtin)) else name
        if not isinstance(name, str):
            raise SpecError(f"teacher_state names a state of the cell, got {type_name(name)}",
                            state_loc)
    return Teacher(t.nid, tuple(shape[2:]), where, name, name is not None, state_loc)


def read_prev(tf: Teacher | None, states: dict, name: str, body, loc) -> str:
    """The body node that `name[t-1]` reads: the carry, or the blend when the
    teacher stands in for this state (made at the first read)."""
    carry = states[name]["prev"]
    if tf is None or tf.state not in (None, name):
        return carry
    tf.state = name          # unnamed: the cell's only state (finish() checks there is one)
    if tf.read is None:
        want = tuple(body.shape(carry)[1:])
        if tf.shape != want:
            raise SpecError(f"the teacher holds a value of shape {fmt(tf.shape)} per step, "
                            f"but state '{name}' has shape {fmt(want)}", tf.loc,
                            f"give a [B, T, {', '.join(map(str, want))}] sequence")
        tf.step = body.input(f"{name}.teacher[t]", body.shape(carry), kind="step")
        tf.force = body.input(f"{name}.{MASK}[t]", (BATCH,) + (1,) * len(want), kind="step")
        taught = body.add("mul", (tf.force, tf.step), name=f"{name}.taught", loc=loc)
        told = body.add("mul", (tf.force, carry), name=f"{name}.replaced", loc=loc)
        own = body.add("sub", (carry, told), name=f"{name}.own", loc=loc)
        tf.read = body.add("add", (taught, own), name=f"{name}[t-1].forced", loc=loc)
    return tf.read


def finish(tf: Teacher, states: dict, cell: str, g, seq: str, inst: str, dtype: str,
           loc) -> tuple[list, list]:
    """After the body: check the teacher found its state.  Returns the loop's
    extra sequence inputs (the teacher, and a new mask input of `g`) and the
    body's step inputs that read them, in the same order."""
    names = list(states)
    if tf.named and tf.state not in states:
        raise SpecError(f"cell '{cell}' has no state '{tf.state}'", tf.state_loc,
                        did_you_mean(tf.state, names) or f"its states: {', '.join(names)}")
    if not tf.named and len(names) > 1:
        raise SpecError(f"cell '{cell}' has states {', '.join(names)}: say which one the "
                        f"teacher stands in for", tf.loc, f'teacher_state = "{names[0]}"')
    if tf.read is None:
        raise SpecError(f"the teacher stands in for {tf.state or names[0]}[t-1], which "
                        f"cell '{cell}' never reads", tf.loc,
                        "teacher forcing replaces a state the step reads back")
    ones = (1,) * len(tf.shape)
    mask = g.add("input", (), {"kind": "input", MASK: True}, name=f"{inst}.{MASK}",
                 shape=(BATCH, g.shape(seq)[1]) + ones, dtype=dtype, loc=loc)
    return [tf.outer, mask], [tf.step, tf.force]


def meta(g, forced: list) -> dict:
    """graph.meta["teacher_forcing"]: the mask inputs, and the inputs only a
    teacher reads (left out, they are zeros: free-running needs no teacher).

    `forced` holds (loop id, teacher node id) per teacher-forced cell."""
    allowed = {(t, lp) for lp, t in forced}
    feeds = set()
    for _, t in forced:
        feeds |= nx.ancestors(g.nx, t) | {t}
    outputs = set(g.outputs.values())
    only = []
    for i in g.inputs:
        if i not in feeds or g.node(i).attrs.get(MASK):
            continue
        reach = (nx.descendants(g.nx, i) | {i}) & feeds
        if all(n not in outputs and all(c in feeds or ((n, c) in allowed and
                                                       len(g.nx.edges[n, c]["pos"]) == 1)
                                        for c in g.consumers(n)) for n in reach):
            only.append(i)
    return {"masks": [n for n in g.inputs if g.node(n).attrs.get(MASK)],
            "teacher_only": only}


def check_setting(v, loc, has_teacher: bool):
    """The train setting `teacher_forcing`: a probability or a decay."""
    if not has_teacher:
        raise SpecError("teacher_forcing: no cell of this network has a teacher", loc,
                        "give a cell the true previous outputs: x -> cell(..., teacher = prev)")
    if isinstance(v, dict) and v.get("name") in DECAYS:
        return
    if not _number(v) or not 0 <= v <= 1:
        raise SpecError(f"teacher_forcing is the probability that a step reads the teacher "
                        f"(a number in [0, 1]) or a decay of it, got {v!r}", loc,
                        "linear(c), exponential(k) or inverse_sigmoid(k)")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---- the decays (Bengio et al. 2015, section 2.4); i counts training steps from 0 ----
# name: (parameters and defaults (None: required), the condition on them, it in words,
#        the probability of reading the teacher at step i)
DECAYS = {
    "linear": ((("c", None), ("k", 1.0), ("min", 0.0)),
               lambda c, k, min: c > 0 and 0 < k <= 1 and 0 <= min <= k,
               "c > 0, 0 < k <= 1 and 0 <= min <= k",
               lambda i, c, k, min: max(min, k - c * i)),
    "exponential": ((("k", None),), lambda k: 0 < k < 1, "0 < k < 1",
                    lambda i, k: k ** i),
    "inverse_sigmoid": ((("k", None),), lambda k: k >= 1, "k >= 1",
                        lambda i, k: k / (k + math.exp(min(i / k, 700.0)))),
}


def probability(setting, step: int) -> float:
    """P(a step reads the teacher) at training step `step` (0-based) under the
    `teacher_forcing` setting: a constant, or a decay dict from `decay_builtin`."""
    if isinstance(setting, dict):
        name = setting.get("name")
        if name not in DECAYS:
            raise ValueError(f"teacher_forcing: unknown decay {name!r}; known: "
                             f"{', '.join(DECAYS)}")
        params, _, _, formula = DECAYS[name]
        return float(formula(step, **{k: float(setting.get(k, d)) for k, d in params}))
    return float(setting)


def decay_builtin(name: str):
    """The built-in `name(...)` of a train section: the decay as a dict."""
    params, ok, cond, _ = DECAYS[name]
    keys = [p for p, _ in params]

    def make(*args, **kw):
        if len(args) > len(keys):
            raise ValueError(f"takes at most {len(keys)} arguments ({', '.join(keys)}), "
                             f"got {len(args)}")
        vals = dict(zip(keys, args))
        for k, v in kw.items():
            if k not in keys:
                raise ValueError(f"no setting '{k}'; {name} takes {', '.join(keys)}")
            if k in vals:
                raise ValueError(f"'{k}' given twice")
            vals[k] = v
        for k, default in params:
            if k not in vals and default is None:
                raise ValueError(f"needs {k}: {name}({', '.join(keys)})")
            vals.setdefault(k, default)
            if not _number(vals[k]):
                raise ValueError(f"{k} is a number, got {type_name(vals[k])}")
        if not ok(**vals):
            raise ValueError(f"needs {cond}; got "
                             + ", ".join(f"{k} = {vals[k]}" for k in keys))
        return {"name": name, **{k: float(vals[k]) for k in keys}}
    return make
