"""MLflow tracking with real MLflow on a sqlite store in a temp dir: one run with everything, registry,
serving over real HTTP, run status after failures, resume, a real tracking server, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ROOT,
    TINY,
    assert_user_error,
    client_for,
    free_port,
    kerasflow,
    kill_group,
    mlflow_server,
    set_args,
    wait_http,
)

from kerasflow import config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory):
    """One tracked, registered training run, shared by the read-only checks below."""
    from kerasflow.track import tracking

    tmp = tmp_path_factory.mktemp("tracked")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cfg = config.load(None, [*TINY, "epochs=2", f"output_dir={tmp / 'out'}", "run_name=first",
                             f"cache_dir={tmp / 'cache'}"])
    prep, run_id = tracking.train_tracked(cfg, store_dir=str(tmp / "store"), register="tiny",
                                          alias="candidate", verbose=0)
    return tmp, prep, run_id


def test_one_run_with_params_metrics_artifacts_inputs_and_environment(tracked):
    tmp, prep, run_id = tracked
    c = client_for(tmp / "store")
    exp = c.get_experiment_by_name("kerasflow")
    runs = c.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith(str(tmp / "store" / "artifacts"))
    params = run.data.params
    # the run's identity (data, model, train, speed), its name and the replicas it found; resources and
    # search keys are not params
    assert set(params) == set(config.identity(config.load())) | {"run_name", "replicas"}
    assert params["replicas"] == "1"
    assert params["epochs"] == "2" and params["model"] == "cnn"
    assert [m.step for m in c.get_metric_history(run_id, "loss")] == [0, 1]
    assert [m.step for m in c.get_metric_history(run_id, "val_accuracy")] == [0, 1]
    for key in ("test_accuracy", "test_auc", "test_loss", "test_precision", "test_recall"):
        assert key in run.data.metrics
    assert run.data.metrics["test_accuracy"] == pytest.approx(prep.metrics["accuracy"])
    artifacts = {a.path for a in c.list_artifacts(run_id)} | {
        a.path for a in c.list_artifacts(run_id, "environment")}
    assert {"config.yaml", "curves.png", "confusion_matrix.png", "roc.png", "metrics.json", "history.json",
            "model_summary.txt", "environment/requirements.txt", "environment/hardware.json"} <= artifacts
    summary = Path(c.download_artifacts(run_id, "model_summary.txt", str(tmp)))
    assert "Total params" in summary.read_text()
    contexts = {}
    for entry in run.inputs.dataset_inputs:
        context = next(t.value for t in entry.tags if t.key == "mlflow.data.context")
        contexts[context] = entry.dataset.digest
    assert set(contexts) == {"training", "validation", "test"}
    assert all(d.startswith(prep.examples.digest[:8]) for d in contexts.values())
    tags = run.data.tags
    for key in ("git_commit", "git_dirty", "host", "tensorflow", "keras", "cuda_build", "cudnn_build",
                "gpus", "container_image", "data_digest", "split_digest"):
        assert tags.get(key), key
    assert tags["data_digest"] == prep.examples.digest
    assert len(tags["git_commit"]) == 40
    # recorded in the run folder when the run started (a run folder can be logged later from it)
    record = prep.run_dir / "environment"
    assert json.loads((record / "tags.json").read_text())["git_commit"] == tags["git_commit"]
    assert {"requirements.txt", "installed.txt", "hardware.json"} <= {p.name for p in record.iterdir()}


def test_a_run_folder_logged_afterwards_is_the_run_tracked_live(tracked, tmp_path):
    """Before: a run trained without tracking (`kerasflow train`, an offline box, a server that was
    away) could not join a store. Now `log-run` makes of a run folder the run `track` made of the same
    training: here the live run's own folder, logged afterwards into another store, gives the same
    params, data tags, code, weights, every epoch (steps, values, the times it trained), test metrics,
    figures and a model that predicts the same; once: a second call finds it."""
    import mlflow

    from kerasflow.track import store, tracking
    from kerasflow.train import rundir

    tmp, prep, run_id = tracked
    folder = prep.run_dir
    with store.open_store(str(tmp_path / "other")) as uri:
        logged_id, now = tracking.log_folder(folder, uri=uri, experiment="kerasflow")
        again_id, again = tracking.log_folder(folder, uri=uri, experiment="kerasflow")
    assert now and not again and again_id == logged_id
    assert_user_error(kerasflow("log-run", str(tmp_path), "--store", str(tmp_path / "other")),
                      "is not a finished run folder")
    c, o = client_for(tmp / "store"), client_for(tmp_path / "other")
    live, late = c.get_run(run_id), o.get_run(logged_id)
    assert late.info.status == "FINISHED" and late.data.tags[tracking.AFTERWARDS_TAG] == "true"
    assert late.data.params == live.data.params
    for tag in ("data_digest", "split_digest", "data_source", "git_commit", "tensorflow",
                tracking.WEIGHTS_TAG):
        assert late.data.tags[tag] == live.data.tags[tag], tag
    assert set(late.data.metrics) == set(live.data.metrics)
    for key in live.data.metrics:
        ours = sorted((m.step, m.timestamp, m.value) for m in o.get_metric_history(logged_id, key))
        theirs = sorted((m.step, m.timestamp, m.value) for m in c.get_metric_history(run_id, key))
        if key.startswith("test_"):  # logged when each run ended
            ours, theirs = [x[::2] for x in ours], [x[::2] for x in theirs]
        assert ours == theirs, key
    times = [row[rundir.HISTORY_TIME] for row in rundir.read_history_rows(folder)]
    assert sorted(m.timestamp for m in o.get_metric_history(logged_id, "loss")) == times
    paths = {a.path for a in [*o.list_artifacts(logged_id), *o.list_artifacts(logged_id, "environment")]}
    assert {"config.yaml", "curves.png", "metrics.json", "history.json", "environment/installed.txt"} <= paths
    model_uri = tracking._logged_model(o, late.info.experiment_id, logged_id)[0]
    with store.activated(store.sqlite_uri(tmp_path / "other" / "mlflow.db")):
        model = mlflow.keras.load_model(model_uri)
    batch = prep.examples.images[prep.splits.test[:8]]
    assert np.allclose(model.predict(batch, verbose=0), prep.model.predict(batch, verbose=0), atol=1e-6)


def test_a_folder_s_run_id_is_believed_only_for_its_own_run_and_bad_history_lines_are_warnings(
        tracked, tmp_path):
    """Before: a folder whose mlflow_run_id named another user's live run (other params, none of our
    tags) logged its metrics and model into that run and marked it FINISHED; a history.jsonl with a
    non-JSON line or `"epoch": "1; DROP"` was a traceback and an empty FAILED run every retry hit again.
    Now the foreign run is left as it was and the folder becomes its own run; each bad line is one
    warning, the good epochs are logged, and a second call finds the run."""
    import shutil

    from kerasflow.track import store
    from kerasflow.train import rundir

    _, prep, _ = tracked
    folder = tmp_path / "copied"
    shutil.copytree(prep.run_dir, folder, ignore=shutil.ignore_patterns(rundir.LOCK_FILE))
    other = tmp_path / "store"
    uri = store.sqlite_uri(other / store.DB_FILE)
    store.init_sqlite(uri)
    c = client_for(other)
    exp_id = c.create_experiment("kerasflow", artifact_location=store.artifact_root(uri, "kerasflow"))
    theirs = c.create_run(exp_id, run_name="ana-live", tags={"owner": "ana"}).info.run_id
    c.log_param(theirs, "lr", "0.5")
    (folder / rundir.RUN_ID_FILE).write_text(theirs + "\n")
    good = len(rundir.read_history_rows(folder))
    with (folder / rundir.HISTORY_LOG).open("a") as fh:
        fh.write("this is not json\n")
        fh.write('{"epoch": "1; DROP", "loss": 1.0}\n')
        fh.write('{"epoch": 99, "loss": "high", "../evil": 1.0, "val_loss": 0.5}\n')
    result = kerasflow("log-run", str(folder), "--store", str(other))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "which this folder did not make" in result.stderr
    for fragment in ("line " + str(good + 1) + ": not JSON", "line " + str(good + 2) + ": epoch '1; DROP'",
                     "line " + str(good + 3) + ": not a metric name with a number, dropped: loss, ../evil"):
        assert sum(fragment in line for line in result.stderr.splitlines()) == 1, (fragment, result.stderr)
    foreign = c.get_run(theirs)
    assert foreign.info.status == "RUNNING" and not foreign.data.metrics
    assert foreign.data.params == {"lr": "0.5"}
    ours = [r for r in c.search_runs([exp_id]) if r.info.run_id != theirs]
    assert len(ours) == 1 and ours[0].info.status == "FINISHED", [r.info for r in ours]
    assert [m.step for m in c.get_metric_history(ours[0].info.run_id, "val_loss")][-1] == 99
    assert (folder / rundir.RUN_ID_FILE).read_text().strip() == ours[0].info.run_id
    again = kerasflow("log-run", str(folder), "--store", str(other))
    assert again.returncode == 0 and "already logged" in again.stdout, again.stderr[-2000:]
    # resuming training in a folder that names another run is refused the same way
    from kerasflow.track import tracking

    (folder / rundir.RUN_ID_FILE).write_text(theirs + "\n")
    with pytest.raises(Exception, match="which this folder did not make"):
        tracking._resume_id(folder, c)


def test_registered_model_loads_by_alias_and_predicts_like_the_trained_one(tracked):
    import mlflow

    tmp, prep, _ = tracked
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'store' / 'mlflow.db'}")
    loaded = mlflow.keras.load_model("models:/tiny@candidate")
    batch = np.asarray(prep.examples.images[prep.splits.test[:8]])
    assert np.allclose(loaded.predict(batch, verbose=0), prep.model.predict(batch, verbose=0), atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model("models:/tiny@candidate")
    assert pyfunc.metadata.metadata["class_names"] == prep.examples.class_names


def test_served_model_answers_a_real_http_post(tracked):
    tmp, prep, _ = tracked
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen(
        [sys.executable, "-m", "kerasflow", "serve", "models:/tiny@candidate", "--port", str(port),
         "--store", str(tmp / "store")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc=server)
        from PIL import Image

        paths = []
        for i, idx in enumerate(prep.splits.test[:3]):
            path = tmp / f"cell{i}.png"
            Image.fromarray(np.asarray(prep.examples.images[idx])).save(path)
            paths.append(str(path))
        result = kerasflow("predict", "--url", f"http://127.0.0.1:{port}", "--model",
                            "models:/tiny@candidate", "--store", str(tmp / "store"), *paths)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
        expected = prep.model.predict(np.asarray(prep.examples.images[prep.splits.test[:3]]), verbose=0)
        for (_path, name, probability), p in zip(lines, expected.reshape(-1), strict=True):
            k = int(p >= 0.5)
            assert name == prep.examples.class_names[k]
            assert float(probability) == pytest.approx(p if k else 1 - p, abs=1e-4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_promote_moves_champion_to_the_best_version(tracked):
    from kerasflow.errors import UserError
    from kerasflow.track import registry, tracking

    tmp, _, _ = tracked
    cfg = config.load(None, [*TINY, "epochs=1", f"output_dir={tmp / 'out'}", "run_name=second",
                             f"cache_dir={tmp / 'cache'}", "learning_rate=0.00001"])
    tracking.train_tracked(cfg, store_dir=str(tmp / "store"), register="tiny", alias="candidate", verbose=0)
    c = client_for(tmp / "store")
    scores = {int(v.version): c.get_run(v.run_id).data.metrics["test_loss"]
              for v in c.search_model_versions("name='tiny'")}
    assert len(scores) == 2
    result = registry.promote(c, "tiny", "test_loss", alias="champion", mode="min")
    assert result["version"] == min(scores, key=scores.get)
    assert str(c.get_model_version_by_alias("tiny", "champion").version) == str(result["version"])
    with pytest.raises(UserError, match="no version of 'tiny' has a run with metric 'f1'"):
        registry.promote(c, "tiny", "f1")


def _tiny_cmd(tmp: Path, name: str, *extra: str, epochs: int = 2) -> list[str]:
    sets = [*TINY, f"epochs={epochs}", f"output_dir={tmp / 'out'}", f"run_name={name}",
            f"cache_dir={tmp / 'cache'}", *extra]
    return [sys.executable, str(ROOT / "train_mlflow.py"), "--store", str(tmp / "store"), *set_args(sets)]


def _runs_by_name(store_dir: Path) -> dict[str, object]:
    c = client_for(store_dir)
    exp = c.get_experiment_by_name("kerasflow")
    return {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}


def _wait_for_epochs(run_dir: Path, proc: subprocess.Popen, n: int) -> None:
    log = run_dir / "history.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {n} epochs before the process ended ({proc.poll()})")


def test_exception_marks_the_run_failed(tmp_path, monkeypatch):
    from kerasflow.track import tracking
    from kerasflow.train import training

    def broken(prep):  # a fault injected after training, where real bugs would surface
        raise RuntimeError("boom")

    monkeypatch.setattr(training, "evaluate", broken)
    cfg = config.load(None, [*TINY, f"output_dir={tmp_path / 'out'}", "run_name=bad",
                             f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(RuntimeError, match="boom"):
        tracking.train_tracked(cfg, store_dir=str(tmp_path / "store"), verbose=0)
    assert _runs_by_name(tmp_path / "store")["bad"].info.status == "FAILED"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_mark_the_run_killed(tmp_path, sig):
    """SIGHUP (an SSH session dropping without tmux) used to kill the process and leave the run RUNNING."""
    proc = subprocess.Popen(_tiny_cmd(tmp_path, "term", "synthetic_examples=600", epochs=30), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(tmp_path / "out" / "term", proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err
    assert _runs_by_name(tmp_path / "store")["term"].info.status == "KILLED"


def test_four_trainings_started_in_one_second_without_a_name_are_four_runs(tmp_path):
    """Before: the automatic name was checked before the data load and created after it, and a folder
    with a config.yaml was taken as a resume: one MLflow run with A's params, both test metrics, two
    logged models, A's model.keras replaced by B's (or B refused: "pick another run_name"). Now each
    claims its own folder at once; `run_name=demo-{time}` (make demo) is automatic the same way."""
    cmd = _tiny_cmd(tmp_path, "demo-{time}")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    folders = sorted((tmp_path / "out").iterdir())
    assert len(folders) == 4 and all(f.name.startswith("demo-") for f in folders), folders
    run_ids = {(f / "mlflow_run_id").read_text().strip() for f in folders if (f / "model.keras").is_file()}
    assert len(run_ids) == 4
    runs = _runs_by_name(tmp_path / "store")
    assert sorted(runs) == [f.name for f in folders]
    c = client_for(tmp_path / "store")
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.info.run_id in run_ids
        assert len(c.get_metric_history(run.info.run_id, "test_accuracy")) == 1
    assert len({json.loads((f / "mlflow_model.json").read_text())["model_id"] for f in folders}) == 4


KILL_AT = """
import os, signal, sys
import mlflow
from kerasflow.cli import track
from kerasflow.track import tracking

