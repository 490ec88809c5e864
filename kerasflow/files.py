"""File-system checks every layer needs (run folders, stores, relocation)."""

from __future__ import annotations

import os
import tempfile
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


def atomic_write(path: Path, data: str | bytes, mode: int | None = None) -> Path:
    """Readers see the old file or the whole new one, also after a kill or a full disk.

    Temp file in the same folder, every byte written and fsynced, then renamed. The new file gets the
    permissions a plain open() would give (0666 minus the umask), so teammates on a shared server can
    read a run; pass `mode` (0o600) for a file that holds a secret.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    fsync_file(path.parent)
    return path
