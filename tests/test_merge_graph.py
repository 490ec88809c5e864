"""`kerasflow push` over graphs of stores: any order of pushes converges to one copy of each run, model
and version; a deletion merges; a missing parent, a quote in a model's name and an unreadable artifact
each cost one line, never the push. Real MLflow on sqlite stores, the command's own code in process
(`cli.push.main`: the same parser, error contract and output as the shell's `kerasflow push`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import assert_user_error
from test_push import _client, _experiment, _log_model, _run

from kerasflow.track import orphans


@pytest.fixture
def push(capsys, monkeypatch):
    """push(A, B, *args) -> CompletedProcess of `kerasflow push --store A --to B`."""
    from kerasflow.cli import push as command

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def run(source: Path, dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
        code = command.main(["--store", str(source), "--to", str(dest), *args])
        out = subprocess.CompletedProcess([], code, *capsys.readouterr())
        assert code == 0 or args, out.stderr[-3000:]
        return out

    return run


def _contents(folder: Path) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str]], dict]:
    """What a store holds, by identity: runs by origin -> (name, status, lifecycle) (one each, or the
    test fails), logged models by origin, versions of `cells`, its aliases."""
    from mlflow.entities import ViewType

    from kerasflow.storeops import merge

    client, _ = _client(folder)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs: dict[str, tuple[str, str, str]] = {}
    for run in client.search_runs(experiments, run_view_type=ViewType.ALL):
        key = merge.origin(run)
        assert key not in runs, f"{folder.name}: run {run.info.run_name} twice"
        runs[key] = (run.info.run_name, run.info.status, run.info.lifecycle_stage)
    models = [m.tags.get(merge.MODEL_SOURCE_TAG) or m.model_id
              for m in client.search_logged_models(experiments)]
    assert len(models) == len(set(models)), f"{folder.name}: a logged model twice"
    try:
        versions = sorted(merge._identity(v) for v in client.search_model_versions("name = 'cells'"))
        aliases = {a: merge._identity(client.get_model_version("cells", v))
                   for a, v in client.get_registered_model("cells").aliases.items()}
    except Exception:  # noqa: BLE001 - no such model in this store
        versions, aliases = [], {}
    assert len(versions) == len(set(versions)), f"{folder.name}: a version twice: {versions}"
    return runs, sorted(models), {"versions": versions, "aliases": aliases}


def test_pushes_in_a_cycle_and_a_diamond_converge_to_one_clean_push(tmp_path, push):
    """Before: push A->B, B->A, A->B, B->A left A with 6 runs and versions 1-6 of one model; A->C then
    B->C (B pulled from A) left C with 4 runs for 2 and a false alias conflict. Now every store holds
    what one clean push of A makes, however many rounds and hops."""
    a, b, c, clean = (tmp_path / n for n in ("a", "b", "c", "clean"))
    src, uri = _client(a)
    exp = _experiment(src, uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    _run(src, exp, "fold0", tmp_path, parent=cv)
    _log_model(uri, exp, "trained", 2.0, "cells", "champion")
    push(a, clean)
    want = _contents(clean)
    assert len(want[0]) == 3 and len(want[1]) == 1 and len(want[2]["versions"]) == 1
    for _ in range(4):
        push(a, b)
        push(b, a)
    assert _contents(a) == want and _contents(b) == want
    push(a, c)
    diamond = push(b, c)
    assert _contents(c) == want
    assert "0 runs copied, 0 updated, 3 unchanged" in diamond.stdout, diamond.stdout
    assert "aliases kept" not in diamond.stdout + diamond.stderr  # no false conflict


def test_a_deletion_merges_and_is_never_undone_by_a_push(tmp_path, push):
    """Before: a copy deleted in the destination came back active on the next push; a child whose parent
    was deleted at the source brought the parent back active. Now a run deleted on either side stays
    deleted on both; the child still comes, unlinked, with one warning."""
    a, b, d = tmp_path / "a", tmp_path / "b", tmp_path / "d"
    src, uri = _client(a)
    exp = _experiment(src, uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    fold = _run(src, exp, "fold0", tmp_path, parent=cv)
    other = _run(src, exp, "other", tmp_path)
    push(a, b)
    dst, _ = _client(b)
    copies = {r.data.tags[orphans.SOURCE_TAG]: r.info.run_id
              for r in dst.search_runs([dst.get_experiment_by_name("kerasflow").experiment_id])}
    dst.delete_run(copies[other])  # deleted in the destination
    again = push(a, b)
    assert _contents(b)[0][other][2] == "deleted", again.stdout
    assert "1 left deleted" in again.stdout
    back = push(b, a)  # and the deletion reaches the other side
    assert _contents(a)[0][other][2] == "deleted", back.stdout
    src.delete_run(cv)  # deleted at the source, after the child was copied
    push(a, b)
    assert _contents(b)[0][cv][2] == "deleted"
    fresh = push(a, d)  # a store that never had the parent
    runs = _contents(d)[0]
    assert cv not in runs and runs[fold] == ("fold0", "FINISHED", "active"), runs
    assert "its parent run" in fresh.stderr and "copied without its parent link" in fresh.stderr


def test_a_parent_removed_for_good_is_one_warning_and_the_child_still_copies(tmp_path, push):
    """Before: a child whose parent no longer exists (deleted, then `mlflow gc`) stopped the whole push
    with `Run ... not found`."""
    a = tmp_path / "a"
    src, uri = _client(a)
    exp = _experiment(src, uri, "kerasflow")
    cv = _run(src, exp, "cv", tmp_path)
    fold = _run(src, exp, "fold0", tmp_path, parent=cv)
    src.delete_run(cv)
    gc = subprocess.run(["mlflow", "gc", "--backend-store-uri", uri, "--tracking-uri", uri, "--run-ids", cv],
                        capture_output=True, text=True, timeout=120,
                        env={"PATH": str(Path(__import__("sys").executable).parent)})
    assert gc.returncode == 0, gc.stderr[-2000:]
    out = push(a, tmp_path / "b")
    assert _contents(tmp_path / "b")[0] == {fold: ("fold0", "FINISHED", "active")}
    assert len([line for line in out.stderr.splitlines() if cv in line]) == 1, out.stderr


def test_model_names_with_either_quote_are_pushed(tmp_path, push):
    """Before: a registered model named `ana's model` was skipped silently ("0 model versions"): the
    filter escaped the quote with a backslash, which MLflow's grammar does not take."""
    a = tmp_path / "a"
    src, uri = _client(a)
    exp = _experiment(src, uri, "kerasflow")
    names = ["ana's model", 'the "best" one', "both ' and \""]
    for i, name in enumerate(names):
        _log_model(uri, exp, f"run{i}", float(i + 1), name, "champion")
    first = push(a, tmp_path / "b")
    assert "3 model versions" in first.stdout, first.stdout
    dst, _ = _client(tmp_path / "b")
    for name in names:
        assert str(dst.get_model_version_by_alias(name, "champion").version) == "1"
    assert "0 model versions" in push(a, tmp_path / "b").stdout