def kill_after(owner, name):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(owner, name, wrapper)

owner, name = {"results": (tracking, "_log_results"), "registered": (mlflow, "register_model"),
               "model": (tracking, "log_model")}[sys.argv[1]]
kill_after(owner, name)
sys.exit(track.main(sys.argv[2:]))
"""


def test_sigkill_at_each_step_then_rerun_continues_one_run_and_registers_once(tmp_path):
    """SIGKILL after 2 of 6 epochs (the run stays RUNNING, as a kill leaves it), then right after the test
    metrics, after the model's registration, after the model (and its alias) are logged; each time the
    same command again. The rerun continues the same MLflow run without duplicate epochs. Before, a
    rerun past fit registered the run's model again (versions 1 and 2 of one run) and logged every test
    metric twice. Now: one run, one version, one logged model, one value per metric and step."""
    cmd = [*_tiny_cmd(tmp_path, "chaos", "synthetic_examples=600", epochs=6), "--register", "chaos"]
    args = cmd[2:]  # after `python train_mlflow.py`
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epochs(tmp_path / "out" / "chaos", proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _runs_by_name(tmp_path / "store")["chaos"]
    assert before.info.status == "RUNNING"  # what SIGKILL leaves; the rerun closes it
    for point in ("results", "registered", "model"):
        killed = subprocess.run([sys.executable, "-c", KILL_AT, point, *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs_by_name(tmp_path / "store")
    run = runs["chaos"]
    assert len(runs) == 1 and run.info.run_id == before.info.run_id and run.info.status == "FINISHED"
    c = client_for(tmp_path / "store")
    for metric in ("loss", "val_loss", "accuracy"):
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, metric)) == list(range(6))
    versions = c.search_model_versions("name = 'chaos'")
    assert [v.run_id for v in versions] == [run.info.run_id], versions
    assert c.get_model_version_by_alias("chaos", "candidate").version == versions[0].version
    for metric in ("test_accuracy", "test_loss"):
        assert len(c.get_metric_history(run.info.run_id, metric)) == 1, metric
    from mlflow.entities import LoggedModelStatus

    models = c.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    assert [m.status for m in models].count(LoggedModelStatus.READY) == 1, models


def test_a_live_run_is_never_taken_over_and_a_killed_one_is(tmp_path):
    """The lock of the training process tells a live run (refused) from one a kill left RUNNING."""
    from kerasflow.train import rundir

    cmd = _tiny_cmd(tmp_path, "live", "synthetic_examples=600", epochs=30)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_epochs(tmp_path / "out" / "live", proc, 1)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert_user_error(second, "in use by a running process", f"pid {proc.pid}")
        assert _runs_by_name(tmp_path / "store")["live"].info.status == "RUNNING"
        assert proc.poll() is None, "the live run was disturbed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rundir.hold(tmp_path / "out" / "live")  # the kernel dropped the killed process's lock: free to resume


# --- bad input: exit 2, one line, no traceback, no RUNNING run left ----------------------------------

def test_unreachable_tracking_server_fails_fast(tmp_path):
    start = time.monotonic()
    result = subprocess.run(_tiny_cmd(tmp_path, "x"), cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert_user_error(result, "cannot reach the MLflow tracking server", "make server")
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()


def test_unwritable_store_folder(tmp_path):
    cmd = _tiny_cmd(tmp_path, "x")
    cmd[cmd.index("--store") + 1] = "/proc/kerasflow-store"
    assert_user_error(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True),
                          "MLflow store folder /proc/kerasflow-store is not writable", "--store DIR")


def test_store_written_by_a_newer_mlflow_is_refused(tracked, tmp_path):
    import shutil

    src, _, _ = tracked
    shutil.copytree(src / "store", tmp_path / "store")
    with sqlite3.connect(tmp_path / "store" / "mlflow.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    result = subprocess.run(_tiny_cmd(tmp_path, "x"), cwd=ROOT, capture_output=True, text=True)
    assert_user_error(result, "was written by a newer MLflow (schema f00dfeedbeef",
                          "use the MLflow version")
    result = kerasflow("predict", "--model", "models:/tiny@candidate", "--store", str(tmp_path / "store"),
                        "x.png")
    assert_user_error(result, "newer MLflow")


def test_serve_refuses_unknown_alias_and_missing_model(tracked):
    tmp, _, _ = tracked
    store_dir = str(tmp / "store")
    result = subprocess.run([sys.executable, "-m", "kerasflow", "serve", "models:/tiny@nope", "--store",
                             store_dir], cwd=ROOT, capture_output=True, text=True)
    assert_user_error(result, "registered model 'tiny' has no alias 'nope'", "@candidate")
    result = subprocess.run([sys.executable, "-m", "kerasflow", "serve", "models:/ghost@champion",
                             "--store",
                             store_dir], cwd=ROOT, capture_output=True, text=True)
    assert_user_error(result, "no registered model named 'ghost'")
    result = subprocess.run([sys.executable, "-m", "kerasflow", "serve", "runs:/0123456789abcdef/model",
                             "--store", store_dir], cwd=ROOT, capture_output=True, text=True)
    assert_user_error(result, "no MLflow model at runs:/0123456789abcdef/model")


def test_promote_cli_errors(tracked):
    tmp, _, _ = tracked
    base = [sys.executable, "-m", "kerasflow", "promote", "--store", str(tmp / "store")]
    result = subprocess.run([*base, "tiny", "--metric", "metrics_nobody_logs"], cwd=ROOT,
                            capture_output=True, text=True)
    assert_user_error(result, "no version of 'tiny' has a run with metric 'metrics_nobody_logs'",
                          "test_accuracy")
    result = subprocess.run([*base, "ghost"], cwd=ROOT, capture_output=True, text=True)
    assert_user_error(result, "no registered model named 'ghost'", "tiny")


def test_runs_listing_filters_and_plots(tracked, tmp_path):
    tmp, _, run_id = tracked
    result = subprocess.run([sys.executable, "-m", "kerasflow", "runs", "--store", str(tmp / "store"),
                             "--filter", "metrics.test_accuracy >= 0", "--plot", str(tmp_path / "best.png")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_id[:8] in result.stdout and "test_accuracy" in result.stdout
    assert (tmp_path / "best.png").read_bytes()[:4] == b"\x89PNG"
    result = subprocess.run([sys.executable, "-m", "kerasflow", "runs", "--store", str(tmp / "store"),
                             "--filter", "metrics.test_accuracy > 2"], cwd=ROOT, capture_output=True,
                            text=True)
    assert_user_error(result, "no run of 'kerasflow' matches")


def test_mlproject_mirrors_the_config_and_its_command_trains(tmp_path):
    from mlflow.projects._project_spec import load_project

    from kerasflow.cli import mlproject

    assert (ROOT / "MLproject").read_text() == mlproject.render(), "run `make mlproject`"
    project = load_project(str(ROOT))
    main = project.get_entry_point("main")
    cfg = config.load()

    def keys_of(*sections: str) -> set[str]:  # scalar keys only: search_space comes from the file
        return {k for s in sections for k in config.SECTIONS[s] if k != "search_space"}

    training = keys_of("data", "model", "train", "speed", "output", "resources")
    assert set(main.parameters) == training | {"register_model", "model_alias"}
    # each entry point takes only its own parameters: `make splits` has no learning_rate
    splits, cv = project.get_entry_point("splits"), project.get_entry_point("cv")
    assert set(splits.parameters) == keys_of("data", "folds", "resources") | {"out"}
    assert set(cv.parameters) == training | keys_of("folds") | {"n_outer", "n_inner"}
    assert training | keys_of("search") <= set(project.get_entry_point("tune").parameters)
    assert "n_outer_folds" not in project.get_entry_point("tune").parameters
    scalar_keys = training
    assert {"filter", "positive"} <= set(project.get_entry_point("analyze").parameters)
    for key, value in cfg.to_dict().items():
        if key not in scalar_keys:
            continue
        default = main.parameters[key].default
        assert str(default).lower() == str(value).lower() or float(default) == value, key
    params = {k.split("=")[0]: k.split("=", 1)[1] for k in TINY}
    params.update(epochs="1", output_dir=str(tmp_path / "out"), run_name="mlp",
                  cache_dir=str(tmp_path / "cache"))
    command = main.compute_command(params, storage_dir=str(tmp_path))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # an activated venv
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "mlp" / "model.keras").is_file()
    assert json.loads((tmp_path / "out" / "mlp" / "mlflow_model.json").read_text())["model_uri"]


def test_a_dataset_logged_by_two_runs_at_once_is_retried_not_fatal(monkeypatch):
    """Two tune workers' trials starting together on one server: MLflow's store looked the dataset up,
    then inserted it, and the second insert failed (UNIQUE constraint, seen in the container tune
    workers test); the run died. Now the log is retried and links the row the other inserted."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from kerasflow.track import tracking

    calls: list[str] = []

    def racing(dataset, context):
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")

    monkeypatch.setattr(mlflow, "log_input", racing)
    tracking._log_input(object(), "training")
    assert calls == ["training", "training"]
    def failing(dataset, context):
        raise MlflowException("other")

    monkeypatch.setattr(mlflow, "log_input", failing)
    with pytest.raises(MlflowException, match="other"):
        tracking._log_input(object(), "training")


