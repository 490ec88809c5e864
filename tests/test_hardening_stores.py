"""Hardening of stores: paths a database URL would misread, several processes creating one store, a
locked or half-migrated store, relocation on a full disk and past
symlinks, bad input in one line with nothing created. Each test here failed on the code before its fix."""


from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest
from helpers import (
    PY,
    ROOT,
    TINY,
    assert_user_error,
    bulk_store,
    client_for,
    free_port,
    py,
    set_args,
    wait_http,
)

from kerasflow import files
from kerasflow.track import store

# --- paths a database URL would misread ------------------------------------------------------------


def test_store_paths_with_url_syntax_are_refused_in_one_line(tmp_path):
    for name in ("a?b", "x%3Fy"):
        result = py("train_mlflow.py", "--store", str(tmp_path / name), *set_args(TINY))
        assert_user_error(result, "reads as syntax", "rename")
        assert not (tmp_path / name).exists()  # nothing created: not the folder, not a stray database
        assert not (tmp_path / "a").exists()


def test_readonly_uri_opens_exactly_that_file(tmp_path):
    """`file:{path}?mode=ro` opened a different file for paths with '#', '?' or '%'."""
    for name in ("we#ird", "what?", "pc%41t", "sp ace"):
        folder = tmp_path / name
        folder.mkdir()
        with sqlite3.connect(folder / "x.db") as conn:
            conn.execute("CREATE TABLE marker (v)")
            conn.execute("INSERT INTO marker VALUES (?)", (name,))
        with sqlite3.connect(store.readonly_uri(folder / "x.db"), uri=True) as conn:
            assert conn.execute("SELECT v FROM marker").fetchone()[0] == name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["we#ird", "what?", "pc%41t", "sp ace"])


# --- several processes on one new store ---------------------------------------------------------------

OPEN_AND_LOG = """
import sys, mlflow
from kerasflow.track import store, tracking
with store.open_store(sys.argv[1]) as uri:
    client = mlflow.MlflowClient()
    run = client.create_run(tracking.experiment_id(client, uri, "race"))
    client.log_metric(run.info.run_id, "m", 1.0)
    client.set_terminated(run.info.run_id)
"""


