"""Predict with a trained network
=================================

Loads `mlp.nnc` if train_digits.py has written it (else trains the MLP spec
briefly), then classifies a few test digits and draws them as text.

    python examples/predict.py
"""
from pathlib import Path

import numpy as np

import nnspec
from nnspec import data

SPEC = Path(__file__).resolve().parent.parent / "specs" / "mlp.nn"

if Path("mlp.nnc").exists():
    net = nnspec.load("mlp.nnc")
else:
    net = nnspec.compile(SPEC)
    net.fit(epochs=5, progress=False)

_, test = data.load("digits", net)              # the test split `nnspec eval` scores
x, label = test["x"][:6], test["label"][:6]
classes = net.predict(x)                         # class indices, eval mode
logits = net(x)                                  # the scores behind them
z = np.exp(logits - logits.max(axis=1, keepdims=True))
probs = z / z.sum(axis=1, keepdims=True)

for img, guess, p, y in zip(x, classes, probs, label):
    rows = img.reshape(8, 8)
    art = ["".join(" .:-=+*#"[min(int(v * 8), 7)] for v in r) for r in rows]
    print("\n".join(art))
    print(f"predicted {guess} ({p[guess]:.1%}), true {y}\n")
