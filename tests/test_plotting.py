"""``lopt_graphs.plotting``: figures on the Agg canvas, written atomically as PNG, pyplot left alone."""

from __future__ import annotations

import io

import pytest

from lopt_graphs.plotting import new_figure, png_bytes, save_figure

PIL = pytest.importorskip("PIL.Image")


def test_save_figure_writes_a_png_of_the_requested_size(tmp_path) -> None:
    fig, ax = new_figure(figsize=(3, 2))
    ax.plot([1, 2, 3], [3, 1, 2], label="a")
    ax.legend()
    path = save_figure(fig, tmp_path / "sub" / "curve.png", dpi=50)
    assert path == tmp_path / "sub" / "curve.png"
    assert PIL.open(path).size == (150, 100)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]  # no temporary file left behind
    assert PIL.open(io.BytesIO(png_bytes(fig))).size == (300, 200)  # the figure's own dpi (100)


def test_grid_of_axes_and_no_pyplot_figure() -> None:
    fig, axes = new_figure(2, 3, figsize=(3, 2), squeeze=False)
    assert axes.shape == (2, 3)
    _, ax = new_figure(figsize=(3, 2))
    assert not hasattr(ax, "shape")  # squeeze: a lone Axes
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []
