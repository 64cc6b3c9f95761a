"""Load a compiled .nnc model
=============================

A `.nnc` file (from `nnspec compile SPEC -o model.nnc`, or `save(net, path)`)
holds the spec's source and the files it imports, its --set values, dtype
and weights, in an .npz + JSON container: loading parses the spec again and
never runs code from the file.

    nnspec compile specs/mlp.nn -o mlp.nnc --checkpoint runs/mlp
    python examples/load_model.py mlp.nnc
"""
import sys

import nnspec
from nnspec import data
from nnspec.train import evaluate

path = sys.argv[1] if len(sys.argv) > 1 else "mlp.nnc"
net = nnspec.load(path)
print(net)
print("arguments:", net.graph.meta.get("args"))

_, test = data.load("digits", net)
r = evaluate(net, test)
print(f"test accuracy {r['accuracy']:.2%}  test loss {r['loss']:.4f}  ({r['n']} images)")
