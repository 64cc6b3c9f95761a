"""`nnspec train | eval | predict | compile`: thin shells over `fit`,
`evaluate`, `Network.forward` and `save`.  Errors are raised as NNSpecError
subclasses; `nnspec.cli.main` prints them without a traceback.

    nnspec train SPEC [--data D] [--epochs N] [--batch N] [--lr X] [--set k=v ...]
                      [--out DIR] [--resume] [--seed N] [--dtype float32|float64] [--quiet]
                      [--teacher-forcing P]
    nnspec eval SPEC --checkpoint F [--data D]
    nnspec predict SPEC --checkpoint F --input X.npz [--output out.npz]
    nnspec predict SPEC --checkpoint F --generate N [--prompt S] [--temperature X] [--seed N]
    nnspec compile SPEC -o model.nnc [--checkpoint F]

A checkpoint F is a run's checkpoint.npz, the run directory itself, or a .nnc file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..data import n_examples
from ..errors import DataError, TrainingError

DTYPES = ("float32", "float64")


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train a spec's network and score it",
                       description="Train on the spec's data (or --data); write DIR/checkpoint.npz, "
                                   "metrics.json and curves.png after every epoch.")
    _common(t)
    t.add_argument("--data", metavar="D", help="'digits', a .npz / .csv file, a directory "
                                              "with train/test files, or text:PATH (a text "
                                              "file, for a character model) (default: the spec's)")
    t.add_argument("--epochs", type=int, metavar="N")
    t.add_argument("--batch", type=int, metavar="N", help="examples per step")
    t.add_argument("--lr", type=float, metavar="X", help="peak learning rate")
    t.add_argument("--out", metavar="DIR", help="run directory (default: runs/<spec stem>)")
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    t.add_argument("--seed", type=int, metavar="N", help="initial weights and shuffling "
                                                          "(default: the spec's, else 0)")
    t.add_argument("--teacher-forcing", type=float, metavar="P",
                   help="probability that a step of a cell with a teacher reads it, all "
                        "through training (default: the spec's teacher_forcing, else 1)")
    t.add_argument("--quiet", action="store_true", help="print only the final result")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="score a checkpoint on the test split")
    _common(e)
    e.add_argument("--checkpoint", required=True, metavar="F")
    e.add_argument("--data", metavar="D", help="default: the spec's data")
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="run a checkpoint on inputs; print predicted classes "
                                       "(or generate text from a character model)")
    _common(p)
    p.add_argument("--checkpoint", required=True, metavar="F")
    p.add_argument("--input", metavar="X.npz",
                   help="arrays named like the spec's inputs (or 'input')")
    p.add_argument("--generate", type=int, metavar="N",
                   help="sample N characters from a model trained on text:PATH data")
    p.add_argument("--prompt", default="", metavar="S", help="text to continue (--generate)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="X",
                   help="sampling temperature; 0 picks the likeliest character (default 0.8)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default 0)")
    p.add_argument("--output", metavar="OUT.npz", help="write every output (and classes) here")
    p.set_defaults(func=cmd_predict)

    c = sub.add_parser("compile", help="compile a spec into a single .nnc model file")
    _common(c)
    c.add_argument("-o", "--output", required=True, metavar="MODEL.nnc")
    c.add_argument("--checkpoint", metavar="F", help="weights to store (default: initial ones)")
    c.add_argument("--seed", type=int, metavar="N", help="initial weights (default: the spec's)")
    c.set_defaults(func=cmd_compile)


def _common(p) -> None:
    p.add_argument("spec", metavar="SPEC", help="a .nn or .yaml spec")
    p.add_argument("--set", action="append", metavar="K=V", help="override a network argument")
    p.add_argument("--dtype", choices=DTYPES, help="default: the checkpoint's, else float32")


# ---- commands --------------------------------------------------------------------

def cmd_train(args) -> int:
    from ..data import load
    from .config import TrainConfig
    from .loop import fit
    net, seed, info = _build_for_data(args)
    cfg = TrainConfig.from_meta(net.graph.meta.get("train"), data=args.data, epochs=args.epochs,
                                batch=args.batch, lr=args.lr, seed=seed,
                                teacher_forcing=args.teacher_forcing)
    out = Path(args.out) if args.out else Path("runs") / Path(args.spec).stem
    train, test = load(cfg.data, net)
    if not args.quiet:
        print(f"{args.spec}: {_count(net)} parameters; data {cfg.data}: {n_examples(train)} train, "
              f"{n_examples(test)} test examples; {cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch}, "
              f"{cfg.epochs} epochs -> {out}/", file=sys.stderr)
    r = fit(net, (train, test), out_dir=out, resume=args.resume, progress=not args.quiet,
            config=cfg, data_info=info)
    print(_result_line(r, r["examples"]["test"])
          + f"  ({r['epochs']} epochs, {r['seconds']:.1f} s training)")
    print(f"wrote {out}/checkpoint.npz, metrics.json" + (", curves.png" if (out / "curves.png").exists() else ""))
    return 0


def cmd_eval(args) -> int:
    from ..data import is_text, load, text_info
    from .metrics import evaluate, task_of
    net, ck = _trained(args)
    name = args.data or (net.graph.meta.get("train") or {}).get("data") or "digits"
    chars = (ck.get("data") or {}).get("chars")
    train, test = load(name, net, chars=chars)
    info = text_info(name, chars) if is_text(name) else None
    r = evaluate(net, test, task=task_of(net, train, info))
    print(_result_line({f"test_{k}": v for k, v in r.items()}, r["n"], info))
    return 0


def cmd_predict(args) -> int:
    from ..data import bind, class_output
    from ..data.files import read_path
    from .bundle import atomic_write, check_writable
    net, ck = _trained(args)
    if args.generate is not None:
        return _generate(args, net, ck)
    if not args.input:
        raise DataError("predict needs --input X.npz (or --generate N for a text model)")
    raw = read_path(args.input)
    if isinstance(raw, tuple):
        raise DataError(f"--input takes one .npz or .csv file, not a directory: {args.input}")
    x = bind(raw, net, Path(args.input).name, require_targets=False)
    outs = _forward(net, x)
    classed = [co[0] for t in net.targets if (co := class_output(net, t))]
    if classed:
        outs["classes"] = np.argmax(outs[classed[0]], axis=-1)
    if args.output:
        check_writable(args.output, ("nnspec-predictions",), error=DataError)
        from .bundle import META
        doc = np.array('{"kind": "nnspec-predictions", "tree": null}')
        atomic_write(args.output, lambda f: np.savez(f, **outs, **{META: doc}))
    if classed:
        np.savetxt(sys.stdout, outs["classes"].reshape(len(outs["classes"]), -1), fmt="%d")
    else:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outs.items())
        print(f"outputs: {shapes}" + ("" if args.output else " (use --output to save them)"))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_compile(args) -> int:
    from .nnc import save
    if args.checkpoint:
        (net, ck), seed = _trained(args), 0
    else:
        (net, seed), ck = _build(args), {}
    save(net, args.output, args.spec, seed=seed, data=ck.get("data"))
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
    if args.generate < 0:
        raise DataError(f"--generate takes a number of characters, got {args.generate}")
    text = generate(net, chars, args.prompt, args.generate, temperature=args.temperature,
                    seed=args.seed)
    print(args.prompt + text)
    return 0


def _build_for_data(args):
    """`_build`, with ``vocab`` set to a text's vocabulary size when the data is
    ``text:...``, the network has a `vocab` argument and --set does not give it:
    ``(net, seed, data info or None)``."""
    import nnspec
    from ..data import is_text, text_info
    sets = _sets(args)
    graph = nnspec.lower(args.spec, set=sets, dtype=args.dtype or "float32")
    name = args.data or (graph.meta.get("train") or {}).get("data")
    if name is None or not is_text(name):
        return (*_build(args), None)
    info = text_info(name)
    if "vocab" in graph.meta.get("args", {}) and "vocab" not in sets:
        sets["vocab"] = len(info["chars"])
    return (*_build(args, sets, force=True), info)


def _build(args, sets=None, dtype=None, force=False):
    """The spec's network, initialised with --seed, else the train section's seed, else 0.
    `sets` are a checkpoint's --set values, replaced by the command line's unless `force`."""
    import nnspec
    sets = sets if force else _sets(args) if args.set or sets is None else sets
    dtype = args.dtype or dtype or "float32"
    seed = getattr(args, "seed", None)
    if seed is None:
        graph = nnspec.lower(args.spec, set=sets, dtype=dtype)
        seed = int((graph.meta.get("train") or {}).get("seed") or 0)
    return nnspec.compile(args.spec, dtype=dtype, set=sets, seed=seed), seed


def _trained(args):
    """The spec's network with the weights of --checkpoint (a run's checkpoint.npz,
    its directory, or a .nnc), built with the --set values and dtype stored
    there unless the command line gives them: ``(net, checkpoint tree)``."""
    from .checkpoint import load_trained
    p = Path(args.checkpoint)
    if p.is_dir():
        p = p / "checkpoint.npz"
    if not p.exists():
        raise TrainingError(f"checkpoint '{p}' does not exist")
    # built once the file's layout is checked, before its arrays are read
    return load_trained(p, lambda sets, dtype: _build(args, sets, dtype)[0])


def _forward(net, x: dict, batch: int = 512) -> dict:
    n = n_examples(x)
    parts: dict = {}
    for lo in range(0, n, batch):
        for k, v in net.forward(**{k: a[lo:lo + batch] for k, a in x.items()}).items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


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
