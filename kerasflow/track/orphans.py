"""Runs of ours left RUNNING by a process that is gone (SIGKILL, a crash, a store that was full when the
run tried to end) are closed as FAILED by the next command that opens their store.

A run is closed only when its process is provably dead. `tracked_run` tags it with the host, its run
folder's path and identity (`FOLDER_TAG`) and a heartbeat (`HEARTBEAT_TAG`, the time, renewed every
`HEARTBEAT_EVERY` s while it trains). Where this process sees the folder (the path exists and holds that
identity) the folder's lock (kerasflow.train.rundir) tells a live process from a dead one exactly: it
is held from before the MLflow run exists until the process exits, and a lock is the file's, seen
from every mount namespace. Where it does not (a run in a container with `--network host` has this
host's name but paths of its own mount namespace), only a heartbeat older than the grace
(`KERASFLOW_HEARTBEAT_GRACE`, default 600 s) proves it dead: taking an unseen path for a dead process
closed a live container run at epoch 41 of 150.

Left alone: runs without those tags (CV and search parents end with their children's process; a run
`mlflow run` is still starting), runs of other machines, copies merged from another store (their source
decides), and runs a scheduler owns while it lives (`make run`'s launcher: `LAUNCH_TAG`, settled by
`_close_launched` when the launcher is gone). Runs of a Slurm job end as Slurm says their job ended
(track/slurm_runs.py), whatever this machine sees.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kerasflow import files
from kerasflow.errors import UserError
from kerasflow.track import slurm_runs
from kerasflow.train import rundir

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

HOST_TAG = "kerasflow.host"
RUN_DIR_TAG = "kerasflow.run_dir"
FOLDER_TAG = "kerasflow.folder_id"  # rundir.folder_id: the same in a container and on its host
CLOSED_TAG = "kerasflow.closed_as_orphan"  # when and why a run was marked FAILED for its process
SOURCE_TAG = "kerasflow.source_run_id"  # on a copy merged from another store (storeops.merge): never ours
LAUNCH_TAG = "kerasflow.launch"  # which launcher started the run (kerasflow/launch: "local")
LOCK_TAG = "kerasflow.launch_lock"  # the run-name lock its launcher holds from before the run exists
GRACE = 60  # seconds a launched run is left alone after it is made
HEARTBEAT_TAG = "kerasflow.heartbeat"  # ms since the epoch, renewed by the training process
HEARTBEAT_EVERY = 60  # seconds between two heartbeats
HEARTBEAT_GRACE_VARIABLE = "KERASFLOW_HEARTBEAT_GRACE"
HEARTBEAT_GRACE = 600  # seconds without a heartbeat after which an unseen run counts as dead


def tags(run_dir: Path) -> dict[str, str]:
    """What `close` needs to know about a run: where it trains, and on which machine."""
    return {HOST_TAG: socket.gethostname(), RUN_DIR_TAG: str(run_dir.resolve()),
            FOLDER_TAG: rundir.folder_id(run_dir)}


def made_by(run: mlflow.entities.Run, run_dir: Path) -> bool:
    """The run was made by training (or logging) this folder: its folder id tag is the folder's, or, on a
    run older than that tag, its folder tag names a folder of this name. A run with neither (another
    user's, made by hand) is not the folder's, whatever the folder's `mlflow_run_id` file says."""
    tags = run.data.tags
    if FOLDER_TAG in tags:
        return tags[FOLDER_TAG] == rundir.folder_id(run_dir)
    return bool(tags.get(RUN_DIR_TAG)) and Path(tags[RUN_DIR_TAG]).name == run_dir.name


def close(client: mlflow.MlflowClient) -> list[str]:
    """Mark FAILED every RUNNING run of this host whose training process is gone; returns their names."""
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments()]
    closed: list[str] = []
    for start in range(0, len(experiments), 100):
        runs = client.search_runs(experiments[start:start + 100],
                                  f"attributes.status = 'RUNNING' AND tags.`{HOST_TAG}` = '{host}'")
        for run in runs:
            folder = run.data.tags.get(RUN_DIR_TAG)
            if not folder or SOURCE_TAG in run.data.tags or \
                    run.data.tags.get(LAUNCH_TAG) == slurm_runs.LAUNCH:
                continue  # (a Slurm run's job decides: slurm_runs.settle below)
            lock = run.data.tags.get(LOCK_TAG)
            if lock and not launcher_gone(Path(lock)):
                continue  # make run's launcher lives: it settles its run
            why = dead(run, Path(folder))
            if not why:
                continue
            client.set_tag(run.info.run_id, CLOSED_TAG, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {why}")
            client.set_terminated(run.info.run_id, "FAILED")
            name = run.info.run_name or run.info.run_id
            closed.append(name)
            log.warning(f"run '{name}' ({run.info.run_id}) was left RUNNING and {why}: marked FAILED; "
                        f"its folder {folder} resumes it (same command, run_name={name})")
        closed += _close_launched(client, experiments[start:start + 100], host)
        closed += slurm_runs.settle(client, experiments[start:start + 100], launch_tag=LAUNCH_TAG,
                                    lock_tag=LOCK_TAG, launcher_gone=launcher_gone)
    return closed


def dead(run: mlflow.entities.Run, folder: Path) -> str:
    """Why the run's process is provably gone, or "" while it may live (see the module docstring)."""
    tags, host = run.data.tags, socket.gethostname()
    mine = tags.get(FOLDER_TAG)
    seen = folder.exists() and (not mine or rundir.folder_id(folder, create=False) == mine)
    if seen:
        return f"its process on {host} is gone (its run folder is free)" if rundir.process_gone(folder) \
            else ""
    beat = tags.get(HEARTBEAT_TAG)
    if beat is None:  # a run of a version without heartbeats: an unseen folder was all it had
        return "" if mine else f"its run folder is gone from {host}"
    try:
        silent = time.time() - int(beat) / 1000
    except ValueError:
        return ""
    if silent <= heartbeat_grace():
        return ""
    return f"its run folder is not visible here and its heartbeat stopped {silent / 60:.0f} min ago"


def heartbeat_grace() -> float:
    raw = os.environ.get(HEARTBEAT_GRACE_VARIABLE, "")
    try:
        value = float(raw) if raw else HEARTBEAT_GRACE
    except ValueError:
        value = -1.0
    if not 0 <= value < 10**9:
        raise UserError(f"{HEARTBEAT_GRACE_VARIABLE}={raw[:40]!r} is not a number of seconds >= 0: set it "
                        f"to e.g. {HEARTBEAT_GRACE}, or unset it")
    return value


def heartbeat() -> dict[str, str]:
    """The heartbeat tag, now."""
    return {HEARTBEAT_TAG: str(int(time.time() * 1000))}


def launcher_gone(lock: Path) -> bool:
    """Whether the launcher that created a run has ended: its run-name lock (flock, held by the launcher
    from before the run exists until it exits) is free, or gone. The path comes from a run's tag, which
    anyone who writes to a shared store can set: only a plain file of this user's is opened; another
    user's run is theirs to close."""
    try:
        info = lock.lstat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    return files.unlocked(fd)


def _close_launched(client: mlflow.MlflowClient, experiments: list[str], host: str) -> list[str]:
    """Runs `make run` created (SCHEDULED while they wait, RUNNING until their training tags its folder)
    whose launcher is gone (SIGKILL, a reboot): marked FAILED. Once training runs, its folder decides."""
    closed = []
    for status in ("SCHEDULED", "RUNNING"):
        wanted = (f"attributes.status = '{status}' AND tags.`{HOST_TAG}` = '{host}' "
                  f"AND tags.`{LAUNCH_TAG}` = 'local'")
        runs = client.search_runs(experiments, wanted)
        for run in runs:
            lock = run.data.tags.get(LOCK_TAG, "")
            if (RUN_DIR_TAG in run.data.tags or not lock or time.time() - run.info.start_time / 1000 < GRACE
                    or not launcher_gone(Path(lock))):
                continue  # (GRACE: a detached make run's lock passes from its foreground half to tmux)
            client.set_tag(run.info.run_id, CLOSED_TAG,
                           f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: its launcher on {host} is gone")
            client.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_name or run.info.run_id)
            log.warning(f"run '{run.info.run_name}' ({run.info.run_id}) was left {status} by a make run "
                        "that is gone: marked FAILED; start it again with make run")
    return closed


def mark_stopped(client: mlflow.MlflowClient, run_id: str, status: str = "KILLED") -> bool:
    """A run its user stopped (make cancel, Ctrl-C, a hangup) ends `status`: `mlflow run` marks FAILED
    every run whose container exits non-zero. A run that FINISHED stays so; True when it was changed."""
    run = client.get_run(run_id)
    if run.info.status in ("FINISHED", status):
        return False
    client.set_terminated(run_id, status, end_time=run.info.end_time or None)
    return True
