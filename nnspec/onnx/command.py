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
