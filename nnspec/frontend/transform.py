"""lark parse tree -> AST.  Each method is named after the grammar alias it
handles and builds the AST class of the same name.

The parser records no positions (lark's propagate_positions doubles its
time); a node starts where its first token does, and `_call_userfunc`
works that out from the children before each method runs (`self._here`,
what `_loc(meta)` returns)."""
from __future__ import annotations

import math
from pathlib import Path

from lark import Token, Transformer, v_args

from ..errors import Loc, SpecError, trimmed
from . import ast, limits


def _unquote(s: str) -> str:
    return s[1:-1]


def _items(ch) -> list:
    """The expressions of a bracketed list or tuple (its brackets and commas are tokens)."""
    return [c for c in ch if c is not None and not isinstance(c, Token)]


@v_args(meta=True)
class ToAST(Transformer):
    def __init__(self, file: str, source: str, line_offset: int = 0, col_offset: int = 0):
        super().__init__()
        self.file, self.source = file, source
        self.line_offset, self.col_offset = line_offset, col_offset
        self._full = None
        self._starts: dict = {}        # id(result) -> (line, col) of its first token
        self._here = None              # (line, col) where the node being built starts

    def _call_userfunc(self, tree, new_children=None):
        children = tree.children if new_children is None else new_children
        self._here = None
        for c in children:
            if isinstance(c, Token):
                self._here = (c.line, c.column)
            elif c is not None:
                self._here = self._starts.get(id(c))
            if self._here is not None:
                break
        here = self._here
        out = super()._call_userfunc(tree, new_children)
        if here is not None and out is not None:
            self._starts[id(out)] = here
        return out

    def _loc(self, meta_or_tok) -> Loc | None:
        if isinstance(meta_or_tok, Token):
            line, col = meta_or_tok.line, meta_or_tok.column
        elif self._here is not None:
            line, col = self._here
        else:
            return None
        if line == 1:
            col += self.col_offset
        line += self.line_offset
        if self.line_offset or self.col_offset:
            if self._full is None:
                try:
                    from .load import read_text
                    self._full = read_text(Path(self.file))
                except Exception:          # not a readable file: place the text at its line
                    self._full = "\n" * self.line_offset + self.source
            return Loc(self.file, line, col, self._full)
        return Loc(self.file, line, col, self.source)

    # ---- module & definitions
    def start(self, meta, items):
        return ast.Module(self.file, [i for i in items if i is not None], self.source,
                          loc=self._loc(meta))

    def import_(self, meta, ch):
        return ast.Import(_unquote(ch[1]), loc=self._loc(ch[0]))

    def const(self, meta, ch):
        return ast.Const(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def _block(self, meta, ch, kind):
        name, params, inputs, body = ch
        return ast.Block(str(name), params or [], inputs or [], body, kind,
                         loc=self._loc(name))

    def block(self, meta, ch):
        return self._block(meta, ch, "block")

    def cell(self, meta, ch):
        return self._block(meta, ch, "cell")

    def network(self, meta, ch):
        name, params, body = ch
        return ast.Network(str(name), params or [], body, loc=self._loc(name))

    def train(self, meta, ch):
        return ast.Train(ch[1], loc=self._loc(ch[0]))

    def params(self, meta, ch):
        return list(ch)

    def param(self, meta, ch):
        return ast.Param(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def names(self, meta, ch):
        return [str(c) for c in ch]

    def body(self, meta, ch):
        return [c for c in ch if c is not None]

    # ---- statements
    def assign(self, meta, ch):
        return ast.Assign(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def assign_at(self, meta, ch):
        return ast.AssignAt(str(ch[0]), ch[1], ch[2], loc=self._loc(ch[0]))

    def unpack(self, meta, ch):
        return ast.Unpack([str(c) for c in ch[:-1]], ch[-1], loc=self._loc(ch[0]))

    def output(self, meta, ch):
        return ast.Output(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def return_(self, meta, ch):
        return ast.Return([c for c in ch if not isinstance(c, Token)], loc=self._loc(ch[0]))

    def _input(self, meta, ch, kind):
        name, dtype, shape = ch
        return ast.Input(str(name), dtype or "float", shape, kind, loc=self._loc(name))

    def input(self, meta, ch):
        return self._input(meta, ch, "input")

    def target(self, meta, ch):
        return self._input(meta, ch, "target")

    def state(self, meta, ch):
        return ast.State(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def int_type(self, meta, ch):
        return "int"

    def float_type(self, meta, ch):
        return "float"

    def shape(self, meta, ch):
        return [c for c in ch if c is not None]

    def if_(self, meta, ch):
        _, test, body, orelse = ch
        if orelse is None:
            orelse = []
        elif isinstance(orelse, ast.If):
            orelse = [orelse]
        return ast.If(test, body, orelse, loc=self._loc(meta))

    def for_(self, meta, ch):
        return ast.For(str(ch[0]), ch[1], ch[2], loc=self._loc(ch[0]))

    # ---- expressions
    def cond(self, meta, ch):
        return ast.Cond(ch[0], ch[1], ch[2], loc=self._loc(meta))

    def chain(self, meta, ch):
        return ast.Chain([c for c in ch if not isinstance(c, Token)], loc=self._loc(meta))

    def or_(self, meta, ch):
        return ast.BoolOp("or", ch[0], ch[1], loc=self._loc(meta))

    def and_(self, meta, ch):
        return ast.BoolOp("and", ch[0], ch[1], loc=self._loc(meta))

    def not_(self, meta, ch):
        return ast.Not(ch[1], loc=self._loc(ch[0]))

    def compare(self, meta, ch):
        return ast.Compare(str(ch[1]), ch[0], ch[2], loc=self._loc(ch[1]))

    def binop(self, meta, ch):
        return ast.BinOp(str(ch[1]), ch[0], ch[2], loc=self._loc(ch[1]))

    def neg(self, meta, ch):
        return ch[1] if str(ch[0]) == "+" else ast.Neg(ch[1], loc=self._loc(meta))

    def pow(self, meta, ch):
        return ast.BinOp("**", ch[0], ch[2], loc=self._loc(ch[1]))

    def call(self, meta, ch):
        func, args = ch
        pos, kw = [], []
        for a in args.children if args is not None else []:
            (kw if isinstance(a, ast.Kwarg) else pos).append(a)
        loc = func.loc if isinstance(func, ast.Name) else self._loc(meta)
        return ast.Call(func, pos, kw, loc=loc)

    def args(self, meta, ch):
        from lark import Tree
        return Tree("args", list(ch))

    def kwarg(self, meta, ch):
        return ast.Kwarg(str(ch[0]), ch[1], loc=self._loc(ch[0]))

    def index(self, meta, ch):
        return ast.Index(ch[0], ch[1], loc=self._loc(meta))

    def attr(self, meta, ch):
        return ast.Attr(ch[0], str(ch[1]), loc=self._loc(ch[1]))

    def name(self, meta, ch):
        return ast.Name(str(ch[0]), loc=self._loc(ch[0]))

    def number(self, meta, ch):
        s, loc = str(ch[0]), self._loc(ch[0])
        if len(s) > limits.MAX_DIGITS:
            raise SpecError(f"a number of {len(s):,} characters; a number literal has at "
                            f"most {limits.MAX_DIGITS}", loc, limits.hint("MAX_DIGITS"))
        value = float(s) if any(c in s for c in ".eE") else int(s)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{trimmed(s)} is too large for a float (it would be {value})",
                            loc, "a float is at most about 1.8e308")
        if isinstance(value, int) and value > limits.MAX_INT:
            raise SpecError(f"integer {trimmed(s)} is larger than the limit of "
                            f"{limits.MAX_INT:,}", loc, limits.hint("MAX_INT"))
        return ast.Number(value, loc=loc)

    def string(self, meta, ch):
        return ast.String(_unquote(str(ch[0])), loc=self._loc(ch[0]))

    def true(self, meta, ch):
        return ast.Bool(True, loc=self._loc(meta))

    def false(self, meta, ch):
        return ast.Bool(False, loc=self._loc(meta))

    def tuple(self, meta, ch):
        return ast.Tuple(_items(ch), loc=self._loc(ch[0]))

    def list(self, meta, ch):
        return ast.List(_items(ch), loc=self._loc(ch[0]))
