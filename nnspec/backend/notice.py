"""Saying on stderr that a step compiles, which takes seconds to minutes
(the MLP 14 s, a CNN minutes on a busy machine), or that it came from the
cache.  Off unless a caller turns it on (the training loop does, unless
quiet): library users call steps without output.

    compiling the training step (first run only; cached in DIR) ... 12.3 s
    loaded the compiled training step from DIR

On a terminal the elapsed time counts up while Numba compiles (a thread
redraws it); elsewhere one line starts and one ends the compile.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time

EVERY = 0.5          # seconds between redraws of the elapsed time
NAMES = {"train": "training step", "eval": "evaluation step", "infer": "inference step"}

_on = threading.local()


def show_compiles(enabled: bool, stream=None):
    """Turn the notices on or off for this thread; returns the previous
    setting, for `show_compiles(*previous)`."""
    previous = (getattr(_on, "enabled", False), getattr(_on, "stream", None))
    _on.enabled, _on.stream = enabled, stream
    return previous


@contextlib.contextmanager
def compiling(kind: str, fn):
    """Around the first call of a step of `kind` whose compiled function is `fn`."""
    if not getattr(_on, "enabled", False):
        yield
        return
    from . import cache
    cached, where = cache.is_cached(fn), cache.cache_dir()
    out = _on.stream or sys.stderr
    what = NAMES.get(kind, f"{kind} step")
    t0 = time.perf_counter()
    if cached:
        yield
        print(f"loaded the compiled {what} from {where}", file=out, flush=True)
        return
    kept = f"cached in {where}" if cache.kept(where) else "not kept: the cache is not usable"
    head = f"compiling the {what} (first run only; {kept}) ..."
    try:
        live = out.isatty()
    except (AttributeError, ValueError):     # not a file, or closed
        live = False
    done = threading.Event()
    ticker = None
    if live:
        def tick():
            while not done.wait(EVERY):
                out.write(f"\r{head} {time.perf_counter() - t0:.1f} s")
                out.flush()
        out.write(head)
        out.flush()
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    else:
        print(head, file=out, flush=True)
    try:
        yield
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
        seconds = time.perf_counter() - t0
        if live:
            out.write(f"\r{head} {seconds:.1f} s\n")
        else:
            out.write(f"compiled the {what} in {seconds:.1f} s\n")
        out.flush()