def test_a_tracking_server_that_dies_mid_run_costs_no_training(tmp_path):
    """Before: every epoch's log_batch was synchronous, so with the server gone the epoch loop stalled
    in MLflow's HTTP retries (~4 min a call), then tracebacks. Now, two runs, the server killed after
    epoch 1 of each: the epochs go on (history.jsonl grows while it is down), one warning line. `outage`
    waits for the server, which comes back on the same port, and ends FINISHED with every epoch's
    metrics, its artifacts stored by the server (proxied) and its model registered. `away` waits 3 s
    only (KERASFLOW_TRACKING_WAIT): one line naming its run folder and the rerun that logs it; that
    rerun, once the server is back, finishes the same run without training."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    server = mlflow_server(tmp_path / "server", port)
    away_cmd = _tiny_cmd(tmp_path, "away", "synthetic_examples=600", epochs=5)
    try:
        err = (tmp_path / "outage.err").open("w")
        outage_cmd = [*_tiny_cmd(tmp_path, "outage", "synthetic_examples=600", epochs=10),
                      "--register", "remote-model"]
        outage = subprocess.Popen(outage_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                  text=True)
        away = subprocess.Popen(away_cmd, cwd=ROOT, env={**env, "KERASFLOW_TRACKING_WAIT": "3"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for_epochs(tmp_path / "out" / "outage", outage, 1)
        _wait_for_epochs(tmp_path / "out" / "away", away, 1)
        kill_group(server)
        killed = time.monotonic()
        _wait_for_epochs(tmp_path / "out" / "outage", outage, 10)  # stalled here before
        while "unreachable" not in (tmp_path / "outage.err").read_text() and outage.poll() is None:
            time.sleep(0.2)
        assert time.monotonic() - killed < 60, "no warning within 60 s of the server going away"
        assert outage.poll() is None, (tmp_path / "outage.err").read_text()[-3000:]  # waits for the server
        _, stderr = away.communicate(timeout=300)
        assert_user_error(subprocess.CompletedProcess(away_cmd, away.returncode, "", stderr),
                          "did not come back", str(tmp_path / "out" / "away"), "run_name=away")
        assert not (tmp_path / "out" / "away" / "model.keras").exists()

        server = mlflow_server(tmp_path / "server", port)
        assert outage.wait(timeout=300) == 0, (tmp_path / "outage.err").read_text()[-3000:]
        stderr = (tmp_path / "outage.err").read_text()
        assert "Traceback" not in stderr
        assert next(line for line in stderr.splitlines() if "unreachable" in line).startswith("warning: ")
        again = subprocess.run(away_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Epoch" not in again.stdout + again.stderr  # not trained again

        c = mlflow_client(uri)
        experiment = c.get_experiment_by_name("kerasflow").experiment_id
        runs = {r.info.run_name: r for r in c.search_runs([experiment])}
        assert sorted(runs) == ["away", "outage"]
        for name, epochs in (("outage", 10), ("away", 5)):
            assert runs[name].info.status == "FINISHED", name
            for metric in ("loss", "val_loss", "accuracy", "test_accuracy"):
                steps = sorted(m.step for m in c.get_metric_history(runs[name].info.run_id, metric))
                assert steps == ([0] if metric.startswith("test_") else list(range(epochs))), (name, metric)
        # a full run through a server: artifacts proxied into the server's folder, the model registered
        outage_id = runs["outage"].info.run_id
        assert runs["outage"].info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {"curves.png", "config.yaml"} <= {a.path for a in c.list_artifacts(outage_id)}
        assert list((tmp_path / "server" / "artifacts").rglob("curves.png"))
        assert c.get_model_version_by_alias("remote-model", "candidate").run_id == outage_id
    finally:
        kill_group(server)


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def test_a_server_that_answers_nothing_costs_the_wait_the_user_set(tmp_path):
    """Before: with KERASFLOW_TRACKING_WAIT=15 and a server that accepts and never answers (stopped,
    wedged), the end of a run took about 130 s: each MLflow call held for its own bound (about a minute),
    the wait counted between them, and then the run's end and its message tried again. Now /health says
    it in seconds, the wait is the whole wait, and what is left to say to the server is skipped: one
    line naming the rerun, exit 2, within the wait plus the end's own work."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "KERASFLOW_TRACKING_WAIT": "10"}
    server = mlflow_server(tmp_path / "server", port)
    cmd = _tiny_cmd(tmp_path, "wedged", "synthetic_examples=600", epochs=3)
    try:
        trainer = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        _wait_for_epochs(tmp_path / "out" / "wedged", trainer, 2)
        os.killpg(server.pid, signal.SIGSTOP)  # the kernel still accepts connections; nothing answers
        _wait_for_epochs(tmp_path / "out" / "wedged", trainer, 3)
        trained = time.monotonic()
        _, stderr = trainer.communicate(timeout=600)
        ended = time.monotonic() - trained
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        kill_group(server)
    assert_user_error(subprocess.CompletedProcess(cmd, trainer.returncode, "", stderr),
                      "did not come back within 10 s", "run_name=wedged")
    assert ended < 35, f"the end of the run took {ended:.0f} s with a wait of 10 s"
