"""`nnspec train | eval | predict | compile`: thin shells over `fit`,
`evaluate`, `Network.forward` and `save`.  Errors are raised as NNSpecError
subclasses; `nnspec.cli.main` prints them without a traceback.

    nnspec train SPEC [--data D] [--epochs N] [--batch N] [--lr X] [--set k=v ...]
                      [--out DIR] [--resume] [--seed N] [--dtype float32|float64] [--quiet]
                      [--teacher-forcing P] [--workers N]
    mpiexec -n N nnspec train SPEC ...      (data-parallel on N processes: dist.py)
    nnspec eval SPEC --checkpoint F [--data D]
    nnspec predict SPEC --checkpoint F --input X.npz [--output out.npz] [--allow-nonfinite]
    nnspec predict SPEC --checkpoint F --generate N [--prompt S] [--temperature X] [--seed N]
    nnspec compile SPEC -o model.nnc [--checkpoint F]

A checkpoint F is a run's checkpoint.npz, the run directory itself, or a .nnc file.
`eval` and `predict` also take a .nnc model as SPEC: it holds the spec and the
weights, so --checkpoint is then optional (given, its weights replace the model's).
Every numeric option is checked by argparse against `config.KINDS`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..cli import add_lib, lib_path
from ..data import n_examples
from ..errors import DataError, SpecError, TrainingError
from .config import number
from .rundir import FILES as RUN_FILES

DTYPES = ("float32", "float64")


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train a spec's network and score it",
                       description="Train on the spec's data (or --data); write DIR/checkpoint.npz, "
                                   "metrics.json and curves.png after every epoch.")
    _common(t)
    t.add_argument("--data", metavar="D", help="'digits', a .npz / .csv file, a directory "
                                              "with train/test files, or text:PATH (a text "
                                              "file, for a character model) (default: the spec's)")
    t.add_argument("--epochs", type=_num("count"), metavar="N")
    t.add_argument("--batch", type=_num("count"), metavar="N", help="examples per step")
    t.add_argument("--lr", type=_num("positive"), metavar="X", help="peak learning rate")
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/<spec stem>)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    t.add_argument("--seed", type=_num("natural"), metavar="N",
                   help="initial weights and shuffling "
                                                          "(default: the spec's, else 0)")
    t.add_argument("--teacher-forcing", type=_num("probability"), metavar="P",
                   help="probability that a step of a cell with a teacher reads it, all "
                        "through training (default: the spec's teacher_forcing, else 1)")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.add_argument("--workers", type=_num("count"), metavar="N",
                   help="train data-parallel on N processes of this machine (runs "
                        "mpiexec -n N; needs pip install 'nnspec[mpi]'). Under "
                        "mpiexec itself, leave it out")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="score a checkpoint on the test split")
    _common(e, model=True)
    e.add_argument("--checkpoint", metavar="F", help=CHECKPOINT_HELP)
    e.add_argument("--data", metavar="D", help="default: the spec's data")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="run a checkpoint on inputs; print predicted classes "
                                       "(or generate text from a character model)")
    _common(p, model=True)
    p.add_argument("--checkpoint", metavar="F", help=CHECKPOINT_HELP)
    p.add_argument("--input", metavar="X.npz",
                   help="a .npz of arrays named like the spec's inputs (or 'input'), or a "
                        ".csv (columns as for --data; the target columns may be left out)")
    p.add_argument("--generate", type=_num("count"), metavar="N",
                   help="sample N characters from a model trained on text:PATH data")
    p.add_argument("--prompt", default="", metavar="S", help="text to continue (--generate)")
    p.add_argument("--temperature", type=_num("nonnegative"), default=0.8, metavar="X",
                   help="sampling temperature; 0 picks the likeliest character (default 0.8)")
    p.add_argument("--seed", type=_num("natural"), default=0, metavar="N",
                   help="sampling seed (default 0)")
    p.add_argument("--output", metavar="OUT.npz", help="write every output (and classes) here")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="predict rows whose inputs hold NaN or inf (reported on stderr; "
                        "their class is -1) instead of refusing the input")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("compile", help="compile a spec into a single .nnc model file")
    _common(c, device=False)
    c.add_argument("-o", "--output", required=True, metavar="MODEL.nnc")
    c.add_argument("--checkpoint", metavar="F", help="weights to store (default: initial ones)")
    c.add_argument("--seed", type=_num("natural"), metavar="N",
                   help="initial weights (default: the spec's)")
    c.set_defaults(func=cmd_compile)


CHECKPOINT_HELP = ("a run directory, its checkpoint.npz, or a .nnc model "
                   "(optional when SPEC is a .nnc model)")


def _common(p, model: bool = False, device: bool = True) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .nn or .yaml spec" +
                   (", or a .nnc model (spec and weights)" if model else ""))
    p.add_argument("--set", action="append", metavar="K=V", help="override a network argument")
    p.add_argument("--dtype", choices=DTYPES, help="default: the checkpoint's, else float32")
    if device:
        p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                       help="where it runs: cpu (default), cuda (an NVIDIA GPU; pip install "
                            "'nnspec[cuda]'), auto (the GPU when one is usable)")
    add_lib(p)


def _num(kind: str):
    """An argparse type: an option's text as the kind of number `config.KINDS` names."""
    def parse(text):
        try:
            return number(text, kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = kind
    return parse


# ---- commands --------------------------------------------------------------------

def cmd_train(args) -> int:
    from ..data import load
    from . import dist
    from .config import TrainConfig, require_train_section
    from .loop import fit
    if args.workers is not None and dist.launched_size() <= 1:
        from .launch import run_workers
        return run_workers(args.workers, args.argv)
    group = dist.world()
    dist.enter(group)           # an error now ends every rank (cli.main)
    if group is not None and not group.root:
        args.quiet = True       # rank 0 speaks for the job
    if _model_file(args) is not None:
        raise SpecError(f"cannot train {args.spec}: it is a compiled .nnc model; train "
                        f"takes its spec (.nn or YAML)")
    graph = _lower(args)
    require_train_section(graph)          # before compiling: the fault is the spec's
    cfg = TrainConfig.from_meta(graph.meta["train"], graph, data=args.data, epochs=args.epochs,
                                batch=args.batch, lr=args.lr, seed=args.seed,
                                teacher_forcing=args.teacher_forcing)
    net, seed, info = _build_for_data(args, graph)
    out = Path(args.out) if args.out else Path("runs") / Path(args.spec).stem
    train, test = load(cfg.data, net)
    if not args.quiet:
        print(f"{args.spec}: {_count(net)} parameters; data {cfg.data}: {n_examples(train)} train, "
              f"{n_examples(test)} test examples; {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch}, "
              f"{cfg.epochs} epochs -> {out}/", file=sys.stderr)
    r = fit(net, (train, test), out_dir=out, resume=args.resume, progress=not args.quiet,
            config=cfg, data_info=info, comm=group.comm if group is not None else None)
    if group is not None and not group.root:
        return 0
    print(_result_line(r, r["examples"]["test"])
          + f"  ({r['epochs']} epochs, {r['seconds']:.1f} s training)")
    written = [f for f in RUN_FILES if (out / f).exists()]
    if written:
        print(f"wrote {out}/{', '.join(written)}")
    return 0


def cmd_eval(args) -> int:
    from .inference import score
    net, ck = _trained(args)
    r, info = score(net, args.data, chars=(ck.get("data") or {}).get("chars"))
    print(_result_line({f"test_{k}": v for k, v in r.items()}, r["n"], info))
    return 0


def cmd_predict(args) -> int:
    from ..data import bind
    from ..data.files import read_path
    from .bundle import atomic_write, check_writable
    from .inference import check_finite, predict
    net, ck = _trained(args)
    if args.generate is not None:
        return _generate(args, net, ck)
    if not args.input:
        raise DataError("predict needs --input X.npz (or --generate N for a text model)")
    raw = read_path(args.input, net=net, targets=False)
    if isinstance(raw, tuple):
        raise DataError(f"--input takes one .npz or .csv file, not a directory: {args.input}")
    x = bind(raw, net, Path(args.input).name, require_targets=False)
    warning = check_finite(x, args.input, args.allow_nonfinite)
    if warning:
        print(f"warning: {warning}; their class is -1", file=sys.stderr)
    outs = predict(net, x, allow_nonfinite=True)
    if args.output:
        check_writable(args.output, ("nnspec-predictions",), error=DataError)
        from .bundle import META
        doc = np.array('{"kind": "nnspec-predictions", "tree": null}')
        atomic_write(args.output, lambda f: np.savez(f, **outs, **{META: doc}))
    if "classes" in outs:
        np.savetxt(sys.stdout, outs["classes"].reshape(len(outs["classes"]), -1), fmt="%d")
    else:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outs.items())
        print(f"outputs: {shapes}" + ("" if args.output else " (use --output to save them)"))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_compile(args) -> int:
    from .nnc import save
    if _model_file(args) is not None:
        raise SpecError(f"{args.spec} is already a compiled .nnc model; compile takes a "
                        f"spec (.nn or YAML), with --checkpoint for trained weights")
    if args.checkpoint:
        (net, ck), seed = _trained(args), 0
    else:
        (net, seed), ck = _build(args), {}
    save(net, args.output, Path(args.spec), seed=seed, data=ck.get("data"))
    print(f"wrote {args.output} ({_count(net)} parameters, graph {net.graph.hash()})")
    return 0


