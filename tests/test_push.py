"""`kerasflow push`: the runs of one store merged into another, with real MLflow on sqlite stores.

The source store is written by MLflow's own client: a CV-like hierarchy (parent, two children), a run
still RUNNING, params, tags, metric histories with steps and timestamps, a dataset input, artifacts in
folders, and a second experiment. The destination holds a run of its own, which must survive.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, assert_user_error, free_port, kill_group, wait_http
from helpers.compare import copies_by_source, fingerprint, same_run

from kerasflow.track import orphans


def _client(folder: Path):
    import mlflow

    from kerasflow.track import store

    uri = store.sqlite_uri(folder / store.DB_FILE)
    store.init_sqlite(uri)
    return mlflow.MlflowClient(tracking_uri=uri), uri


def _experiment(client, uri: str, name: str) -> str:
    from kerasflow.track import store

    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(
        name, artifact_location=store.artifact_root(uri, name))


def _run(client, exp: str, name: str, tmp: Path, *, parent: str | None = None, steps: int = 5,  # noqa: PLR0913
         running: bool = False) -> str:
    import mlflow
    import numpy as np
    from mlflow.entities import Metric, Param, RunTag

    tags = {"mlflow.parentRunId": parent} if parent else {}
    run_id = client.create_run(exp, run_name=name, tags={"kerasflow.level": "fold" if parent else "cv",
                                                          **tags}).info.run_id
    client.log_batch(run_id, params=[Param("lr", "0.01"), Param("name", name)],
                     tags=[RunTag("git_commit", "abc123")],
                     metrics=[Metric(k, 0.1 * s + len(name), 1_700_000_000_000 + 1000 * s, s)
                              for k in ("loss", "val_accuracy") for s in range(steps)])
    (tmp / name).mkdir(exist_ok=True)
    (tmp / name / "curves.png").write_bytes(os.urandom(2048))
    (tmp / name / "notes.txt").write_text(f"notes of {name}\n")
    client.log_artifact(run_id, str(tmp / name / "curves.png"))
    client.log_artifact(run_id, str(tmp / name / "notes.txt"), "environment")
    dataset = mlflow.data.from_numpy(np.zeros((4, 2)), name=f"{name}-data", digest=f"d-{name}")
    client.log_inputs(run_id, datasets=[mlflow.entities.DatasetInput(dataset._to_mlflow_entity(), [])])
    if not running:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _log_model(uri: str, exp: str, run_name: str, factor: float, register: str, alias: str) -> str:  # noqa: PLR0913
    """A run with a logged pyfunc model, registered with an alias; returns the run id."""
    import mlflow

    from kerasflow.track import store

    class Scale(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input * factor

    with store.activated(uri), mlflow.start_run(experiment_id=exp, run_name=run_name) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Scale(), pip_requirements=[])
        version = mlflow.register_model(info.model_uri, register)
        mlflow.MlflowClient().set_registered_model_alias(register, alias, version.version)
    return run.info.run_id


def _push(source: Path, dest: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "kerasflow", "push", "--store", str(source), "--to", dest, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_push_merges_runs_once_and_updates_what_grew(tmp_path):
    """Before: a store moved only whole (pull); runs of a laptop or a box could not join another store.
    Now: copied whole and nested, a second push copies nothing, a run that grew (more epochs, finished)
    is updated, the destination's own run stays, and a RUNNING copy is never closed as an orphan."""
    src, src_uri = _client(tmp_path / "laptop")
    exp = _experiment(src, src_uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    folds = [_run(src, exp, f"fold{i}", tmp_path, parent=cv) for i in range(2)]
    live = _run(src, exp, "live", tmp_path, steps=2, running=True)
    # still training here: its run folder's lock is held (by flock(1) standing in for the trainer)
    folder = tmp_path / "live-run"
    folder.mkdir()
    trainer = subprocess.Popen(["flock", str(folder / ".lock"), "sleep", "600"])
    for key, value in orphans.tags(folder).items():
        src.set_tag(live, key, value)
    other = _run(src, _experiment(src, src_uri, "other"), "solo", tmp_path)
    trained = _log_model(src_uri, exp, "trained", 2.0, "cells", "champion")
    src.set_registered_model_alias("cells", "candidate", "1")
    dst, dst_uri = _client(tmp_path / "team")
    dst_exp = _experiment(dst, dst_uri, "kerasflow")
    mine = _run(dst, dst_exp, "mine", tmp_path / "team")
    _log_model(dst_uri, dst_exp, "theirs", 3.0, "cells", "champion")  # the team's own champion

    first = _push(tmp_path / "laptop", str(tmp_path / "team"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "push: 6 runs copied, 0 updated, 0 unchanged" in first.stdout, first.stdout
    assert "1 models, 1 model versions" in first.stdout and "elsewhere: cells@champion" in first.stdout
    copies = {r.data.tags[orphans.SOURCE_TAG]: r for r in dst.search_runs(
        [dst.get_experiment_by_name(n).experiment_id for n in ("kerasflow", "other")])
        if orphans.SOURCE_TAG in r.data.tags}
    assert set(copies) == {cv, *folds, live, other, trained}
    for run_id, copy in copies.items():
        same_run(src, dst, run_id, copy)
    assert {copies[f].data.tags["mlflow.parentRunId"] for f in folds} == {copies[cv].info.run_id}
    assert copies[live].info.status == "RUNNING"
    assert copies[live].data.tags["kerasflow.copy_of_running"] == "true"
    assert dst.get_run(mine).info.status == "FINISHED"  # the destination's own run is untouched

    # the model: loadable by alias in the destination, predicting as at the source; the team's own
    # champion was not moved (reported above), the source's candidate points at the copy
    import mlflow
    import numpy as np

    from kerasflow.track import store

    with store.activated(dst_uri):
        candidate = dst.get_model_version_by_alias("cells", "candidate")
        assert candidate.run_id == copies[trained].info.run_id and str(candidate.version) == "2"
        assert str(dst.get_model_version_by_alias("cells", "champion").version) == "1"
        x = np.arange(4.0).reshape(2, 2)
        assert (mlflow.pyfunc.load_model("models:/cells@candidate").predict(x) == x * 2).all()

    second = _push(tmp_path / "laptop", str(tmp_path / "team"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert ("push: 0 runs copied, 0 updated, 6 unchanged (0 metric values, 0 artifact files), 0 models, "
            "0 model versions") in second.stdout

    trainer.kill()  # the trainer is gone: its own store may close its run; the copy is not ours
    trainer.wait()
    assert orphans.close(dst) == []
    assert dst.get_run(copies[live].info.run_id).info.status == "RUNNING"

    # the live run grows: more epochs, a new file, then it finishes
    from mlflow.entities import Metric

    src.log_batch(live, metrics=[Metric("loss", 0.01 * s, 1_700_000_100_000 + s, s) for s in range(2, 6)])
    src.log_text(live, "late", "late.txt")
    src.set_terminated(live, "FINISHED")
    third = _push(tmp_path / "laptop", str(tmp_path / "team"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "push: 0 runs copied, 1 updated, 5 unchanged (4 metric values, 1 artifact files)" in third.stdout
    copy = dst.get_run(copies[live].info.run_id)
    same_run(src, dst, live, copy)
    assert copy.data.tags["kerasflow.copy_of_running"] == "false"
    assert len(dst.search_runs([dst_exp])) == 7  # 5 copies + mine + theirs


def test_push_filters_keep_parents_and_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    src, src_uri = _client(tmp_path / "box")
    exp = _experiment(src, src_uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    fold = _run(src, exp, "fold-best", tmp_path, parent=cv)
    _run(src, exp, "weak", tmp_path)
    _run(src, _experiment(src, src_uri, "other"), "solo", tmp_path)
    done = _push(tmp_path / "box", str(tmp_path / "dest"), "--experiment", "kerasflow",
                 "--filter", "attributes.run_name = 'fold-best'")
    assert done.returncode == 0, done.stderr[-3000:]
    dst, _ = _client(tmp_path / "dest")
    runs = dst.search_runs([dst.get_experiment_by_name("kerasflow").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["cv", "fold-best"]  # the fold keeps its parent
    assert dst.get_experiment_by_name("other") is None
    assert {r.data.tags[orphans.SOURCE_TAG] for r in runs} == {cv, fold}

    old = src.create_run(exp, run_name="old", start_time=1_577_836_800_000).info.run_id  # 2020-01-01
    src.set_terminated(old, "FINISHED", end_time=1_577_840_000_000)
    recent = _push(tmp_path / "box", str(tmp_path / "recent"), "--since", "2024-01-01")
    assert recent.returncode == 0, recent.stderr[-3000:]
    got = {r.info.run_name for r in _client(tmp_path / "recent")[0].search_runs(
        [_client(tmp_path / "recent")[0].get_experiment_by_name("kerasflow").experiment_id])}
    assert got == {"cv", "fold-best", "weak"}  # not the run of 2020

    from kerasflow.cli import push

    def in_process(source: Path, dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
        code = push.main(["--store", str(source), "--to", str(dest), *args])
        return subprocess.CompletedProcess([], code, *capsys.readouterr())

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_user_error(in_process(tmp_path / "box", tmp_path / "box"), "is the source store")
    assert_user_error(in_process(tmp_path / "box", tmp_path / "dest", "--experiment", "nope"),
                      "no experiment 'nope'")
    assert_user_error(in_process(tmp_path / "box", tmp_path / "dest", "--filter", "metrics.x >>> 1"),
                      "bad filter")
    assert_user_error(in_process(tmp_path / "box", tmp_path / "dest", "--since", "last week"),
                      "bad --since 'last week'", "(90m, 12h, 7d)")
    assert_user_error(in_process(tmp_path / "nothing", tmp_path / "dest"), "no MLflow store")


def test_pulling_the_same_source_again_keeps_what_was_done_here(tmp_path):
    """Before: pull a store, log a run in it, pull the same source again: exit 0, and the local run and
    its experiment were gone, no backup (and an alias set here with `make promote`). Now the re-pull
    merges what this store had into the new snapshot: the local run, its experiment and artifacts stay,
    the source's new run arrives, a local alias the source does not have stays, and one the source
    points elsewhere is the source's and reported."""
    server, server_uri = _client(tmp_path / "server")
    exp = _experiment(server, server_uri, "kerasflow")
    first_run = _log_model(server_uri, exp, "first", 2.0, "cells", "champion")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def pull() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "kerasflow", "pull", str(tmp_path / "server"), str(tmp_path / "store")]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert pull().returncode == 0
    local, local_uri = _client(tmp_path / "store")
    mine = _run(local, _experiment(local, local_uri, "mine"), "laptop-run", tmp_path)
    local.set_tag(first_run, "reviewed", "yes")  # done here to a pulled run
    second = _log_model(local_uri, local.get_experiment_by_name("kerasflow").experiment_id, "local-model",
                        5.0, "cells", "mine")  # a second version, with an alias of this store only
    local.set_registered_model_alias("cells", "champion", "2")  # promoted here
    newer = _run(server, exp, "newer", tmp_path)  # meanwhile on the server
    before = fingerprint(local, mine)

    again = pull()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "elsewhere: cells@champion" in again.stderr  # the server's champion wins, and it is said
    import mlflow

    # another spelling of the same path: the client above keeps a connection to the replaced database
    local = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/store/../store/mlflow.db")
    names = {r.info.run_name: r for r in local.search_runs(
        [e.experiment_id for e in local.search_experiments()])}
    assert set(names) == {"first", "newer", "laptop-run", "local-model"}, set(names)
    assert names["first"].info.run_id == first_run and names["newer"].info.run_id == newer
    assert names["first"].data.tags["reviewed"] == "yes"
    assert fingerprint(local, names["laptop-run"].info.run_id) == before  # the local run, whole
    assert names["local-model"].data.tags[orphans.SOURCE_TAG] == second
    assert local.get_model_version_by_alias("cells", "mine").run_id == names["local-model"].info.run_id
    assert str(local.get_model_version_by_alias("cells", "champion").version) == "1"
    assert not list(tmp_path.glob(".store.pull-*"))  # nothing left beside the store


def test_a_push_killed_at_seeded_moments_completes_on_rerun_without_duplicates(tmp_path):
    """SIGKILL a push at two seeded moments of its run, rerun it each time: in the end every run,
    history, file, model and version is there exactly once, as a push that was never killed makes it."""
    import random
    import time

    src, src_uri = _client(tmp_path / "box")
    exp = _experiment(src, src_uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    for i in range(3):
        _run(src, exp, f"fold{i}", tmp_path, parent=cv, steps=20)
    _log_model(src_uri, exp, "trained", 2.0, "cells", "champion")
    t0 = time.monotonic()
    reference = _push(tmp_path / "box", str(tmp_path / "reference"))
    full = time.monotonic() - t0
    assert reference.returncode == 0, reference.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "kerasflow", "push", "--store", str(tmp_path / "box"), "--to",
           str(tmp_path / "killed")]
    for moment in sorted(random.Random(7).uniform(0.4 * full, 0.95 * full) for _ in range(2)):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.kill()
        proc.wait()
    done = _push(tmp_path / "box", str(tmp_path / "killed"))
    assert done.returncode == 0, done.stderr[-3000:]
    ref, _ = _client(tmp_path / "reference")
    killed, _ = _client(tmp_path / "killed")

    def contents(client) -> tuple:
        runs = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
        by_source = {}
        for run in runs:
            source = run.data.tags[orphans.SOURCE_TAG]
            assert source not in by_source, f"run {source} copied twice"
            by_source[source] = fingerprint(client, run.info.run_id)
        versions = client.search_model_versions("name = 'cells'")
        versions = [v.tags["kerasflow.source_version"] for v in versions]
        return by_source, sorted(versions), dict(client.get_registered_model("cells").aliases)

    assert contents(killed) == contents(ref)


def test_push_into_a_tracking_server_with_basic_auth(tmp_path, monkeypatch):
    """The team's case: a laptop's runs into a running server (ours, with basic auth: the login in the
    URL), artifacts and the model through it (the server stores them: proxied artifacts), loadable by
    alias from the server; again: nothing copied; a wrong password is one line."""
    src, src_uri = _client(tmp_path / "laptop")
    exp = _experiment(src, src_uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    fold = _run(src, exp, "fold0", tmp_path, parent=cv)
    trained = _log_model(src_uri, exp, "trained", 2.0, "cells", "champion")
    port, password = free_port(), "Adm1n-pass-for-tests"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    cmd = [sys.executable, "-m", "kerasflow", "server", str(tmp_path / "server"), "--port", str(port),
           "--auth"]
    server = subprocess.Popen(cmd, cwd=ROOT, env={**env, "MLFLOW_AUTH_ADMIN_PASSWORD": password},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    login = f"http://admin:{password}@127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc=server)
        first = _push(tmp_path / "laptop", login)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "push: 3 runs copied" in first.stdout and "1 models, 1 model versions" in first.stdout
        assert password not in first.stdout + first.stderr
        assert "View run" not in first.stdout  # MLflow's two lines per run ended on a server
        import mlflow
        import numpy as np

        from kerasflow.track import store

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        dst = mlflow.MlflowClient(tracking_uri=url)
        copies = copies_by_source(dst)
        assert set(copies) == {cv, fold, trained}
        for run_id, copy in copies.items():
            same_run(src, dst, run_id, copy)
        assert copies[fold].data.tags["mlflow.parentRunId"] == copies[cv].info.run_id
        assert list((tmp_path / "server" / "artifacts").rglob("curves.png"))  # stored by the server
        with store.activated(url):
            x = np.arange(4.0).reshape(2, 2)
            assert (mlflow.pyfunc.load_model("models:/cells@champion").predict(x) == x * 2).all()
        again = _push(tmp_path / "laptop", login)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "push: 0 runs copied, 0 updated, 3 unchanged" in again.stdout
        wrong = _push(tmp_path / "laptop", login.replace(password, "wrong"))
        assert_user_error(wrong, "refused the login")
    finally:
        kill_group(server)
