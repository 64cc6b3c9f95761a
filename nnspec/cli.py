"""The `nnspec` command: a thin shell over the Python API.

    nnspec check FILE...                 exit 0 when every spec is valid
    nnspec inspect FILE [--set k=v] [--json]
    nnspec graph FILE -o out.dot [--backward]
    nnspec cache info | clear            (see nnspec/cache_cli.py)
    nnspec train | eval | predict | compile   (see nnspec/train/commands.py)
    nnspec visualize SPEC --checkpoint F ...  (see nnspec/viz/command.py)
    nnspec export SPEC -o model.onnx          (see nnspec/onnx/command.py)
    nnspec import model.onnx -o net.nn [--nnc]   (see nnspec/onnx/command.py)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading


def parse_set(items) -> dict:
    """`--set k=v` values are read as spec expressions: numbers, true/false, names."""
    from .errors import SpecError
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SpecError(f"--set takes key=value, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def parse_value(v: str):
    """A `--set` or data-option value: true/false, a number, a quoted string, or a name."""
    if v in ("true", "false"):
        return v == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def add_lib(p) -> None:
    p.add_argument("--lib", action="append", default=[], metavar="DIR",
                   help="a folder imports may come from (besides the spec's own and "
                        "$NNSPEC_PATH); repeatable")


def lib_path(args) -> list:
    from .frontend.load import search_path
    return search_path(getattr(args, "lib", None) or ())


def cmd_check(args) -> int:
    from .frontend import check_file
    bad = 0
    for f in args.files:
        errors = check_file(f, lib=lib_path(args))
        for e in errors:
            print(e.render(), file=sys.stderr)
        bad += bool(errors)
        if not errors and not args.quiet:
            print(f"{f}: ok")
    return 1 if bad else 0


def cmd_inspect(args) -> int:
    from . import lower
    from .inspect import render, summary
    graph = lower(args.file, set=parse_set(args.set), dtype=args.dtype, lib=lib_path(args))
    info = summary(graph)
    info.pop("macs_nodes")
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def cmd_graph(args) -> int:
    from . import lower
    from .viz import to_dot, write_graph
    graph = lower(args.file, set=parse_set(args.set), lib=lib_path(args))
    if args.backward:
        from .errors import SpecError
        from .passes.autodiff import backward
        if "loss" not in graph.meta:
            raise SpecError(f"{args.file}: --backward needs a train section with a loss")
        graph, _ = backward(graph, graph.meta["loss"])
    out = args.output or (os.path.splitext(os.path.basename(args.file))[0] + ".dot")
    write_graph(to_dot(graph), out)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnspec", description="Compile and train neural network specs.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="check specs for errors")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    add_lib(c)
    c.set_defaults(func=cmd_check)

    i = sub.add_parser("inspect", help="layers, shapes, parameters, multiply-adds")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--set", action="append", metavar="K=V", help="override a network argument")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    add_lib(i)
    i.set_defaults(func=cmd_inspect)

    g = sub.add_parser("graph", help="write the IR graph as DOT (SVG/PNG with Graphviz)")
    g.add_argument("file", metavar="FILE")
    g.add_argument("-o", "--output", metavar="OUT", help="out.dot, out.svg or out.png")
    g.add_argument("--set", action="append", metavar="K=V")
    g.add_argument("--backward", action="store_true", help="include the backward graph")
    add_lib(g)
    g.set_defaults(func=cmd_graph)

    from .cache_cli import add_parser as add_cache_parser
    add_cache_parser(sub)

    try:
        from .train.commands import add_parsers
    except ImportError:
        pass
    else:
        add_parsers(sub)
        from .viz.command import add_parser as add_visualize_parser
        add_visualize_parser(sub)
        from .onnx.command import add_import_parser, add_parser as add_export_parser
        add_export_parser(sub)
        add_import_parser(sub)
    return p


def _version() -> str:
    from . import __version__
    return f"nnspec {__version__}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so
    that it stops a run the same way: a message, the last checkpoint intact."""


def _terminate(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    # Both signals are handled from here on, also while build_parser imports
    # NumPy and the training code (seconds): an interrupt there is no traceback.
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _main(argv)
    finally:
        if main_thread:             # main() called from Python: leave SIGTERM as it was
            signal.signal(signal.SIGTERM, before)


def _main(argv) -> int:
    try:
        from .errors import NNSpecError
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:          # first: NNSpecError may not be imported yet
        terminated = isinstance(e, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
    except NNSpecError as e:
        return _failed(str(e) if not hasattr(e, "render") else e.render(), 1)
    except MemoryError as e:
        return _failed(f"nnspec: out of memory ({e or 'MemoryError'})", 1)
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in nnspec, not in the user's input
        if os.environ.get("NNSPEC_DEBUG"):
            raise
        return _failed(f"nnspec: internal error: {type(e).__name__}: {e}\n"
                       f"(set NNSPEC_DEBUG=1 to see where)", 2)


def _failed(message: str, code: int) -> int:
    """Print why the command failed; in a data-parallel job, end every rank,
    which would otherwise wait for this one in their next reduction.  Rank 0
    speaks first: the others wait a moment, so that an error every rank
    meets at once (a diverged loss) is printed once, and one only a rank
    meets (its data file) still is, under its rank."""
    dist = sys.modules.get("nnspec.train.dist")
    group = dist.current() if dist is not None else None
    if group is None:
        print(message, file=sys.stderr)
        return code
    if not group.root:
        import time
        try:
            time.sleep(2.0)
        except KeyboardInterrupt:   # rank 0 ended the job: it has said why
            return code
        message = f"rank {group.rank}: {message}"
    print(message, file=sys.stderr, flush=True)
    group.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
