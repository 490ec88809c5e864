"""File-system checks every layer needs (run folders, stores, relocation)."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def can_write(folder: Path) -> bool:
    """Try it: os.access says yes to root on read-only mounts and proc-like filesystems."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def fsync_file(path: Path) -> None:
    """The file's bytes on disk (before a rename publishes it); a folder: its entries (after one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int | None = None, *, sync_folder: bool = True) -> Path:
    """Readers see the old file or the whole new one, also after a kill or a full disk.

    Temp file in the same folder, every byte written and fsynced, then renamed. The new file gets the
    permissions a plain open() would give (0666 minus the umask), so teammates on a shared server can
    read a run; pass `mode` (0o600) for a file that holds a secret. `sync_folder=False` skips the
    folder's fsync after the rename, for a rewrite of thousands of files that a rerun can finish
    (relocation): a crash then leaves the old file, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)  # raises on a short write
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_file(path.parent)
    return path


TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


def leftover_temps(path: Path) -> list[Path]:
    """atomic_write's temp files for `path` that a killed writer left behind (never renamed)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{TEMP_PREFIX}{glob_escape(path.name)}.*{TEMP_SUFFIX}"))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def create_new(path: Path) -> None:
    """Create `path` empty, or raise FileExistsError: the exclusive create that claims a name."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


_HELD: set[str] = set()  # lock files this process holds: a nested `exclusive` on one of them passes


@contextmanager
def exclusive(lock_file: Path, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """flock(lock_file) for the block: the kernel frees it when the holder dies, however it dies.
    Reentrant in one process (a pull holds its store's lock while it relocates it). `waiting` is called
    once when another process holds it. Yields False, unlocked, when the lock file cannot be created (a
    read-only folder, where the operation itself will say what is wrong)."""
    key = str(Path(lock_file).absolute())
    if key in _HELD:
        yield True
        return
    try:
        handle = open(lock_file, "a")
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD.add(key)
        try:
            yield True
        finally:
            _HELD.discard(key)


def open_regular(path: Path) -> int | None:
    """A read-only fd of `path` when it is a regular file (not followed through a link, never blocking),
    else None. For files at paths another user may have named (a run's tags in a shared store): a FIFO
    there would hang the reader, a device would be read from."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def unlocked(fd: int) -> bool:
    """Whether no process holds a flock on the file open as `fd` (a shared lock is tried, never kept);
    closes `fd`. How a run folder's or a launcher's lock tells a live process from a dead one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
