"""What this host has, read in one place: its NVIDIA GPUs (nvidia-smi) for the queue, doctor, make run's
checks and a search's workers on the host.

Why one module: nvidia-smi was run and parsed in five files, each with its own idea of a hang (none, or
30 s), of garbage output (an IndexError in doctor) and of a missing tool. Here every call is bounded in
time, never raises, and returns only what parses: rows of fields, or None when there is no answer.
Training inside the container records its own hardware (kerasflow/train/envinfo.py): that is another
machine's view. Standard library only (the light host env runs this).
"""

from __future__ import annotations

import re
import shutil
import subprocess

SMI_TIMEOUT = 10.0  # seconds: a healthy nvidia-smi answers in well under one; a wedged driver never does
SMI_MAX_ROWS = 64  # GPUs on one host, at the most we read
_INDEX = re.compile(r"[0-9]{1,3}")


def smi(*query: str, timeout: float = SMI_TIMEOUT) -> list[list[str]] | None:
    """`nvidia-smi QUERY --format=csv,noheader,nounits` as rows of stripped fields; None without the tool,
    when it fails, hangs past `timeout` or prints nothing usable."""
    tool = shutil.which("nvidia-smi")
    if not tool:
        return None
    try:
        out = subprocess.run([tool, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=timeout, errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = [[f.strip() for f in line.split(",")] for line in out.stdout.splitlines()[:SMI_MAX_ROWS]
            if line.strip()]
    return rows


def gpu_rows(*fields: str) -> list[list[str]] | None:
    """`--query-gpu=FIELDS`, only the rows that have every field and a numeric index first (when the
    index is asked for); None when nvidia-smi gives no answer."""
    rows = smi(f"--query-gpu={','.join(fields)}")
    if rows is None:
        return None
    good = [r for r in rows if len(r) == len(fields)]
    if fields and fields[0] == "index":
        good = [r for r in good if _INDEX.fullmatch(r[0])]
    return good


def gpu_indexes() -> list[str]:
    """The GPUs nvidia-smi lists, by index ("0", "1", ...); none on a box without (or a broken tool)."""
    return [r[0] for r in gpu_rows("index") or []]
