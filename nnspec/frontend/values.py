"""The values a spec computes with while it is lowered.

Numbers, bools, strings and lists are plain Python.  The rest:

* `Tensor`: a node of the graph being built (maybe a cell's body graph).
* `Symbol`: a bare name used as a value (`pad=same`, `data=digits`).
* `Layer`: a layer, block or cell with its arguments bound, not yet applied.
  It holds an `Instance`, so applying the same value twice shares parameters.
* `Repeat`: `layer * n`, n fresh copies applied in turn.
* `TimeIndex`: `t` or `t - 1` inside a cell.
* `ZeroInit`: `zeros(n)`, a cell state's initial value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Tensor:
    nid: str
    graph: Any                     # the Graph the node lives in
    cell: Any = None               # CellResult when produced by a cell

    def __repr__(self):
        return f"Tensor({self.nid})"


@dataclass(frozen=True)
class Symbol:
    name: str

    def __str__(self):
        return self.name


@dataclass(eq=False)
class Instance:
    """One layer instance: its name and the parameters it has made."""
    name: str
    params: dict = field(default_factory=dict)
    last: str | None = None        # last node it emitted (its output)
    kind: str = ""
    graph: Any = None              # the graph its output lives in (a cell step's, or the net's)
    tape: list = field(default_factory=list)   # instances made inside it (blocks, cells)


@dataclass(eq=False)
class Layer:
    kind: str                      # "layer" | "block" | "cell"
    target: Any                    # LayerDef or ast.Block
    args: list
    kwargs: dict
    loc: Any
    instance: Instance | None = None   # made on first application
    options: dict = field(default_factory=dict)   # cell call options (reverse, init, ...)
    option_locs: dict = field(default_factory=dict)   # where each option is written

    @property
    def name(self) -> str:
        return self.target.name

    def fresh(self) -> "Layer":
        return Layer(self.kind, self.target, self.args, self.kwargs, self.loc, None,
                     self.options, self.option_locs)


@dataclass(eq=False)
class Repeat:
    layer: Layer
    times: int


@dataclass(frozen=True)
class TimeIndex:
    offset: int

    def __repr__(self):
        return "t" if self.offset == 0 else f"t{self.offset:+d}"


@dataclass(frozen=True)
class ZeroInit:
    shape: tuple


@dataclass(eq=False)
class CellResult:
    """What a cell application left behind: its loop node and final states."""
    loop: str
    finals: dict                   # state name -> Tensor of the final state


@dataclass(eq=False)
class Builtin:
    name: str
    fn: Any
    doc: str = ""


def type_name(v) -> str:
    if isinstance(v, Tensor):
        return "a tensor"
    if isinstance(v, Layer):
        return f"the {v.kind} '{v.name}'"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Symbol):
        return f"the name '{v.name}'"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__
