"""`make run ON=slurm` on a real one-machine Slurm cluster (tests/helpers/slurmcluster.py: a controller and
three nodes with four fake GPUs, started and stopped here by pid) and the real engine: runs as batch jobs
in the user's image (docker and Charliecloud runtimes), one waiting for a GPU with reason Resources, all
FINISHED in one store with their job ids and the same params, metrics, artifacts and model as a run on
one box; `make cancel` -> KILLED, a failing job -> FAILED with Slurm's reason, a job past its time limit
-> KILLED with the reason, settled by the next command that opens the store; a search as a job array.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest
from helpers import require_tool
from helpers.engine import VENV, client, docker, runs_named, tiny_p
from helpers.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.engine]


@pytest.fixture(scope="module")
def slurm():
    from helpers import slurmcluster

    for name in slurmcluster.missing():
        require_tool(name, False)
    if os.geteuid() != 0:
        pytest.skip("the Slurm daemons run as root here (slurmd starts jobs as the test user)")
    with slurmcluster.throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def senv(slurm, run_env, image) -> dict[str, str]:
    """The user's environment on the submit host: the cluster's config, this session's server port."""
    return {**run_env, **slurm.env, "GPU": "auto"}  # (run_env's GPU=off asks for no GPU)


def make(user, checkout, env, *args: str, timeout: float = 300):
    return user.run(["make", *args, f"VENV={VENV}"], cwd=checkout, env=env, timeout=timeout)


def submit(user, checkout, env, name: str, params: list[str], **variables: str):
    args = shlex.join(["--name", name, *params])
    extra = [f"{k}={v}" for k, v in variables.items()]
    out = make(user, checkout, env, "run", "ON=slurm", f"ARGS={args}", *extra)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job = re.search(r"as job ([0-9]+), MLflow run ([0-9a-f]{32})", out.stdout)
    assert job, out.stdout
    return job.group(1), job.group(2)


def job_state(slurm, job: str) -> str:
    out = slurm.run("scontrol", "show", "job", "-o", job).stdout
    found = re.search(r"JobState=(\S+)", out)
    return found.group(1) if found else ""


def wait_ended(slurm, jobs: list[str], timeout: float) -> None:
    live = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", ""}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(job_state(slurm, j) not in live for j in jobs):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {jobs} did not end within {timeout} s: "
                         f"{[job_state(slurm, j) for j in jobs]}\n{slurm.run('squeue').stdout}")


def settle(user, checkout, env) -> str:
    """The next command that opens the store (here `make runs`) settles ended jobs' runs."""
    out = make(user, checkout, env, "runs")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def timed_out(user, checkout, senv):
    """A job that outlives its one-minute limit, submitted first: it runs on the debug node while the
    other tests use the gpu partition, and is looked at last."""
    return submit(user, checkout, senv, "slurm-timeout", tiny_p(epochs=400, synthetic_examples=2000),
                  SBATCH="--partition=debug --time=1")


