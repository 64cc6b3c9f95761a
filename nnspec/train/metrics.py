"""Scoring a network on a data set, and the run directory's metrics.json and curves.png."""
from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass

import numpy as np

from ..data import class_axis, class_output, n_examples, per_example
from .bundle import atomic_write
from .forcing import masks

EVAL_BATCH = 512
LN2 = math.log(2.0)

# what each kind of task is scored by (besides the loss), in evaluate()'s keys
KINDS = {
    "classification": ("accuracy",),          # int target [B], cross-entropy over [B, C]
    "tokens": ("token_accuracy",),            # int target [B, T], cross-entropy over [B, T, C]
    "seq2seq": ("token_accuracy", "free_running_accuracy"),   # tokens + a decoder input
    "lm": ("token_accuracy", "bpc"),          # tokens read from a text (data = text:...)
    "regression": ("mse", "baseline_mse"),    # float target, mse loss
    "segmentation": ("pixel_accuracy", "iou"),    # int target [B, H, W], scores [B, C, H, W]
    "samples": ("token_accuracy", "bits_per_sample"),   # int target [B, T], scores [B, C, T]
    "other": (),
}
METRICS = ("accuracy", "token_accuracy", "free_running_accuracy", "bpc", "mse", "baseline_mse",
           "free_running_mse", "pixel_accuracy", "iou", "bits_per_sample")
# a network with teacher-forced cells also scores its main metric free-running
FREE_RUNNING = {"accuracy": "free_running_accuracy", "token_accuracy": "free_running_accuracy",
                "mse": "free_running_mse"}


@dataclass(frozen=True)
class Task:
    """How a network's results are scored: chosen from its loss, targets and data."""
    kind: str                           # a key of KINDS
    target: str | None = None           # the target scored
    output: str | None = None           # the output that predicts it
    decoder_input: str | None = None    # seq2seq: the input the decoder reads
    start: int = 0                      # seq2seq: the token the decoder starts from
    mean: np.ndarray | None = None      # regression: the training set's mean target
    unigram_bits: float | None = None   # lm: the text's unigram entropy, bits/char
    forcing: tuple = ()                 # teacher-forcing masks: scored teacher-forced and free-running
    axis: int = -1                      # the output's class axis: 1 for channels-first maps

    @property
    def metrics(self) -> tuple:
        free = self.free_running_metric
        return KINDS[self.kind] + ((free,) if free else ())

    @property
    def free_running_metric(self) -> str | None:
        """With teacher-forced cells: the key of the main metric scored free-running."""
        main = KINDS[self.kind][:1]
        free = FREE_RUNNING.get(main[0]) if self.forcing and main else None
        return free if free not in KINDS[self.kind] else None


def task_of(net, train: dict | None = None, info: dict | None = None) -> Task:
    """The first target's task.  Class indices with a [.., C] output are
    classification ([B]) or tokens ([B, T]; seq2seq when the train section
    names a `decoder_input`, lm when the data is a text); with a
    channels-first output they are segmentation ([B, H, W] classes from
    [B, C, H, W] scores) or samples ([B, T] from [B, C, T]); a float target
    under an mse loss is regression (scored against predicting `train`'s mean).
    A network with teacher-forced cells is scored both ways (`Task.forcing`)."""
    task = _task_of(net, train, info)
    forcing = tuple(getattr(net, "forcing", ()))
    return dataclasses.replace(task, forcing=forcing) if forcing else task


def _task_of(net, train, info) -> Task:
    cfg = net.graph.meta.get("train") or {}
    info = info or {}
    for t in net.targets:
        co = class_output(net, t)
        if co is not None:
            rank = len(per_example(net.targets[t]))
            if rank == 0:
                return Task("classification", t, co[0])
            if class_axis(net, t) == 1:
                return Task("segmentation" if rank == 2 else "samples", t, co[0], axis=1)
            if cfg.get("decoder_input"):
                return Task("seq2seq", t, co[0], str(cfg["decoder_input"]),
                            int(cfg.get("start") or 0))
            if "unigram_bits" in info:
                return Task("lm", t, co[0], unigram_bits=info["unigram_bits"])
            return Task("tokens", t, co[0])
        out = _mse_output(net, t)
        if out is not None:
            mean = None if train is None else np.mean(train[t], axis=0, dtype=np.float64)
            return Task("regression", t, out, mean=mean)
    return Task("other")


def _mse_output(net, target: str) -> str | None:
    """The output an mse loss compares with `target`, if there is one."""
    g = net.graph
    by_id = {nid: name for name, nid in g.outputs.items()}
    for c in g.consumers(target):
        if g.node(c).layer == "mse":
            for i in g.node(c).inputs:
                if i in by_id:
                    return by_id[i]
    return None


def evaluate(net, data: dict, batch: int = EVAL_BATCH, task: Task | None = None,
             group=None) -> dict:
    """Eval-mode ``{"loss", "n"}`` over all of `data`, plus the task's metrics
    (see KINDS; the task defaults to `task_of(net)`): ``accuracy`` for
    classification, ``token_accuracy`` (teacher-forced, for seq2seq),
    ``free_running_accuracy`` (greedy decoding from the model's own
    predictions), ``bpc`` (mean cross-entropy / ln 2 of the scored target),
    ``mse`` and ``baseline_mse`` (always predicting the training mean).

    With teacher-forced cells (`task.forcing`) the loss and metrics are the
    teacher-forced ones (every step after the first reads the teacher), and
    ``free_running_accuracy`` or ``free_running_mse`` is the same score with
    every step reading the model's own output, as in use.

    A data-parallel `group` (dist.py) scores each rank's shard of `data` and
    sums the counts over the ranks: every rank gets the whole set's result."""
    task = task or task_of(net)
    if not task.forcing:
        return _score(net, data, batch, task, None, group)
    r = _score(net, data, batch, task, 1.0, group)
    free = task.free_running_metric
    if free is not None:
        r[free] = _score(net, data, batch, task, 0.0, group)[KINDS[task.kind][0]]
    return r