def test_an_artifact_that_cannot_be_read_is_one_line_and_the_copy_still_ends(tmp_path, push):
    """Before: a symlink in a run's artifacts pointing outside the store ended the push in a traceback,
    left that run's copy RUNNING in the destination, and every rerun stopped there. Now: nothing outside
    the store is copied, one warning names the file, the copy ends FINISHED with every other file, and
    the rerun goes on (and says it again)."""
    a = tmp_path / "a"
    src, uri = _client(a)
    exp = _experiment(src, uri, "kerasflow")
    run_id = _run(src, exp, "linked", tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store\n")
    target = Path(src.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "environment" / "notes.txt"
    target.unlink()
    target.symlink_to(secret)
    out = push(a, tmp_path / "b")
    warned = [line for line in out.stderr.splitlines() if "environment/notes.txt" in line]
    assert len(warned) == 1 and "Traceback" not in out.stderr, out.stderr
    runs = _contents(tmp_path / "b")[0]
    assert runs[run_id] == ("linked", "FINISHED", "active")
    assert not [p for p in (tmp_path / "b").rglob("notes.txt")]
    written = [p for p in (tmp_path / "b").rglob("*") if p.is_file() and p.suffix != ".db"]
    assert not any("not for the store" in p.read_text(errors="replace") for p in written)
    assert "1 artifact files could not be read" in push(a, tmp_path / "b", "--full").stdout


def test_a_read_only_destination_names_push_s_own_option(tmp_path, push):
    """Before: pushing into a folder one may not write said "choose another with --store DIR", the
    option of the commands that read a store; push's destination is --to."""
    a = tmp_path / "a"
    src, uri = _client(a)
    _run(src, _experiment(src, uri, "kerasflow"), "r", tmp_path)
    out = push(a, Path("/proc/kerasflow-store"), "--experiment", "kerasflow")  # not writable, even by root
    assert_user_error(out, "is not writable", "choose another with --to DEST")
    assert "--store" not in out.stderr