# ---- helpers ---------------------------------------------------------------------

def _sets(args) -> dict:
    from ..cli import parse_set
    return parse_set(args.set)


def _generate(args, net, ck) -> int:
    from .decode import generate
    chars = (ck.get("data") or {}).get("chars")
    if not chars:
        raise DataError(f"--generate: checkpoint '{args.checkpoint}' holds no text vocabulary "
                        f"(train the model on text:PATH data)")
    text = generate(net, chars, args.prompt, args.generate, temperature=args.temperature,
                    seed=args.seed)
    print(args.prompt + text)
    return 0


def _lower(args):
    """The SPEC's graph: a command-line SPEC is always a path (the frontend says
    "cannot read FILE" for anything else)."""
    import nnspec
    return nnspec.lower(Path(args.spec), set=_sets(args), dtype=args.dtype or "float32",
                        lib=lib_path(args))


def _model_file(args) -> Path | None:
    """SPEC as a .nnc model (spec and weights in one file), or None: a spec, or a
    file the frontend refuses ("cannot read FILE: ...")."""
    p = Path(args.spec)
    if p.suffix != ".nnc":
        return None
    from .bundle import bundle_kind
    from .nnc import KIND
    kind = bundle_kind(p) if p.is_file() else None
    if kind != KIND:
        raise SpecError(f"cannot read {p}: " + ("no such file" if not p.exists() else
                        f"not a .nnc model" + (f" (a {kind} file)" if kind else "")))
    return p


