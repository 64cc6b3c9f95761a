"""Parsing `.nn` text into the AST.

The grammar (`grammar/nnspec.lark`, shipped in the wheel as
`nnspec/grammar/nnspec.lark`) is compiled once into an LALR parser (0.1 s),
so reading a spec costs milliseconds.

Lark's disk cache is a pickle that lark loads before it checks the hash
inside, so whoever can write the cache file runs code in every process that
reads it.  The cache is therefore kept only where the code itself lives:
`nnspec/frontend/__pycache__/`, beside Python's own bytecode cache and with
its trust (whoever can write there can change the code anyway), and it is
used only when that folder and the file belong to this user (or root),
are no symbolic links and are writable by no one else.  Elsewhere (a
read-only install, a shared checkout) the parser is built from the grammar
in each process.  `$NNSPEC_CACHE` (shared, often world-writable) is never
read for it.
"""
from __future__ import annotations

import os
import re
import stat
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             UnexpectedToken, VisitError)

from ..errors import Loc, SpecError, did_you_mean, trimmed
from . import ast, limits
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
    the next line, or after another newline, is not a statement end.  It
    also stops at the first bracket nested deeper than `limits.MAX_DEPTH`
    (`_TooDeep`), before the parser reads the rest."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth = nest = 0
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
            if tok.value in ("(", "[", "{"):
                nest += 1
                if nest > limits.MAX_DEPTH:
                    raise _TooDeep(tok)
            elif tok.value in (")", "]", "}"):
                nest -= 1
            yield tok
        if pending is not None:
            yield pending


class _TooDeep(Exception):
    def __init__(self, tok: Token):
        super().__init__("nested too deeply")
        self.tok = tok


@lru_cache(maxsize=None)
def _parser(start: str) -> Lark:
    cache = grammar_cache(start)
    return Lark(grammar_path().read_text(), parser="lalr", lexer="basic", start=start,
                postlex=Layout(), propagate_positions=False, maybe_placeholders=True,
                cache=str(cache) if cache else False)


def grammar_cache(start: str) -> Path | None:
    """Where lark may cache the parser for `start`: a file in the package's
    own `__pycache__` when it is ours (see the module's docstring), else None."""
    folder = Path(__file__).resolve().parent / "__pycache__"
    try:
        folder.mkdir(exist_ok=True)
        if not _ours(folder) or not os.access(folder, os.W_OK):
            return None
        f = folder / f"grammar-{start}.lark.cache"
        return f if not os.path.lexists(f) or _ours(f) else None
    except OSError:
        return None


def _ours(p: Path) -> bool:
    """Not a symbolic link, owned by this user or root, writable by no one else."""
    st = os.lstat(p)
    return (not stat.S_ISLNK(st.st_mode) and st.st_uid in (os.getuid(), 0)
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def parse(text: str, file: str = "<spec>") -> ast.Module:
    tree = _parse_tree(text, file, "start")
    return _transform(ToAST(file, text), tree)


def parse_expr(text: str, file: str = "<spec>", line: int = 1, col: int = 1) -> ast.Expr:
    """Parse one expression (YAML values), reporting positions relative to
    where the text sits in its file."""
    tree = _parse_tree(text, file, "expr", line, col)
    return _transform(ToAST(file, text, line - 1, col - 1), tree)


def _transform(to_ast: ToAST, tree):
    try:
        return to_ast.transform(tree)
    except VisitError as e:            # a literal the transformer refuses (too large, inf)
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        raise


def _parse_tree(text, file, start, line0=1, col0=1):
    try:
        tree = _parser(start).parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file, line0, col0) from None
    except _TooDeep as e:
        _too_deep(e.tok.line, e.tok.column, text, file, line0, col0)
    _check_depth(tree, text, file, line0, col0)
    return tree


def _check_depth(tree: Tree, text, file, line0, col0):
    """Refuse trees deeper than `limits.MAX_DEPTH` before anything recurses
    over them (the transformer, the lowering): a located error instead of a
    RecursionError.  Brackets add no level of their own; a bracketed list,
    an operator, a call and a block body each add one."""
    stack = [(tree, 1)]
    while stack:
        t, d = stack.pop()
        if d > limits.MAX_DEPTH:
            tok = _first_token(t)
            _too_deep(getattr(tok, "line", 1), getattr(tok, "column", 1), text, file, line0, col0)
        stack.extend((c, d + 1) for c in t.children if isinstance(c, Tree))


def _first_token(t: Tree):
    """The first token under `t` (the parser keeps no positions on trees)."""
    stack = [t]
    while stack:
        n = stack.pop()
        if isinstance(n, Token):
            return n
        if isinstance(n, Tree):
            stack.extend(reversed(n.children))
    return None


def _too_deep(line, col, text, file, line0, col0):
    if line == 1:
        col += col0 - 1
    raise SpecError(f"nested too deeply: more than {limits.MAX_DEPTH} levels of brackets, "
                    f"operators, calls and blocks",
                    _loc_in(file, text, line + line0 - 1, col, line0, col0),
                    limits.hint("MAX_DEPTH"))


def _syntax_error(e: UnexpectedInput, text: str, file: str, line0: int, col0: int) -> SpecError:
    line, col = getattr(e, "line", 1) or 1, getattr(e, "column", 1) or 1
    if isinstance(e, UnexpectedEOF) or line < 1:
        lines = text.rstrip("\r\n").split("\n")     # lark counts lines by \n only
        line, col = len(lines), len(lines[-1]) + 1
    hint = None
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "end of file"
        msg = f"unexpected character {ch!r}"
    elif isinstance(e, UnexpectedToken):
        tok = e.token
        what = "end of file" if tok.type == "$END" else (
            "end of line" if tok.type == "_NL" else repr(trimmed(str(tok), 40)))
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
        from .load import read_text
        source = read_text(Path(file))
    except Exception:                  # not a readable file: place the text at its line
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
