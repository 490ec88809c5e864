"""Experiment automation on real data sources and a real MLflow store: splits files, nested
cross-validation, Optuna search (two worker processes, resume), analysis of predictions, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, TINY, assert_user_error, client_for, set_args

from kerasflow import config
from kerasflow.errors import UserError
from kerasflow.train import data
from kerasflow.train import splits as folds
from kerasflow.train.sources import synthetic

pytestmark = pytest.mark.slow

# learns in 2 epochs on 2 CPU cores in a few seconds, so metrics mean something
SMALL = [*TINY, "synthetic_examples=160", "epochs=2", "learning_rate=0.003"]
SPACE = "search_space={learning_rate: {low: 0.001, high: 0.01, log: true}, dense_units: {choices: [8, 16]}}"


def overrides(tmp: Path, *extra: str) -> list[str]:
    return [*SMALL, f"output_dir={tmp / 'outputs'}", f"cache_dir={tmp / 'cache'}", *extra]


def run(command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`kerasflow COMMAND ARGS` in its own process."""
    return subprocess.run([sys.executable, "-m", "kerasflow", command, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def runs_of(store_dir: Path, query: str = "") -> list:
    client = client_for(store_dir)
    exp = client.get_experiment_by_name("kerasflow")
    return client.search_runs([exp.experiment_id], query, max_results=1000)


def make_splits(tmp: Path, *extra: str) -> Path:
    out = tmp / "splits.json"
    result = run("splits", *set_args(overrides(tmp, *extra)), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# --- splits -----------------------------------------------------------------------------------------


def test_splits_are_stratified_complete_and_seeded(tmp_path):
    cfg = config.load(
        None, overrides(tmp_path, "synthetic_examples=300", "n_outer_folds=3", "n_inner_folds=2")
    )
    examples = data.load_examples(cfg)
    first, again = folds.make(cfg, examples), folds.make(cfg, examples)
    other = folds.make(cfg.replace(seed=7), examples)
    assert first == again and first["digest"] == again["digest"]
    assert first["outer"] != other["outer"]
    labels = np.asarray(first["labels"])
    overall = labels.mean()
    tests = [set(o["test"]) for o in first["outer"]]
    assert set().union(*tests) == set(range(len(labels))) and sum(map(len, tests)) == len(labels)
    for outer in first["outer"]:
        assert abs(labels[outer["test"]].mean() - overall) < 0.05  # stratified
        for inner in outer["inner"]:
            train, dev = set(inner["train"]), set(inner["dev"])
            assert not train & dev and not (train | dev) & set(outer["test"])
            assert train | dev | set(outer["test"]) == set(range(len(labels)))
            assert abs(labels[inner["dev"]].mean() - overall) < 0.08


def nih_tree(root: Path, patients: int = 12, per_class: int = 5) -> Path:
    """NIH layout: every patient has cells in both class folders, named <patient>_IMG_..._cell_<n>.png."""
    from PIL import Image

    images, _ = synthetic.draw(patients * per_class * 2, 32, 0)
    k = 0
    for cls in ("Parasitized", "Uninfected"):
        (root / cls).mkdir(parents=True)
        for p in range(patients):
            for i in range(per_class + (p % 3)):  # unequal patient sizes
                Image.fromarray(images[k % len(images)]).save(
                    root / cls / f"C{100 + p}P{60 + p}ThinF_IMG_20150918_1441{p:02d}_cell_{i}.png"
                )
                k += 1
    return root


def test_image_tree_splits_keep_each_patient_on_one_side(tmp_path):
    root = nih_tree(tmp_path / "cell_images")
    out = make_splits(
        tmp_path, "data_source=image_dir", f"image_dir={root}", "n_outer_folds=3", "n_inner_folds=2"
    )
    splits = json.loads(out.read_text())
    patient = [re.match(r"(C\d+P\d+ThinF)_", Path(n).name).group(1) for n in splits["examples"]]
    assert splits["groups"] == patient and len(set(patient)) == 12
    for outer in splits["outer"]:
        test_patients = {patient[i] for i in outer["test"]}
        for inner in outer["inner"]:
            train = {patient[i] for i in inner["train"]}
            dev = {patient[i] for i in inner["dev"]}
            assert not test_patients & (train | dev), "a patient is in train/dev and test"
            assert not train & dev, "a patient is in train and dev"
    assert {Path(n).parts[0] for n in splits["examples"]} == {"Parasitized", "Uninfected"}


def test_training_takes_a_fold_and_logs_the_splits_digest(tmp_path):
    from kerasflow.track import tracking

    out = make_splits(tmp_path, "n_outer_folds=3", "n_inner_folds=2")
    splits = json.loads(out.read_text())
    cfg = config.load(
        None, overrides(tmp_path, f"splits_file={out}", "outer_fold=2", "inner_fold=1", "run_name=fold")
    )
    prep, run_id = tracking.train_tracked(cfg, store_dir=str(tmp_path / "store"), verbose=0)
    assert prep.splits.test.tolist() == splits["outer"][2]["test"]
    assert prep.splits.val.tolist() == splits["outer"][2]["inner"][1]["dev"]
    assert prep.splits.train.tolist() == splits["outer"][2]["inner"][1]["train"]
    run_ = client_for(tmp_path / "store").get_run(run_id)
    assert run_.data.tags["splits_file_digest"] == splits["digest"]
    assert run_.data.params["outer_fold"] == "2"


# --- cross-validation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cv_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One cv trained once for the cv tests below, as `make cv` runs it (no splits file: it writes the
    folds): 1 outer x 2 inner folds, then the same command with --n-outer 2 (after a kill, or to add
    folds), which resumes it into the whole 2 x 2 tree."""
    tmp = tmp_path_factory.mktemp("cv")
    args = [*set_args(overrides(tmp, "n_outer_folds=2", "n_inner_folds=2", "run_name=cvr")),
            "--store", str(tmp / "store"), "--n-inner", "2"]
    first = run("cv", *args, "--n-outer", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    written = tmp / "outputs" / "splits.json"
    leaves = {r.info.run_id for r in runs_of(tmp / "store", "tags.kerasflow.level = 'inner_fold'")}
    info = {"tmp": tmp, "first": first, "written": written, "mtime": written.stat().st_mtime_ns,
            "leaves": leaves}
    second = run("cv", *args, "--n-outer", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    return {**info, "second": second}


def test_a_cv_makes_the_nested_run_tree_with_aggregates(cv_runs):
    store_dir = cv_runs["tmp"] / "store"
    runs = runs_of(store_dir)
    by_level: dict[str, list] = {}
    for r in runs:
        by_level.setdefault(r.data.tags.get("kerasflow.level"), []).append(r)
    assert {k: len(v) for k, v in by_level.items()} == {"cv": 1, "outer_fold": 2, "inner_fold": 4}
    assert all(r.info.status == "FINISHED" for r in runs)
    cv = by_level["cv"][0]
    assert cv.data.tags["cv.n_outer"] == "2"
    for outer in by_level["outer_fold"]:
        assert outer.data.tags["mlflow.parentRunId"] == cv.info.run_id
        children = [
            r for r in by_level["inner_fold"] if r.data.tags["mlflow.parentRunId"] == outer.info.run_id
        ]
        assert len(children) == 2 and {c.data.tags["outer_fold"] for c in children} == {
            outer.data.tags["outer_fold"]
        }
        assert outer.data.metrics["test_accuracy"] == pytest.approx(
            np.mean([c.data.metrics["test_accuracy"] for c in children])
        )
    outer_acc = [o.data.metrics["test_accuracy"] for o in by_level["outer_fold"]]
    assert cv.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(outer_acc))
    assert cv.data.metrics["test_accuracy_std"] == pytest.approx(np.std(outer_acc))
    assert "test_auc_mean" in cv.data.metrics and "test_loss_std" in cv.data.metrics
    table = client_for(store_dir).download_artifacts(cv.info.run_id, "cv_folds.csv", str(cv_runs["tmp"]))
    assert len(Path(table).read_text().splitlines()) == 5


def test_a_cv_rerun_with_its_name_resumes_and_skips_finished_folds(cv_runs):
    second, tmp = cv_runs["second"], cv_runs["tmp"]
    assert "(resumed)" in second.stderr and "fold 0/0 was finished before" in second.stderr
    leaves = {r.info.run_id for r in runs_of(tmp / "store", "tags.kerasflow.level = 'inner_fold'")}
    assert cv_runs["leaves"] < leaves  # the first command's folds were not trained again
    changed = [*set_args(overrides(tmp, "n_outer_folds=2", "n_inner_folds=2", "run_name=cvr", "epochs=3")),
               "--store", str(tmp / "store")]
    assert_user_error(run("cv", *changed), "cv 'cvr' was started with another config")


def test_cv_without_a_splits_file_writes_the_folds_once_and_reuses_them(cv_runs):
    """As `make cv` does (and the cv entry point of `make run ARGS='-e cv'`, whose splits_file is '')."""
    written = cv_runs["written"]
    assert f"-> {written}" in cv_runs["first"].stderr
    splits = folds.read(written)
    assert len(splits["outer"]) == 2 and len(splits["outer"][0]["inner"]) == 2
    second = cv_runs["second"]
    assert written.stat().st_mtime_ns == cv_runs["mtime"] and "splits:" not in second.stderr  # reused
    with pytest.raises(UserError, match="does not exist"):
        folds.read(cv_runs["tmp"] / "missing.json")


# --- search -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-trial search run by two worker processes on one sqlite study, telling a loopback webhook
    (KERASFLOW_NOTIFY) when it ends."""
    from helpers.receiver import Receiver

    tmp = tmp_path_factory.mktemp("search")
    told = Receiver()
    os.environ["KERASFLOW_NOTIFY"] = told.url
    try:
        result = run(
            "tune",
            *set_args(overrides(tmp, SPACE)),
            "--trials",
            "3",
            "--workers",
            "2",
            "--study",
            "two",
            "--store",
            str(tmp / "store"),
            "--register",
            "tuned",
        )
    finally:
        del os.environ["KERASFLOW_NOTIFY"]
        told.close()
    assert result.returncode == 0, result.stderr[-4000:]
    (tmp / "told.json").write_text(json.dumps(told.messages))
    return tmp


def test_two_workers_run_three_trials_then_retrain_the_best(searched):
    import optuna

    store_dir = searched / "store"
    trials = runs_of(store_dir, "tags.kerasflow.level = 'trial'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == [0, 1, 2]
    study = optuna.load_study(study_name="two", storage=f"sqlite:///{store_dir / 'optuna.db'}")
    assert len(study.trials) == 3
    [parent] = runs_of(store_dir, "tags.kerasflow.level = 'search'")
    [final] = runs_of(store_dir, "tags.kerasflow.level = 'final'")
    assert {r.data.tags["mlflow.parentRunId"] for r in [*trials, final]} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    best_run = next(r for r in trials if r.data.tags["optuna.trial"] == str(study.best_trial.number))
    for key, value in study.best_params.items():
        assert final.data.params[key] == str(value)
        assert best_run.data.params[key] == str(value)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    version = client_for(store_dir).get_model_version_by_alias("tuned", "candidate")
    assert version.run_id == final.info.run_id
    # one message for the whole search (not one per trial, nor for the retrain), with its best value
    [told] = json.loads((searched / "told.json").read_text())
    assert told["title"] == "kerasflow search two: FINISHED", told
    assert f"best_val_accuracy={parent.data.metrics['best_val_accuracy']:.4g}" in told["message"]
    for trial in trials:  # each trial's value is its last val_accuracy
        state = next(t for t in study.trials if t.number == int(trial.data.tags["optuna.trial"]))
        if state.state == optuna.trial.TrialState.COMPLETE:
            history = client_for(store_dir).get_metric_history(trial.info.run_id, "val_accuracy")
            assert state.value == pytest.approx(max(history, key=lambda m: m.step).value)


def test_an_interrupted_study_continues_its_trial_count(tmp_path):
    import optuna

    common = [*set_args(overrides(tmp_path, SPACE)), "--study", "resumed", "--store", str(tmp_path / "store")]
    first = run("tune", *common, "--trials", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run("tune", *common, "--trials", "3")
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{tmp_path / 'store' / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    trials = runs_of(tmp_path / "store", "tags.kerasflow.level = 'trial'")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trials) == [0, 1, 2]
    assert len(runs_of(tmp_path / "store", "tags.kerasflow.level = 'search'")) == 1  # the same search run
    assert "has 2 of 3 trials" in second.stderr


def test_a_pruned_trial_ends_killed_not_running(tmp_path):
    import keras
    import optuna

    from kerasflow.track import tracking

    class PruneAtOnce(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise optuna.TrialPruned()

    cfg = config.load(None, overrides(tmp_path, "run_name=pruned"))
    nested = tracking.Nested(log_model=False, callbacks=[PruneAtOnce()], stopped=(optuna.TrialPruned,))
    with pytest.raises(optuna.TrialPruned):
        tracking.train_tracked(cfg, store_dir=str(tmp_path / "store"), verbose=0, nested=nested)
    [run_] = runs_of(tmp_path / "store")
    assert run_.info.status == "KILLED"


# --- analysis ---------------------------------------------------------------------------------------


def test_analysis_logs_figures_and_metrics_that_match_the_predictions(searched, tmp_path):
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    store_dir = searched / "store"
    result = run(
        "analyze", "--filter", "tags.kerasflow.level = 'trial'", "--store", str(store_dir)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(store_dir)
    for trial in runs_of(store_dir, "tags.kerasflow.level = 'trial' and attributes.status = 'FINISHED'"):
        assert trial.info.status == "FINISHED"  # analysis keeps the status training gave
        m = trial.data.metrics
        assert "analysis/roc_pr.png" in {a.path for a in client.list_artifacts(trial.info.run_id, "analysis")}
        path = client.download_artifacts(trial.info.run_id, "test_predictions.csv", str(tmp_path))
        frame = pd.read_csv(path)
        positive = frame["label"] == "parasitized"
        predicted = frame["prob_parasitized"] >= m["analysis_threshold"]
        assert m["analysis_accuracy_score"] == pytest.approx(accuracy_score(positive, predicted))
        assert m["analysis_recall_score"] == pytest.approx(recall_score(positive, predicted))
        assert m["analysis_precision_score"] == pytest.approx(
            precision_score(positive, predicted, zero_division=0)
        )
        assert m["analysis_f1_score"] == pytest.approx(f1_score(positive, predicted))
        assert m["analysis_roc_auc"] == pytest.approx(roc_auc_score(positive, frame["prob_parasitized"]))
        fpr = (predicted & ~positive).sum() / (~positive).sum()
        tpr = (predicted & positive).sum() / positive.sum()
        assert m["analysis_youden_j"] == pytest.approx(tpr - fpr)
        # the test accuracy training logged at 0.5 agrees with the logged probabilities
        assert m["test_accuracy"] == pytest.approx(((frame["prob_uninfected"] >= 0.5) == ~positive).mean())


# --- bad input: exit 2, one line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("search_space={colour: {choices: [red]}}", "search_space key 'colour' is not a config key"),
        ("search_space={dropout: {low: 0.4, high: 0.2}}", "has an empty range (low 0.4 >= high 0.2)"),
        ("search_space={dense_units: {choices: []}}", "empty or malformed choices list"),
    ],
)
def test_bad_search_space(tmp_path, setting, message):
    assert_user_error(
        run(
            "tune",
            *set_args(overrides(tmp_path, setting)),
            "--trials",
            "1",
            "--store",
            str(tmp_path / "store"),
        ),
        message,
    )
    assert not (tmp_path / "store").exists()


def test_more_outer_folds_than_the_file_has(tmp_path):
    out = make_splits(tmp_path, "n_outer_folds=2", "n_inner_folds=2")
    assert_user_error(
        run(
            "cv",
            *set_args(overrides(tmp_path, f"splits_file={out}")),
            "--n-outer",
            "3",
            "--store",
            str(tmp_path / "store"),
        ),
        "3 outer folds asked for, but splits file",
        "has 2",
    )
    assert_user_error(
        run("train", *set_args(overrides(tmp_path, f"splits_file={out}", "outer_fold=2"))), "has 2"
    )


def test_splits_file_of_another_dataset(tmp_path):
    out = make_splits(tmp_path, "n_outer_folds=2", "n_inner_folds=2")
    result = run("train", *set_args(overrides(tmp_path, f"splits_file={out}", "synthetic_examples=170")))
    assert_user_error(result, "was made for another dataset", "make splits")
    assert not (tmp_path / "outputs").exists()
    edited = json.loads(out.read_text())
    edited["outer"][0]["test"].pop()
    out.write_text(json.dumps(edited))
    assert_user_error(run("train", *set_args(overrides(tmp_path, f"splits_file={out}"))), "was edited")


def test_study_name_with_another_space_is_refused(searched):
    other = "search_space={dropout: {low: 0.1, high: 0.2}}"
    result = run(
        "tune",
        *set_args(overrides(searched, other)),
        "--trials",
        "4",
        "--study",
        "two",
        "--store",
        str(searched / "store"),
    )
    assert_user_error(result, "study 'two'", "another search space")
    assert len(runs_of(searched / "store", "tags.kerasflow.level = 'search'")) == 1  # no run started


def test_analysis_with_a_filter_matching_no_run(searched):
    assert_user_error(
        run(
            "analyze",
            "--filter",
            "metrics.test_accuracy > 2",
            "--store",
            str(searched / "store"),
        ),
        "no finished run",
        "matches metrics.test_accuracy > 2",
    )
    assert_user_error(
        run(
            "analyze",
            "--filter",
            "metrics.test_accuracy >>> 2",
            "--store",
            str(searched / "store"),
        ),
        "bad --filter",
    )


def test_unusable_study_storage_and_unknown_positive_class(searched, tmp_path):
    tune = [*set_args(overrides(tmp_path, SPACE)), "--trials", "1", "--store", str(tmp_path / "store")]
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'optuna.db'}"
    assert_user_error(run("tune", *tune, "--storage", missing), "study storage folder", "does not exist")
    server = "postgresql://nobody@127.0.0.1:1/optuna"
    assert_user_error(run("tune", *tune, "--storage", server), f"study storage {server}")
    analyze = ["--filter", "tags.kerasflow.level = 'final'", "--store", str(searched / "store")]
    assert_user_error(
        run("analyze", *analyze, "--positive", "healthy"),
        "--positive 'healthy' is not a class",
    )


@pytest.mark.heavy  # test_engine runs every entry point through make run
def test_every_mlproject_entry_point_command_runs_locally(tmp_path):
    """MLflow's own loader computes each entry point's command; it runs here on synthetic data."""
    import os

    from mlflow.projects._project_spec import load_project

    project = load_project(str(ROOT))
    base = {k.split("=")[0]: k.split("=", 1)[1] for k in overrides(tmp_path, "synthetic_examples=120")}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    splits = tmp_path / "splits.json"
    steps = [
        ("splits", {**base, "n_outer_folds": "2", "n_inner_folds": "2", "out": str(splits)}),
        ("cv", {**base, "splits_file": str(splits), "n_outer": "1", "n_inner": "1", "run_name": "mp-cv"}),
        ("tune", {**base, "trials": "1", "study": "mp", "storage": f"sqlite:///{tmp_path / 'optuna.db'}"}),
        ("analyze", {"filter": "tags.kerasflow.level = 'final'", "positive": "parasitized"}),
    ]
    for entry, params in steps:
        entry_point = project.get_entry_point(entry)
        params = {k: v for k, v in params.items() if k in entry_point.parameters}  # only its own
        command = entry_point.compute_command(params, storage_dir=str(tmp_path))
        result = subprocess.run(
            command, shell=True, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 0, (entry, command, result.stderr[-3000:])
    client = client_for(tmp_path)
    exp = client.get_experiment_by_name("kerasflow")
    levels = sorted(r.data.tags.get("kerasflow.level", "") for r in client.search_runs([exp.experiment_id]))
    assert levels == ["cv", "final", "inner_fold", "outer_fold", "search", "trial"]
    [final] = client.search_runs([exp.experiment_id], "tags.kerasflow.level = 'final'")
    assert "analysis_threshold" in final.data.metrics


def test_youden_threshold_and_multiclass_labelling():
    import pandas as pd

    from kerasflow.experiments import analyze as analysis

    # cutting at 0.7 gives TPR 3/5, FPR 0 (J 0.6); at 0.6 TPR 1, FPR 1/4 (J 0.75, the best)
    positive = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.7, 0.62, 0.6, 0.65, 0.3, 0.2, 0.1])
    chosen = analysis.youden_threshold(positive, score)
    assert chosen["threshold"] == pytest.approx(0.6) and chosen["j"] == pytest.approx(1 - 0.25)
    frame = pd.DataFrame(
        {
            "example": list("abc"),
            "label": ["x", "y", "z"],
            "prob_x": [0.7, 0.2, 0.1],
            "prob_y": [0.2, 0.5, 0.3],
            "prob_z": [0.1, 0.3, 0.6],
        }
    )
    labelled, info = analysis.label_predictions(frame, None)
    assert labelled["prediction"].tolist() == ["x", "y", "z"] and info["positive"] is None
    with pytest.raises(UserError, match="one class only"):
        analysis.label_predictions(
            pd.DataFrame({"label": ["p", "p"], "prob_p": [0.9, 0.8], "prob_q": [0.1, 0.2]}), "p"
        )


def test_workers_of_one_gpu_box_get_one_gpu_each(monkeypatch, tmp_path):
    from kerasflow.experiments.tune import gpus as search
    from kerasflow.experiments.tune import workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    gpus = search.visible_gpus()
    assert gpus == ["2", "3"]
    assert search.gpu_env(0, 1, gpus) == {}  # one worker keeps every GPU
    assert [search.gpu_env(w, 2, gpus) for w in range(2)] == [{"CUDA_VISIBLE_DEVICES": "2"},
                                                              {"CUDA_VISIBLE_DEVICES": "3"}]
    three = [search.gpu_env(w, 3, gpus)["CUDA_VISIBLE_DEVICES"] for w in range(3)]
    assert three == ["2", "3", "2"] and search.gpu_env(2, 3, gpus)["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert search.gpu_env(1, 2, []) == {}  # no GPU: nothing to split
    started: list[dict[str, str]] = []

    class Recorder:  # what the worker processes would be started with
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            started.append(env)

    monkeypatch.setattr(workers.subprocess, "Popen", Recorder)
    workers.spawn_workers(range(1, 3), tmp_path / "config.yaml", {"storage_url": "sqlite:///x"}, gpus)
    assert [env["CUDA_VISIBLE_DEVICES"] for env in started] == ["3", "2"]


def test_joining_a_study_no_lead_started_is_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run("tune", *set_args(overrides(tmp_path, SPACE)), "--study", "nobody", "--role", "join",
                 "--grace", "10", "--storage", storage, "--store", str(tmp_path / "store"))
    assert_user_error(result, "study 'nobody'", "has not been started within --grace 10 s",
                      "--role lead")


# --- moving the runs --------------------------------------------------------------------------------


def test_the_cv_and_search_stores_pushed_into_a_team_server_on_postgresql(cv_runs, searched, postgres,
                                                                          tmp_path):
    """Real runs of the tiny preset (the nested cv, the search with its trials, the retrained best
    registered as tuned@candidate) pushed into our team server on PostgreSQL: every run equal field by
    field, nesting kept, the Keras model loadable by alias from the server; a second push copies nothing."""
    import mlflow
    from helpers import PG_PASSWORD, free_port, kill_group, wait_http
    from helpers.compare import copies_by_source, same_run

    from kerasflow.track import store

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PGPASSWORD"] = PG_PASSWORD
    server = subprocess.Popen([sys.executable, "-m", "kerasflow", "server", str(tmp_path / "team"), "--db",
                               postgres["createdb"]("pushed"), "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc=server)
        sources = [cv_runs["tmp"] / "store", searched / "store"]
        for source in sources:
            pushed = subprocess.run([sys.executable, "-m", "kerasflow", "push", "--store", str(source),
                                     "--to", url], cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=600)
            assert pushed.returncode == 0, pushed.stderr[-3000:]
        dst = mlflow.MlflowClient(tracking_uri=url)
        copies = copies_by_source(dst)
        for source in sources:
            src = client_for(source)
            runs = runs_of(source)
            assert {r.info.run_id for r in runs} <= set(copies)
            for run_ in runs:
                copy = copies[run_.info.run_id]
                same_run(src, dst, run_.info.run_id, copy)
                parent = run_.data.tags.get("mlflow.parentRunId")
                if parent:
                    assert copy.data.tags["mlflow.parentRunId"] == copies[parent].info.run_id
        [final] = runs_of(searched / "store", "tags.kerasflow.level = 'final'")
        version = dst.get_model_version_by_alias("tuned", "candidate")
        assert version.run_id == copies[final.info.run_id].info.run_id
        x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
        predictions = []
        for uri in (store.sqlite_uri(searched / "store" / store.DB_FILE), url):  # the same weights in both
            with store.activated(uri):
                model = mlflow.keras.load_model("models:/tuned@candidate")
                predictions.append(model.predict(x, verbose=0))
        np.testing.assert_array_equal(*predictions)
        again = subprocess.run([sys.executable, "-m", "kerasflow", "push", "--store", str(searched / "store"),
                                "--to", url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "push: 0 runs copied, 0 updated" in again.stdout and "0 model versions" in again.stdout
    finally:
        kill_group(server)
