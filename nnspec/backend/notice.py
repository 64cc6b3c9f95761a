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
NAMES = {"train": "training step", "accumulate": "training step", "eval": "evaluation step",
         "infer": "inference step"}

_on = threading.local()


def show_compiles(enabled: bool, stream=None):
    """Turn the notices on or off for this thread; returns the previous
    setting, for `show_compiles(*previous)`."""
    previous = (getattr(_on, "enabled", False), getattr(_on, "stream", None))
    _on.enabled, _on.stream = enabled, stream
    return previous


@contextlib.contextmanager
def compiling(kind: str):
    """Around the first call of a step of `kind`: says "compiling" when Numba
    starts to compile (its first "numba:compile" event; an entry that is
    on disk but fails to load compiles too), else "loaded" at the end."""
    if not getattr(_on, "enabled", False):
        yield
        return
    from numba.core import event

    from . import cache
    event.Listener.register(_Line)
    where = cache.cache_dir()
    what = NAMES.get(kind, f"{kind} step")
    kept = f"cached in {where}" if cache.kept(where) else "not kept: the cache is not usable"
    line = _Line(_on.stream or sys.stderr, f"compiling the {what} (first run only; {kept}) ...")
    with event.install_listener("numba:compile", line):
        try:
            yield
        finally:
            line.close(f"compiled the {what} in")
    if not line.started:
        print(f"loaded the compiled {what} from {where}", file=line.out, flush=True)


class _Line:
    """The "compiling" line: its elapsed time redrawn by a thread on a
    terminal; elsewhere one line at the start and one at the end."""

    def __init__(self, out, head: str):
        self.out, self.head = out, head
        self.started = False
        self.done = threading.Event()
        self.ticker = None
        try:
            self.live = out.isatty()
        except (AttributeError, ValueError):     # not a file, or closed
            self.live = False

    # numba.core.event.Listener's interface (compiles nest: the first start counts)
    def notify(self, ev):
        if ev.is_start and not self.started:
            self.start()

    def start(self):
        self.started, self.t0 = True, time.perf_counter()
        if not self.live:
            print(self.head, file=self.out, flush=True)
            return
        self.out.write(self.head)
        self.out.flush()
        self.ticker = threading.Thread(target=self.tick, daemon=True)
        self.ticker.start()

    def tick(self):
        while not self.done.wait(EVERY):
            self.out.write(f"\r{self.head} {time.perf_counter() - self.t0:.1f} s")
            self.out.flush()

    def close(self, done: str):
        if not self.started:
            return
        self.done.set()
        if self.ticker is not None:
            self.ticker.join()
        seconds = time.perf_counter() - self.t0
        self.out.write(f"\r{self.head} {seconds:.1f} s\n" if self.live
                       else f"{done} {seconds:.1f} s\n")
        self.out.flush()


def kernel_progress():
    """A `progress(done, total, cores)` for backend/precompile.py that draws
    "compiling 23 kernels on 2 cores: 7/23" (redrawn on a terminal, else
    said at the start and the end), or None when the notices are off."""
    if not getattr(_on, "enabled", False):
        return None
    out = _on.stream or sys.stderr
    try:
        live = out.isatty()
    except (AttributeError, ValueError):
        live = False

    def progress(done, total, cores):
        head = f"compiling {total} kernels on {cores} cores:"
        if live:
            out.write(f"\r{head} {done}/{total}" + ("\n" if done == total else ""))
        elif done in (1, total):
            out.write(f"{head} {done}/{total}\n")
        out.flush()
    return progress
