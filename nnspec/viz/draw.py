"""The PNGs `nnspec visualize` draws, with matplotlib's Agg canvas (no
display needed; imported only here, when a picture is drawn).

Every picture is a grid of equal cells under a title; its size in pixels is
`grid_size(rows, cols)`, whatever the values.  Colours:

    projections, filters   RdBu_r, symmetric about 0 (red positive, blue negative)
    input patches          gray (one channel) or the image's own colours (three)
    feature maps           viridis
    saliency               hot: |gradient|, its largest over the channels

An array of three channels is drawn in colour ([C, H, W] read as RGB);
one of another count as its mean over the channels.  A 1-d signal [C, L]
is drawn as a strip one pixel high.
"""
from __future__ import annotations

import io
import math
import textwrap

import numpy as np

CELL = 64           # pixels per image
GAP = 4             # between the images of one group (a projection and its patch)
GROUP_GAP = 14      # between groups
LABEL = 72          # the row labels' column
LINE = 14           # a line of the title (9-point text)
LINES = 3           # the title's band holds this many; a longer title is cut
CHAR = 7.5          # the title's characters are at most this wide, on average (pixels)
MIN_WIDTH = 360     # room for the title over a narrow grid
MARGIN = 8
DPI = 100


def grid_size(rows: int, cols: int, group: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a picture of rows x cols cells, the
    columns in groups of `group`: it depends on nothing else."""
    groups = -(-cols // group)
    width = LABEL + cols * CELL + (cols - groups) * GAP + (groups - 1) * GROUP_GAP + MARGIN
    return max(width, MIN_WIDTH), _band() + rows * CELL + (rows - 1) * GAP + MARGIN


def _band() -> int:
    return 2 * MARGIN + LINE * LINES


def title_lines(title: str, width: int) -> list:
    """The title's lines as drawn in a picture `width` pixels wide."""
    chars = max(int((width - 2 * MARGIN) / CHAR), 20)
    lines = [line for para in title.split("\n") for line in textwrap.wrap(para, chars) or [""]]
    if len(lines) > LINES:
        lines = lines[:LINES - 1] + [textwrap.shorten(" ".join(lines[LINES - 1:]), chars, placeholder=" ...")]
    return lines


def _grid(rows: int, cols: int, title: str, group: int = 1, labels=()):
    """A figure of rows x cols empty axes (no ticks), and the axes [row][col]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    w, h = grid_size(rows, cols, group)
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    lines = title_lines(title, w)
    fig.text(0.5, 1 - MARGIN / h, "\n".join(lines), ha="center", va="top", fontsize=9,
             linespacing=1.2)
    band = _band()
    axes = []
    for r in range(rows):
        top = band + r * (CELL + GAP)
        row = []
        for c in range(cols):
            left = LABEL + c * (CELL + GAP) + (c // group) * (GROUP_GAP - GAP)
            ax = fig.add_axes((left / w, 1 - (top + CELL) / h, CELL / w, CELL / h))
            ax.set_axis_off()
            row.append(ax)
        axes.append(row)
        if r < len(labels):
            fig.text((LABEL - 6) / w, 1 - (top + CELL / 2) / h, labels[r], ha="right",
                     va="center", fontsize=8)
    return fig, axes


def save(fig, path) -> None:
    """Write the figure as a PNG, atomically."""
    from ..train.bundle import atomic_write
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _planes(a: np.ndarray) -> np.ndarray:
    """[C, H, W] (or [C, L]) -> [H, W, 3] for three channels, else [H, W]."""
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3:
        raise ValueError(f"an image is [C, H, W] or [C, L], got {list(a.shape)}")
    return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a.mean(axis=0)


def _signed(ax, a) -> None:
    """A signed array: red positive, blue negative, white 0."""
    p = _planes(a)
    m = np.nanmax(np.abs(p)) if np.isfinite(p).any() else 0.0
    m = m if m > 0 else 1.0
    if p.ndim == 3:
        ax.imshow(np.clip(0.5 + p / (2 * m), 0, 1), interpolation="nearest")
    else:
        ax.imshow(p, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")


def _plain(ax, a, cmap="gray") -> None:
    """An input or a map, stretched to its own range."""
    p = _planes(a)
    if p.ndim == 3:
        finite = p[np.isfinite(p)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        ax.imshow(np.clip((p - lo) / (hi - lo or 1.0), 0, 1), interpolation="nearest")
    else:
        ax.imshow(p, cmap=cmap, interpolation="nearest")


def crop(a: np.ndarray, box) -> np.ndarray:
    """a[:, box] for an image [C, *spatial], NaN where the box leaves the image."""
    out = np.full((a.shape[0],) + tuple(hi - lo for lo, hi in box), np.nan)
    src, dst = [slice(None)], [slice(None)]
    for (lo, hi), n in zip(box, a.shape[1:]):
        src.append(slice(max(lo, 0), min(hi, n)))
        dst.append(slice(max(lo, 0) - lo, min(hi, n) - lo))
    out[tuple(dst)] = a[tuple(src)]
    return out


def deconv_figure(top, x: np.ndarray, title: str):
    """Per unit a row; per input a projection (cropped to its receptive field)
    beside the input patch it came from."""
    k, n = top.inputs.shape
    fig, axes = _grid(k, 2 * n, title, group=2, labels=[f"unit {u}" for u in top.units])
    for r in range(k):
        for c in range(n):
            box = top.boxes[r][c]
            _signed(axes[r][2 * c], crop(top.projections[r, c], box))
            _plain(axes[r][2 * c + 1], crop(x[top.inputs[r, c]], box))
    return fig


def _square(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return -(-count // cols), cols


def _ranges(count: int, rows: int, cols: int) -> list:
    """Each row's label: the indices of its cells."""
    return [f"{r * cols}-{min((r + 1) * cols, count) - 1}" for r in range(rows)]


def maps_figure(a: np.ndarray, title: str):
    """One cell per channel of [C, *spatial] (a [C] vector: one strip)."""
    if a.ndim == 1:
        a = a[None, None, :]
    rows, cols = _square(len(a))
    fig, axes = _grid(rows, cols, title, labels=_ranges(len(a), rows, cols))
    for i, m in enumerate(a):
        _plain(axes[i // cols][i % cols], m[None], cmap="viridis")
    return fig


def filters_figure(w: np.ndarray, title: str):
    """One cell per filter of a convolution's weights [O, C, *kernel]."""
    rows, cols = _square(len(w))
    fig, axes = _grid(rows, cols, title, labels=_ranges(len(w), rows, cols))
    for i, f in enumerate(w):
        _signed(axes[i // cols][i % cols], f)
    return fig


def saliency_figure(x: np.ndarray, grad: np.ndarray, title: str):
    """The input beside |gradient| (its largest over the channels)."""
    fig, axes = _grid(1, 2, title, labels=["input"])
    _plain(axes[0][0], x)
    g = np.abs(np.asarray(grad, np.float64))
    g = g.reshape((len(g), 1) + g.shape[1:]) if g.ndim == 2 else g
    _plain(axes[0][1], g.max(axis=0)[None], cmap="hot")
    return fig
