"""Using a trained network: its score on a data set, and its predictions.

    r = score(net, "digits")              # {"loss", "n", "accuracy", ...} on the test split
    outs = predict(net, {"x": x})         # {"logits": [n, 10], "classes": [n]}

`nnspec eval` / `predict` and `Network.evaluate` / `predict` are shells over these.
A row whose inputs are not all finite (NaN, inf) is refused by `predict`: its
outputs are meaningless and an argmax over NaN reads as class 0.  With
``allow_nonfinite=True`` it is predicted anyway and its class is -1 (as is
that of any row whose scores come out non-finite).
"""
from __future__ import annotations

import numpy as np

from ..data import class_axis, class_output, n_examples
from ..errors import DataError

BATCH = 512      # rows per forward pass: bounds the memory a large input takes


def score(net, data=None, *, chars=None) -> tuple[dict, dict | None]:
    """``(metrics, text info or None)`` of `net` on the test split of `data`: a
    data set name or path (`nnspec.data.load`; default the spec's data, else
    digits), a ``(train, test)`` pair, or one dict of arrays, scored whole.
    `chars` is a text model's vocabulary (a checkpoint keeps it)."""
    from ..data import bind, is_text, load, text_info
    from .config import require_train_section
    from .metrics import evaluate, task_of
    require_train_section(net.graph)      # scoring needs its targets and loss
    info = None
    if isinstance(data, dict):
        train = test = bind(data, net, "data")
    elif isinstance(data, tuple):
        train, test = data
    else:
        name = data or (net.graph.meta.get("train") or {}).get("data") or "digits"
        train, test = load(name, net, chars=chars)
        info = text_info(name, chars) if is_text(name) else None
    return evaluate(net, test, task=task_of(net, train, info)), info


def predict(net, inputs: dict, *, allow_nonfinite: bool = False, source: str = "input") -> dict:
    """Every output for `inputs` (arrays named and shaped for `net`, see
    `nnspec.data.bind`), plus ``classes`` for a classifier."""
    check_finite(inputs, source, allow_nonfinite)
    outs = forward(net, inputs)
    classed = [(co[0], class_axis(net, t)) for t in net.targets if (co := class_output(net, t))]
    if classed:
        name, axis = classed[0]
        scores = np.moveaxis(outs[name], axis, -1)      # classes last (a U-Net's are first)
        outs["classes"] = np.where(np.isfinite(scores).all(axis=-1),
                                   np.argmax(scores, axis=-1), -1)
    return outs


def forward(net, x: dict, batch: int = BATCH) -> dict:
    n = n_examples(x)
    parts: dict = {}
    for lo in range(0, n, batch):
        for k, v in net.forward(**{k: a[lo:lo + batch] for k, a in x.items()}).items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def nonfinite_rows(arrays: dict) -> np.ndarray:
    """Indices of the rows where some array holds a NaN or an infinity."""
    bad = np.zeros(n_examples(arrays), bool)
    for a in arrays.values():
        if a.dtype.kind in "fc":
            bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return np.flatnonzero(bad)


def check_finite(arrays: dict, source: str, allow: bool) -> str | None:
    """None when every input is finite; else a DataError naming the rows, or,
    when `allow`, the message (for the caller to show as a warning)."""
    bad = nonfinite_rows(arrays)
    if not len(bad):
        return None
    shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
    msg = (f"{source}: {len(bad)} of {n_examples(arrays)} rows hold NaN or infinite "
           f"inputs (rows {shown}, counted from 0)")
    if not allow:
        raise DataError(msg + "; fix or drop them, or allow them (--allow-nonfinite, "
                              "allow_nonfinite=True: their class is -1)")
    return msg
