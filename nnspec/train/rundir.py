"""A run directory: the only files training writes, and the rule that it
never replaces a file it did not write."""
from __future__ import annotations

from pathlib import Path

from ..errors import TrainingError

MARKER = ".nnspec-run"     # present once nnspec owns the files below in this directory
FILES = ("checkpoint.npz", "metrics.json", "curves.png")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self.checkpoint = self.path / "checkpoint.npz"
        self.metrics = self.path / "metrics.json"
        self.curves = self.path / "curves.png"

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
        (self.path / MARKER).write_text("files here are written by `nnspec train`\n")
