"""Write the table of built-in layers into docs/language.md, from the registry,
so the reference stays true:  python docs/gen_layers.py

The table sits between the markers `<!-- layers -->` and `<!-- /layers -->`.
"""
import inspect
import re
from pathlib import Path

from nnspec.ops import all_layers

DOC = Path(__file__).resolve().parent / "language.md"
START, END = "<!-- layers -->", "<!-- /layers -->"


def signature(ld) -> str:
    """The call as a spec writes it: inputs are left out (a chain gives them)."""
    params = list(inspect.signature(ld.fn).parameters.values())[1:]
    if ld.inputs is not None:
        params = params[ld.inputs:]
    parts = []
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            parts.append(f"{p.name}...")
            continue
        text = p.name if p.default is p.empty else f"{p.name}={_value(p.default)}"
        parts.append(text)
    return f"{ld.name}({', '.join(parts)})"


def _value(v):
    return "true" if v is True else "false" if v is False else "none" if v is None else str(v)


def inputs(ld) -> str:
    return "any number" if ld.inputs is None else str(ld.inputs)


def table() -> str:
    rows = ["| layer | inputs | description |", "|---|---|---|"]
    for name, ld in sorted(all_layers().items()):
        doc = " ".join((ld.doc or "").split()).replace("|", "\\|")
        rows.append(f"| `{signature(ld)}` | {inputs(ld)} | {doc} |")
    return "\n".join(rows)


def main():
    text = DOC.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{table()}\n{END}", text, flags=re.S)
    DOC.write_text(new)
    print(f"wrote {len(all_layers())} layers into {DOC}")


if __name__ == "__main__":
    main()
