"""Limits on what a spec may ask of the frontend.

A spec is untrusted input: each limit turns what would be a hang, a memory
blow-up or a Python `RecursionError` into a located error that names the
limit.  Each can be raised with the environment variable of its name with
an `NNSPEC_` prefix (`NNSPEC_MAX_NODES=500000 nnspec check big.nn`); the
defaults leave the zoo well inside (its largest spec, Inception-v3, is
3.5 KB and nests 13 levels; its largest graph, DenseNet-121's, has 1,275
nodes).  docs/language.md lists them.
"""
from __future__ import annotations

import os


def _env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(f"NNSPEC_{name}", default)))
    except ValueError:
        return default


MAX_FILE_BYTES = _env("MAX_FILE_BYTES", 32_768)    # size of a spec or imported file (parsing: < 1 s)
MAX_DEPTH = _env("MAX_DEPTH", 100)                 # nesting of brackets, operators, blocks, YAML
MAX_CALL_DEPTH = _env("MAX_CALL_DEPTH", 50)        # blocks applied one inside another
MAX_DIGITS = _env("MAX_DIGITS", 40)                # characters of a number literal
MAX_INT = _env("MAX_INT", 2**63 - 1)               # magnitude of an integer (a literal or a result)
MAX_REPEAT = _env("MAX_REPEAT", 10_000)            # n in `layer * n`
MAX_ITERATIONS = _env("MAX_ITERATIONS", 100_000)   # `for` iterations, all loops together
MAX_ITEMS = _env("MAX_ITEMS", 100_000)             # length of a list made by `list * n` or range()
MAX_NODES = _env("MAX_NODES", 200_000)             # nodes in the IR graph of one network
MAX_YAML_NODES = _env("MAX_YAML_NODES", 100_000)   # YAML nodes, aliases expanded


def hint(name: str) -> str:
    """How to raise the limit `name` (a name in this module)."""
    return f"a limit of nnspec (nnspec/frontend/limits.py); raise it with NNSPEC_{name}=..."
