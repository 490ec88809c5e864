"""The Slurm backend's pieces that need no cluster: reading Slurm's records (scontrol lines, array tasks,
the job-completion file), the state mapping, the options a user gives, and the batch scripts for every
runtime (bash -n and shellcheck on each, quoting checked with hostile params). The cluster itself:
tests/test_engine_slurm.py."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error

from kerasflow import cluster
from kerasflow.errors import UserError

PENDING_ARRAY = ("JobId=12 ArrayJobId=12 ArrayTaskId=1-3,7%2 JobName=tune-1 UserId=kftest(1001) "
                 "JobState=PENDING Reason=Resources Dependency=(null) Partition=gpu NodeList=(null) "
                 "ExitCode=0:0 TresPerNode=gres:gpu:1")
ENDED = ("JobId=5 JobName=slurm-fail UserId=kftest(1001) JobState=FAILED Reason=NonZeroExitCode "
         "Partition=debug NodeList=n3 ExitCode=2:0 Command=/x/y.sbatch")


def test_array_tasks_waiting_as_one_record_are_each_known():
    """Before, a pending array (one record, ArrayTaskId=1-3,7%2) was unknown per task: its runs would
    have been judged GONE and ended FAILED while they waited."""
    names = cluster._array_ids(cluster._fields(PENDING_ARRAY))
    assert names == {"12", "12_1", "12_2", "12_3", "12_7"}
    job = cluster._from_fields(cluster._fields(PENDING_ARRAY), "scontrol")
    assert job.state == "PENDING" and not job.ended and job.mlflow_status == ""


@pytest.mark.parametrize(("state", "status", "words"), [
    ("COMPLETED", "FINISHED", ""), ("FAILED", "FAILED", "exited non-zero"),
    ("CANCELLED", "KILLED", "cancelled"), ("TIMEOUT", "KILLED", "time limit"),
    ("PREEMPTED", "KILLED", "preempted"), ("OUT_OF_MEMORY", "KILLED", "out of memory"),
    ("NODE_FAIL", "FAILED", "node failed"), ("SOMETHING_NEW", "FAILED", ""),
])
def test_every_end_state_maps_to_an_mlflow_status_with_its_reason(state, status, words):
    job = cluster.Job(id="5", state=state, reason="TimeLimit", exit_code="0:15")
    assert job.ended and job.mlflow_status == status
    assert words in job.why and "reason TimeLimit" in job.why and "exit code 0:15" in job.why


def test_an_ended_job_reads_with_its_reason_and_exit_code():
    job = cluster._from_fields(cluster._fields(ENDED), "scontrol")
    assert (job.state, job.reason, job.exit_code, job.nodes) == ("FAILED", "NonZeroExitCode", "2:0", "n3")
    assert job.why == "Slurm job 5 FAILED, exited non-zero, reason NonZeroExitCode, exit code 2:0"
    assert "no longer knows" in cluster.Job(id="9", state=cluster.GONE).why


def test_job_ids_from_a_store_are_checked_before_any_command():
    assert cluster.jobs(["1; rm -rf /", "--all", "", "1" * 20]) == {}
    with pytest.raises(UserError, match="is not a Slurm job id"):
        cluster.cancel("-u kftest")


def test_sbatch_options_and_gpus_are_checked(tmp_path):
    from kerasflow.launch import slurm

    assert slurm.parse_sbatch("--partition=gpu --time=1:00:00 -A lab") == [
        "--partition=gpu", "--time=1:00:00", "-A", "lab"]
    for bad, message in (("--time=1;rm -rf ~", "holds a character"), ("gpu", "must start with an option"),
                         ("--x='a", "cannot be split"), ("--wrap=$(id)", "holds a character")):
        with pytest.raises(UserError, match=message):
            slurm.parse_sbatch(bad)
    assert slurm.parse_gpus("auto", "") == 1 and slurm.parse_gpus("off", "4") == 0
    assert slurm.parse_gpus("on", "2") == 2
    with pytest.raises(UserError, match="number of GPUs per run"):
        slurm.parse_gpus("auto", "0,1")


@pytest.mark.parametrize("runtime", ["docker", "charliecloud", "apptainer", "enroot"])
def test_each_runtime_s_batch_script_is_valid_bash_and_quotes_every_value(tmp_path, runtime, monkeypatch):
    """The script is shellcheck-clean for every runtime, and a param holding shell syntax reaches the
    training as one value (MLflow quotes it inside the command; the command is one quoted word)."""
    from kerasflow.launch import run, slurm

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setattr(slurm.images, "tag", lambda root: "kerasflow:abc-u1.1")
    req = run.Request(root=ROOT, store=tmp_path / "store", logs=tmp_path / "logs", name="n1",
                      params=["run_name=x$(touch /tmp/kf-pwned)'\"", "epochs=2"])
    opts = slurm.Options(runtime=runtime, images_dir=tmp_path)
    text = slurm.script(req, opts, [("a" * 32, req.params), ("b" * 32, [*req.params, "epochs=3"])], "7",
                        "http://127.0.0.1:5000")
    assert "s3cret" not in text
    assert "MLFLOW_TRACKING_PASSWORD" in text or runtime != "docker"  # docker: passed by name
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck") or str(Path(ROOT / ".venv" / "bin" / "shellcheck"))
    if Path(shellcheck).exists():
        out = subprocess.run([shellcheck, "-s", "bash", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout
    # the command the job runs, as bash reads it back: the one computed, each value one word
    header = text.split("set -euo pipefail\n")[1].split("task=")[0]
    back = subprocess.run(["bash", "-c", header + 'printf "%s" "${cmds[1]}"'], capture_output=True,
                          text=True).stdout
    assert back == slurm.task_command(req, [*req.params, "epochs=3"])[0]
    words = shlex.split(back)
    assert "run_name=x$(touch /tmp/kf-pwned)'\"" in words and "epochs=3" in words


def test_a_config_key_a_slurm_job_cannot_take_is_one_line(tmp_path):
    from kerasflow import config
    from kerasflow.launch import slurm

    cfg = config.load(ROOT / "config.yaml", ["epochs=3", "augment=false"])
    assert slurm.config_params(ROOT, "tune", cfg) == ["epochs=3", "augment=false"]
    cfg = config.load(ROOT / "config.yaml", ["n_outer_folds=3"])
    with pytest.raises(UserError, match="cannot reach a Slurm job"):
        slurm.config_params(ROOT, "tune", cfg)


def test_without_slurm_make_run_on_slurm_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path), "LOGS": str(tmp_path / "logs"), "STORE": str(tmp_path / "s")}
    out = subprocess.run([sys.executable, "-m", "kerasflow", "run", "--root", str(ROOT), "--on", "slurm",
                          "--name", "x", "-P", "epochs=1"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert_user_error(out, "needs Slurm's sbatch and scontrol on PATH")
