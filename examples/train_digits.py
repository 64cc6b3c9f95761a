"""Train a network from Python
=============================

Compiles the MLP spec, trains it on the bundled 8x8 digits with the spec's
own settings (fewer epochs here), split as `nnspec train` splits them (80/20,
stratified, fixed seed), scores it and saves a single-file model.

    python examples/train_digits.py
"""
from pathlib import Path

import nnspec

SPEC = Path(__file__).resolve().parent.parent / "specs" / "mlp.nn"

net = nnspec.compile(SPEC, seed=0)
print(net)

# Unset settings come from the spec's train section (data = digits, adam, batch 32);
# out_dir="runs/mlp" would also write a checkpoint, metrics.json and curves.png.
result = net.fit(epochs=5, progress=True)
print(f"test accuracy {result['test_accuracy']:.2%} after {result['steps']} steps "
      f"({result['examples']['train']} training, {result['examples']['test']} test images)")

scored = net.evaluate()                           # the test split again: the same numbers
print(f"test loss {scored['loss']:.4f}")

net.save("mlp.nnc")                               # spec text + weights, no pickle
print("saved mlp.nnc (see load_model.py and predict.py)")
