"""Load a compiled .nnc model
=============================

A `.nnc` file (from `net.save(path)` or `nnspec compile SPEC -o model.nnc`)
holds the spec's source and the files it imports, its --set values, dtype
and weights, in an .npz + JSON container: loading parses the spec again and
never runs code from the file.

    python examples/train_digits.py          # writes mlp.nnc
    python examples/load_model.py mlp.nnc    # or: nnspec eval mlp.nnc
"""
import sys

import nnspec

path = sys.argv[1] if len(sys.argv) > 1 else "mlp.nnc"
net = nnspec.load(path)
print(net)
print("arguments:", net.graph.meta.get("args"))

r = net.evaluate("digits")                       # the test split, as `nnspec eval`
print(f"test accuracy {r['accuracy']:.2%}  test loss {r['loss']:.4f}  ({r['n']} images)")
