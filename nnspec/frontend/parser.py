"""Parsing `.nn` text into the AST.

The grammar (`grammar/nnspec.lark`, shipped in the wheel as
`nnspec/grammar/nnspec.lark`) is compiled once into an LALR parser and cached
on disk by lark, so reading a spec costs milliseconds.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import Loc, SpecError, did_you_mean
from . import ast
from .transform import ToAST

KEYWORDS = ("import", "block", "cell", "network", "train", "output", "return", "input",
            "target", "state", "if", "else", "for", "in", "and", "or", "not", "true",
            "false")


def grammar_path() -> Path:
    here = Path(__file__).resolve().parent.parent
    for p in (here / "grammar" / "nnspec.lark", here.parent / "grammar" / "nnspec.lark"):
        if p.exists():
            return p
    raise FileNotFoundError("nnspec.lark not found next to the package")


class Layout:
    """Post-lexer: a newline inside brackets, before `->`, `else` or `}` on
    the next line, or after another newline, is not a statement end."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        pending = None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and pending is None:
                    pending = tok
                continue
            if pending is not None:
                if tok.type not in ("ARROW", "ELSE") and tok.value not in ("->", "else"):
                    yield pending
                pending = None
            if tok.value in ("(", "["):
                depth += 1
            elif tok.value in (")", "]") and depth > 0:
                depth -= 1
            yield tok
        if pending is not None:
            yield pending


@lru_cache(maxsize=None)
def _parser(start: str) -> Lark:
    cache_dir = Path(os.environ.get("NNSPEC_CACHE", Path.home() / ".cache" / "nnspec"))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = str(cache_dir / f"grammar-{start}.lark.cache")
    except OSError:
        cache = False
    return Lark(grammar_path().read_text(), parser="lalr", lexer="basic", start=start, postlex=Layout(),
                propagate_positions=True, maybe_placeholders=True, cache=cache)


def parse(text: str, file: str = "<spec>") -> ast.Module:
    tree = _parse_tree(text, file, "start")
    return ToAST(file, text).transform(tree)


def parse_expr(text: str, file: str = "<spec>", line: int = 1, col: int = 1) -> ast.Expr:
    """Parse one expression (YAML values), reporting positions relative to
    where the text sits in its file."""
    tree = _parse_tree(text, file, "expr", line, col)
    return ToAST(file, text, line - 1, col - 1).transform(tree)


def _parse_tree(text, file, start, line0=1, col0=1):
    try:
        return _parser(start).parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file, line0, col0) from None


def _syntax_error(e: UnexpectedInput, text: str, file: str, line0: int, col0: int) -> SpecError:
    line, col = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
    if isinstance(e, UnexpectedEOF) or line < 1:
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    hint = None
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "end of file"
        msg = f"unexpected character {ch!r}"
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        what = "end of file" if tok.type == "$END" else (
            "end of line" if tok.type == "_NL" else repr(str(tok)))
        expected = sorted(_describe(t) for t in e.accepts or e.expected)
        msg = f"unexpected {what}"
        if expected and len(expected) <= 8:
            msg += f"; expected {', '.join(expected)}"
        if tok.type == "NAME":
            # `netwrk n {`: the misspelt keyword is the word before the token
            before = re.findall(r"[A-Za-z_]\w*", text[:tok.start_pos or 0].rsplit("\n", 1)[-1])
            hint = (before and did_you_mean(before[-1], KEYWORDS)) or \
                did_you_mean(str(tok), KEYWORDS)
            if hint:
                hint = hint.replace("did you mean", "did you mean the keyword")
        if tok.type == "_NL":
            line, col = tok.line, tok.column
    else:
        msg = "syntax error"
    if line == 1:
        col += col0 - 1
    line += line0 - 1
    return SpecError(msg, _loc_in(file, text, line, col, line0, col0), hint)


def _loc_in(file, text, line, col, line0, col0):
    if line0 == 1 and col0 == 1:
        return Loc(file, line, col, text)
    # an expression inside a YAML file: the caret should show the YAML line
    try:
        source = Path(file).read_text()
    except OSError:
        source = "\n" * (line - 1) + text
    return Loc(file, line, col, source)


_NAMES = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
          "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
          "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "SEMICOLON": "';'",
          "$END": "end of file", "COMPARE": "a comparison", "ADD": "'+'", "MUL": "'*'",
          "MINUS": "'-'", "DOT": "'.'", "ARROW": "'->'", "POW": "'**'"}


def _describe(term: str) -> str:
    if term in _NAMES:
        return _NAMES[term]
    if term.isupper() and term.lower() in KEYWORDS + ("int", "float"):
        return f"'{term.lower()}'"
    return term.lower()


def token_loc(tok: Token, file: str, source: str) -> Loc:
    return Loc(file, tok.line, tok.column, source)
