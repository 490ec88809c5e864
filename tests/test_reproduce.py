"""`make reproduce`: a tracked run re-created from its MLflow records alone, in another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY, assert_user_error, client_for, set_args, write_png_tree

pytestmark = pytest.mark.slow


def track(tmp: Path, name: str, *extra: str) -> str:
    sets = [*TINY, f"output_dir={tmp / 'out'}", f"cache_dir={tmp / 'cache'}", f"run_name={name}", *extra]
    cmd = [sys.executable, "train_mlflow.py", "--store", str(tmp / "store"), *set_args(sets)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = client_for(tmp / "store").search_runs(
        [client_for(tmp / "store").get_experiment_by_name("kerasflow").experiment_id],
        f"attributes.run_name = '{name}'")
    return run.info.run_id


def reproduce(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "kerasflow", "reproduce", *args, "--store", str(tmp / "store"),
           "--output-dir", str(tmp / "again")]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_a_tracked_run_is_reproduced_bitwise_in_another_process(tmp_path):
    from kerasflow.experiments.reproduce import REPRODUCES_TAG, VERDICT_TAG
    from kerasflow.track.tracking import WEIGHTS_TAG

    run_id = track(tmp_path, "original")
    result = reproduce(tmp_path, run_id)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "verdict: identical: same weights digest" in result.stdout, result.stdout + result.stderr[-2000:]
    for row in ("code", "packages", "data", "hardware"):
        assert f"  {row}" in result.stderr
    c = client_for(tmp_path / "store")
    [copy] = c.search_runs([c.get_run(run_id).info.experiment_id], f"tags.`{REPRODUCES_TAG}` = '{run_id}'")
    assert copy.data.tags[VERDICT_TAG] == "identical"
    assert copy.data.tags[WEIGHTS_TAG] == c.get_run(run_id).data.tags[WEIGHTS_TAG]
    assert copy.data.metrics["reproduce_max_abs_diff"] == 0
    assert "reproduce_curves.png" in {a.path for a in c.list_artifacts(copy.info.run_id)}
    assert (tmp_path / "out" / "original" / "model.keras").is_file()  # the original folder is untouched
    assert c.get_run(run_id).data.tags.get(REPRODUCES_TAG) is None


@pytest.mark.heavy  # two trainings; the bitwise test stays
def test_changed_data_and_packages_are_named_and_strict_trains_nothing(tmp_path):
    tree = write_png_tree(tmp_path / "images", {"Parasitized": 20, "Uninfected": 20}, size=40)
    run_id = track(tmp_path, "imgs", "data_source=image_dir", f"image_dir={tree}")
    c = client_for(tmp_path / "store")
    # a package version faked different in the logged record
    installed = Path(c.download_artifacts(run_id, "environment/installed.txt", str(tmp_path)))
    text = installed.read_text()
    numpy_line = next(line for line in text.splitlines() if line.lower().startswith("numpy=="))
    installed.write_text(text.replace(numpy_line, "numpy==0.0.1"))
    c.log_artifact(run_id, str(installed), "environment")
    checked = reproduce(tmp_path, run_id, "--check")
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "packages  DIFFERS  numpy 0.0.1 -> " in checked.stderr
    # one image replaced
    victim = sorted((tree / "Uninfected").iterdir())[0]
    write_png_tree(tmp_path / "other", {"x": 1}, size=40, seed=99)
    victim.write_bytes(next((tmp_path / "other" / "x").iterdir()).read_bytes())
    strict = reproduce(tmp_path, run_id, "--strict")
    assert_user_error(strict, "--strict: packages differs")
    assert "data      DIFFERS" in strict.stderr and "the data changed" in strict.stderr
    assert len(c.search_runs([c.get_run(run_id).info.experiment_id])) == 1  # nothing trained


def test_runs_without_records_and_unknown_ids_are_one_line(tmp_path):
    from kerasflow.track import store, tracking

    with store.open_store(tmp_path / "store") as uri:
        import mlflow

        client = mlflow.MlflowClient()
        foreign = client.create_run(tracking.experiment_id(client, uri, "other-tool")).info.run_id
    assert_user_error(reproduce(tmp_path, foreign), "lacks kerasflow's records", "config.yaml")
    assert_user_error(reproduce(tmp_path, "0" * 32), "no run", "make runs")
    assert_user_error(reproduce(tmp_path / "nowhere", "0" * 32), "no MLflow store")


def test_a_logged_diff_from_the_store_runs_only_with_apply_diff(tmp_path):
    """A store can carry any code as a run's git_diff.patch (a pulled store, a team server anyone writes
    to). Before, `make reproduce` applied and ran it with no preview. Now the table names what it
    touches, nothing runs without --apply-diff, and with it the diff is applied and run."""
    import difflib

    from kerasflow import config
    from kerasflow.track import store, tracking
    from kerasflow.train import envinfo

    marker = tmp_path / "ran-the-stores-code"
    base = subprocess.run(["git", "show", "HEAD:train_mlflow.py"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines(keepends=True)
    planted = [f"import pathlib; pathlib.Path({str(marker)!r}).touch(); raise SystemExit(3)\n", *base]
    patch = "diff --git a/train_mlflow.py b/train_mlflow.py\n" + "".join(
        difflib.unified_diff(base, planted, "a/train_mlflow.py", "b/train_mlflow.py"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    files = tmp_path / "record"
    (files / "environment").mkdir(parents=True)
    (files / "config.yaml").write_text(config.dump(config.load(None, [*TINY, "run_name=foreign"])))
    (files / "environment" / envinfo.INSTALLED_FILE).write_text(envinfo.installed())
    (files / "environment" / "git_diff.patch").write_text(patch)
    with store.open_store(tmp_path / "store") as uri:
        import mlflow

        client = mlflow.MlflowClient()
        run_id = client.create_run(tracking.experiment_id(client, uri, "kerasflow"), tags={
            "git_commit": commit, "git_dirty": "true", "data_digest": "0" * 16,
            tracking.WEIGHTS_TAG: "0" * 16}).info.run_id
        client.log_artifacts(run_id, str(files))
    refused = reproduce(tmp_path, run_id)
    assert_user_error(refused, "plus uncommitted changes, logged as a diff", "touching 1 file(s): "
                      "train_mlflow.py", "--apply-diff", "Nothing was run")
    assert "NOT applied" in refused.stderr  # the table's code row
    assert not marker.exists()
    c = client_for(tmp_path / "store")
    assert len(c.search_runs([c.get_run(run_id).info.experiment_id])) == 1
    consented = reproduce(tmp_path, run_id, "--apply-diff")
    assert_user_error(consented, "the reproduction's training failed")
    assert marker.exists()  # the user said yes: the diff was applied and its code ran
