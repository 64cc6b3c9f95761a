"""Fitting arrays to a network: names, shapes, dtypes, and the train/test split."""
from __future__ import annotations

import math

import numpy as np

from ..errors import DataError
from ..ir import BATCH

GENERIC = {"input": "input", "target": "target"}   # kind -> generic array name


def per_example(shape) -> tuple:
    """A network's shape without its leading batch axis."""
    shape = tuple(shape)
    return shape[1:] if shape and shape[0] == BATCH else shape


def n_examples(arrays: dict) -> int:
    """Examples in a dict of arrays (all the same length, by `bind`)."""
    return len(next(iter(arrays.values()))) if arrays else 0


def fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def bind(arrays: dict, net, source: str, *, require_targets: bool = True) -> dict:
    """Arrays named for the network: each input and target looked up by its
    own name, else by the generic name when the network has only one of
    that kind; reshaped and cast to what the network expects.  Without targets
    (predicting) an input only a teacher reads may be left out: the network
    runs free-running and never reads it."""
    out = {}
    kinds = [("input", net.inputs)] + ([("target", net.targets)] if require_targets else [])
    optional = () if require_targets else getattr(net, "teacher_only", ())
    for kind, wanted in kinds:
        for name, shape in wanted.items():
            if name in arrays:
                a = arrays[name]
            elif len(wanted) == 1 and GENERIC[kind] in arrays:
                a = arrays[GENERIC[kind]]
            elif name in optional:
                continue
            else:
                have = ", ".join(sorted(arrays)) or "none"
                raise DataError(f"{source}: no array for the {kind} '{name}' "
                                f"(arrays found: {have})")
            out[name] = conform(a, name, shape, _dtype(net, name), source)
    sizes = {n: len(a) for n, a in out.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"'{n}' has {s}" for n, s in sizes.items())
        raise DataError(f"{source}: arrays hold different numbers of examples: {listed}")
    if require_targets:
        _check_classes(out, net, source)
    return out


def conform(a, name: str, shape, dtype: np.dtype, source: str) -> np.ndarray:
    """`a` with the per-example shape `shape` (a flat array is reshaped when
    the sizes match exactly) and the network's dtype."""
    a = np.asarray(a)
    want = per_example(shape)
    expected = fmt((BATCH,) + want)
    if a.ndim == 0:
        raise DataError(f"{source}: '{name}' is a scalar; expected an array of shape {expected}")
    got = a.shape[1:]
    if not _fits(got, want):
        fixed = [d for d in want if isinstance(d, int)]
        if len(fixed) == len(want) and math.prod(got) == math.prod(want):
            a = a.reshape((len(a),) + want)
        else:
            raise DataError(f"{source}: '{name}' should have shape {expected}, "
                            f"got {fmt(a.shape)}")
    if dtype.kind in "iu":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise DataError(f"{source}: '{name}' should hold integer class indices, "
                                f"got non-integer values")
        elif a.dtype.kind not in "iub":
            raise DataError(f"{source}: '{name}' should be numeric, got {a.dtype}")
    elif a.dtype.kind not in "iubf":
        raise DataError(f"{source}: '{name}' should be numeric, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _fits(got, want) -> bool:
    return len(got) == len(want) and all(not isinstance(w, int) or g == w
                                         for g, w in zip(got, want))


def _dtype(net, name: str) -> np.dtype:
    g = net.graph
    return np.dtype(g.dtype_of(name) if name in g else g.dtype)


def class_output(net, target: str):
    """``(output name, number of classes)`` when `target` holds class indices
    for an output (integer target; output shape = target shape + [C], or
    [C] + target shape for channels-first maps: see `class_axis`); else None."""
    found = _class_output(net, target)
    return found[:2] if found else None


def class_axis(net, target: str) -> int:
    """The axis of `target`'s class output (batch included) that holds the
    classes: -1, or 1 for a channels-first map ([B, C, H, W] scores for
    [B, H, W] classes, as a U-Net or WaveNet writes them)."""
    found = _class_output(net, target)
    return found[2] if found else -1


def _class_output(net, target: str):
    g = net.graph
    if _dtype(net, target).kind not in "iu":
        return None
    t = per_example(net.targets[target])
    # an output named `logits` first: the main classifier beside auxiliary heads (GoogLeNet)
    names = sorted(net.outputs, key=lambda name: name != "logits")
    shapes = {name: per_example(g.shape(g.outputs[name])) for name in names}
    for name, s in shapes.items():
        if len(s) == len(t) + 1 and _fits(s[:-1], t) and isinstance(s[-1], int):
            return name, s[-1], -1
    for name, s in shapes.items():
        if t and len(s) == len(t) + 1 and _fits(s[1:], t) and isinstance(s[0], int):
            return name, s[0], 1
    return None


def _check_classes(arrays: dict, net, source: str):
    # an index out of range would read past a kernel's array, so it is caught here
    for t in net.targets:
        co = class_output(net, t)
        if co is None or arrays[t].size == 0:
            continue
        lo, hi = int(arrays[t].min()), int(arrays[t].max())
        if lo < 0 or hi >= co[1]:
            bad = lo if lo < 0 else hi
            raise DataError(f"{source}: target '{t}' holds class {bad}, but output "
                            f"'{co[0]}' has {co[1]} classes (0..{co[1] - 1})")


def split(arrays: dict, test_fraction: float = 0.2, seed: int = 0, stratify: str | None = None):
    """Deterministic ``(train, test)`` with round(n * test_fraction) test
    examples, each class (of the `stratify` array, when given) contributing in
    proportion; both keep the original order."""
    n = n_examples(arrays)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)]
    if stratify is not None and arrays[stratify].ndim == 1:
        labels = arrays[stratify]
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quota = _quotas([len(g) for g in groups], int(round(n * test_fraction)))
    test = np.concatenate([rng.permutation(g)[:q] for g, q in zip(groups, quota)])
    mask = np.zeros(n, bool)
    mask[test] = True
    return ({k: v[~mask] for k, v in arrays.items()},
            {k: v[mask] for k, v in arrays.items()})


def _quotas(sizes: list, total: int) -> list:
    """Split `total` over groups in proportion to `sizes` (largest remainder)."""
    n = sum(sizes)
    exact = [s * total / n for s in sizes]
    quota = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: quota[i] - exact[i])
    for i in by_remainder[: total - sum(quota)]:
        quota[i] += 1
    return quota
