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
import re
from dataclasses import dataclass, field

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Loc:
    file: str
    line: int          # 1-based
    col: int           # 1-based
    source: str = field(default="", repr=False, compare=False)  # whole text of the file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str:
        """Line `line` of the source, counted as the parser counts lines: by
        "\\n" only (str.splitlines would also split at a form feed or U+2028)."""
        lines = self.source.split("\n")
        line = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        return line[:-1] if line.endswith("\r") else line

    def excerpt(self, width: int = 100) -> tuple[str, int]:
        """(text, col): the source line as errors quote it, at most `width`
        characters around the column, control characters shown as "?" (a
        quoted line must not drive the terminal), and the column within it."""
        line, col = self.source_line(), self.col
        if len(line) > width:
            start = max(0, min(col - 1 - width // 2, len(line) - width))
            line = ("..." if start else "") + line[start:start + width] + \
                ("..." if start + width < len(line) else "")
            col = col - start + (3 if start else 0)
        return _CONTROL.sub("?", line), col


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
        # a message may quote the spec (an import's path): no control characters
        head = f"{self.loc}: " if self.loc else ""
        out = [f"{head}error: {_CONTROL_BUT_NL.sub('?', self.message)}"]
        if self.loc is not None:
            out += caret(self.loc)
        if self.hint:
            out.append(f"hint: {_CONTROL_BUT_NL.sub('?', self.hint)}")
        shown = self.trace if len(self.trace) <= 12 else self.trace[:10] + self.trace[-1:]
        for i, (what, loc) in enumerate(shown):
            if i == 10 and len(shown) < len(self.trace):
                out.append(f"note: ... {len(self.trace) - 11} more call sites")
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


class DeviceError(NNSpecError):
    """A device that cannot run here (no GPU, driver or package), or an op it
    has no kernel for."""


def caret(loc: Loc) -> list[str]:
    line, col = loc.excerpt()
    if not line.strip():
        return []
    # keep tabs so the caret lines up under the same column
    pad = "".join(c if c == "\t" else " " for c in line[: max(col - 1, 0)])
    pad += " " * (col - 1 - len(pad))          # a column past the end of the line
    return ["    " + line, "    " + pad + "^"]


def trimmed(text: str, width: int = 60) -> str:
    """`text` cut to `width` characters, for quoting a token or value in a message."""
    return text if len(text) <= width else text[:width - 3] + "..."


def did_you_mean(name: str, choices) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
