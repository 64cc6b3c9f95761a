"""Training configuration: defaults, overridden by the spec's train section,
overridden by arguments (the command line's flags)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import SpecError, TrainingError

# What each numeric setting may be; the command line's options, the train
# section and `fit`'s arguments are all checked against this one table.
KINDS = {
    "count": (int, 1, None, "a whole number >= 1"),
    "natural": (int, 0, None, "a whole number >= 0"),
    "positive": (float, 0, None, "a number > 0"),
    "nonnegative": (float, 0, None, "a number >= 0"),
    "probability": (float, 0, 1, "a probability in [0, 1]"),
}
SETTINGS = {"epochs": "count", "batch": "count", "seed": "natural", "lr": "positive",
            "clip": "nonnegative", "teacher_forcing": "probability",
            "momentum": "probability", "weight_decay": "nonnegative", "eps": "positive"}


def number(value, kind: str):
    """`value` (a number, or the text of one) as the `kind` of number KINDS
    names; ValueError saying what it should be otherwise."""
    typ, lo, hi, what = KINDS[kind]
    x = value
    if isinstance(x, str):
        try:
            x = float(x) if typ is float or not x.strip().lstrip("+-").isdigit() else int(x)
        except ValueError:
            raise ValueError(f"should be {what}, got '{value}'") from None
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"should be {what}, got {value!r}")
    if typ is int:
        if x != int(x):
            raise ValueError(f"should be {what}, got {value!r}")
        x = int(x)
    else:
        x = float(x)
    if x < lo or (kind == "positive" and x == 0) or (hi is not None and x > hi):
        raise ValueError(f"should be {what}, got {value!r}")
    return x


def setting_loc(graph, name: str | None = None):
    """Where the spec behind `graph` sets train setting `name` (its value; an
    optimizer's keyword for lr, momentum, ...), else its train section; with
    no name, where it declares the network.  None when the source is not at hand."""
    from ..frontend import ast
    from ..frontend.load import read_module
    meta = getattr(graph, "meta", {})
    try:
        module = read_module(meta["source"], meta.get("file") or "<spec>")
    except Exception:        # no source recorded, or one this frontend cannot read
        return None
    for item in module.items:
        if name is None and isinstance(item, ast.Network):
            return item.loc
        if name is not None and isinstance(item, ast.Train):
            for st in item.body:
                if isinstance(st, ast.Assign) and st.name == name:
                    return st.value.loc or st.loc
                kwargs = getattr(st.value, "kwargs", None) if isinstance(st, ast.Assign) \
                    and st.name == "optimizer" else None
                for kw in kwargs or ():
                    if kw.name == name:
                        return kw.value.loc or kw.loc
            return item.loc
    return None


def require_train_section(graph) -> None:
    """A SpecError at the network when its spec has no train section: training
    needs the targets and loss that section declares."""
    if (graph.meta.get("train") or None) is None:
        raise SpecError(f"network '{graph.name}' has no train section, so there is nothing "
                        f"to train it on", setting_loc(graph),
                        "add a `train { ... }` section after the network, declaring its "
                        "targets and loss (see docs/language.md)")


@dataclass
class TrainConfig:
    data: str = "digits"        # a named data set (nnspec.data.DATASETS), a .npz / .csv file or a directory
    epochs: int = 10            # passes over the training set
    batch: int = 64             # examples per step: >= the training set is full-batch GD, 1 is SGD
    lr: float = 0.1             # peak learning rate; the schedule scales it each step
    optimizer: str = "sgd"      # "sgd" or "adam"
    hyper: dict = field(default_factory=dict)       # the optimizer's other settings: momentum, nesterov, weight_decay, betas, eps
    schedule: dict = field(default_factory=dict)    # {"name": None | "step" | "cosine", ...}; see schedule.py
    clip: float = 0.0           # clip the global gradient norm to this; 0 turns clipping off
    seed: int = 0               # shuffling order (and, from the CLI, the initial weights)
    eval_train: bool = True     # also score the training set each epoch (train accuracy); costs one eval pass
    teacher_forcing: float | dict = 1.0   # P(a step of a cell with a teacher reads it): a number or a decay (forcing.py)

    @classmethod
    def from_meta(cls, train: dict | None, graph=None, **overrides) -> "TrainConfig":
        """`train` is `graph.meta["train"]`; overrides that are None are ignored.
        Numbers out of range are a SpecError at the setting when they come from
        the spec (`graph` gives its source), else a TrainingError."""
        cfg = cls()
        _check_numbers(train or {}, graph)
        _check_numbers({k: v for k, v in overrides.items() if v is not None}, None, False)
        train = dict(train or {})
        opt = train.pop("optimizer", None) or {}
        opt = {"name": opt} if isinstance(opt, str) else dict(opt)     # `optimizer = adam`
        if opt:
            cfg.optimizer = opt.pop("name", cfg.optimizer)
            if "lr" in opt:
                cfg.lr = opt.pop("lr")
            cfg.hyper = opt
        sched = train.get("schedule")
        if sched:
            cfg.schedule = {"name": sched} if isinstance(sched, str) else dict(sched)
        for k in ("data", "epochs", "batch", "clip", "seed", "lr", "teacher_forcing"):
            if train.get(k) is not None:
                setattr(cfg, k, train[k])
        names = {f.name for f in fields(cls)}
        for k, v in overrides.items():
            if k not in names:
                raise TypeError(f"TrainConfig has no setting '{k}'")
            if v is not None:
                setattr(cfg, k, v)
        if isinstance(cfg.schedule, str):
            cfg.schedule = {"name": cfg.schedule}
        cfg.epochs, cfg.batch, cfg.seed = int(cfg.epochs), int(cfg.batch), int(cfg.seed)
        cfg.lr, cfg.clip, cfg.data = float(cfg.lr), float(cfg.clip or 0.0), str(cfg.data)
        if not isinstance(cfg.teacher_forcing, dict):
            cfg.teacher_forcing = float(cfg.teacher_forcing)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def _check_numbers(values: dict, graph, from_spec: bool = True) -> None:
    opt = values.get("optimizer")
    items = list(values.items()) + (list(opt.items()) if isinstance(opt, dict) else [])
    for name, v in items:
        kind = SETTINGS.get(name)
        if kind is None or (name == "teacher_forcing" and isinstance(v, dict)):
            continue      # a teacher-forcing decay is checked by forcing.py
        try:
            number(v, kind)
        except ValueError as e:
            if not from_spec:
                raise TrainingError(f"{name}={v!r}: {name} {e}") from None
            loc = setting_loc(graph, name) if graph is not None else None
            raise SpecError(f"train setting {name} {e}", loc) from None
