"""A run directory: the only files training writes, the rule that it never
replaces a file it did not write, and one run at a time in it.

A run holds an exclusive `flock` on DIR/.nnspec-lock from `claim` to
`release` (or its exit: the kernel drops the lock of a dead process, so a
killed run leaves no stale lock).  The file says which pid holds it.  Under
the lock, temporary files a killed run left behind (`atomic_write`'s
`.checkpoint.npz.*.tmp`) are removed: no live writer can own them.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:         # not a POSIX system: runs are not locked
    fcntl = None

from ..errors import TrainingError

MARKER = ".nnspec-run"     # present once nnspec owns the files below in this directory
LOCK = ".nnspec-lock"
FILES = ("checkpoint.npz", "metrics.json", "curves.png", "generated.wav")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.npz"
        self.metrics = self.path / "metrics.json"
        self.curves = self.path / "curves.png"
        self.generated = self.path / "generated.wav"     # a next-sample model's waveform
        self._lock = None

    def claim(self) -> None:
        """Create the directory, or check that our file names in it are ours to replace."""
        if self.path.exists() and not self.path.is_dir():
            raise TrainingError(f"output directory '{self.path}' is a file")
        if not (self.path / MARKER).exists():
            clash = [f for f in FILES if (self.path / f).exists()]
            if clash:
                raise TrainingError(
                    f"'{self.path}' already holds {', '.join(clash)} not written by nnspec "
                    f"training; not overwriting (choose another --out directory)")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        (self.path / MARKER).write_text("files here are written by `nnspec train`\n")
        for f in FILES:
            for tmp in self.path.glob(f".{f}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def lock(self) -> None:
        """Hold the directory for this process, or say which process holds it."""
        if self._lock is not None or fcntl is None:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TrainingError(f"'{self.path}' is in use by pid {holder} (another "
                                f"`nnspec train`); wait for it or choose another --out") from None
        except OSError:         # a file system without locks (some network ones): go on
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)        # closing the descriptor drops the flock
            self._lock = None
