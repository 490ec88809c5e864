"""The run folder: where it goes, whether it may be (re)used, and writes that are never half-done.

Layout of `<output_dir>/<run_name>/` (every file name is a constant below; no other module spells one):
    config.yaml            resolved config (written first; its presence marks a started run)
    environment/           what the run ran on: code, packages, hardware (train/envinfo.py `record`)
    history.jsonl          one row per finished epoch, with its end time (kept across restarts and after)
    .state/                checkpoints (callbacks.AtomicBackupAndRestore); removed when the run finishes
    history.json metrics.json test_predictions.csv curves.png confusion_matrix.png roc.png
    mlflow_run_id mlflow_model.json   (tracked runs: the MLflow run, the logged model)
    folder_id              a random id, made with config.yaml: the folder's identity, which its MLflow
                           run carries as a tag (a path differs between a container and its host)
    model.keras            written last: its presence marks a finished run
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasflow import config as config_mod
from kerasflow import files
from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import atomic_write, can_write, fsync_file, umask

if TYPE_CHECKING:
    import keras

HISTORY_LOG = "history.jsonl"
HISTORY_TIME = "time_ms"  # a history.jsonl row's end time (ms since the epoch): the MLflow metrics' timestamp
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ROC_FILE = "roc.png"
RUN_ID_FILE = "mlflow_run_id"
LOGGED_MODEL_FILE = "mlflow_model.json"
LOCK_FILE = ".lock"  # flock-ed by the process training into the folder; holds its pid
FOLDER_ID_FILE = "folder_id"

log = logging.getLogger(__name__)

_held: dict[Path, int] = {}  # run folders this process holds: fd kept open until the process ends


def finished_run_id(run_dir: Path) -> str | None:
    """The MLflow run id of a tracked run that finished in this folder (a rerun skips it), else None."""
    id_file = run_dir / RUN_ID_FILE
    if (run_dir / MODEL_FILE).is_file() and id_file.is_file():
        return id_file.read_text().strip()
    return None


def _writable_ancestor(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    return probe



def claim(folder: Path, template: str, create: Callable[[Path], object] = os.mkdir,
          path_of: Callable[[str], Path] | None = None) -> str:
    """An automatic name (config.AUTO_NAME replaced by the clock; then -2, -3, ... when taken), claimed
    by creating its path exclusively (`create` raises FileExistsError for a taken one). Two processes
    started in the same second get two names: checking first and creating later made them one run."""
    base = (template or config_mod.AUTO_NAME).replace(config_mod.AUTO_NAME, time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        name = base if n == 1 else f"{base}-{n}"
        try:
            create(path_of(name) if path_of else folder / name)
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")


# run folders this process claimed for an automatic name, still empty -> the folders the claim created
_claimed: dict[Path, list[Path]] = {}


def plan(cfg: Config) -> Path:
    """Decide the run folder and check it can be used. A user's run_name writes nothing yet (it may be
    a resume); an automatic one is claimed now, before the slow load (`release` undoes the claim)."""
    out = Path(cfg.output_dir)
    existing = _writable_ancestor(out)
    if not existing.is_dir():
        raise UserError(f"output_dir {out} is inside a file ({existing}): choose a folder path")
    if not can_write(existing):
        raise UserError(
            f"output_dir {out} is not writable ({existing} denies writing): choose another with "
            "--set output_dir=PATH"
        )
    if config_mod.automatic_name(cfg.run_name):
        created = [p for p in (out, *out.parents) if not p.exists()]
        run_dir = out / claim(out, cfg.run_name)
        hold(run_dir)
        _claimed[run_dir.resolve()] = [run_dir, *created]
        return run_dir
    run_dir = out / cfg.run_name
    if run_dir.exists():
        check_resumable(run_dir, cfg)
    return run_dir


def release(run_dir: Path) -> None:
    """Undo `plan`'s claim of an automatic name when the run fails before it starts (a missing dataset,
    bad weights): no empty folder is left behind. A folder the run has written into stays."""
    key = run_dir.resolve()
    if key not in _claimed or (run_dir / CONFIG_FILE).exists():
        return
    created = _claimed.pop(key)
    fd = _held.pop(key, None)
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)
    for folder in created:  # the run folder, then the output folders the claim made (if still empty)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _lock(run_dir: Path) -> int:
    """The folder's lock, taken (an fd), or a UserError naming the live process that holds it."""

    key = run_dir.resolve()
    if key in _held:
        return _held[key]
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"run folder {run_dir} is in use by a running process (pid {pid}): wait for it "
                        "to end, or pick another run_name") from None
    return fd


