"""Scoring a network on a data set, and the run directory's metrics.json and curves.png."""
from __future__ import annotations

import io
import json

import numpy as np

from ..data import class_output, n_examples
from .bundle import atomic_write

EVAL_BATCH = 512


def evaluate(net, data: dict, batch: int = EVAL_BATCH) -> dict:
    """Eval-mode ``{"loss", "accuracy", "n"}`` over all of `data`; accuracy is
    None unless a target holds class indices (then it is the first such target's)."""
    n = n_examples(data)
    if n == 0:
        return {"loss": None, "accuracy": None, "n": 0}
    scored = [(t, co) for t in net.targets if (co := class_output(net, t))]
    loss_sum, right, total = 0.0, 0, 0
    for lo in range(0, n, batch):
        xb = {k: data[k][lo:lo + batch] for k in net.inputs}
        yb = {k: data[k][lo:lo + batch] for k in net.targets}
        loss, outs = net.evaluate_batch(xb, yb)
        loss_sum += float(loss) * len(next(iter(yb.values())))
        if scored:
            t, (out, _) = scored[0]
            pred = np.argmax(outs[out], axis=-1)
            right += int(np.count_nonzero(pred == yb[t]))
            total += yb[t].size
    return {"loss": loss_sum / n, "accuracy": right / total if scored else None, "n": n}


def write_metrics(path, metrics: dict) -> None:
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def plot_curves(path, history: list) -> str | None:
    """Loss and accuracy per epoch; returns a note instead when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no curves.png (pip install matplotlib)"
    epochs = [h["epoch"] for h in history]
    has_acc = any(h.get("test_accuracy") is not None for h in history)
    fig = Figure(figsize=(9 if has_acc else 5, 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        axes[0].plot(epochs, _series(history, key), marker=".", label=label)
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].set_yscale("log")
    axes[0].legend()
    if has_acc:
        for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
            if any(h.get(key) is not None for h in history):
                axes[1].plot(epochs, _series(history, key), marker=".", label=label)
        axes[1].set(title="accuracy", xlabel="epoch")
        axes[1].legend()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.9, wspace=0.3)  # tight_layout costs a second
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return None


def _series(history: list, key: str) -> list:
    return [np.nan if h.get(key) is None else h[key] for h in history]
