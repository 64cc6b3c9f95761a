"""The training loop.

    result = fit(net, "digits", epochs=10, out_dir="runs/mlp")

Each epoch: shuffle the training set with the run's own generator, take
minibatches in that order, one compiled `net.train_step` per batch at the
schedule's learning rate (and, for cells with a teacher, with teacher-forcing
masks drawn at the setting's probability); then score train and test sets, write the
checkpoint, metrics.json and curves.png.  Resuming loads the checkpoint
(weights, optimizer state, generator state, history) and continues with the
next epoch, so a resumed run gives the same weights as an uninterrupted one.
With `comm` (or under an MPI launcher) the processes train one model
data-parallel: dist.py.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import data as nndata
from ..errors import TrainingError
from ..memory import out_of_memory
from .checkpoint import load_checkpoint, nonfinite, restore, save_checkpoint, some_names
from . import dist, forcing
from .config import TrainConfig, require_train_section
from .metrics import Task, evaluate, plot_curves, task_of, write_metrics
from ..backend.notice import show_compiles
from .progress import Bar, fmt_metrics
from .rundir import RunDir
from .schedule import lr_at


def fit(net, data=None, epochs=None, batch=None, lr=None, schedule=None, clip=None,
        seed=None, out_dir=None, resume=False, progress=True, *, config=None,
        data_info=None, teacher_forcing=None, comm=None) -> dict:
    """Train `net` in place and return the metrics (what metrics.json holds).

    `data` is a data set name or path (see `nnspec.data.load`) or a
    ``(train, test)`` pair of dicts; unset arguments come from the spec's
    train section (`graph.meta["train"]`), then `TrainConfig`'s defaults.
    With `out_dir`, a checkpoint, metrics.json and curves.png are written
    there after every epoch; `resume` continues from that checkpoint.
    The metrics fit the task (see `metrics.task_of`); `data_info` describes a
    text's vocabulary for ``(train, test)`` pairs made from one (text.py).
    `teacher_forcing` (a probability or a decay, see forcing.py) overrides the
    spec's for cells with a teacher.  `comm`, an mpi4py communicator of
    several processes that each call fit with the same network and data,
    trains one model on all of them (dist.py); without it, the processes an
    MPI launcher started do.  Rank 0 alone prints and writes `out_dir`.
    """
    require_train_section(net.graph)
    cfg = config or TrainConfig.from_meta(
        net.graph.meta.get("train"), net.graph, epochs=epochs, batch=batch, lr=lr,
        schedule=schedule, clip=clip, seed=seed,
        data=data if isinstance(data, (str, Path)) else None, teacher_forcing=teacher_forcing)
    train, test = data if isinstance(data, tuple) else nndata.load(cfg.data, net)
    if data_info is None and not isinstance(data, tuple) and nndata.is_text(cfg.data):
        data_info = nndata.text_info(cfg.data)
    task = task_of(net, train, data_info)
    n = nndata.n_examples(train)
    if n == 0:
        raise TrainingError("the training set is empty")
    plan = Plan(n, max(1, min(cfg.batch, n)), cfg.epochs)
    group = dist.world(comm)
    if resume and out_dir is None:
        raise TrainingError("resume needs the run directory that holds the checkpoint")
    run = RunDir(out_dir) if out_dir is not None and (group is None or group.root) else None
    if run is not None:
        run.claim()         # one run at a time in a directory: held until fit returns
    try:
        return _fit(net, train, test, cfg, plan, task, run, resume, progress, data_info, group)
    finally:
        if run is not None:
            run.release()


def _fit(net, train, test, cfg, plan, task, run, resume, progress, data_info, group) -> dict:
    n = plan.n
    progress = progress and (group is None or group.root)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    net.set_optimizer(cfg.optimizer, **({"clip": cfg.clip} if cfg.clip else {}), **cfg.hyper)
    rng = np.random.default_rng(cfg.seed)
    epoch, step, history = 0, 0, []
    if resume:
        # rank 0 reads the checkpoint and sends it: the others need no file
        ck = load_checkpoint(run.checkpoint, net) if run is not None else None
        source = run.checkpoint if run is not None else "the checkpoint"
        ck = group.bcast(ck) if group is not None else ck
        rng = restore(net, ck, source)
        epoch, step, history = ck["epoch"], ck["step"], ck["history"]
        log(f"resuming {source} after epoch {epoch} (step {step})")
        changed = [f"{k} {ck['config'].get(k)!r} -> {v!r}" for k, v in cfg.to_dict().items()
                   if k not in ("epochs", "data") and ck["config"].get(k) != v]
        if changed:
            log(f"note: resuming with other settings ({'; '.join(changed)}): the result "
                f"will differ from an uninterrupted run")

    if group is not None:
        if getattr(net, "device", "cpu") != "cpu":
            raise TrainingError(f"data-parallel training runs on the CPU for now; this "
                                f"network is on {net.device} (use --device cpu)")
        group.bcast_network(net)      # the ranks start equal
        log(f"training data-parallel on {group.size} processes "
            f"(batch {plan.batch}: {_shards(group, plan.batch)} examples each)")
    bar = Bar(enabled=progress)
    saved, first = epoch, None      # the checkpoint's epoch; the run's first loss
    shown = show_compiles(progress)     # "compiling the training step ..." on stderr
    try:
        for epoch in range(epoch, cfg.epochs):
            step, record, loss = _epoch(net, train, test, cfg, plan, rng, epoch, step, bar, task,
                                        group)
            first = loss if first is None else first
            _check_finite(net, epoch, run, saved)
            rise = _rising(history, record, first)
            history.append(record)
            log(fmt_metrics(record, cfg.epochs))
            if rise:
                record["warning"] = rise
                print(f"warning: {rise}", file=sys.stderr, flush=True)
            if run is not None:
                save_checkpoint(run.checkpoint, net, epoch=epoch + 1, step=step, rng=rng,
                                history=history, config=cfg.to_dict(), data=data_info)
                saved = epoch + 1
                write_metrics(run.metrics, summary(history, cfg, n, nndata.n_examples(test),
                                                   task))
    except MemoryError:
        raise out_of_memory(net, plan.batch) from None
    except KeyboardInterrupt:       # Ctrl-C, or SIGTERM through cli.main
        if run is not None:         # said even when quiet: it is where the run ended
            bar.close()
            print(f"stopped in epoch {epoch + 1}; " + (
                f"{run.checkpoint} holds epoch {saved} (continue with --resume)" if saved
                else "no checkpoint written yet"), file=sys.stderr, flush=True)
        raise
    finally:
        bar.close()     # an interrupt must not leave half a bar on the terminal
        show_compiles(*shown)
    result = summary(history, cfg, n, nndata.n_examples(test), task)
    if run is not None:
        write_metrics(run.metrics, result)
        note = plot_curves(run.curves, history) if history else None
        if note:
            log(f"note: {note}")
        if task.kind == "samples" and history and nndata.n_examples(test):
            log(_write_generated(net, run.generated, test[task.target], cfg.seed))
    return result


PROMPT = 64     # levels of a test waveform that start the generated one


def _write_generated(net, path, levels, seed) -> str:
    """A next-sample model's own waveform, as long as an example: PROMPT
    levels of the first test example, then sampled one at a time."""
    from .decode import generate_samples, write_wav
    quant, length = next(iter(net.inputs.values()))
    prompt = np.asarray(levels[:1, :min(PROMPT, length - 1)])
    wave = generate_samples(net, prompt, length - prompt.shape[1], seed=seed or 0)[0]
    write_wav(path, wave, quant)
    return (f"wrote {path}: {len(wave)} samples at 8 kHz, the first {prompt.shape[1]} from "
            f"a test waveform, the rest generated")


@dataclass(frozen=True)
class Plan:
    n: int          # training examples
    batch: int      # examples per step (the last step of an epoch may take fewer)
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def _shards(group, batch: int) -> str:
    """The shard sizes `dist.shard` gives: "4 or 3", or "4"."""
    q, r = divmod(batch, group.size)
    return f"{q + 1} or {q}" if r else f"{q}"


def _epoch(net, train, test, cfg, plan: Plan, rng, epoch: int, step: int, bar, task: Task,
           group=None):
    """One pass over the shuffled training set, then scoring: ``(step, record,
    the loss of the epoch's first step)``.  With a data-parallel `group`, every
    rank draws the same order and takes its shard of each batch."""
    t0 = time.perf_counter()
    perm = rng.permutation(plan.n)
    loss_sum = 0.0
    bs, steps = plan.batch, plan.steps_per_epoch
    net_forcing = bool(getattr(net, "forcing", None))
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        part = slice(None) if group is None else slice(*group.shard(len(idx)))
        mine = idx[part]
        xb = {k: train[k][mine] for k in net.inputs}
        yb = {k: train[k][mine] for k in net.targets}
        rate = lr_at(cfg.schedule, cfg.lr, step, steps, plan.total_steps)
        if net_forcing:         # drawn for the whole batch: every rank's rng stays the same
            p = forcing.probability(cfg.teacher_forcing, step)
            m = forcing.masks(net, {k: train[k][idx] for k in net.inputs}, p, rng)
            xb.update({k: v[part] for k, v in m.items()})
        if group is None:
            loss = float(net.train_step(xb, yb, rate))
        else:
            loss = group.train_step(net, xb, yb, rate, len(idx))
        first = loss if i == 0 else first
        step += 1
        if not math.isfinite(loss):
            bar.close()
            raise _diverged(net, xb, yb, loss, step, epoch, mine)
        loss_sum += loss * len(idx)
        bar.update(epoch + 1, cfg.epochs, i + 1, steps, loss,
                   (i * bs + len(idx)) / max(time.perf_counter() - t0, 1e-9))
    bar.close()
    record = {"epoch": epoch + 1, "step": step, "lr": rate, "train_loss": loss_sum / plan.n}
    if net_forcing:
        record["teacher_forcing"] = p       # at the epoch's last step
    if cfg.eval_train:
        # free-running decoding costs T forwards, so the training set is scored without it
        quick = Task("tokens", task.target, task.output) if task.kind == "seq2seq" else task
        scored = evaluate(net, train, task=quick, group=group)
        record.update({f"train_{k}": scored[k] for k in ("accuracy",) + quick.metrics
                       if scored.get(k) is not None})
    scored = evaluate(net, test, task=task, group=group)
    record.update(test_loss=scored["loss"], test_accuracy=scored["accuracy"])
    record.update({f"test_{k}": scored[k] for k in task.metrics})
    if task.unigram_bits is not None:
        record["unigram_bits"] = task.unigram_bits
    record["seconds"] = time.perf_counter() - t0
    if group is not None:
        record["processes"] = group.size
        record["allreduce_seconds"] = group.reduce_seconds
        group.reduce_seconds = 0.0
    return step, record, first


def summary(history: list, cfg: TrainConfig, n_train: int, n_test: int,
            task: Task | None = None) -> dict:
    last = history[-1] if history else {}
    extra = {f"{part}_{k}": last.get(f"{part}_{k}") for k in (task.metrics if task else ())
             for part in ("test", "train") if f"{part}_{k}" in last}
    if task is not None and task.unigram_bits is not None:
        extra["unigram_bits"] = task.unigram_bits
    return {
        "format": "nnspec-metrics",
        "task": task.kind if task else None,
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        **extra,
        "epochs": last.get("epoch", 0), "steps": last.get("step", 0),
        "seconds": sum(h["seconds"] for h in history),
        "examples": {"train": n_train, "test": n_test},
        "config": cfg.to_dict(),
        "history": history,
    }


def _diverged(net, xb, yb, loss, step, epoch, rows) -> TrainingError:
    """The error for a non-finite loss: the data's fault when the batch (its
    training examples `rows`) holds NaN or infinity, else where it first appears."""
    bad = []
    for k, a in {**xb, **yb}.items():
        r = np.sort(rows[_nonfinite_rows(a)])
        if len(r):
            bad.append(f"'{k}' of training example{'s' if len(r) > 1 else ''} "
                       f"{', '.join(map(str, r[:5]))}{' ...' if len(r) > 5 else ''}")
    if bad:
        return TrainingError(
            f"the loss is {loss} at step {step} (epoch {epoch + 1}) because the data holds "
            f"NaN or infinity: {'; '.join(bad)}. Fix or remove those examples.")
    try:
        where = net.find_nonfinite(xb, yb)
    except Exception as e:        # the diagnosis must not hide the divergence itself
        where = f"(could not locate it: {e})"
    return TrainingError(
        f"training diverged at step {step} (epoch {epoch + 1}): the loss is {loss}; "
        f"first non-finite values: {where or 'none found on a re-run of this batch'}. "
        f"Try a lower learning rate or gradient clipping (clip).")


def _nonfinite_rows(a) -> np.ndarray:
    """Which rows (examples) of a batch array hold NaN or infinity."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc" or a.ndim == 0:
        return np.zeros(len(np.atleast_1d(a)), bool)
    return ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)


