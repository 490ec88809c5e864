"""Slurm, as its own commands tell it: submit a batch job, read a job's state, cancel it. A library of plain
values (no MLflow): the Slurm backend of `make run` (kerasflow/launch/slurm.py), the store's settling of
Slurm runs (kerasflow/track/orphans.py), `make queue`, `make cancel` and doctor use it.

Where a job's end state comes from, in order (a cluster may have any of them; none alone is enough):
`scontrol show job` (every job the controller still holds: running ones, and ended ones for MinJobAge,
300 s by default), `sacct` (the accounting database, where one exists: slurmdbd, as on most university
clusters), the job-completion file (`JobCompType=jobcomp/filetxt`: one line per ended job, the usual
record on a small lab's cluster without a database). A job none of them knows while the controller
answers has ended long ago without a record: `GONE`.

Why not the `mlflow-slurm` plugin (1.0.6): it refuses our MLproject (`docker_env`), crashes on MLflow
3.17 for `python_env`, maps no time-out, out-of-memory or cancelled state, cannot cancel, and leaves the
MLflow run RUNNING after a job that failed or was cancelled (checked: docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from kerasflow.errors import UserError

TIMEOUT = 30  # seconds one Slurm command may take (a controller that does not answer)
JOB_ID = re.compile(r"[0-9]{1,12}(_[0-9]{1,9})?")  # a job, or one task of an array (123_4)
RUNNING_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                            "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
                            "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
# MLflow's end state for each of Slurm's (a job's own failure is FAILED; stopped from outside is KILLED)
MLFLOW_STATUS = {"COMPLETED": "FINISHED", "FAILED": "FAILED", "NODE_FAIL": "FAILED", "BOOT_FAIL": "FAILED",
                 "DEADLINE": "KILLED", "CANCELLED": "KILLED", "TIMEOUT": "KILLED", "PREEMPTED": "KILLED",
                 "OUT_OF_MEMORY": "KILLED", "REVOKED": "KILLED"}
WHY = {"CANCELLED": "cancelled (scancel, make cancel, or an administrator)",
       "TIMEOUT": "ran out of its time limit (sbatch --time)",
       "PREEMPTED": "preempted by a higher-priority job",
       "OUT_OF_MEMORY": "ran out of memory (sbatch --mem)", "NODE_FAIL": "its node failed",
       "BOOT_FAIL": "its node failed to boot", "DEADLINE": "passed its deadline (sbatch --deadline)",
       "FAILED": "exited non-zero", "REVOKED": "revoked (a federated sibling started)"}
GONE = "GONE"
JOBCOMP_TAIL = 8 << 20  # bytes of the job-completion file read (its end: the newest jobs)


@dataclasses.dataclass(frozen=True)
class Job:
    """One job as Slurm reports it; every field is Slurm's text ("" when not reported)."""

    id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... or GONE
    reason: str = ""  # why it waits (Resources, Priority) or why it ended (NonZeroExitCode, TimeLimit)
    exit_code: str = ""  # "3:0": the batch script's status, and the signal that ended it
    nodes: str = ""
    gres: str = ""  # what it asked for or holds: gpu:1, gres/gpu:1
    partition: str = ""
    name: str = ""
    source: str = ""  # scontrol | sacct | jobcomp

    @property
    def ended(self) -> bool:
        return self.state not in RUNNING_STATES

    @property
    def mlflow_status(self) -> str:
        """FINISHED, FAILED or KILLED for an ended job; "" while it runs."""
        if not self.ended:
            return ""
        return MLFLOW_STATUS.get(self.state, "FAILED")

    @property
    def why(self) -> str:
        """One phrase: how the job ended (state, Slurm's reason, exit code)."""
        if self.state == GONE:
            return ("Slurm no longer knows this job (it ended over MinJobAge ago and this cluster keeps no "
                    "accounting or job-completion record)")
        words = [f"Slurm job {self.id} {self.state}"]
        if self.state in WHY:
            words.append(WHY[self.state])
        if self.reason and self.reason not in ("None", "(null)"):
            words.append(f"reason {self.reason}")
        if self.exit_code and self.exit_code != "0:0":
            words.append(f"exit code {self.exit_code}")
        return ", ".join(words)


def available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("scontrol") is not None