@pytest.mark.heavy  # stress of the store lock
@pytest.mark.slow
def test_processes_of_different_kinds_create_one_store_at_once(tmp_path):
    """Before the lock, MLflow's first migration run by several processes crashed them all and left
    `_alembic_tmp_*` tables behind: no command could open the store again."""
    new = tmp_path / "store"
    port = free_port()
    procs = [subprocess.Popen([PY, "-c", OPEN_AND_LOG, str(new)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    shrunk = set_args([*TINY, f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'c'}"])
    procs.append(subprocess.Popen([PY, "train_mlflow.py", "--store", str(new), *shrunk],
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True))
    server = subprocess.Popen([PY, "-m", "kerasflow", "server", str(new), "--port", str(port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
    finally:
        server.terminate()
        server.wait(timeout=30)
    client = client_for(new)
    race = client.get_experiment_by_name("race")
    assert len(client.search_runs([race.experiment_id])) == 4
    trained = client.search_runs([client.get_experiment_by_name("kerasflow").experiment_id])
    assert [r.info.status for r in trained] == ["FINISHED"]
    assert not list(new.glob(".mlflow.db.new-*"))


def test_half_migrated_store_is_named_with_the_fix(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    store.init_sqlite(store.sqlite_uri(db))
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE _alembic_tmp_tags (x)")
    result = py("train_mlflow.py", "--store", str(db.parent), *set_args(TINY))
    assert_user_error(result, "half-migrated", "backup")


def test_a_locked_store_is_not_called_corrupt(tmp_path, monkeypatch):
    db = tmp_path / "store" / "mlflow.db"
    store.init_sqlite(store.sqlite_uri(db))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        import sqlite3 as real

        connect = real.connect
        monkeypatch.setattr(store.sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.2}))
        from kerasflow.errors import UserError

        with pytest.raises(UserError, match="locked by another process"):
            store.check_sqlite_schema(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


















# --- writes that survive a full disk and kills -----------------------------------------------------


@pytest.mark.slow
def test_relocation_on_a_full_disk_changes_nothing_and_says_so(tmp_path):
    """Relocation ignored short writes and renamed truncated meta.yaml files into place; now every file
    is whole (old or new), the error is one line, and the rerun completes the job."""
    import shutil

    built = tmp_path / "a" / "store"
    bulk_store(built, 20, kind="file")
    moved = tmp_path / "b" / "a-much-longer-folder-name" / "store"
    moved.parent.mkdir(parents=True)
    shutil.move(built, moved)
    before = {p: p.read_bytes() for p in moved.rglob("meta.yaml")}
    limit = sorted(len(b) for b in before.values())[len(before) // 2]  # some writes fit, some do not
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2); "
            "from kerasflow.cli import relocate; sys.exit(relocate.main([sys.argv[1]]))")
    assert_user_error(py("-c", code, str(moved), str(limit)), "no space left", "free disk space")
    import yaml

    after = {p: p.read_bytes() for p in moved.rglob("meta.yaml")}
    assert after.keys() == before.keys()
    rewritten = [p for p in after if after[p] != before[p]]
    assert len(rewritten) < len(before)  # the limit stopped it part-way
    for p in rewritten:  # each file is the old one or the whole new one, never a truncated one
        assert yaml.safe_load(after[p])["artifact_uri" if "artifact_uri" in str(after[p]) else
                                        "artifact_location"].startswith(str(moved))
    assert not [t for meta in moved.rglob("meta.yaml") for t in files.leftover_temps(meta)]
    rerun = py("-m", "kerasflow", "relocate", str(moved))
    assert rerun.returncode == 0, rerun.stderr
    from kerasflow.storeops import relocate

    assert relocate.check(moved)[1] == []


def test_relocation_does_not_follow_symlinks_out_of_the_store(tmp_path):
    from kerasflow.storeops import relocate

    outside = tmp_path / "outside" / "7"
    outside.mkdir(parents=True)
    (outside / "meta.yaml").write_text("artifact_location: /old/place/7\nexperiment_id: '7'\nname: x\n")
    root = tmp_path / "store"
    (root / "0").mkdir(parents=True)
    (root / "0" / "meta.yaml").write_text(f"artifact_location: {tmp_path}/old/store/0\nexperiment_id: '0'\n"
                                          "name: Default\n")
    (root / "7").symlink_to(outside)
    relocate.relocate(root)
    assert (outside / "meta.yaml").read_text().startswith("artifact_location: /old/place/7")
    assert f"artifact_location: {root}/0" in (root / "0" / "meta.yaml").read_text()


def test_check_reports_locations_outside_the_store(tmp_path):
    from kerasflow.storeops import relocate

    root = tmp_path / "store"
    (root / "0").mkdir(parents=True)
    (root / "0" / "meta.yaml").write_text(f"artifact_location: {root}/0\nexperiment_id: '0'\nname: Default\n")
    (root / "1").mkdir()
    (root / "1" / "meta.yaml").write_text("artifact_location: /etc\nexperiment_id: '1'\nname: evil\n")
    assert relocate.outside(root) == ["/etc"]
    out = py("-m", "kerasflow", "relocate", str(root), "--check")
    assert "1 artifact locations point outside the store, e.g. /etc" in out.stdout, out.stdout + out.stderr


# --- bad input: one line, exit 2, nothing created ---------------------------------------------------


def test_a_typod_store_is_never_created_by_commands_that_only_read(tmp_path):
    typo = tmp_path / "stroe"
    for args in (["-m", "kerasflow", "serve", "models:/demo@candidate", "--store", str(typo)],
                 ["-m", "kerasflow", "promote", "--store", str(typo), "demo"],
                 ["-m", "kerasflow", "runs", "--store", str(typo)]):
        assert_user_error(py(*args), "no MLflow store at", "STORE")
        assert not typo.exists(), args


def test_names_that_escape_their_folder_and_impossible_numbers(tmp_path):
    for name in ("../up", "a/b", ".hidden", "x" * 101):
        result = py("train.py", *set_args([*TINY, f"run_name={name}", f"output_dir={tmp_path}"]))
        assert_user_error(result, "run_name", "names a folder")
    assert list(tmp_path.iterdir()) == []
    tune = ("-m", "kerasflow", "tune", "--store", str(tmp_path / "s"))
    assert_user_error(py(*tune, "--study", "../x"), "--study")
    assert_user_error(py(*tune, "--grace", "0"), "--grace")
    assert_user_error(py("-m", "kerasflow", "serve", "models:/d@c", "--port", "0"), "out of range")


def test_files_where_folders_belong_and_prefixes_that_would_rewrite_everything(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_user_error(py("train_mlflow.py", "--store", str(afile), *set_args(TINY)), "is a file", "--store")
    assert_user_error(py("-m", "kerasflow", "server", str(afile), "--port", str(free_port())),
                      "not a sqlite database")
    root = tmp_path / "store"
    (root / "0").mkdir(parents=True)
    (root / "0" / "meta.yaml").write_text("artifact_location: /old/store/0\nexperiment_id: '0'\nname: D\n")
    for prefix in ("/", "", "relative/dir"):
        assert_user_error(py("-m", "kerasflow", "relocate", str(root), "--from", prefix), "--from",
                          "not '/'")
    assert "/old/store/0" in (root / "0" / "meta.yaml").read_text()


def test_two_relocations_of_one_store_at_once_both_succeed(tmp_path):
    """Two `kerasflow relocate` (or two `make ui`, which relocate first) of one store at once: before the
    store's operation lock, one deleted the other's temp files as leftovers of a killed run, and both
    died with a traceback, leaving runs with old paths. Now the second waits and finds nothing to do."""
    from kerasflow import files
    from kerasflow.storeops import relocate

    old, root, runs = "/old/place/mlruns", tmp_path / "mlruns", 3000
    (root / "1").mkdir(parents=True)
    (root / "1" / "meta.yaml").write_text(f"artifact_location: file://{old}/1\nexperiment_id: '1'\nname: x\n")
    for i in range(runs):
        run = root / "1" / f"{i:032x}"
        run.mkdir()
        (run / "meta.yaml").write_text(f"artifact_uri: file://{old}/1/{i:032x}/artifacts\nrun_id: '{i}'\n")
    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([PY, "-m", "kerasflow", "relocate", str(root)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    first = start()
    experiment = root / "1" / "meta.yaml"  # the first file of the plan
    deadline = time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline and str(root) not in experiment.read_text():
        time.sleep(0.005)  # the second starts while the first is writing
    procs = [first, start()]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    values = [v for _, v in relocate.stored_locations(root)]
    assert len(values) == runs + 1 and all(v.startswith(f"file://{root}/1") for v in values), values[:3]
    assert not [t for meta in root.rglob("meta.yaml") for t in files.leftover_temps(meta)]
