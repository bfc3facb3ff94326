"""A run's per-epoch history as ``metrics.csv`` and ``curves.png``.

The history is a list of dicts, one per completed epoch, with the keys ``COLUMNS``. It lives in
the checkpoint, and both files are rewritten whole from it after every epoch (and on resume),
so a crash between two writes can never leave a duplicated or missing row.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Sequence

from ..files import atomic_write, new_figure, save_png

__all__ = ["COLUMNS", "write_metrics_csv", "read_metrics_csv", "plot_curves"]

COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "samples_per_s")


def write_metrics_csv(path, history: Sequence[dict]) -> Path:
    """``history`` as CSV with a header row of ``COLUMNS``, written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        # repr of a float round-trips exactly, so a resumed run's CSV matches byte for byte.
        writer.writerow({k: (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in COLUMNS})
    data = text.getvalue().encode()
    return atomic_write(path, lambda f: f.write(data))


def read_metrics_csv(path) -> list[dict]:
    """Rows of a ``metrics.csv``: epoch as int, the other columns as float."""
    with open(path, newline="") as f:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def plot_curves(path, history: Sequence[dict], title: str = "") -> bool:
    """Loss and accuracy (train and test) per epoch, as a PNG. False when matplotlib is missing."""
    try:
        # Fixed margins: constrained layout's solver took most of the drawing time, which is
        # paid after every epoch.
        fig = new_figure((10, 4))
    except ImportError:
        warnings.warn("matplotlib is not installed: no curves.png (pip install 'wavkan[train]')", stacklevel=2)
        return False
    epochs = [r["epoch"] for r in history]
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-o"), ("test", "-s")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split, markersize=4)
        ax_acc.plot(epochs, [100.0 * r[f"{split}_acc"] for r in history], style, label=split, markersize=4)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.82 if title else 0.9, wspace=0.22)
    if title:
        fig.suptitle(title)
    save_png(fig, path, dpi=100)
    return True
