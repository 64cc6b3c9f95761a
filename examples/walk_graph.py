"""Walk the IR graph
===================

Lowers a spec (no compiling) and walks the graph every pass and backend
reads: nodes in topological order, their shapes, the parameters each layer
owns, and the path from an output back to the inputs (networkx underneath).

    python examples/walk_graph.py [specs/cnn.nn]
"""
import sys
from collections import Counter
from pathlib import Path

import networkx as nx

import nnspec

spec = sys.argv[1] if len(sys.argv) > 1 else \
    Path(__file__).resolve().parent.parent / "specs" / "cnn.nn"
g = nnspec.lower(spec)
print(f"{g.name}: {len(g)} nodes, {g.count('param'):,} trainable values, dtype {g.dtype}")

for n in g.nodes():                                # insertion order is topological
    if n.op not in ("param", "state", "const"):
        print(f"  {n.id:<28} {n.op:<16} {list(n.shape)}  <- {', '.join(n.inputs)}")

print("\nops:", dict(Counter(n.op for n in g.nodes())))

owned = {}
for p in g.params:
    owned.setdefault(g.node(p).layer, []).append(f"{p} {list(g.shape(p))}")
print("\nparameters by layer:")
for layer, ps in owned.items():
    print(f"  {layer}: {'; '.join(ps)}")

name, out = next(iter(g.outputs.items()))
x = g.inputs[0]
path = nx.shortest_path(g.nx, x, out)              # edges point from input to consumer
print(f"\nshortest path {x} -> output {name}:")
print("  " + " -> ".join(f"{nid} ({g.node(nid).op})" for nid in path))
