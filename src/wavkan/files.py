"""Crash-safe files, shared by the application and the benchmark; imports nothing of wavkan.

Every write goes to a temp file in the same folder, is fsynced, then renamed. ``os.replace``
within one folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either
the old file or the new one, never a partial one, whenever the writer is killed. Figures are
matplotlib's object-oriented API on the Agg canvas (no pyplot, so no process-wide backend
switch and no display), saved the same way.

A folder written by one long-lived process at a time is claimed with ``FolderLock``: an
advisory lock (``flock``) on a lock file inside it. The kernel drops the lock when its process
dies however it dies, so a crash never leaves a folder claimed; a second claimant is refused at
once, before it touches the owner's files (its temp files included).
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "atomic_write", "remove_stale_temps", "make_folder", "FolderError", "FolderBusyError", "FolderLock",
    "new_figure", "save_png",
]


class FolderError(OSError):
    """A path that cannot be used as a folder to write in; the message names the path and why."""


class FolderBusyError(FolderError):
    """The folder is claimed by another live process (``FolderLock``)."""


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
    atomic_write's cleanup). Call it only while holding the folder's ``FolderLock``: without
    it, the temp file of a live writer is not stale."""
    for name in names:
        for stale in Path(folder).glob(f".{name}.*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def atomic_write(path, write: Callable[[IO[bytes]], Any], verify: Optional[Callable[[Path], Any]] = None) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, and rename it to ``path``.

    ``verify(temp_path)``, when given, runs on the complete temp file before the rename and
    raises if the file is not what was meant to be written; ``path`` then keeps its old content.
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
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def make_folder(path) -> list:
    """Create ``path`` and its missing parents; returns the folders created, outermost first
    (so a caller that fails before writing anything can remove what it made).

    FolderError, naming the culprit, when a part of the path is a file (``/etc/hostname/sub``),
    ``path`` is not a folder (``/dev/null``), or the folder cannot be created (``/sys/nope``).
    """
    path = Path(path)
    missing = []
    probe = path
    while True:
        try:
            if probe.is_dir():
                break
            exists = probe.exists() or probe.is_symlink()
        except OSError as e:
            raise FolderError(f"{path}: cannot inspect {probe} ({e.strerror or e})") from None
        if exists:
            if probe == path:
                raise FolderError(f"{path} exists and is not a folder")
            raise FolderError(f"{path}: {probe} is a file, not a folder")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise FolderError(f"{path}: {folder} is not a folder") from None
            continue  # made by someone else meanwhile: not ours to remove
        except OSError as e:
            raise FolderError(f"{path}: cannot create the folder {folder} ({e.strerror or e})") from None
        created.append(folder)
    return created


class FolderLock:
    """An exclusive claim on a folder: ``flock`` on the file ``folder/name``, held until
    ``release()`` (or the process's death; the kernel drops the lock).

    ``acquire()`` never waits: FolderBusyError, with the holder's process id, when another
    claimant holds it; FolderError when the lock file cannot be created (the folder is not
    writable). ``release()`` deletes the lock file while still holding the lock; a claimant that
    opened the file just before then finds its lock on a deleted file and starts over, so two
    processes never both believe they hold the folder. A process killed while holding the lock
    leaves the file behind, unlocked and harmless.

    On a file system that has no locks (some network and FUSE mounts answer ENOLCK or
    EOPNOTSUPP), ``acquire()`` returns without the lock and ``unsupported`` says why: the caller
    decides whether to go on unprotected.
    """

    def __init__(self, folder, name: str = ".lock"):
        self.path = Path(folder) / name
        self._fd: Optional[int] = None
        self.unsupported: Optional[str] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (process {pid})" if pid.isdigit() else ""

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        folder = self.path.parent
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise FolderError(f"{folder}: cannot write in this folder ({e.strerror or e})") from None
            try:
                _lock_nonblocking(fd)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusyError(f"{folder} is in use by another process{self._holder()}") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_LOCKS:
                    raise FolderError(f"{folder}: cannot lock {self.path.name} ({e.strerror or e})") from None
                self.unsupported = e.strerror or str(e)
                self.path.unlink(missing_ok=True)  # a lock file that locks nothing
                return self
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its previous holder had just deleted: try the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:  # Windows cannot delete an open file; there it stays
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # drops the lock

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# errno values of a file system without advisory locks.
_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


def _lock_nonblocking(fd: int) -> None:
    """An exclusive lock on ``fd``'s file; BlockingIOError when another open file holds one."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise BlockingIOError(e.errno, e.strerror) from None
            raise
        return
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        raise BlockingIOError(e.errno, e.strerror) from None


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
