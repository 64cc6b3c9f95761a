"""Errors that point at the source.

Every error a user can cause is a `SpecError` (a bad spec) or a `DataError`
(bad arrays at run time).  A `SpecError` carries a `Loc` and renders as

    lenet5.nn:7:22: error: unknown layer 'conv3'
        y = x -> conv3(6, 5)
                 ^
    hint: did you mean 'conv2d'?

and, when raised inside a block, the chain of call sites that led there.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    file: str
    line: int          # 1-based
    col: int           # 1-based
    source: str = field(default="", repr=False, compare=False)  # whole text of the file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str:
        lines = self.source.splitlines()
        return lines[self.line - 1] if 0 < self.line <= len(lines) else ""


class NNSpecError(Exception):
    """Base of every error nnspec reports to a user without a traceback."""


class SpecError(NNSpecError):
    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None,
                 kind: str = "error"):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint
        self.kind = kind
        self.trace: list[tuple[str, Loc]] = []   # (block name, call site), innermost first

    def called_from(self, what: str, loc: Loc | None) -> "SpecError":
        if loc is not None:
            self.trace.append((what, loc))
        return self

    def render(self) -> str:
        head = f"{self.loc}: " if self.loc else ""
        out = [f"{head}error: {self.message}"]
        if self.loc is not None:
            out += caret(self.loc)
        if self.hint:
            out.append(f"hint: {self.hint}")
        for what, loc in self.trace:
            out.append(f"{loc}: note: in {what}, called from here")
            out += caret(loc)
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


class ShapeError(SpecError):
    """Shapes that do not fit; raised by an op's shape rule (without a location,
    which the lowering adds)."""


class DataError(NNSpecError):
    """Arrays given at run time that do not match what the network expects."""


class TrainingError(NNSpecError):
    """Training that cannot go on (NaN loss, a bad checkpoint)."""


def caret(loc: Loc) -> list[str]:
    line = loc.source_line()
    if not line:
        return []
    # keep tabs so the caret lines up under the same column
    pad = "".join(c if c == "\t" else " " for c in line[: max(loc.col - 1, 0)])
    return ["    " + line, "    " + pad + "^"]


def did_you_mean(name: str, choices) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
