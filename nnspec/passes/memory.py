"""Memory planning: every intermediate value gets a slice of one preallocated
arena per dtype, reused once its last reader has run.

Sizes are planned per example: a value of shape [B, 32] takes 32 units of the
arena's batch part, placed at `offset * B`, so one plan serves every batch
size (scaling all offsets and sizes by B keeps disjoint intervals disjoint)
and the arena is allocated once per batch size seen.  Values without a batch
axis (weight gradients, scalars) go in the fixed part, before the batch part.

    arena[dtype] = [ fixed part | batch part (per_example * B) | time part (per_step * B * T) ]

Sequences ([B, T, ...], T the time axis a recurrence runs over) go in the
time part, planned per (example, step) the same way.  A tuple-valued node (a
`loop`) has no storage: its results live in its `loop_output` readers, which
it writes when it runs, so its inputs stay live until those are placed.

Leaves (inputs, params, state) and pinned values (parameter gradients, which
live in the gradient arena) get no slot here.  First fit over the live blocks,
sizes rounded up to 16 elements (64 bytes in float32) so slices stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import LEAF_OPS, Graph

ALIGN = 16
REUSE = True       # False: every value its own slot (to test that reuse changes nothing)


@dataclass(frozen=True)
class Slot:
    dtype: str
    batch: bool        # in the batch part: offset and size are per example
    offset: int
    size: int          # elements (per example when batch, per example-step when time)
    time: bool = False  # in the time part: scaled by B * T


@dataclass
class Plan:
    slots: dict = field(default_factory=dict)         # node id -> Slot
    fixed: dict = field(default_factory=dict)         # dtype -> elements
    per_example: dict = field(default_factory=dict)   # dtype -> elements per example
    naive: dict = field(default_factory=dict)         # dtype -> (fixed, per_example) without reuse
    per_step: dict = field(default_factory=dict)      # dtype -> elements per example and step

    def arena_size(self, dtype: str, batch: int, steps: int = 1) -> int:
        return (self.fixed.get(dtype, 0) + self.per_example.get(dtype, 0) * batch
                + self.per_step.get(dtype, 0) * batch * steps)

    def offset(self, nid: str, batch: int, steps: int = 1) -> int:
        s = self.slots[nid]
        if s.time:
            return self.fixed[s.dtype] + self.per_example[s.dtype] * batch + s.offset * batch * steps
        return self.fixed[s.dtype] + s.offset * batch if s.batch else s.offset


def _size(shape) -> tuple[bool, int]:
    batch = "B" in shape
    n = 1
    for d in shape:
        if isinstance(d, int):
            n *= d
        elif d not in ("B", "T"):
            raise NotImplementedError(f"memory planning: symbolic size {d!r} in {shape}")
    return batch, n


def _round(n: int) -> int:
    return max(-(-n // ALIGN) * ALIGN, ALIGN)


class _Allocator:
    def __init__(self):
        self.live: list[tuple[int, int, int]] = []   # (offset, size, last use)
        self.top = 0

    def alloc(self, size: int, now: int, last: int) -> int:
        if REUSE:
            self.live = [b for b in self.live if b[2] >= now]
        self.live.sort()
        off = 0
        for o, s, _ in self.live:
            if o - off >= size:
                break
            off = max(off, o + s)
        self.live.append((off, size, last))
        self.top = max(self.top, off + size)
        return off


def plan(graph: Graph, pinned=(), keep=()) -> Plan:
    """Slots for every non-leaf node not in `pinned`; values in `keep` (and
    the roots) live to the end of the program."""
    pinned, keep = set(pinned), set(keep)
    order = list(graph.nx.nodes)
    pos = {nid: k for k, nid in enumerate(order)}
    end = len(order)
    last = {}
    for nid in order:
        readers = [pos[c] for c in graph.consumers(nid)]
        last[nid] = end if nid in keep else max(readers, default=pos[nid])
    for nid in order:
        if graph.nx.nodes[nid]["dtype"] == "loop":
            done = max((pos[c] for c in graph.consumers(nid)), default=pos[nid])
            # the loop writes all its results at once: none may share space with
            # its inputs or with one another
            for i in list(graph.nx.nodes[nid]["inputs"]) + list(graph.consumers(nid)):
                last[i] = max(last[i], done)
    allocs: dict = {}
    p = Plan()
    for nid in order:
        d = graph.nx.nodes[nid]
        if d["op"] in LEAF_OPS and d["op"] != "const" or nid in pinned or d["dtype"] == "loop":
            continue
        batch, n = _size(d["shape"])
        time = "T" in d["shape"]
        if time and not batch:
            raise NotImplementedError(f"memory planning: a time axis without a batch axis "
                                      f"in {d['shape']}")
        key = (d["dtype"], batch, time)
        a = allocs.setdefault(key, _Allocator())
        size = _round(n)
        # a value is written while its inputs are read: it may take the space
        # of values whose last reader ran before it, not of its own inputs
        off = a.alloc(size, pos[nid], last[nid])
        p.slots[nid] = Slot(d["dtype"], batch, off, size, time)
        nf, nb = p.naive.get(d["dtype"], (0, 0))
        p.naive[d["dtype"]] = (nf + (0 if batch else size), nb + (size if batch else 0))
    for (dt, batch, time), a in allocs.items():
        (p.per_step if time else p.per_example if batch else p.fixed)[dt] = a.top
        p.fixed.setdefault(dt, 0)
        p.per_example.setdefault(dt, 0)
    return p
