"""The IR as a Graphviz DOT drawing."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from ..errors import NNSpecError
from ..ir import Graph

COLORS = {"input": "#cfe8ff", "param": "#fff2c2", "state": "#f2e0ff", "const": "#eeeeee",
          "loop": "#d8f5d0"}


def _q(s: str) -> str:
    """A DOT string: quotes and backslashes escaped, line breaks as DOT's own \\n
    (escaping the backslash of a written \\n would make renderers show it)."""
    s = str(s).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\n", "\\n") + '"'


def to_dot(graph: Graph, name: str | None = None, _prefix: str = "") -> str:
    lines = [] if _prefix else [f"digraph {_q(name or graph.name)} {{",
                                "  rankdir=TB; node [shape=box, style=filled, "
                                "fontname=Helvetica, fontsize=10];"]
    for n in graph.nodes():
        shape = "[" + ", ".join(map(str, n.shape)) + "]"
        label = f"{n.id}\n{n.op} {shape}" if n.op not in ("param", "state") else \
            f"{n.id}\n{shape}"
        color = COLORS.get(n.op, "#d9ecd0" if n.id.startswith("d/") else "#ffffff")
        if n.id.startswith("d/"):
            color = "#ffe0e0"
        lines.append(f"  {_q(_prefix + n.id)} [label={_q(label)}, fillcolor={_q(color)}];")
        for i in n.inputs:
            lines.append(f"  {_q(_prefix + i)} -> {_q(_prefix + n.id)};")
        if n.op == "loop":
            body = n.attrs["body"]
            lines.append(f"  subgraph {_q('cluster_' + _prefix + n.id)} {{")
            lines.append(f"    label={_q(n.id + ' (one step)')}; style=dashed;")
            lines.append(to_dot(body, _prefix=_prefix + n.id + "/"))
            lines.append("  }")
    for k, v in graph.outputs.items():
        lines.append(f"  {_q(_prefix + 'out:' + k)} [label={_q(k)}, shape=ellipse, "
                     f"fillcolor=\"#ffd9a8\"];")
        lines.append(f"  {_q(_prefix + v)} -> {_q(_prefix + 'out:' + k)};")
    if not _prefix:
        lines.append("}")
    return "\n".join(lines)


def write_graph(dot: str, out: str) -> None:
    ext = os.path.splitext(out)[1].lower()
    if ext in ("", ".dot", ".gv"):
        with open(out, "w") as f:
            f.write(dot + "\n")
        return
    if ext not in (".svg", ".png", ".pdf"):
        raise NNSpecError(f"graph: cannot write '{ext}' files; use .dot, .svg, .png or .pdf")
    exe = shutil.which("dot")
    if exe is None:
        raise NNSpecError(f"graph: writing {ext} needs Graphviz's `dot` program; "
                          f"write a .dot file instead, or install graphviz")
    with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as f:
        f.write(dot)
    try:
        subprocess.run([exe, f"-T{ext[1:]}", f.name, "-o", out], check=True,
                       capture_output=True)
    except subprocess.CalledProcessError as e:
        raise NNSpecError(f"graph: dot failed: {e.stderr.decode(errors='replace')}") from None
    finally:
        os.unlink(f.name)