def _build_for_data(args, graph):
    """`_build`, with the network's arguments for training: the train section's
    `args`, then those the data fixes (``vocab``, a text's vocabulary size, for
    ``text:...``; an image `size` and the `classes` for ``digits(size=32)``),
    each where the network has that argument and --set does not give it:
    ``(net, seed, data info or None)``.  `graph` is the SPEC's, lowered."""
    from ..data import is_text, text_info
    sets = _sets(args)
    name = args.data or (graph.meta.get("train") or {}).get("data")
    info = text_info(name) if name is not None and is_text(name) else None
    new = training_args(graph, name, sets, info)
    if not new and info is None:
        return (*_build(args), None)
    return (*_build(args, {**sets, **new}, force=True), info)


def training_args(graph, data, sets: dict, info: dict | None = None) -> dict:
    """The network arguments to set for training on `data` (a data set's text):
    the train section's `args`, then those the data fixes, each where the
    network has that argument, `sets` (--set) does not give it and its value
    differs.  `info` is a text's (its characters set ``vocab``)."""
    from ..data import net_args
    train = graph.meta.get("train") or {}
    wanted = {**(train.get("args") or {}), **(net_args(data) if data is not None else {}),
              **({"vocab": len(info["chars"])} if info else {})}
    have = graph.meta.get("args", {})
    return {k: v for k, v in wanted.items() if k in have and k not in sets and have[k] != v}


