"""The AST of a spec.  `.nn` text and YAML both produce these nodes; each
class is named after the grammar rule that builds it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import Loc


@dataclass
class Node:
    loc: Optional[Loc] = field(default=None, repr=False, compare=False, kw_only=True)


# ---- expressions ---------------------------------------------------------------

class Expr(Node):
    pass


@dataclass
class Name(Expr):
    id: str


@dataclass
class Number(Expr):
    value: Any


@dataclass
class String(Expr):
    value: str


@dataclass
class Bool(Expr):
    value: bool


@dataclass
class List(Expr):
    items: list


@dataclass
class Tuple(Expr):
    items: list


@dataclass
class Kwarg(Node):
    name: str
    value: Expr


@dataclass
class Call(Expr):
    func: Expr
    args: list
    kwargs: list           # of Kwarg, in source order


@dataclass
class Index(Expr):
    value: Expr
    index: Expr


@dataclass
class Attr(Expr):
    value: Expr
    name: str


@dataclass
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass
class Neg(Expr):
    value: Expr


@dataclass
class Not(Expr):
    value: Expr


@dataclass
class BoolOp(Expr):
    op: str                # "and" | "or"
    left: Expr
    right: Expr


@dataclass
class Compare(Expr):
    op: str
    left: Expr
    right: Expr


@dataclass
class Cond(Expr):
    then: Expr
    test: Expr
    orelse: Expr


@dataclass
class Chain(Expr):
    stages: list           # first is the value, the rest are applied in turn


# ---- statements ------------------------------------------------------------------

class Stmt(Node):
    pass


@dataclass
class Assign(Stmt):
    name: str
    value: Expr


@dataclass
class AssignAt(Stmt):
    name: str
    index: Expr            # t  (a cell's state at the current step)
    value: Expr


@dataclass
class Unpack(Stmt):
    names: list
    value: Expr


@dataclass
class Output(Stmt):
    name: str
    value: Optional[Expr]


@dataclass
class Return(Stmt):
    values: list


@dataclass
class Input(Stmt):
    name: str
    dtype: str             # "float" | "int"
    shape: Optional[list]  # of Expr; None for a scalar
    kind: str = "input"    # "input" | "target"


@dataclass
class State(Stmt):
    name: str
    init: Expr


@dataclass
class If(Stmt):
    test: Expr
    body: list
    orelse: list


@dataclass
class For(Stmt):
    var: str
    iter: Expr
    body: list


# ---- definitions -------------------------------------------------------------------

@dataclass
class Param(Node):
    name: str
    default: Optional[Expr]


@dataclass
class Block(Node):
    name: str
    params: list
    inputs: list           # names
    body: list
    kind: str = "block"    # "block" | "cell"


@dataclass
class Network(Node):
    name: str
    params: list
    body: list


@dataclass
class Train(Node):
    body: list


@dataclass
class Import(Node):
    path: str


@dataclass
class Const(Node):
    name: str
    value: Expr


@dataclass
class Module(Node):
    file: str
    items: list
    source: str = field(default="", repr=False, compare=False)
