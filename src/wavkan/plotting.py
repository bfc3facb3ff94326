"""Figures for the applications: matplotlib's object-oriented API on the Agg canvas (no pyplot,
so no process-wide backend switch and no display), saved atomically."""

from __future__ import annotations

from .checkpoint import atomic_write


def new_figure(figsize, **kwargs):
    """A matplotlib Figure with an Agg canvas attached; ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path, dpi: int = 100):
    """Write ``fig`` as a PNG through a temp file: a killed run never leaves half a picture."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