def _build(args, sets=None, dtype=None, force=False):
    """The spec's network, initialised with --seed, else the train section's seed, else 0.
    `sets` are a checkpoint's --set values, replaced by the command line's unless `force`."""
    import nnspec
    device = _device(args)          # a missing GPU is said before any work
    sets = sets if force else _sets(args) if args.set or sets is None else sets
    dtype = args.dtype or dtype or "float32"
    seed = getattr(args, "seed", None)
    if seed is None:
        graph = nnspec.lower(Path(args.spec), set=sets, dtype=dtype, lib=lib_path(args))
        seed = int((graph.meta.get("train") or {}).get("seed") or 0)
    on = {"device": device} if device != "cpu" else {}     # cpu: compile's default
    return nnspec.compile(Path(args.spec), dtype=dtype, set=sets, seed=seed,
                          lib=lib_path(args), **on), seed


def _device(args) -> str:
    """--device as "cpu" or "cuda"; a DeviceError naming what is missing for cuda."""
    from ..backend.device import resolve
    return resolve(getattr(args, "device", "cpu"))


def _trained(args):
    """The spec's network with the weights of --checkpoint (a run's checkpoint.npz,
    its directory, or a .nnc), built with the --set values and dtype stored
    there unless the command line gives them: ``(net, checkpoint tree)``.  A
    .nnc model as SPEC gives the network (and, without --checkpoint, the weights)."""
    from .checkpoint import load_trained
    from .nnc import load
    model = _model_file(args)
    if model is not None and (args.set or args.dtype):
        raise SpecError(f"{model} is a compiled model: its --set values and dtype are fixed "
                        f"(give its spec instead, with --checkpoint {model})")
    if args.checkpoint is None and model is None:
        _lower(args)                  # an unreadable SPEC is the first thing to say
        raise TrainingError(f"{args.command} needs --checkpoint F (a run directory, its "
                            f"checkpoint.npz or a .nnc model), or a .nnc model as SPEC")
    p = Path(args.checkpoint or model)
    if p.is_dir():
        p = p / "checkpoint.npz"
    if not p.exists():
        raise TrainingError(f"checkpoint '{p}' does not exist")

    def build(sets, dtype):     # once the file's layout is checked, before its arrays are read
        if model is None:
            return _build(args, sets, dtype)[0]
        device = _device(args)
        return load(model) if device == "cpu" else load(model).to(device)
    return load_trained(p, build)


def _count(net) -> str:
    return f"{net.graph.count('param'):,}"


def _result_line(r: dict, n, info=None) -> str:
    """The final score: accuracy (classification), the task's metrics, the loss."""
    from .progress import task_metrics
    loss, acc = r.get("test_loss"), r.get("test_accuracy")
    s = f"test loss {loss:.4f}" if loss is not None else "test loss -"
    if info and "unigram_bits" in info:
        r = {**r, "unigram_bits": info["unigram_bits"]}
    extra = task_metrics(r, "test_")
    if extra:
        s = "test " + "  ".join(extra) + "  " + s
    if acc is not None:
        s = f"test accuracy {100 * acc:.2f}%  " + s
    return s + f"  ({n} examples)"
