"""`Network`: a compiled graph users call, train, save and load.

    net = Network(graph, dtype="float32", seed=0)
    y = net.forward(x=batch)["y"]                               # eval mode
    loss = net.train_step({"x": xb}, {"label": yb}, lr=0.1)     # one compiled step
    loss, grads = net.gradients({"x": xb}, {"label": yb})       # train-mode fwd + bwd
    net.forcing                  # teacher-forcing mask inputs (zeros unless given)
    net.find_nonfinite({"x": xb}, {"label": yb})                # first non-finite node
    net.fit("digits", epochs=5); net.evaluate(); net.predict(x); net.save("m.nnc")
    net.export_onnx("m.onnx")    # the inference graph as ONNX (docs/onnx.md)

Parameters live in one flat arena (`P`), state in another (`S`); `net.params`
and `net.state` are views into them, so a compiled step updates them in place
and the arrays a user holds stay live.  Gradients (`G`) and optimizer slots
(`M`, `V`) share P's layout.  Each program (infer, eval, grad, train) is
compiled on first use (backend/cpu.py) and cached on disk.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError
from .ir import Graph
from .memory import touch, zeros
from .ops.collective import COMM_INPUT, COMM_SIZE

_ALIGN = 16
_OPTIMIZERS = {
    "sgd": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
}


def _layout(graph: Graph, ids) -> tuple[dict, int]:
    out, off = {}, 0
    for nid in ids:
        shape = tuple(graph.shape(nid))
        n = int(np.prod(shape, dtype=np.int64))
        out[nid] = (off, shape)
        off += max(-(-n // _ALIGN) * _ALIGN, _ALIGN)
    return out, off


def _optim():
    from .backend import optim     # imports Numba: only when a step runs
    return optim


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Network:
    def __init__(self, graph: Graph, dtype: str | None = None, seed: int = 0,
                 device: str = "cpu"):
        from .backend.device import resolve
        from .init import fill_initial
        from .memory import check_fits
        self.device = resolve(device)       # "cpu" or "cuda" ("auto" resolved)
        self._mirror = None                 # the device's copies of the arenas (backend/cuda)
        self.graph = graph
        self.dtype = np.dtype(dtype or graph.dtype).name
        self.seed = seed
        tf = graph.meta.get("teacher_forcing") or {}
        # a teacher-forced cell's 0/1 mask (frontend/teacher.py): a hidden input the
        # trainer draws; left out it is zeros, and so are inputs only a teacher reads
        self.forcing = {n: self._example_shape(n) for n in tf.get("masks", ())}
        self.teacher_only = tuple(tf.get("teacher_only", ()))
        self._zeros_default = set(self.forcing) | set(self.teacher_only)
        self.inputs = {n: self._example_shape(n) for n in graph.inputs
                       if n not in self.forcing}
        self.targets = {n: self._example_shape(n) for n in graph.targets}
        self.outputs = list(graph.outputs)
        self._expect_in = [self._expected(n) for n in [*self.inputs, *self.forcing]]
        self._expect_all = self._expect_in + [self._expected(n) for n in self.targets]
        check_fits(graph, self.dtype)      # before allocating: a TrainingError if too big
        self._playout, np_ = _layout(graph, graph.params)
        self._slayout, ns = _layout(graph, graph.state)
        self._P = zeros(max(np_, 1), self.dtype)
        touch(self._P)                      # its pages, on every core: filled next
        self._S = np.zeros(max(ns, 1), self.dtype)
        # zeros, not zeros_like: the pages are mapped when a step first writes
        # them, where zeros_like writes every page once more beforehand
        self._G = zeros(self._P.size, self.dtype)
        self._params = {n: self._view(self._P, self._playout, n) for n in graph.params}
        self._state = {n: self._view(self._S, self._slayout, n) for n in graph.state}
        for n in graph.params + graph.state:      # written in place: no copies
            fill_initial(graph, n, seed, (self._params if n in self._params else self._state)[n])
        self._programs: dict = {}
        self._pacer = None                  # training steps' thread count (backend/cores.py)
        # sync_bn: the handles of the job's reductions, fed to training programs
        # (zeros in one process; train/dist.py fills them): ops/collective.py
        from .passes.sync_bn import wanted
        self._comm = np.zeros(COMM_SIZE, np.int64) if wanted(graph) else None
        train = dict(graph.meta.get("train") or {})
        opt = train.get("optimizer") or {"name": "sgd"}
        opt = {"name": opt} if isinstance(opt, str) else dict(opt)
        name = opt.pop("name", "sgd")
        opt.pop("lr", None)
        if train.get("clip"):
            opt.setdefault("clip", train["clip"])
        self.set_optimizer(name, **opt)

    # ---- the device ------------------------------------------------------------
    @property
    def params(self) -> dict:
        """Parameter name -> array, a view of the parameter arena (up to date
        with the device's after a GPU step: `sync`)."""
        self.sync()
        return self._params

    @property
    def state(self) -> dict:
        """State name -> array (batch-norm running statistics), as `params`."""
        self.sync()
        return self._state

    def sync(self) -> None:
        """Copy what programs on the GPU changed (parameters, state, gradients,
        optimizer slots) back into the host arrays; the next program copies the
        host's in again.  Nothing on the CPU, whose programs write the host's."""
        if self._mirror is not None:
            self._mirror.pull()

    def to(self, device: str) -> "Network":
        """Run on `device` ("cpu", "cuda" or "auto") from now on; the values
        move with the network."""
        from .backend.device import resolve
        device = resolve(device)
        if device != self.device:
            self.sync()
            self.device, self._mirror, self._programs, self._train = device, None, {}, None
        return self

    # ---- shapes and feeds ------------------------------------------------------
    def _example_shape(self, nid: str) -> tuple:
        s = tuple(self.graph.shape(nid))
        return s[1:] if s and s[0] == "B" else s

    @staticmethod
    def _view(arena, layout, nid):
        off, shape = layout[nid]
        return arena[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def _expected(self, name: str):
        want = np.dtype(self.graph.dtype_of(name))
        if want.kind == "f":
            want = np.dtype(self.dtype)
        per_ex = self.inputs.get(name, self.targets.get(name, self.forcing.get(name)))
        return name, tuple(per_ex), want

    def _feeds(self, inputs: dict, targets: dict | None) -> dict:
        """The arrays a program reads, checked against the shapes and dtypes
        the network expects (arrays already right pass through uncopied)."""
        if not isinstance(inputs, dict) or not isinstance(targets, (dict, type(None))):
            inputs, targets = self._by_name(inputs, targets)
        expected = self._expect_in if targets is None else self._expect_all
        given = inputs if targets is None else {**inputs, **targets}
        feeds, batch = {}, None
        for name, per_ex, want in expected:
            a = given.get(name)
            if a is None and name in self._zeros_default \
                    and (zeros := self.blank(name, given)) is not None:
                a = zeros
            elif (type(a) is not np.ndarray or a.dtype != want or a.shape[1:] != per_ex
                    or a.ndim != len(per_ex) + 1 or not a.flags.c_contiguous):
                a = self._check(name, per_ex, want, given)
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise DataError(f"'{name}': batch of {a.shape[0]} rows, but the other "
                                f"arrays have {batch}")
            feeds[name] = a
        if batch == 0:
            raise DataError("empty batch (0 rows)")
        if len(given) > len(expected):
            extra = set(given) - {e[0] for e in expected} - set(self.targets)
            if extra:
                raise DataError(f"unknown arrays {sorted(extra)}; the network takes "
                                f"{sorted(e[0] for e in expected)}")
        return feeds

    def _by_name(self, inputs, targets) -> tuple[dict, dict | None]:
        """Arrays given positionally (``net.gradients(x, y)``), named: only for a
        network with one input and (when targets are given) one target."""
        if len(self.inputs) != 1 or (targets is not None and len(self.targets) != 1):
            raise DataError(f"arrays given without names need a network with one input and "
                            f"one target; this one takes inputs {sorted(self.inputs)} and "
                            f"targets {sorted(self.targets)}: pass dicts {{name: array}}")
        if not isinstance(inputs, dict):
            inputs = {next(iter(self.inputs)): inputs}
        if targets is not None and not isinstance(targets, dict):
            targets = {next(iter(self.targets)): targets}
        return inputs, targets

    def blank(self, name: str, given: dict):
        """Zeros for the mask or teacher-only input `name`, B and T read from the
        other arrays `given` (None when they do not tell)."""
        _, per_ex, want = self._expected(name)
        B = T = None
        for name, shape, _ in self._expect_all:
            a = given.get(name)
            if a is None or name in self._zeros_default:
                continue
            B = len(a) if B is None else B
            if T is None and shape[:1] == ("T",) and np.ndim(a) > 1:
                T = np.shape(a)[1]
        shape = tuple(T if d == "T" else d for d in per_ex)
        if B is None or None in shape:
            return None
        return np.zeros((B,) + shape, want)

    def _check(self, name, per_ex, want, given) -> np.ndarray:
        if name not in given:
            kind = "target" if name in self.targets else "input"
            raise DataError(f"no array given for {kind} '{name}' (expected shape "
                            f"{_fmt_shape(('B',) + per_ex)}); got {sorted(given)}")
        a = np.asarray(given[name])
        if want.kind == "f" and a.dtype.kind not in "fiub":
            raise DataError(f"'{name}': expected numbers ({want.name}), got {a.dtype}")
        if want.kind in "iu" and a.dtype.kind not in "iu":
            raise DataError(f"'{name}': expected integers (class indices, {want.name}), "
                            f"got {a.dtype}")
        if a.ndim != len(per_ex) + 1 or any(
                not isinstance(d, str) and d != n for d, n in zip(per_ex, a.shape[1:])):
            raise DataError(f"'{name}': expected shape {_fmt_shape(('B',) + per_ex)}, "
                            f"got {_fmt_shape(a.shape)}")
        return np.ascontiguousarray(a, dtype=want)

    def _program(self, kind: str):
        key = (kind, self._opt_key()) if kind == "train" else kind
        p = self._programs.get(key)
        if p is None:
            from .backend import compile_program, mirror_for
            if self._mirror is None:
                self._mirror = mirror_for(self.device)
            p = compile_program(self.graph, kind, self.dtype, self._playout, self._slayout,
                                {"name": self._opt_name, **self._hyper},
                                device=self.device, mirror=self._mirror)
            self._programs[key] = p
        return p

    def _run(self, kind: str, feeds: dict, hp=None):
        p = self._program(kind)
        if hp is None:
            hp = self._hp0
        return p(self._P, self._S, self._G, self._M, self._V, hp, self._fed(kind, feeds)), p

    def _fed(self, kind: str, feeds: dict) -> dict:
        """`feeds` and, for a training program with sync_bn, the MPI handles."""
        if self._comm is not None and kind in ("grad", "accumulate", "train"):
            feeds[COMM_INPUT] = self._comm
        return feeds

    # ---- inference -------------------------------------------------------------
    def forward(self, **inputs) -> dict:
        """Eval-mode forward: output name -> array (a new array per call)."""
        feeds = self._feeds(inputs, None)
        _, p = self._run("infer", feeds)
        return self._collect(p, feeds, self.graph.outputs)

    def __call__(self, *args, **inputs):
        if args:
            if len(args) != 1 or len(self.inputs) != 1 or inputs:
                raise DataError(f"net(x) takes one array for a network with one input; "
                                f"this one takes {sorted(self.inputs)}: use net(name=array)")
            inputs = {next(iter(self.inputs)): args[0]}
        out = self.forward(**inputs)
        return out[self.outputs[0]] if len(out) == 1 or args else out

    def predict(self, x, *, allow_nonfinite: bool = False):
        """Class indices ``[n]`` (``[n, T]`` for a sequence) for a classifier (a
        target holding class indices), else every output ``{name: array}``.
        `x` is an array (one input) or ``{input name: array}``, reshaped like
        data files (64 values -> [1, 8, 8]); it runs in batches.  Rows with NaN
        or infinite inputs are a DataError, or with `allow_nonfinite` get class -1."""
        from .data import bind
        from .train.inference import predict
        if not isinstance(x, dict):
            x = self._by_name(x, None)[0]
        outs = predict(self, bind(x, self, "predict", require_targets=False),
                       allow_nonfinite=allow_nonfinite, source="predict")
        return outs["classes"] if "classes" in outs else outs

    def fit(self, data=None, **settings) -> dict:
        """Train in place with `nnspec.train.fit` (the same as `nnspec train`):
        `data` is a data set name or path, or a ``(train, test)`` pair of dicts
        (default: the spec's); `settings` are fit's (epochs, batch, lr, schedule,
        clip, seed, out_dir, resume, progress, teacher_forcing), each defaulting
        to the train section's.  Returns the metrics (what metrics.json holds)."""
        from .train.loop import fit
        return fit(self, data, **settings)

    def evaluate(self, data=None) -> dict:
        """Eval-mode loss and the task's metrics (accuracy, ...), as `nnspec eval`:
        on the test split of `data` (a name or path, default the spec's data), of
        a ``(train, test)`` pair, or on all of one dict of arrays."""
        from .train.inference import score
        return score(self, data)[0]

    def save(self, path) -> None:
        """Write this network (its spec, --set values, dtype and current weights)
        to a `.nnc` file; `nnspec.load(path)` reads it back."""
        from .train.nnc import save
        save(self, path, seed=self.seed)

    def export_onnx(self, path) -> None:
        """Write the eval-mode forward graph and current weights as an ONNX model
        (`nnspec.onnx.export`; needs the onnx package, docs/onnx.md)."""
        from .onnx import export
        export(self, path)

    def _collect(self, p, feeds, names: dict) -> dict:
        batch = next(iter(feeds.values())).shape[0]
        out = {}
        for name, nid in names.items():
            if nid in feeds:
                out[name] = feeds[nid].copy()
            elif nid in self._params:
                out[name] = self.params[nid].copy()
            elif nid in self._state:
                out[name] = self.state[nid].copy()
            else:
                out[name] = p.value(nid, batch).copy()
        return out

    def evaluate_batch(self, inputs: dict, targets: dict):
        """Eval-mode (loss, {output name: array})."""
        feeds = self._feeds(inputs, targets)
        (loss, _), p = self._run("eval", feeds)
        return float(loss), self._collect(p, feeds, self.graph.outputs)

    # ---- parameters ------------------------------------------------------------
    def state_dict(self) -> dict:
        d = {k: v.copy() for k, v in self.params.items()}
        d.update({k: v.copy() for k, v in self.state.items()})
        return d

    def load_state_dict(self, d: dict) -> None:
        mine = {**self.params, **self.state}
        missing = [k for k in mine if k not in d]
        extra = [k for k in d if k not in mine]
        bad = [f"'{k}': expected {_fmt_shape(v.shape)}, got {_fmt_shape(np.shape(d[k]))}"
               for k, v in mine.items() if k in d and tuple(np.shape(d[k])) != v.shape]
        if missing or extra or bad:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"not in this network {extra}")
            parts += bad
            raise DataError("state dict does not fit the network: " + "; ".join(parts)
                            + f" (expected {sorted(mine)})")
        for k, v in mine.items():
            v[...] = np.asarray(d[k], dtype=self.dtype)

    # ---- training --------------------------------------------------------------
    def gradients(self, inputs: dict, targets: dict):
        """Train-mode forward and backward, no update: (loss, {param: gradient}).
        `inputs` and `targets` are dicts of arrays by name, or two arrays for a
        network with one input and one target (as in ``net(x)``)."""
        feeds = self._feeds(inputs, targets)
        (loss, _), _ = self._run("grad", feeds)
        self.sync()
        return float(loss), {n: self._view(self._G, self._playout, n).copy()
                             for n in self._params}

    def accumulate_gradients(self, inputs: dict, targets: dict) -> float:
        """Train-mode forward and backward into the gradient arena `grad_arena`
        (no copies, no optimizer step; batch norm's running statistics are
        updated, as in a training step): the loss.  With `apply_gradients`,
        the two halves of `train_step`, for a caller that changes the
        gradients in between (data-parallel training averages them across
        processes)."""
        feeds = self._feeds(inputs, targets)
        (loss, _), _ = self._run("accumulate", feeds)
        return float(loss)

    @property
    def collectives(self):
        """With `sync_bn`: the int64 array of MPI handles the training programs
        read (ops/collective.py; zeros in one process), else None."""
        return self._comm

    @property
    def grad_arena(self) -> np.ndarray:
        """Every parameter's gradient, packed flat in the parameters' layout."""
        self.sync()
        return self._G

    def apply_gradients(self, lr: float) -> bool:
        """One optimizer step (clipping included) from the gradients in
        `grad_arena`; False, with the weights unchanged, when their norm is not
        finite."""
        self.sync()
        ok = _optim().update(self._P, self._G, self._M, self._V, self._hp(lr),
                             {"name": self._opt_name, **self._hyper})
        if ok:
            self._t += 1
        return ok

    def set_optimizer(self, name: str, **hyper) -> None:
        name = str(name).lower()
        self.sync()          # the slots are replaced: the device's weights come back first
        if name not in _OPTIMIZERS:
            raise DataError(f"unknown optimizer '{name}'; known: {sorted(_OPTIMIZERS)}")
        h = dict(_OPTIMIZERS[name])
        h["clip"] = 0.0
        hyper = dict(hyper)
        hyper.pop("lr", None)
        if "beta1" in hyper or "beta2" in hyper:
            b = h["betas"]
            hyper["betas"] = (hyper.pop("beta1", b[0]), hyper.pop("beta2", b[1]))
        unknown = set(hyper) - set(h)
        if unknown:
            raise DataError(f"optimizer {name}: unknown settings {sorted(unknown)}; "
                            f"it takes {sorted(h)}")
        h.update(hyper)
        if "betas" in h:
            h["betas"] = tuple(float(x) for x in h["betas"])
        self._opt_name, self._hyper = name, h
        self._M = zeros(self._P.size, self.dtype)
        self._V = zeros(self._P.size, self.dtype) if name != "sgd" else np.zeros(1, self.dtype)
        self._t = 0
        self._hp0 = np.zeros(8, self.dtype)
        self._hp_key, self._hp_arr = None, None
        self._train = None

    def _opt_key(self):
        return (self._opt_name, bool(self._hyper.get("nesterov", False)))

    def _hp(self, lr: float) -> np.ndarray:
        """The hyper-parameter array of the next step (backend/optim.py's
        layout); rebuilt only when something in it changes."""
        key = (lr, self._t) if self._opt_name != "sgd" else lr
        if key == self._hp_key:
            return self._hp_arr
        o = _optim()
        h = self._hyper
        adam = self._opt_name != "sgd"
        hp = np.zeros(o.HP_SIZE, np.float64)
        hp[o.LR] = lr
        hp[o.WEIGHT_DECAY] = h.get("weight_decay", 0.0)
        hp[o.CLIP] = h.get("clip", 0.0) or 0.0
        if not adam:
            hp[o.MOMENTUM] = h["momentum"]
        else:
            b1, b2 = h["betas"]
            t = self._t + 1
            hp[o.MOMENTUM], hp[o.BETA2], hp[o.EPS] = b1, b2, h["eps"]
            hp[o.STEP_SIZE] = lr / (1.0 - b1 ** t)
            hp[o.BC2_RSQRT] = 1.0 / math.sqrt(1.0 - b2 ** t)
        self._hp_key, self._hp_arr = key, hp.astype(self.dtype)
        return self._hp_arr

    def train_step(self, inputs: dict, targets: dict, lr: float) -> float:
        """One compiled optimizer step; returns the loss (computed before the
        update).  A non-finite loss (or gradient norm, when clipping) skips the
        update and comes back as NaN/inf: `find_nonfinite` locates it."""
        feeds = self._feeds(inputs, targets)
        p = self._train
        if p is None:
            p = self._train = self._train_program()
            touch(self._G, self._M, self._V)     # written whole by every step
            from .backend.cores import Pacer, paced
            # one thread when that is faster (a busy machine; NNSPEC_PACE=0: never)
            self._pacer = Pacer() if self.device == "cpu" and paced() else None
        args = (self._P, self._S, self._G, self._M, self._V, self._hp(lr),
                self._fed("train", feeds))
        pacer = self._pacer
        if pacer is not None and pacer.active:
            loss, ok = pacer.run(p, args, feeds)
        else:
            loss, ok = p(*args)
        if ok:
            self._t += 1
            return float(loss)
        return float(loss) if not math.isfinite(loss) else float("nan")

    def _train_program(self):
        """The training step: on a CPU of two cores or more, a network whose
        examples never meet runs it as halves of the batch (backend/split.py),
        else the compiled train program."""
        if self.device == "cpu" and self._comm is None:
            from .backend import split
            from .backend.cores import chosen_threads
            if split.enabled() and chosen_threads() >= 2 and split.why_not(self.graph) is None:
                acc = self._program("accumulate")
                if split.takes(acc):
                    return split.SplitStep(acc, self._G, {"name": self._opt_name, **self._hyper})
        return self._program("train")

    def optimizer_state(self) -> dict:
        self.sync()
        slots = {}
        if self._opt_name == "sgd":
            slots["momentum_buffer"] = {n: self._view(self._M, self._playout, n).copy()
                                        for n in self.params}
        else:
            slots["exp_avg"] = {n: self._view(self._M, self._playout, n).copy()
                                for n in self.params}
            slots["exp_avg_sq"] = {n: self._view(self._V, self._playout, n).copy()
                                   for n in self.params}
        hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._hyper.items()}
        return {"name": self._opt_name, "hyper": hyper, "step": self._t, "slots": slots}

    def load_optimizer_state(self, d: dict) -> None:
        hyper = dict(d.get("hyper") or {})
        self.set_optimizer(d["name"], **hyper)
        self._t = int(d.get("step", 0))
        self._hp_key = None
        self.sync()
        names = {"momentum_buffer": self._M, "exp_avg": self._M, "exp_avg_sq": self._V}
        for slot, arrays in (d.get("slots") or {}).items():
            if slot not in names:
                raise DataError(f"optimizer state: unknown slot '{slot}' for {d['name']}")
            for n, a in arrays.items():
                if n not in self.params:
                    raise DataError(f"optimizer state: '{n}' is not a parameter of this network")
                v = self._view(names[slot], self._playout, n)
                if tuple(np.shape(a)) != v.shape:
                    raise DataError(f"optimizer state '{slot}' of '{n}': expected "
                                    f"{_fmt_shape(v.shape)}, got {_fmt_shape(np.shape(a))}")
                v[...] = a

    # ---- diagnosis -------------------------------------------------------------
    def find_nonfinite(self, inputs: dict, targets: dict):
        """The first node (in topological order) of the train-mode forward and
        backward graph whose values are not all finite, with its layer, or
        None.  Runs the NumPy reference on the current parameters."""
        from .backend.debug import first_nonfinite
        feeds = self._feeds(inputs, targets)
        feeds.update(self.params)
        feeds.update(self.state)
        return first_nonfinite(self.graph, feeds, self.dtype)

    def __repr__(self):
        n = sum(v.size for v in self.params.values())
        return (f"<Network {self.graph.name}: {len(self.params)} parameters ({n} values), "
                f"{self.dtype}, inputs {list(self.inputs)}, outputs {self.outputs}>")
