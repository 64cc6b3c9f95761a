"""Train a network from Python
=============================

Compiles the MLP spec, loads the bundled 8x8 digits split the same way as
`nnspec train` (80/20, stratified, fixed seed), trains it with the spec's
own settings (shortened here), scores it and saves a single-file model.

    python examples/train_digits.py
"""
from pathlib import Path

import nnspec
from nnspec import data
from nnspec.train import evaluate, fit, save

SPEC = Path(__file__).resolve().parent.parent / "specs" / "mlp.nn"

net = nnspec.compile(SPEC, seed=0)
print(net)

train, test = data.load("digits", net)           # dicts: input/target name -> array
print(f"{len(train['x'])} training and {len(test['x'])} test images")

# Unset arguments come from the spec's train section; out_dir=None writes no files.
result = fit(net, (train, test), epochs=15, progress=True)
print(f"test accuracy {result['test_accuracy']:.2%} after {result['steps']} steps")

scored = evaluate(net, test)                      # the same numbers, recomputed
print(f"test loss {scored['loss']:.4f}")

save(net, "mlp.nnc")                              # spec text + weights, no pickle
print("saved mlp.nnc (see load_model.py)")
