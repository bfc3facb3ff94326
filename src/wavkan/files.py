"""Crash-safe files, shared by the application and the benchmark; imports nothing of wavkan.

Every write goes to a temp file in the same folder, is fsynced, then renamed. ``os.replace``
within one folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either
the old file or the new one, never a partial one, whenever the writer is killed. Figures are
matplotlib's object-oriented API on the Agg canvas (no pyplot, so no process-wide backend
switch and no display), saved the same way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write", "remove_stale_temps", "new_figure", "save_png"]


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TMP_SUFFIX = ".tmp"


def remove_stale_temps(folder, names) -> None:
    """Delete temp files that writes of ``names`` left in ``folder`` when killed (SIGKILL skips
    atomic_write's cleanup)."""
    for name in names:
        for stale in Path(folder).glob(f".{name}.*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def atomic_write(path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, and rename it to ``path``.

    On any error (or KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); O_EXCL with mode 0666 honours the umask instead.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


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