def hold(run_dir: Path) -> None:
    """Mark the folder as this live process's, until it exits (the kernel drops the lock of a killed
    process): a resume can tell a run left RUNNING by a kill from one that is still training."""
    fd = _lock(run_dir)
    if run_dir.resolve() not in _held:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[run_dir.resolve()] = fd


def process_gone(run_dir: Path) -> bool:
    """Whether the process that trained into `run_dir` has ended (killed or not): its lock, held from
    before its MLflow run exists until the process exits, is free. A folder that is gone counts too."""
    if run_dir.resolve() in _held:
        return False
    lock = run_dir / LOCK_FILE
    if not lock.exists() and not lock.is_symlink():
        return not run_dir.exists()
    fd = files.open_regular(lock)  # the folder may come from a run's tag: a FIFO there must not hang us
    return False if fd is None else files.unlocked(fd)


def check_resumable(run_dir: Path, cfg: Config) -> None:
    if (run_dir / LOCK_FILE).exists() and run_dir.resolve() not in _held:
        os.close(_lock(run_dir))  # refuse now, before the slow load, when a live process trains here
    if (run_dir / MODEL_FILE).exists():
        raise UserError(
            f"run folder {run_dir} already holds a finished run: pick another run_name or delete it"
        )
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            raise UserError(
                f"{run_dir} exists and is not a run folder: pick another run_name or output_dir"
            )
        return
    # only what changes the trained model: more cache memory or another search space is the same run
    before = config_mod.identity(config_mod.load(saved))
    now = config_mod.identity(cfg)
    changed = [k for k in now if before[k] != now[k]]
    if changed:
        k = changed[0]
        raise UserError(
            f"run folder {run_dir} was started with {k}={before[k]!r}, not {now[k]!r}: resume with the "
            "same config or pick another run_name"
        )
    if not can_write(run_dir):
        raise UserError(f"run folder {run_dir} is not writable: fix its permissions or pick another")