@pytest.mark.usefixtures("foreground_run", "timed_out")  # a run on one box to compare; the timeout starts
def test_four_one_gpu_runs_on_three_gpus_one_waits_and_all_finish_in_one_store(slurm, senv, user, checkout):
    jobs = {}
    for n in range(4):
        jobs[f"slurm-{n}"] = submit(user, checkout, senv, f"slurm-{n}", tiny_p(epochs=2, augment="false"))
    # three fake GPUs: three run, the fourth waits for one, and `make queue` says so
    deadline, table = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        table = make(user, checkout, senv, "queue").stdout
        if re.search(r"^slurm-3\s+PENDING\s+Resources", table, re.M) and \
                len(re.findall(r"^slurm-[0-2]\s+RUNNING\s+-\s+n[12]\s+\S+", table, re.M)) == 3:
            break
        time.sleep(0.5)
    assert re.search(r"^slurm-3\s+PENDING\s+Resources", table, re.M), table
    running = re.findall(r"^slurm-[0-2]\s+RUNNING\s+-\s+(n[12])\s+(\S+)", table, re.M)
    assert sorted(running) == [("n1", "0"), ("n1", "1"), ("n2", "0")], table  # each its own GPU
    # --no-wait: refused while no GPU is free (sbatch --immediate), its run ended FAILED, not left waiting
    args = shlex.join(["--name", "slurm-nowait", "--no-wait", *tiny_p()])
    refused = make(user, checkout, senv, "run", "ON=slurm", f"ARGS={args}")
    assert refused.returncode == 2 and "sbatch refused the job" in refused.stderr, refused.stderr[-2000:]
    [nowait] = [r for r in runs_named(senv) if "sbatch refused" in r.data.tags.get("kerasflow.queue", "")
                and r.info.status == "FAILED"] or [None]
    assert nowait is not None
    wait_ended(slurm, [j for j, _ in jobs.values()], 600)
    settle(user, checkout, senv)
    c = client(senv)
    [box] = [r for r in runs_named(senv) if r.data.params.get("register_model") == "kfdemo"]
    box_artifacts = {a.path for a in c.list_artifacts(box.info.run_id)}
    seen_jobs = set()
    for name, (job, run_id) in jobs.items():
        run = c.get_run(run_id)
        log = (checkout / "logs" / f"{name}.log").read_text(errors="replace")
        assert run.info.status == "FINISHED", (name, run.info.status, run.data.tags, log[-3000:])
        tags = run.data.tags
        assert tags["kerasflow.slurm.job_id"] == job and tags["kerasflow.launch"] == "slurm"
        assert tags["kerasflow.slurm.cluster"] == "kftest" and tags["kerasflow.slurm.partition"] == "gpu"
        assert run.info.run_name == name or tags.get("mlflow.runName") == name or run.info.run_name
        seen_jobs.add(job)
        # equal in kind to a run on one box: the same params, metrics, artifacts and a logged model
        assert set(run.data.params) == set(box.data.params), set(run.data.params) ^ set(box.data.params)
        assert set(run.data.metrics) == set(box.data.metrics)
        assert [m.step for m in c.get_metric_history(run_id, "val_accuracy")] == [0, 1]
        assert {a.path for a in c.list_artifacts(run_id)} == box_artifacts
        assert f"slurm: job {job} on" in log and re.search(r"GPUs: [01]\b", log), log[:2000]
        # the job logged through the store's server, as `mlflow run` in the container does on one box
        assert f"at http://127.0.0.1:{senv['PORT']}" in log, log[:3000]
    assert len(seen_jobs) == 4
    import mlflow

    models = mlflow.MlflowClient(f"http://127.0.0.1:{senv['PORT']}").search_logged_models(
        experiment_ids=[box.info.experiment_id])
    assert {m.source_run_id for m in models} >= {r for _, r in jobs.values()}


