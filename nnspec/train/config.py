"""Training configuration: defaults, overridden by the spec's train section,
overridden by arguments (the command line's flags)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import TrainingError


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
    def from_meta(cls, train: dict | None, **overrides) -> "TrainConfig":
        """`train` is `graph.meta["train"]`; overrides that are None are ignored."""
        cfg = cls()
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
            if not 0 <= cfg.teacher_forcing <= 1:
                raise TrainingError(f"teacher_forcing is a probability in [0, 1], got "
                                    f"{cfg.teacher_forcing:g}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)
