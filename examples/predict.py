"""Predict with a trained network
=================================

Trains the MLP spec briefly (or loads `mlp.nnc` if train_digits.py has
written it), then classifies a few test digits and draws them as text.

    python examples/predict.py
"""
from pathlib import Path

import numpy as np

import nnspec
from nnspec import data
from nnspec.train import fit

SPEC = Path(__file__).resolve().parent.parent / "specs" / "mlp.nn"

if Path("mlp.nnc").exists():
    net = nnspec.load("mlp.nnc")
else:
    net = nnspec.compile(SPEC)
    fit(net, "digits", epochs=10, progress=False)

_, test = data.load("digits", net)
x, label = test["x"][:6], test["label"][:6]
logits = net.forward(x=x)["logits"]               # eval mode, batch of 6
z = np.exp(logits - logits.max(axis=1, keepdims=True))
probs = z / z.sum(axis=1, keepdims=True)

for img, p, y in zip(x, probs, label):
    rows = img.reshape(8, 8)
    art = ["".join(" .:-=+*#"[min(int(v * 8), 7)] for v in r) for r in rows]
    guess = int(p.argmax())
    print("\n".join(art))
    print(f"predicted {guess} ({p[guess]:.1%}), true {y}\n")
