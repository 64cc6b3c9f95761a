"""Data for training and evaluation: named data sets and user files, fitted to
a network's inputs and targets.

    train, test = nnspec.data.load("digits", net)   # dicts: name -> array
    train, test = nnspec.data.load("mine.npz", net)
    train, test = nnspec.data.load("mine.csv", net)  # columns named x_0.., label (files.py)
    train, test = nnspec.data.load("dir/", net)      # dir/train.npz + dir/test.npz
    train, test = nnspec.data.load("text:notes.txt", net)   # char LM windows (text.py)

A single file or named set is split deterministically (`SPLIT_SEED`, 20 %
test, stratified by class for class-index targets), so every run of every
seed is scored on the same test examples.  Arrays are bound to the network
by name (see `bind`), reshaped when only the layout differs (64 values ->
[1, 8, 8]) and cast to the network's dtypes; anything else is a `DataError`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, did_you_mean
from .bind import bind, class_axis, class_output, conform, n_examples, per_example, split
from .files import read_path
from .registry import DATASETS, net_args, parse, register
from . import sequences  # noqa: E402,F401  (registers adding, copy, reverse)
from . import trees  # noqa: E402,F401  (registers trees)
from . import images, waves  # noqa: E402,F401  (register shapes, tones)
from .text import is_text, text_info, text_task

SPLIT_SEED = 0
TEST_FRACTION = 0.2

__all__ = ["load", "read", "bind", "split", "class_axis", "class_output", "conform", "n_examples", "per_example",
           "DATASETS", "register", "SPLIT_SEED", "TEST_FRACTION", "is_text", "text_info",
           "net_args"]


def load(name_or_path, net, *, test_fraction: float = TEST_FRACTION,
         seed: int = SPLIT_SEED, target_column: int = -1, chars=None):
    """``(train, test)``: dicts of arrays named like the network's inputs and
    targets.  `chars` is a text's vocabulary (from a checkpoint) for ``text:`` data."""
    if is_text(name_or_path):
        train, test = text_task(name_or_path, net, chars)
        source = str(name_or_path)
        return bind(train, net, f"{source} (train)"), bind(test, net, f"{source} (test)")
    raw, source = read(name_or_path, net, target_column)
    if isinstance(raw, tuple):
        train, test = raw
        return bind(train, net, f"{source} (train)"), bind(test, net, f"{source} (test)")
    data = bind(raw, net, source)
    targets = [t for t in net.targets if data[t].dtype.kind in "iu" and data[t].ndim == 1]
    return split(data, test_fraction, seed, stratify=targets[0] if len(targets) == 1 else None)


def read(name_or_path, net=None, target_column: int = -1):
    """The raw arrays of a named set or file, not yet bound: ``(arrays, source)``
    where arrays is a dict or a ``(train, test)`` pair."""
    name, opts = parse(name_or_path)
    if name in DATASETS:
        return DATASETS[name](net, **opts), str(name_or_path)
    p = Path(name)
    if not p.exists() and p.suffix == "" and "/" not in name:
        hint = did_you_mean(name, DATASETS)
        raise DataError(f"unknown data set '{name}' (named sets: {', '.join(sorted(DATASETS))}; "
                        f"or give a .npz / .csv path)" + (f"; {hint}" if hint else ""))
    return read_path(p, target_column, net), p.name