def _slurm(*cmd: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """A Slurm command; a missing one or one that hangs is a failed result, never an exception."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(cmd), 127, "", f"{cmd[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(cmd), 124, "", f"{cmd[0]} did not answer within {timeout} s")


def first_line(result: subprocess.CompletedProcess[str]) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return (text.splitlines() or [f"exit status {result.returncode}"])[0][:300]


def submit(script: Path, options: list[str]) -> str:
    """`sbatch --parsable OPTIONS SCRIPT`: the job id, or one line with sbatch's own message."""
    if not shutil.which("sbatch"):
        raise UserError("ON=slurm needs Slurm's sbatch on PATH (this machine is not a Slurm submit host): "
                        "run it where `sinfo` works, or leave ON unset to run on this box")
    out = _slurm("sbatch", "--parsable", *options, str(script), timeout=120)
    job = out.stdout.strip().split(";")[0]  # --parsable: JOBID[;CLUSTER]
    if out.returncode != 0 or not JOB_ID.fullmatch(job):
        raise UserError(f"sbatch refused the job ({first_line(out)}): fix the sbatch options (SBATCH=...) or "
                        "see `sinfo` for the partitions and GPUs this cluster has")
    return job


def cancel(job_id: str) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise UserError(f"{job_id[:40]!r} is not a Slurm job id")
    out = _slurm("scancel", job_id)
    if out.returncode != 0:
        raise UserError(f"scancel {job_id} failed ({first_line(out)}): see `squeue -j {job_id}`")


def _fields(line: str) -> dict[str, str]:
    """KEY=VALUE words of one `scontrol -o` or job-completion line (a value runs to the next space)."""
    return {k: v for k, v in re.findall(r"(?:^|\s)([A-Za-z_]+)=(\S*)", line)}


def _from_fields(f: dict[str, str], source: str) -> Job:
    state = f.get("JobState", "").split()[0] if f.get("JobState") else ""
    gres = f.get("TresPerNode", "") or f.get("Gres", "") or f.get("TRES", "")
    return Job(id=f.get("JobId", ""), state=state, reason=f.get("Reason", ""),
               exit_code=f.get("ExitCode", ""), nodes=f.get("NodeList", ""), gres=gres,
               partition=f.get("Partition", ""), name=f.get("JobName", "") or f.get("Name", ""),
               source=source)


def _array_ids(f: dict[str, str]) -> set[str]:
    """The names a record answers to: its JobId, and for an array task ARRAYJOB_TASK (123_4); the pending
    tasks of an array are one record whose ArrayTaskId is a set of ranges (0-3,5%2: %2 is a limit)."""
    names = {f.get("JobId", "")}
    array, tasks = f.get("ArrayJobId", ""), f.get("ArrayTaskId", "").split("%")[0]
    if not array:
        return names
    for part in tasks.split(",")[:1000]:
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            last = int(high) if high else int(low)
            names.update(f"{array}_{i}" for i in range(int(low), min(last, int(low) + 10000) + 1))
    return names


def jobs(ids: list[str]) -> dict[str, Job] | None:
    """The state of each job in `ids` (None when the controller does not answer: nothing can be said)."""
    wanted = {i for i in ids if JOB_ID.fullmatch(i)}
    if not wanted:
        return {}
    out = _slurm("scontrol", "show", "job", "-o", "-d")
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    found: dict[str, Job] = {}
    for line in out.stdout.splitlines():
        f = _fields(line)
        for key in _array_ids(f) & wanted:
            found[key] = dataclasses.replace(_from_fields(f, "scontrol"), id=key)
    missing = sorted(wanted - set(found))
    if missing:
        found.update(_from_sacct(missing))
    missing = sorted(wanted - set(found))
    if missing:
        found.update(_from_jobcomp(missing))
    for key in wanted - set(found):
        found[key] = Job(id=key, state=GONE)
    return found


def _from_sacct(ids: list[str]) -> dict[str, Job]:
    out = _slurm("sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o",
                 "JobID,State,ExitCode,Reason,NodeList,Partition,JobName,AllocTRES")
    found: dict[str, Job] = {}
    if out.returncode != 0:
        return found  # "accounting storage is disabled": the next record decides
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 8 or parts[0] not in ids:
            continue
        state = parts[1].split()[0] if parts[1] else ""  # "CANCELLED by 1001"
        found[parts[0]] = Job(id=parts[0], state=state, exit_code=parts[2], reason=parts[3], nodes=parts[4],
                              partition=parts[5], name=parts[6], gres=parts[7], source="sacct")
    return found


def jobcomp_file() -> Path | None:
    """The job-completion file of this cluster, when it keeps one (jobcomp/filetxt)."""
    conf = config()
    if conf.get("JobCompType", "") != "jobcomp/filetxt" or not conf.get("JobCompLoc", "").startswith("/"):
        return None
    return Path(conf["JobCompLoc"])


def _from_jobcomp(ids: list[str]) -> dict[str, Job]:
    path = jobcomp_file()
    found: dict[str, Job] = {}
    if path is None:
        return found
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - JOBCOMP_TAIL))
            text = f.read(JOBCOMP_TAIL).decode(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():  # the newest line of a job (a requeued job has several) wins
        f = _fields(line)
        if f.get("JobId") in ids:
            found[f["JobId"]] = _from_fields(f, "jobcomp")
    return found


def config() -> dict[str, str]:
    """`scontrol show config` as KEY: VALUE ({} when the controller does not answer)."""
    out = _slurm("scontrol", "show", "config")
    if out.returncode != 0:
        return {}
    conf = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    return conf


def cluster_name() -> str:
    return config().get("ClusterName", "")


def my_jobs() -> list[Job]:
    """This user's jobs the controller holds (pending, running, recently ended)."""
    out = _slurm("squeue", "--me", "-h", "-t", "all", "-o", "%i|%T|%r|%N|%b|%P|%j")
    found = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = line.split("|")
        if len(parts) == 7:
            found.append(Job(id=parts[0], state=parts[1], reason=parts[2], nodes=parts[3], gres=parts[4],
                             partition=parts[5], name=parts[6], source="squeue"))
    return found


def gpus_of(job_id: str) -> str:
    """The GPU indexes a running job holds on its node (`scontrol show job -d`: GRES=gpu:1(IDX:0))."""
    out = _slurm("scontrol", "show", "job", "-d", job_id)
    with contextlib.suppress(IndexError):
        if out.returncode == 0:
            return re.findall(r"GRES=\S*?\(IDX:([0-9,\-]+)\)", out.stdout)[0]
    return ""


def remote_nodes() -> list[str]:
    """Nodes that are other machines than this one (a server on 127.0.0.1 is out of their reach)."""
    out = _slurm("scontrol", "show", "node", "-o")
    if out.returncode != 0:
        return []
    here = {socket.gethostname(), socket.getfqdn()}
    far = []
    for line in out.stdout.splitlines():
        f = _fields(line)
        addr, host = f.get("NodeAddr", ""), f.get("NodeHostName", "")
        if addr in ("127.0.0.1", "localhost", "::1") or addr in here or host in here:
            continue
        far.append(f.get("NodeName", "?"))
    return far
