"""Figures for the commands' PNG outputs: one way to make a figure and one way to write it.

Figures are drawn on the Agg canvas directly (``matplotlib.figure.Figure``), not through ``pyplot``: no
backend is switched for the caller's process and no figure stays open in pyplot's registry. The PNG is
written with :func:`lopt_graphs.io.atomic_write`, like everything else the package persists.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from .io import atomic_write

__all__ = ["new_figure", "png_bytes", "save_figure"]


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], dpi: float | None = None,
               squeeze: bool = True) -> tuple[Any, Any]:
    """A figure on the Agg canvas and its grid of axes.

    Args:
        nrows, ncols: the grid of axes.
        figsize: width and height in inches.
        dpi: the figure's resolution (``None``: matplotlib's ``figure.dpi``, 100 by default).
        squeeze: as in ``Figure.subplots``: a lone ``Axes`` for a 1x1 grid, a 1-D array for one row or column.

    Returns:
        ``(figure, axes)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def png_bytes(fig: Any, dpi: float | None = None) -> bytes:
    """Lay ``fig`` out tightly and render it as PNG at ``dpi`` (``None``: the figure's own)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **({} if dpi is None else {"dpi": dpi}))
    return buf.getvalue()


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Write :func:`png_bytes` of ``fig`` to ``path`` atomically; returns ``Path(path)``."""
    data = png_bytes(fig, dpi)
    return atomic_write(path, lambda fh: fh.write(data))