def create(run_dir: Path, cfg: Config) -> bool:
    """Create the folder and save the resolved config; True when this continues an earlier start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    hold(run_dir)
    _claimed.pop(run_dir.resolve(), None)
    if (run_dir / CONFIG_FILE).is_file():
        return True
    folder_id(run_dir)
    # the saved config names the run by its folder, whatever name cfg carried
    atomic_write(run_dir / CONFIG_FILE, config_mod.dump(cfg.replace(run_name=run_dir.name)))
    return False


def folder_id(run_dir: Path, *, create: bool = True) -> str:
    """The folder's identity (made once, on first use, for folders older than the file). Its MLflow run
    is tagged with it, so a folder's `mlflow_run_id` is believed only for a run this folder made: the
    file is plain text anyone with the folder can edit, and a folder naming another user's live run had
    its metrics, model and FINISHED written into that run."""
    path = run_dir / FOLDER_ID_FILE  # callers hold the folder (`hold`): one maker at a time
    fd = files.open_regular(path)  # the path may come from a run's tag: a regular file, 64 bytes at most
    if fd is not None:
        with os.fdopen(fd, "rb") as fh:
            return fh.read(64).decode(errors="replace").strip()
    if not create:  # a look (is its process alive?) makes nothing
        return ""
    if path.exists() or path.is_symlink():
        raise UserError(f"{path} is not a regular file: remove it (the run folder's identity is remade)")
    made = uuid.uuid4().hex
    atomic_write(path, made + "\n")
    return made


def state_dir(run_dir: Path) -> Path:
    return run_dir / ".state"


def clear_state(run_dir: Path) -> None:
    """Drop the checkpoints of a finished run; history.jsonl stays: its epoch times are what logging
    the folder into a store later (`kerasflow log-run`) needs."""
    shutil.rmtree(state_dir(run_dir), ignore_errors=True)


def _atomic_keras(path: Path, save: Any) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{''.join(path.suffixes)}")
    try:
        save(str(tmp))
        fsync_file(tmp)  # the bytes on disk before the rename publishes them
        os.chmod(tmp, 0o666 & ~umask())  # Keras may create it 0600; a run is for teammates to read
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_save_model(model: keras.Model, path: Path) -> Path:
    return _atomic_keras(path, model.save)


def atomic_save_weights(model: keras.Model, path: Path) -> Path:
    """Weights written whole or not at all. h5py writes them in a scratch folder in memory first: a
    full disk under h5py's own writes is a RuntimeError, and the half-closed file it leaves crashes
    the interpreter at exit (SIGSEGV); the copy into the run folder is plain Python I/O, where a full
    disk is an OSError (one line, exit 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path("/dev/shm")  # noqa: S108 - memory-backed where it exists; the system temp dir if not
    with tempfile.TemporaryDirectory(prefix="kerasflow-weights-",
                                     dir=scratch if scratch.is_dir() and can_write(scratch) else None) as tmp:
        staged = Path(tmp) / path.name
        model.save_weights(str(staged))
        return atomic_write(path, staged.read_bytes())


def read_history_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch rows, line by line: a row is a JSON object with an integer `epoch` >= 0 and numbers
    (NaN included: Keras logs it). A line that is not one is skipped and a field that is not a number
    dropped, one warning per line: the file is plain text in a folder others may copy or edit, and one
    bad line made `log-run` a traceback and an empty FAILED run that every retry hit again."""
    path = run_dir / HISTORY_LOG
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines()[:MAX_EPOCH_ROWS], 1):
        if not line.strip():
            continue
        row, problem = _history_row(line)
        if problem and (path, number, problem) not in _warned:  # once per process, not per read
            _warned.add((path, number, problem))
            log.warning(f"{path} line {number}: {problem}")
        if row is not None:
            rows.append(row)
    return rows


MAX_EPOCH_ROWS = 1_000_000  # lines read from history.jsonl (bounded: the file may come from elsewhere)
_warned: set[tuple[Path, int, str]] = set()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history_row(line: str) -> tuple[dict[str, Any] | None, str]:
    """(the row, or None when the line is unusable; what was wrong with it, or "")."""
    try:
        row = json.loads(line)
    except ValueError:
        return None, f"not JSON ({line[:60]!r}): skipped"
    if not isinstance(row, dict):
        return None, "not a JSON object: skipped"
    epoch = row.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None, f"epoch {str(epoch)[:40]!r} is not a whole number >= 0: skipped"
    bad = [str(k)[:40] for k, v in row.items() if not _usable(k, v)]
    if bad:
        return ({k: v for k, v in row.items() if _usable(k, v)},
                f"not a metric name with a number, dropped: {', '.join(bad)}")
    return row, ""


_METRIC_NAME = re.compile(r"[\w\-. /:]{1,250}")  # what MLflow accepts as a metric key


def _usable(key: str, value: Any) -> bool:
    if key == HISTORY_TIME:
        return _number(value) and math.isfinite(value) and 0 <= value < 2**62
    return _number(value) and bool(_METRIC_NAME.fullmatch(key)) and ".." not in key


def write_history_rows(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write(run_dir / HISTORY_LOG, "".join(json.dumps(row) + "\n" for row in rows))


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """Epoch rows turned into Keras-History-style columns (plus an `epoch` column)."""
    rows = read_history_rows(run_dir)
    keys = sorted({k for row in rows for k in row if k != HISTORY_TIME}, key=lambda k: (k != "epoch", k))
    return {k: [row.get(k, float("nan")) for row in rows] for k in keys}
