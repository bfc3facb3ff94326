"""Crash-safe files, shared by the application and the benchmark; imports nothing of wavkan.

Every write goes to a temp file in the same folder, is fsynced, then renamed. ``os.replace``
within one folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either
the old file or the new one, never a partial one, whenever the writer is killed. Figures are
matplotlib's object-oriented API on the Agg canvas (no pyplot, so no process-wide backend
switch and no display), saved the same way.

A writer killed mid-write (SIGKILL skips every cleanup) leaves its temp file behind. Temp names
carry the writer's process id and host, ``.<name>.<pid>.<host>.<random>.tmp``, and every write
first removes the temp files of its target whose writer is gone (``remove_stale_temps``): a
process that no longer exists on this host, or a file untouched for ``STALE_TEMP_AGE`` seconds
(an hour: no write here takes that long). A concurrent writer's temp file is kept while its
process lives, as far as this process can see: one in another process-id namespace under the
same host name (containers sharing a host name) looks gone; its write then fails instead of
replacing the target, which stays whole.

A folder written by one long-lived process at a time is claimed with ``FolderLock``: an
advisory lock (``flock``) on a lock file inside it. The kernel drops the lock when its process
dies however it dies, so a crash never leaves a folder claimed; a second claimant is refused at
once, before it touches the owner's files (its temp files included).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import time
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "atomic_write", "remove_stale_temps", "STALE_TEMP_AGE", "make_folder", "FolderError", "FolderBusyError",
    "FolderLock", "new_figure", "save_png",
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
# A temp file untouched this long (seconds) is stale whoever wrote it: its writer's pid may have
# been reused, or it lives on another host, or its name is of an earlier wavkan (no pid in it).
STALE_TEMP_AGE = 3600.0
# This host, in temp names: a process id means something on its own host only (a folder on a
# network file system may be written from several).
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_name(name: str, pid: Optional[int] = None, host: str = _HOST) -> str:
    """A fresh temp file name for the target ``name``, written by ``pid`` (this process)."""
    return f".{name}.{os.getpid() if pid is None else pid}.{host}.{secrets.token_hex(6)}{_TMP_SUFFIX}"


def _temp_pattern(name: str) -> "re.Pattern":
    """The temp names of target ``name``: ours (pid and host) and an earlier wavkan's (neither)."""
    return re.compile(rf"\.{re.escape(name)}\.(?:(\d+)\.([0-9a-f]{{8}})\.)?[0-9a-f]{{12}}{re.escape(_TMP_SUFFIX)}")


def _process_exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: no probe, the age alone decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process; anything else: assume alive
        return True
    return True


def _writer_gone(match: "re.Match", age: float, max_age: float) -> bool:
    if age > max_age:
        return True
    pid, host = match.group(1), match.group(2)
    return pid is not None and host == _HOST and int(pid) > 0 and not _process_exists(int(pid))


def remove_stale_temps(folder, names, max_age: float = STALE_TEMP_AGE) -> list:
    """Delete the temp files that writes of ``names`` left in ``folder`` when their writer was
    killed (SIGKILL skips atomic_write's cleanup): those whose writer process no longer exists
    on this host, and those untouched for ``max_age`` seconds. A live writer's temp file stays
    (within the limits the module docstring names), so this needs no ``FolderLock``. Returns the
    paths removed; never raises for a file it cannot inspect or remove."""
    folder = Path(folder)
    patterns = [_temp_pattern(name) for name in names]
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = next((m for m in (p.fullmatch(entry.name) for p in patterns) if m), None)
        if match is None:
            continue
        try:
            if _writer_gone(match, now - entry.stat(follow_symlinks=False).st_mtime, max_age):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile (another sweeper), or not ours to remove
            continue
    return removed


def atomic_write(path, write: Callable[[IO[bytes]], Any], verify: Optional[Callable[[Path], Any]] = None) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, and rename it to ``path``.

    ``verify(temp_path)``, when given, runs on the complete temp file before the rename and
    raises if the file is not what was meant to be written; ``path`` then keeps its old content.
    On any error (or KeyboardInterrupt) the temp file is removed and ``path`` is untouched.
    Temp files of ``path`` that killed writers left are removed first (``remove_stale_temps``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, [path.name])  # what a killed earlier write of path left
    # Not mkstemp: its files are private (0600); O_EXCL with mode 0666 honours the umask instead.
    tmp = path.parent / _temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        named = _naming_the_target(path, e)
        if named is e:
            raise
        raise named from e
    _fsync_dir(path.parent)
    return path


LOW_DISK_BYTES = 64 << 20


def _naming_the_target(path: Path, error: BaseException) -> BaseException:
    """A write's OSError or RuntimeError (torch.save's zip writer reports a full disk as "unexpected
    pos") as one of the same kind naming the file, and the disk's free space when it is nearly
    full; any other error as it is."""
    if not (isinstance(error, OSError) or type(error) is RuntimeError) or str(path) in str(error):
        return error
    try:
        free = shutil.disk_usage(path.parent).free
        note = f" ({free} bytes free on its disk)" if free < LOW_DISK_BYTES else ""
    except OSError:
        note = ""
    message = f"writing {path}: {(error.strerror if isinstance(error, OSError) else None) or error}{note}"
    try:  # of the error's own kind where its constructor takes (errno, message), else as it was
        if isinstance(error, OSError):
            return type(error)(error.errno, message) if error.errno is not None else type(error)(message)
        return RuntimeError(message)
    except Exception:  # noqa: BLE001
        return error


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
