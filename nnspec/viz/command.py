"""`nnspec visualize`: a picture of what a trained network computes, a thin
shell over `nnspec.viz`.

    nnspec visualize SPEC --checkpoint F --layer NAME [--data D | --input X.npz]
                     [--method deconv|maps|filters|saliency] [--units K] [--top N]
                     [--index I] [--class C] -o out.png

    deconv    (default) for K units of the layer, the N inputs that excite each
              most, each activation projected alone through the deconvnet,
              beside the input patch under its receptive field; the top
              activations and their input indices are printed
    maps      the layer's feature maps for input I
    filters   the filters of convolution NAME (default: the first)
    saliency  d(score of class C) / d(input) for input I (default C: the predicted class)

The inputs are the test split of --data (default: the spec's data) or the
rows of --input.  Errors are NNSpecError subclasses, printed without a traceback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..train.commands import CHECKPOINT_HELP, _common, _num, _trained

METHODS = ("deconv", "maps", "filters", "saliency")


def add_parser(sub) -> None:
    v = sub.add_parser("visualize", help="draw what a trained network's layers respond to "
                                         "(deconvnet projections, maps, filters, saliency)",
                       description="Draw a PNG of what a trained network computes: deconvnet "
                                   "projections of a layer's strongest activations (Zeiler and "
                                   "Fergus), its feature maps, the first layer's filters, or a "
                                   "saliency map.")
    _common(v, model=True)
    v.add_argument("--checkpoint", metavar="F", help=CHECKPOINT_HELP)
    v.add_argument("--layer", metavar="NAME",
                   help="a layer as `nnspec inspect` names it (deconv and maps; filters: "
                        "a convolution, default the first)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="D", help="search the test split of D (default: the "
                                                "spec's data)")
    src.add_argument("--input", metavar="X.npz", help="search the rows of a .npz or .csv file")
    v.add_argument("--method", choices=METHODS, default="deconv",
                   help="what to draw (default: deconv)")
    v.add_argument("--units", type=_num("count"), default=8, metavar="K",
                   help="deconv: the K units whose strongest activation is largest (default 8)")
    v.add_argument("--top", type=_num("count"), default=9, metavar="N",
                   help="deconv: the N strongest inputs per unit (default 9)")
    v.add_argument("--index", type=_num("natural"), default=0, metavar="I",
                   help="maps, saliency: the input to show (default 0)")
    v.add_argument("--class", dest="cls", type=_num("natural"), metavar="C",
                   help="saliency: the class whose score is differentiated (default: the "
                        "predicted class)")
    v.add_argument("-o", "--output", required=True, metavar="OUT.png")
    v.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> int:
    from . import draw, project
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise DataError(f"visualize writes PNG images: -o needs a .png name, not '{out.name}'")
    net, _ = _trained(args)
    if args.layer is not None:
        project.layer_node(net.graph, args.layer)      # a wrong name before any work
    elif args.method in ("deconv", "maps"):
        raise DataError(f"--method {args.method} needs --layer NAME (`nnspec inspect "
                        f"{args.spec}` lists the layers)")
    spec = Path(args.spec).name
    fig = {"deconv": _deconv, "maps": _maps, "filters": _filters,
           "saliency": _saliency}[args.method](args, net, spec)
    draw.save(fig, out)
    print(f"wrote {out}")
    return 0


def _inputs(args, net) -> tuple[np.ndarray, str]:
    """The inputs to search or show, and where they came from."""
    from ..data import bind, load
    from ..data.files import read_path
    from .project import examples
    if args.input:
        raw = read_path(args.input, net=net, targets=False)
        if isinstance(raw, tuple):
            raise DataError(f"--input takes one .npz or .csv file, not a directory: {args.input}")
        x, source = bind(raw, net, Path(args.input).name, require_targets=False), args.input
    else:
        name = args.data or (net.graph.meta.get("train") or {}).get("data") or "digits"
        x, source = load(name, net)[1], f"{name} (test split)"
    return examples(net, next(iter(x[k] for k in net.inputs)))[0], source


def _one(args, net) -> tuple[np.ndarray, str]:
    x, source = _inputs(args, net)
    if args.index >= len(x):
        raise DataError(f"--index {args.index}: {source} has {len(x)} inputs (0..{len(x) - 1})")
    return x[args.index], f"input {args.index} of {source}"


def _deconv(args, net, spec):
    from . import draw
    from .project import strongest
    x, source = _inputs(args, net)
    top = strongest(net, args.layer, x, units=args.units, top=args.top)
    print(f"{spec}: {source}")
    print(top.summary())
    units = ", ".join(map(str, top.units))
    return draw.deconv_figure(top, x, f"{spec}: layer {args.layer}, units {units}\n"
                                      f"each unit's {top.inputs.shape[1]} strongest activations "
                                      f"over {len(x)} inputs, projected alone by the deconvnet, "
                                      f"beside their input patches")


def _maps(args, net, spec):
    from . import draw
    from .project import maps
    x, which = _one(args, net)
    a = maps(net, args.layer, x)
    peak = a.reshape(len(a), -1).max(axis=1) if a.ndim > 1 else a
    strongest = np.argsort(-peak, kind="stable")[:8]
    print(f"{spec}: layer {args.layer} for {which}: {a.shape[0]} units" +
          (f" of {list(a.shape[1:])}" if a.ndim > 1 else "") + "; the strongest: " +
          ", ".join(f"{int(u)} ({peak[u]:.4g})" for u in strongest))
    return draw.maps_figure(a, f"{spec}: layer {args.layer}, the feature maps of "
                               f"{a.shape[0]} units for {which}")


def _filters(args, net, spec):
    from . import draw
    from .project import filters
    w = filters(net, args.layer)
    name = args.layer or "the first convolution"
    print(f"{spec}: {name}: {w.shape[0]} filters of {list(w.shape[1:])}")
    return draw.filters_figure(w, f"{spec}: the {w.shape[0]} filters of {name} "
                                  f"[{', '.join(map(str, w.shape[1:]))}]")


def _saliency(args, net, spec):
    from . import draw
    from .project import predicted, saliency
    x, which = _one(args, net)
    guess = int(predicted(net, x))
    cls = guess if args.cls is None else args.cls
    g = saliency(net, x, cls)
    print(f"{spec}: saliency of class {cls} for {which} (predicted: class {guess}); "
          f"|gradient| at most {np.abs(g).max():.4g}")
    return draw.saliency_figure(x, g, f"{spec}: saliency of class {cls} for {which}")
