"""What a run ran on: code commit, dependency lock, TF/CUDA build, GPUs, container, host.

Recorded into the run folder when the run starts (`record`: `environment/`), so a result can be traced
to the exact code and environment, and the run folder alone can be logged into a store later; a
tracked run logs that folder as its `environment/` artifacts and tags.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from fnmatch import fnmatch
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from kerasflow.files import atomic_write

# Lazy imports: keras, tensorflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.txt"

# the run folder's environment/ (also the MLflow artifact folder of that name)
ENV_DIR = "environment"
TAGS_FILE = "tags.json"  # the run's tags (commit, dirty, host, GPUs, TF build, ...)
INSTALLED_FILE = "installed.txt"  # name==version of the running environment
DIFF_FILE = "git_diff.patch"  # the uncommitted diff (secret-looking files left out, capped)
UNTRACKED_FILE = "untracked_files.txt"  # names only: their content may be anything (data, keys)
HARDWARE_FILE = "hardware.json"  # GPUs and the TF/CUDA build
LINEAGE_FILE = "lineage.json"  # data and split digests, data source, replicas: what a tracked run tags


def _run(args: list[str], cwd: Path = ROOT) -> str | None:
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


# The uncommitted diff goes into every run's artifacts, which teammates and a pulled store can read:
# files that look like secrets are left out by name, and the diff is capped. Both are recorded in tags
# (kerasflow.diff_skipped, kerasflow.diff_capped), because reproducing a run needs to know.
SECRET_NAMES = (".env", ".env.*", "*.env", ".netrc", "*.pem", "*.key", "*key*", "*secret*", "*token*",
                "*password*", "*credential*", "id_rsa*", "id_ed25519*", "*.p12", "*.pfx", ".pgpass")
MAX_DIFF_BYTES = 1 << 20


def looks_secret(path: str) -> bool:

    name = Path(path).name.lower()
    return any(fnmatch(name, pattern) for pattern in SECRET_NAMES)


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """Commit, dirty flag, the uncommitted diff of tracked files (secret-looking files left out, capped
    at MAX_DIFF_BYTES) and the names of untracked files."""
    commit = _run(["git", "rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": "unknown (not a git checkout)", "dirty": None, "diff": "", "skipped": [],
                "capped": 0, "untracked": []}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], root) or ""
    names = (_run(["git", "diff", "HEAD", "--name-only", "-z"], root) or "") if status.strip() else ""
    changed = [c for c in names.split("\0") if c]
    skipped = [c for c in changed if looks_secret(c)]
    kept = [c for c in changed if not looks_secret(c)]
    diff = (_run(["git", "diff", "HEAD", "--", *kept], root) or "") if kept else ""
    capped = 0
    if len(diff.encode()) > MAX_DIFF_BYTES:
        capped = len(diff.encode())
        diff = diff.encode()[:MAX_DIFF_BYTES].decode(errors="ignore")
    others = _run(["git", "ls-files", "--others", "--exclude-standard", "-z"], root) or ""
    untracked = [u for u in others.split("\0") if u]
    return {"commit": commit.strip(), "dirty": bool(status.strip()), "diff": diff, "skipped": skipped,
            "capped": capped, "untracked": untracked}


def installed() -> str:
    """name==version of every package of the RUNNING environment (the lock file says what should be
    installed; this is what was), sorted, one per line."""

    pins = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "".join(f"{p}\n" for p in sorted(pins, key=str.lower))


def gpus() -> list[dict[str, str]]:
    """GPU names and driver from nvidia-smi (empty without an NVIDIA GPU)."""
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if not out:
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            rows.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return rows


def container_image() -> str:
    """The image id when running in our container (its build sets KERASFLOW_IMAGE), else 'none'."""
    if os.environ.get("KERASFLOW_IMAGE"):
        return os.environ["KERASFLOW_IMAGE"]
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return "unknown container"
    return "none"


def tensorflow_build() -> dict[str, str]:
    import keras
    import tensorflow as tf

    info = dict(tf.sysconfig.get_build_info())
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cuda_build": str(info.get("cuda_version", "none")),
        "cudnn_build": str(info.get("cudnn_version", "none")),
        "tf_gpus_visible": str(len(tf.config.list_physical_devices("GPU"))),
    }


def tags(git: dict[str, Any] | None = None) -> dict[str, str]:
    """Flat tags for the MLflow run (strings only); `git` when the caller read git_state already."""
    git = git or git_state()
    found = gpus()
    out = {
        "git_commit": git["commit"],
        "git_dirty": str(git["dirty"]).lower(),
        "kerasflow.diff_skipped": ", ".join(git["skipped"]) or "none",
        "kerasflow.diff_capped": f"{git['capped']} bytes cut to {MAX_DIFF_BYTES}" if git["capped"] else "no",
        "kerasflow.untracked_files": str(len(git["untracked"])),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "container_image": container_image(),
        "gpus": "; ".join(g["name"] for g in found) or "none",
        "gpu_driver": found[0]["driver"] if found else "none",
    }
    out.update(tensorflow_build())
    return out


def record(run_dir: Path, lineage: dict[str, Any] | None = None) -> Path:
    """Write what this run runs on into `run_dir/environment/` (once: a resumed run keeps the record
    of its start), and `lineage` (its data). Returns the folder."""
    folder = run_dir / ENV_DIR
    if lineage is not None and not (folder / LINEAGE_FILE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / LINEAGE_FILE, json.dumps(lineage, indent=2))
    if (folder / TAGS_FILE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    git = git_state()
    atomic_write(folder / LOCK.name, LOCK.read_bytes())
    if git["dirty"] and git["diff"]:
        atomic_write(folder / DIFF_FILE, git["diff"])
    if git["untracked"]:
        atomic_write(folder / UNTRACKED_FILE, "".join(f"{u}\n" for u in git["untracked"]))
    atomic_write(folder / INSTALLED_FILE, installed())
    atomic_write(folder / HARDWARE_FILE, json.dumps({"gpus": gpus(), **tensorflow_build()}, indent=2))
    atomic_write(folder / TAGS_FILE, json.dumps(tags(git), indent=2))  # last: marks the record whole
    return folder
