"""File-system checks every layer needs (run folders, stores, relocation)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def can_write(folder: Path) -> bool:
    """Try it: os.access says yes to root on read-only mounts and proc-like filesystems."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
