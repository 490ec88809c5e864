"""The decode-once cache: images over the RAM budget go to a file (.npy, written with pwrite, read with pread
by the pipeline) keyed by what was decoded (a killed build leaves no half file that looks whole); within
the budget they stay in RAM."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kerasflow.config import Config
from kerasflow.files import atomic_write
from kerasflow.train.examples import aligned_empty


class Sink:
    """Preallocated uint8 storage for decoded images: RAM when it fits the budget, else a cache file.

    The file is written with pwrite, not through a memory map: written pages of a map count in the
    process's RSS, so filling a 4 GB cache through one would take 4 GB of RSS, which is what the budget
    is there to avoid; pages in the kernel's page cache do not count, and the kernel drops them first.
    """

    def __init__(self, n: int, size: int, cfg: Config, key: str) -> None:
        nbytes = n * size * size * 3
        self.path: Path | None = None
        self.fd: int | None = None
        if nbytes <= cfg.cache_ram_mb * 2**20:
            self.array = aligned_empty((n, size, size, 3))
        else:
            cache = Path(cfg.cache_dir)
            cache.mkdir(parents=True, exist_ok=True)
            remove_orphans(cache, key)
            self.path = cache / f"{key}.u8"
            self.tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            self.shape = (n, size, size, 3)
            header = np.lib.format.open_memmap(self.tmp, "w+", np.uint8, self.shape)  # .npy header, size
            self.offset = header.offset
            del header
            self.record = size * size * 3
            self.fd = os.open(self.tmp, os.O_WRONLY)

    def put(self, where: slice | np.ndarray, values: np.ndarray) -> None:
        """Images at positions `where` (a slice, or indices in any order)."""
        if self.fd is None:
            self.array[where] = values
            return
        values = np.ascontiguousarray(values, np.uint8)
        if isinstance(where, slice):
            _pwrite_all(self.fd, values, self.offset + where.start * self.record)
        else:
            for index, image in zip(where, values, strict=True):
                _pwrite_all(self.fd, image, self.offset + int(index) * self.record)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Remove the (possibly multi-GB) temp file of a fill that did not complete (Ctrl-C, an error)."""
        if self.path is not None:
            self._close()
            for tmp in (self.tmp, self.tmp.with_suffix(".compact")):
                tmp.unlink(missing_ok=True)

    def finish(self, meta: dict[str, Any], keep: np.ndarray | None = None) -> np.ndarray:
        """The filled images; a cache file is published with its metadata written FIRST (atomically),
        so that a `.u8` file a reader finds always has its JSON beside it."""
        if self.path is None:
            return self.array if keep is None else self.array[keep]
        if self.fd is not None:
            os.fsync(self.fd)
        self._close()
        if keep is not None:  # corrupt files were dropped: compact into a new file (a rare path)
            filled = np.load(self.tmp, mmap_mode="r")
            compact = np.lib.format.open_memmap(
                self.tmp.with_suffix(".compact"), "w+", np.uint8, (int(keep.sum()), *self.shape[1:])
            )
            compact[:] = filled[keep]
            compact.flush()
            del compact, filled
            os.replace(self.tmp.with_suffix(".compact"), self.tmp)
        atomic_write(self.path.with_suffix(".json"), json.dumps(meta))
        os.replace(self.tmp, self.path)
        return np.load(self.path, mmap_mode="r")


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = memoryview(array).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def remove_orphans(cache: Path, key: str) -> None:
    """Temp files of fills whose process was SIGKILLed (no cleanup ran): they may be gigabytes."""
    for tmp in cache.glob(f"{key}.tmp*"):
        pid = tmp.suffix.removeprefix(".tmp")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def lookup(cfg: Config, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A published cache entry (images, metadata), or None: missing, or torn by a kill of an older
    version (then it is simply rebuilt)."""
    path = Path(cfg.cache_dir) / f"{key}.u8"
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        images = np.load(path, mmap_mode="r")
        if images.nbytes <= cfg.cache_ram_mb * 2**20:  # it fits the budget now: the faster RAM path
            in_ram = aligned_empty(images.shape)
            with path.open("rb") as f:  # read, not copied through the map (whose pages would stay in RSS)
                f.seek(images.offset)
                if f.readinto(memoryview(in_ram).cast("B")) != in_ram.nbytes:
                    return None  # shorter than its header says: rebuilt
            return in_ram, meta
        return images, meta
    except (OSError, ValueError):
        return None
