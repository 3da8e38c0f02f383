"""Figures written as PNG files, drawn off-screen (no display on servers and workers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def png_figure(path: Path | str, figsize: tuple[float, float], dpi: int = 110,
               ncols: int = 1) -> Iterator[tuple[Any, Any]]:
    """``with png_figure(path, (6, 4)) as (fig, ax): ...`` draws one figure and, when the block
    ends without an error, lays it out and saves it to ``path``; the figure is always closed.
    With ``ncols`` > 1, ``ax`` is the row of panels (an array of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, ncols, figsize=figsize, dpi=dpi)
    try:
        yield fig, ax
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