def _check_finite(net, epoch, run, saved) -> None:
    """A step near the end of the epoch may have left the weights (or the
    optimizer's slots) non-finite with a finite loss: stop before saving them."""
    bad = nonfinite({**net.params, **net.state}) + nonfinite(net.optimizer_state())
    if bad:
        keep = f"; {run.checkpoint} keeps epoch {saved}" if run is not None else ""
        raise TrainingError(
            f"training diverged in epoch {epoch + 1}: its last steps left NaN or infinity in "
            f"{some_names(bad)}{keep}. "
            f"Try a lower learning rate or gradient clipping (clip).")


RISE = 1000     # "orders of magnitude": an epoch's loss this many times the lowest before


def _rising(history: list, record: dict, first: float) -> str | None:
    """A warning when this epoch's mean training loss is more than RISE times
    the lowest seen before (the run's first step or an earlier epoch) and above
    the first step's: training that diverges without reaching NaN."""
    if any("warning" in h for h in history):
        return None             # once per run
    best = min([first] + [h["train_loss"] for h in history])
    loss = record["train_loss"]
    if not (loss > RISE * best and loss > first):
        return None
    return (f"the training loss rose from {best:.4g} to {loss:.4g} in epoch {record['epoch']}: "
            f"training is diverging (try a lower learning rate or gradient clipping)")
