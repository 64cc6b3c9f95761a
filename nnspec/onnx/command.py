"""`nnspec export SPEC [--checkpoint F] [--set k=v] [--dtype D] -o model.onnx`: a
thin shell over `nnspec.onnx.export` (convert.py).  The model is built and checked in
memory first, so a network that does not export leaves no file behind."""
from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from ..train.commands import CHECKPOINT_HELP, _common, _num
    p = sub.add_parser("export", help="write a network's inference graph and weights as ONNX",
                       description="Write the network's eval-mode forward graph (batch norm "
                                   "with its running statistics, no dropout) and its weights "
                                   "as an ONNX model (opset 18), checked with onnx.checker. "
                                   "Needs pip install 'nnspec[onnx]'.")
    _common(p, model=True)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    p.add_argument("--checkpoint", metavar="F",
                   help=CHECKPOINT_HELP + " (default: the spec's initial weights)")
    p.add_argument("--seed", type=_num("natural"), metavar="N",
                   help="initial weights, without --checkpoint (default: the spec's)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..train.commands import _build, _count, _model_file, _trained
    from . import export
    if args.checkpoint or _model_file(args) is not None:
        net, _ = _trained(args)
    else:
        net, _ = _build(args)
    export(net, Path(args.output))
    print(f"wrote {args.output} ({_count(net)} parameters)")
    return 0


def add_import_parser(sub) -> None:
    p = sub.add_parser("import", help="read an ONNX model as a .nn spec and its weights",
                       description="Write the ONNX model's graph as a readable spec (layer "
                                   "chains, repeated structure as blocks, the nodes' names as "
                                   "layer names) and its weights beside it: OUT.npz (named as "
                                   "the network's state_dict), or OUT.nnc with --nnc. Nodes "
                                   "nnspec cannot express are listed, one line each, and "
                                   "nothing is written. Needs pip install 'nnspec[onnx]'.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="NET.nn")
    p.add_argument("--nnc", action="store_true",
                   help="write the weights as a .nnc model (spec and weights in one file)")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from . import _require
    _require()
    from .importer import import_file
    out = Path(args.output)
    imp = import_file(args.model, out, nnc=args.nnc)
    count = sum(n.size for n in imp.graph.nodes() if n.op == "param")
    print(f"wrote {out} and {out.with_suffix('.nnc' if args.nnc else '.npz')} "
          f"({count} parameters)")
    return 0