def test_cancel_kills_and_a_failing_job_fails_with_slurm_s_reason(slurm, senv, user, checkout):
    """`make queue` shows a running job's epoch and metric; `make cancel` stops its container and ends
    the run KILLED; a job whose training fails ends FAILED with Slurm's reason; each end is one message
    (KERASFLOW_NOTIFY), as on one box."""
    told = Receiver()
    env = {**senv, "KERASFLOW_NOTIFY": told.url}
    try:
        job, run_id = submit(user, checkout, env, "slurm-cancel", tiny_p(epochs=400, synthetic_examples=2000))
        bad, bad_run = submit(user, checkout, env, "slurm-fail",
                              tiny_p(data_source="image_dir", image_dir="/nonexistent/cells"))
        c = client(senv)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(c.get_metric_history(run_id, "val_accuracy")) < 2:
            time.sleep(1)  # training, past its second epoch
        assert c.get_run(run_id).info.status == "RUNNING"
        table = make(user, checkout, env, "queue").stdout
        row = re.search(r"^slurm-cancel\s+RUNNING\s+-\s+n[123]\s+[0-9]\s+([0-9]+)\s+"
                        rf"val_accuracy=[01]\.[0-9]{{4}}\s+{run_id}\s+{job}$", table, re.M)
        assert row and int(row.group(1)) >= 2, table
        out = make(user, checkout, env, "cancel", "NAME=slurm-cancel", timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"Slurm job {job}) cancelled" in out.stdout
        run = c.get_run(run_id)
        assert run.info.status == "KILLED", run.data.tags
        assert "cancelled by its user" in run.data.tags["kerasflow.slurm.reason"]
        assert job_state(slurm, job) == "CANCELLED"
        # the container went with its job (scancel kills the docker client; the script stops the container)
        assert not docker("ps", "-q", "--filter", f"name=^kerasflow-slurm-cancel-{job}$").stdout.strip()
        wait_ended(slurm, [bad], 300)
        settle(user, checkout, senv)
        run = c.get_run(bad_run)
        assert run.info.status == "FAILED", run.data.tags
        reason = run.data.tags.get("kerasflow.slurm.reason", "")
        assert f"Slurm job {bad} FAILED" in reason and "exit code 2:0" in reason, reason
        # cancelling what already ended is one line
        again = make(user, checkout, env, "cancel", "NAME=slurm-cancel")
        assert again.returncode == 2 and "already ended" in again.stderr, again.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(told.messages) < 2:
            time.sleep(0.5)
        titles = sorted(m.get("title", "") for m in told.messages)
        assert titles == ["kerasflow run slurm-cancel: KILLED",
                          "kerasflow run slurm-fail: FAILED (exit 2)"], titles
    finally:
        told.close()


def test_charliecloud_runs_the_same_image_without_root(slurm, senv, user, checkout, workdir):
    require_tool("ch-run")
    folder = workdir / "cluster-images"
    made = make(user, checkout, senv, "cluster-image", "RUNTIME=charliecloud", f"CLUSTER_IMAGES={folder}",
                timeout=900)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    job, run_id = submit(user, checkout, senv, "slurm-ch", tiny_p(augment="false"), RUNTIME="charliecloud",
                         CLUSTER_IMAGES=str(folder))
    wait_ended(slurm, [job], 400)
    settle(user, checkout, senv)
    run = client(senv).get_run(run_id)
    log = (checkout / "logs" / "slurm-ch.log").read_text(errors="replace")
    assert run.info.status == "FINISHED", (run.data.tags, log[-3000:])
    assert run.data.tags["kerasflow.slurm.runtime"] == "charliecloud"
    assert "test_accuracy" in run.data.metrics


def test_a_job_past_its_time_limit_ends_killed_with_the_reason(slurm, senv, user, checkout, timed_out):
    job, run_id = timed_out
    wait_ended(slurm, [job], 240)
    assert job_state(slurm, job) == "TIMEOUT"
    out = settle(user, checkout, senv)
    run = client(senv).get_run(run_id)
    assert run.info.status == "KILLED", (run.data.tags, out[-2000:])
    assert "ran out of its time limit" in run.data.tags["kerasflow.slurm.reason"]
    assert run.data.tags["kerasflow.slurm.state"] == "TIMEOUT"


def test_a_submit_that_cannot_work_is_one_line_and_leaves_no_run(slurm, senv, user, checkout):
    before = len(runs_named(senv))
    for variables, message in (
        ({"SBATCH": "--partition=nosuch"}, "sbatch refused the job"),
        ({"SBATCH": "--time=1;rm"}, "holds a character sbatch options never need"),
        ({"RUNTIME": "podman"}, "is not one of docker, charliecloud"),
        ({"RUNTIME": "apptainer"}, "no apptainer image at"),
        ({"GPUS": "0,1"}, "GPUS is the number of GPUs per run"),
    ):
        args = shlex.join(["--name", "slurm-bad", *tiny_p()])
        out = make(user, checkout, senv, "run", "ON=slurm", f"ARGS={args}",
                   *[f"{k}={v}" for k, v in variables.items()])
        assert out.returncode == 2 and message in out.stderr, (variables, out.stderr[-1500:])
        assert "Traceback" not in out.stderr
    # sbatch refused one after its run existed: that run ended FAILED, never left SCHEDULED
    after = runs_named(senv)
    assert len(after) == before + 1
    assert all(r.info.status != "SCHEDULED" for r in after)
    assert Path(checkout / "logs" / "slurm-bad.log").exists()


def test_a_search_as_a_job_array_finishes_its_exact_trial_count(slurm, senv, user, checkout, postgres):
    """`make tune ON=slurm WORKERS=1 TRIALS=3`: one job array, task 0 the lead, task 1 a joiner, over a
    study in PostgreSQL; the study's password reaches the jobs by their environment, never the script."""
    import optuna
    from helpers import PG_PASSWORD, TINY

    url = postgres["createdb"]("slurmstudy").replace("kf@", f"kf:{PG_PASSWORD}@")
    env = {**senv, "KERASFLOW_STUDY_STORAGE": url}
    sets = shlex.join([a for t in [*TINY, "epochs=2"] for a in ("--set", t)])
    out = make(user, checkout, env, "tune", "ON=slurm", "WORKERS=1", "TRIALS=3", "STUDY=slurm",
               f"ARGS={sets}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    found = re.search(r"as job array ([0-9]+) \(2 tasks\), MLflow run ([0-9a-f]{32}) ([0-9a-f]{32})",
                      out.stdout)
    assert found, out.stdout
    job, lead_id, join_id = found.groups()
    wait_ended(slurm, [f"{job}_0", f"{job}_1"], 900)
    settle(user, checkout, senv)
    c = client(senv)
    logs = "".join(p.read_text(errors="replace") for p in (checkout / "logs").glob("tune-*"))
    logs += "".join(p.read_text() for p in (checkout / "logs" / "slurm").glob("tune-*"))
    lead, joiner = c.get_run(lead_id), c.get_run(join_id)
    assert lead.info.status == "FINISHED" and joiner.info.status == "FINISHED", (
        lead.data.tags, joiner.data.tags, logs[-4000:])
    assert lead.data.tags["kerasflow.slurm.job_id"] == f"{job}_0"
    assert joiner.data.tags["kerasflow.slurm.job_id"] == f"{job}_1"
    assert joiner.data.tags["kerasflow.search_run"] == lead_id
    study = optuna.load_study(study_name="slurm", storage=url.replace("postgresql://", "postgresql+psycopg2://"))
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and set(states) <= {"COMPLETE", "PRUNED"}, states
    trials = c.search_runs([lead.info.experiment_id], f"tags.`mlflow.parentRunId` = '{lead_id}'")
    assert len([t for t in trials if t.data.tags.get("kerasflow.level") == "trial"]) == 3
    assert PG_PASSWORD not in logs


def test_doctor_on_slurm_checks_the_cluster_with_a_job_on_a_node(slurm, senv, user, checkout):
    def doctor(**variables: str):  # the command itself: make turns every non-zero status into 2
        return user.run([str(VENV / "bin" / "python"), "-m", "kerasflow", "doctor", "--on", "slurm"],
                        cwd=checkout, env={**senv, **variables}, timeout=300)

    out = doctor()
    table = out.stdout
    for row in (r"^slurm\s+PASS\s+cluster 'kftest' answers .* end states from the job-completion file",
                r"^slurm-gpus\s+PASS\s+.*n1 gpu:2", r"^slurm-runtime\s+PASS\s+docker on node",
                r"^shared-files\s+PASS", r"^node-tracking\s+PASS\s+node \S+ reaches http://127.0.0.1:"):
        assert re.search(row, table, re.M), (row, table, out.stderr[-1500:])
    assert out.returncode in (0, 1), table  # 1: the docker image file for nodes without it is a warning
    bad = doctor(RUNTIME="apptainer")
    assert bad.returncode == 2, bad.stdout
    assert re.search(r"^slurm-runtime\s+FAIL\s+apptainer or singularity not found on node", bad.stdout, re.M)
    assert re.search(r"^cluster-image\s+FAIL\s+no apptainer image at", bad.stdout, re.M)
