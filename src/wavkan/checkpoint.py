"""Crash-safe files: every write goes to a temp file in the same folder, is fsynced, then renamed.

``os.replace`` within one folder is atomic on POSIX and Windows, so a reader (or a resumed run)
sees either the old file or the new one, never a partial one, whenever the writer is killed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Callable, IO

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "build_model", "CHECKPOINT_FORMAT"]

# Bumped when the checkpoint's layout changes incompatibly.
CHECKPOINT_FORMAT = 1


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


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save(state)`` to ``path`` atomically. Keep ``state`` to tensors and plain types,
    so ``load_checkpoint`` can use torch's safe (weights-only) unpickler."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> dict:
    """A checkpoint written by ``save_checkpoint``, every tensor on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a wavkan checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def build_model(config: dict, backend: str = "auto"):
    """An untrained ``WavKAN`` of a run's config (keys ``layers``, ``wavelet``), on the CPU.

    Seed the RNG first for a reproducible initialisation; a checkpoint's weights replace it.
    """
    from .nn import WavKAN  # here, so that writing files does not import the model

    return WavKAN(list(config["layers"]), wavelet=config["wavelet"], backend=backend)
