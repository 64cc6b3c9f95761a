"""Plain-text progress on stderr: a \\r-updated bar while an epoch runs (only
on a terminal) and one line per finished epoch."""
from __future__ import annotations

import sys
import time

WIDTH = 24
EVERY = 0.1     # seconds between redraws: drawing must not cost the loop time


class Bar:
    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self.last = 0.0
        self.drawn = 0

    def update(self, epoch, epochs, i, steps, loss, rate) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < EVERY and i < steps):
            return
        self.last = now
        fill = WIDTH * i // steps
        line = (f"epoch {epoch}/{epochs} [{'#' * fill}{'-' * (WIDTH - fill)}] {i}/{steps}"
                f"  loss {loss:.4f}  {rate:,.0f} ex/s")
        self.stream.write("\r" + line.ljust(self.drawn))
        self.stream.flush()
        self.drawn = len(line)

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def fmt_metrics(r: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {r['epoch']:>{width}}/{epochs}", f"train loss {r['train_loss']:.4f}"]
    if r.get("train_accuracy") is not None:
        parts.append(f"acc {100 * r['train_accuracy']:.1f}%")
    if r.get("test_loss") is not None:
        parts.append(f"test loss {r['test_loss']:.4f}")
    if r.get("test_accuracy") is not None:
        parts.append(f"acc {100 * r['test_accuracy']:.2f}%")
    parts += task_metrics(r, "test_")
    if r.get("teacher_forcing") is not None:
        parts.append(f"teacher {r['teacher_forcing']:.2f}")
    parts += [f"lr {r['lr']:.3g}", f"{r['seconds']:.1f}s"]
    return "  ".join(parts)


def task_metrics(r: dict, prefix: str = "test_") -> list:
    """The task's metrics of a record (see metrics.KINDS), each as 'name value'."""
    parts = []
    if r.get(prefix + "token_accuracy") is not None:
        parts.append(f"token acc {100 * r[prefix + 'token_accuracy']:.2f}%")
    if r.get(prefix + "free_running_accuracy") is not None:
        parts.append(f"free-running {100 * r[prefix + 'free_running_accuracy']:.2f}%")
    if r.get(prefix + "bpc") is not None:
        unigram = f" (unigram {r['unigram_bits']:.3f})" if r.get("unigram_bits") else ""
        parts.append(f"bpc {r[prefix + 'bpc']:.3f}{unigram}")
    if r.get(prefix + "pixel_accuracy") is not None:
        parts.append(f"pixel acc {100 * r[prefix + 'pixel_accuracy']:.2f}%")
    if r.get(prefix + "iou") is not None:
        parts.append(f"IoU {r[prefix + 'iou']:.3f}")
    if r.get(prefix + "bits_per_sample") is not None:
        parts.append(f"bits/sample {r[prefix + 'bits_per_sample']:.3f}")
    if r.get(prefix + "mse") is not None:
        base = r.get(prefix + "baseline_mse")
        parts.append(f"mse {r[prefix + 'mse']:.4g}"
                     + (f" (predicting the mean: {base:.4g})" if base is not None else ""))
    if r.get(prefix + "free_running_mse") is not None:
        parts.append(f"free-running mse {r[prefix + 'free_running_mse']:.4g}")
    return parts