def _score(net, data: dict, batch: int, task: Task, forced: float | None, group=None) -> dict:
    """`evaluate` with every teacher-forcing mask drawn with probability `forced`."""
    n = n_examples(data)
    r = {"loss": None, "n": n, **{k: None for k in task.metrics}}
    if task.kind != "classification":
        r["accuracy"] = None
    if n == 0:
        return r
    start, end = (0, n) if group is None else group.shard(n)
    sums = _sums(net, data, start, end, batch, task, forced)
    if group is not None:
        sums = group.sums(sums)
    (loss_sum, right, total, nll, sq, base_sq, inter, union, free_right) = map(float, sums)
    r["loss"] = loss_sum / n
    key = {"classification": "accuracy", "segmentation": "pixel_accuracy"}.get(
        task.kind, "token_accuracy")
    if task.kind == "regression":
        r["mse"] = sq / total
        r["baseline_mse"] = base_sq / total if task.mean is not None else None
    elif key in r:
        r[key] = right / total
    if task.kind == "lm":
        r["bpc"] = nll / total / LN2
    if task.kind == "samples":
        r["bits_per_sample"] = nll / total / LN2
    if task.kind == "segmentation":         # foreground IoU: pixels of a class > 0
        r["iou"] = inter / union if union else 1.0
    if task.kind == "seq2seq":
        r["free_running_accuracy"] = free_right / data[task.target].size
    return r


def _sums(net, data: dict, start: int, end: int, batch: int, task: Task,
          forced: float | None) -> list:
    """The sums `_score` divides, over rows [start, end) of `data`: loss, right,
    total, nll, sq, base_sq, inter, union, free_right."""
    loss_sum, right, total, nll, sq, base_sq = 0.0, 0, 0, 0.0, 0.0, 0.0
    inter, union = 0, 0         # segmentation: foreground pixels in both / either
    free_right = 0              # seq2seq: tokens decoded right free-running
    for lo in range(start, end, batch):
        hi = min(lo + batch, end)
        xb = {k: data[k][lo:hi] for k in net.inputs}
        yb = {k: data[k][lo:hi] for k in net.targets}
        if forced is not None:
            xb.update(masks(net, xb, forced))
        loss, outs = net.evaluate_batch(xb, yb)
        loss_sum += float(loss) * len(next(iter(yb.values())))
        if task.target is None:
            continue
        y, out = yb[task.target], np.moveaxis(np.asarray(outs[task.output]), task.axis, -1)
        total += y.size
        if task.kind == "regression":
            sq += float(np.sum((out.astype(np.float64) - y) ** 2))
            if task.mean is not None:
                base_sq += float(np.sum((task.mean - y) ** 2))
            continue
        pred = np.argmax(out, axis=-1)
        right += int(np.count_nonzero(pred == y))
        if task.kind in ("lm", "samples"):
            nll += float(np.sum(_nll(out, y)))
        if task.kind == "segmentation":
            inter += int(np.count_nonzero((pred > 0) & (pred == y)))
            union += int(np.count_nonzero((pred > 0) | (y > 0)))
    if task.kind == "seq2seq" and end > start:
        from .decode import free_running
        pred = free_running(net, {k: data[k][start:end] for k in net.inputs},
                            task.decoder_input, task.start, task.output)
        free_right = int(np.count_nonzero(pred == data[task.target][start:end]))
    return [loss_sum, right, total, nll, sq, base_sq, inter, union, free_right]


def _nll(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[y] per position, in float64 (nats)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=-1))
    return logz - np.take_along_axis(z, y[..., None].astype(np.int64), axis=-1)[..., 0]


def write_metrics(path, metrics: dict) -> None:
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


PANELS = (("accuracy", ("accuracy", "free_running_accuracy")), ("bits per character", ("bpc",)),
          ("pixel accuracy and IoU", ("pixel_accuracy", "iou")),
          ("bits per sample", ("bits_per_sample",)),
          ("token accuracy", ("token_accuracy", "free_running_accuracy")),
          ("mean squared error", ("mse", "baseline_mse", "free_running_mse")))


def plot_curves(path, history: list) -> str | None:
    """Loss and the task's score per epoch; returns a note instead when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no curves.png (pip install matplotlib)"
    epochs = [h["epoch"] for h in history]
    # the second panel: the task's main score (the first of these the history holds)
    panel = next(((title, keys) for title, keys in PANELS
                  if any(h.get(f"test_{keys[0]}") is not None for h in history)), None)
    fig = Figure(figsize=(9 if panel else 5, 3.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if panel else 1, squeeze=False)[0]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        axes[0].plot(epochs, _series(history, key), marker=".", label=label)
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].set_yscale("log")
    axes[0].legend()
    if panel:
        title, keys = panel
        for k in keys:
            for part in ("train", "test"):
                key = f"{part}_{k}"
                if any(h.get(key) is not None for h in history):
                    axes[1].plot(epochs, _series(history, key), marker=".",
                                 label=f"{part} {k.replace('_', ' ')}" if len(keys) > 1 else part)
        if title == "bits per character" and history[-1].get("unigram_bits"):
            axes[1].axhline(history[-1]["unigram_bits"], ls="--", c="grey", label="unigram")
        axes[1].set(title=title, xlabel="epoch")
        axes[1].legend()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.9, wspace=0.3)  # tight_layout costs a second
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return None


def _series(history: list, key: str) -> list:
    return [np.nan if h.get(key) is None else h[key] for h in history]
