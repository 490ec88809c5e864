"""MLflow runs that a Slurm job trains (`make run ON=slurm`, kerasflow/launch/slurm.py): their tags, and
how each one ends from Slurm's own record of its job.

A Slurm run is created when its job is submitted (SCHEDULED, `kerasflow.launch=slurm`, the job id, the
cluster, the partition); the training in the job moves it to RUNNING and ends it FINISHED or FAILED. A job
that is killed from outside (scancel, its time limit, preemption, out of memory, a node failure) or whose
container never started leaves it where it was: `settle` ends it with the status and reason Slurm
reports. It runs in every command that opens the store (track/store.py -> orphans.close), so a run ends
even when the machine that submitted it was off when its job ended. The orphan logic of one box
(processes, folders, heartbeats) never judges these runs: their job is elsewhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kerasflow import cluster

if TYPE_CHECKING:
    import mlflow

log = logging.getLogger(__name__)

LAUNCH = "slurm"  # the value of orphans.LAUNCH_TAG on a Slurm run
JOB_TAG = "kerasflow.slurm.job_id"
CLUSTER_TAG = "kerasflow.slurm.cluster"  # ClusterName: another cluster's runs (a pulled store) are left alone
PARTITION_TAG = "kerasflow.slurm.partition"
STATE_TAG = "kerasflow.slurm.state"  # PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...
REASON_TAG = "kerasflow.slurm.reason"  # why it waits, or how it ended
NODES_TAG = "kerasflow.slurm.nodes"
OPEN_TAG = "kerasflow.slurm.open"  # "1" until the job's end is recorded on the run (then "0")
ENDED = ("FINISHED", "FAILED", "KILLED")
SUBMIT_GRACE = 120  # seconds a run may wait for its sbatch (made just before it) before it counts as lost


def settle(client: mlflow.MlflowClient, experiments: list[str], *, launch_tag: str, lock_tag: str,
           launcher_gone: Callable[[Path], bool]) -> list[str]:
    """Every open Slurm run of this cluster (`OPEN_TAG`: its job's end not yet recorded) follows its job:
    the state tag kept current, and once the job ended, Slurm's reason recorded and the run ended as Slurm
    ended the job (see `_follow`). Returns the names of the runs whose status it changed. (Called by
    orphans.close with its tag names and lock test: this module sits beside it.)"""
    if not experiments or not cluster.available():
        return []
    runs = client.search_runs(experiments, f"tags.`{launch_tag}` = '{LAUNCH}' AND tags.`{OPEN_TAG}` = '1'")
    if not runs:
        return []
    name = cluster.cluster_name()
    if not name:
        return []  # the controller does not answer: nothing can be said now
    ours = [r for r in runs if r.data.tags.get(CLUSTER_TAG) == name]
    states = cluster.jobs([r.data.tags.get(JOB_TAG, "") for r in ours])
    if states is None:
        return []
    ended = []
    for run in ours:
        tags, run_id = run.data.tags, run.info.run_id
        job = states.get(tags.get(JOB_TAG, ""))
        if job is None:  # no job id: its sbatch never returned
            if _lost(run, tags.get(lock_tag, ""), launcher_gone):
                client.set_tag(run_id, REASON_TAG, "never submitted: the command that made it stopped "
                                                   "before sbatch returned")
                if run.info.status not in ENDED:
                    client.set_terminated(run_id, "FAILED")
                client.set_tag(run_id, OPEN_TAG, "0")
                ended.append(run.info.run_name or run_id)
            continue
        if _follow(client, run, job):
            ended.append(run.info.run_name or run_id)
    return ended


def _follow(client: mlflow.MlflowClient, run: mlflow.entities.Run, job: cluster.Job) -> bool:
    """The run's state tag follows its job's. Once the job ended: its reason and nodes on the run, and
    the run ends as Slurm ended the job, unless the training ended it already (then only a FAILED run
    whose job was stopped from outside becomes KILLED: the training dies of the stop, as on one box).
    True when the run's status changed."""
    run_id = run.info.run_id
    if job.state != run.data.tags.get(STATE_TAG):
        client.set_tag(run_id, STATE_TAG, job.state)
    if not job.ended:
        return False
    client.set_tag(run_id, REASON_TAG, job.why[:500])
    if job.nodes and job.nodes != "(null)":
        client.set_tag(run_id, NODES_TAG, job.nodes[:250])
    status = run.info.status
    change = status not in ENDED or (status == "FAILED" and job.mlflow_status == "KILLED")
    if change:
        client.set_terminated(run_id, job.mlflow_status, end_time=run.info.end_time or None)
        log.warning(f"run '{run.info.run_name}' ({run_id}) ended {job.mlflow_status}: {job.why}")
    client.set_tag(run_id, OPEN_TAG, "0")
    return change


def _lost(run: mlflow.entities.Run, lock: str, launcher_gone: Callable[[Path], bool]) -> bool:
    """A run without a job: lost once its submitting command is gone and the grace has passed."""
    old = time.time() - run.info.start_time / 1000 > SUBMIT_GRACE
    return old and (not lock or launcher_gone(Path(lock)))
