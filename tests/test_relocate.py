"""Moving a store between machines: relocation, the UI on a moved store, a real browser, kills during
relocation, pulling a store that is being written, migration off the file store, and bad input.
Every store here is written by real MLflow (tests/helpers/store_builder.py), then moved."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, free_port, require_tool

from kerasflow import files
from kerasflow.errors import UserError
from kerasflow.storeops import relocate
from kerasflow.track import store

pytestmark = pytest.mark.slow
BUILDER = str(ROOT / "tests" / "helpers" / "store_builder.py")


def build(*args: str) -> dict:
    out = subprocess.run([sys.executable, BUILDER, *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full store of each kind, written at path A (never moved; tests move copies)."""
    a = tmp_path_factory.mktemp("machine-a")
    infos = {kind: build("full", kind, str(a / kind)) for kind in ("sqlite", "file")}
    kept = a.with_name(a.name + "-kept")
    a.rename(kept)  # machine A's paths no longer exist here, as after copying to another machine
    return {kind: (kept / kind, info) for kind, info in infos.items()}


def moved_copy(built: dict, kind: str, tmp_path: Path) -> tuple[Path, dict]:
    src, info = built[kind]
    dest = tmp_path / "machine-b" / "copied-store"
    shutil.copytree(src, dest)
    return dest, info


def client(kind: str, path: Path):
    import mlflow

    uri = f"sqlite:///{path / 'mlflow.db'}" if kind == "sqlite" else str(path)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


@pytest.fixture(autouse=True)
def _restore_mlflow_uri():
    yield
    import mlflow

    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_moved_store_is_broken_silently_and_works_after_relocation(built, kind, tmp_path):
    import mlflow
    import numpy as np

    path, info = moved_copy(built, kind, tmp_path)
    c = client(kind, path)
    run_id = info["runs"]["alpha-0"]
    assert c.list_artifacts(run_id) == []  # MLflow's silent failure after a move
    with pytest.raises(Exception):  # noqa: B017 - MLflow raises various errors here
        mlflow.pyfunc.load_model("models:/cells@champion")

    report = relocate.relocate(path, dry_run=True)
    assert report.changed["runs"] == 4 and c.list_artifacts(run_id) == []  # dry run: nothing changed
    report = relocate.relocate(path)
    assert report.changed["experiments"] >= 2 and report.changed["runs"] == 4
    assert report.changed["models"] >= 2 and report.changed["versions"] == 2
    assert relocate.relocate(path).changed.total() == 0  # idempotent
    assert relocate.check(path)[1] == []

    assert {"plot.png", "notes"} <= {a.path for a in c.list_artifacts(run_id)}
    local = c.download_artifacts(run_id, "notes/readme.txt", str(tmp_path))
    assert Path(local).read_text() == "notes of alpha-0"
    for alias in ("champion", "candidate"):
        model = mlflow.pyfunc.load_model(f"models:/cells@{alias}")
        assert model.predict(np.array(info["sample_input"], np.float32)).shape[0] == 3


def start_ui(path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([str(ROOT / "run_mlflow_ui.bash"), str(path), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, port
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the UI did not start")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_ui_on_a_moved_store_serves_its_artifacts(built, kind, tmp_path):
    path, info = moved_copy(built, kind, tmp_path)
    proc, port = start_ui(path)  # relocates first
    try:
        run_id = info["runs"]["beta-1"]
        base = f"http://127.0.0.1:{port}"
        listing = json.loads(urllib.request.urlopen(
            f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={run_id}").read())
        assert "plot.png" in {f["path"] for f in listing.get("files", [])}
        body = urllib.request.urlopen(f"{base}/get-artifact?path=plot.png&run_uuid={run_id}").read()
        assert body[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop(proc)


def test_a_real_browser_finds_the_png_in_the_moved_stores_ui(built, tmp_path):
    chromium = require_tool("chromium")
    path, info = moved_copy(built, "sqlite", tmp_path)
    proc, port = start_ui(path)
    shots = ROOT / "outputs" / "test-screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    exp_id, run_id = info["experiments"]["alpha"], info["runs"]["alpha-1"]
    url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs/{run_id}/artifacts"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=25000",
             "--window-size=1400,900"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        subprocess.run([*flags, f"--screenshot={shots / 'mlflow-ui-artifacts.png'}", url],
                       capture_output=True, timeout=180, check=True)
    finally:
        stop(proc)
    assert "plot.png" in dom and "notes" in dom
    assert (shots / "mlflow-ui-artifacts.png").stat().st_size > 10_000


@pytest.mark.heavy  # stress of the atomic rewrite
def test_sigkill_at_random_moments_during_a_2000_run_relocation(tmp_path):
    pristine = tmp_path / "a" / "mlruns"
    info = build("bulk", "file", str(pristine), "2000")
    moved = tmp_path / "b" / "mlruns"
    cmd = [sys.executable, "-m", "kerasflow", "relocate"]
    shutil.copytree(pristine, moved)
    t0 = time.perf_counter()
    subprocess.run([*cmd, str(moved)], check=True, capture_output=True, cwd=ROOT)
    duration = time.perf_counter() - t0
    rng = random.Random(7)
    lo, hi = 0.0, 1.5 * duration  # narrowed towards the writing phase as kills land early or late
    interrupted = attempts = 0
    while interrupted < 10 and attempts < 60:
        attempts += 1
        shutil.rmtree(moved)
        shutil.copytree(pristine, moved)
        proc = subprocess.Popen([*cmd, str(moved)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        moment = rng.uniform(lo, hi)
        time.sleep(moment)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        values = []
        for meta in moved.rglob("meta.yaml"):
            data = yaml.safe_load(meta.read_text())  # every file is whole: old or new
            values += [v for k, v in data.items() if k in ("artifact_uri", "artifact_location")]
        old = sum(str(pristine) in v for v in values)
        if finished or old == 0:
            hi = moment
        elif old == len(values):
            lo = moment
        else:
            interrupted += 1
        result = subprocess.run([*cmd, str(moved)], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert relocate.check(moved)[1] == []
        assert not [t for meta in moved.rglob("meta.yaml") for t in files.leftover_temps(meta)]
    assert interrupted >= 10, f"only {interrupted} of {attempts} kills landed mid-relocation"
    c = client("file", moved)
    runs = c.search_runs([info["experiment"]], max_results=3000)
    assert len(runs) == 2000
    assert [a.path for a in c.list_artifacts(runs[0].info.run_id)] == ["note.txt"]






def test_migrate_a_file_store_that_mlflow_itself_cannot_migrate(built, tmp_path):
    import mlflow
    import numpy as np

    src, info = built["file"]
    raw = tmp_path / "raw" / "mlruns"
    shutil.copytree(src, raw)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    result = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "migrate-filestore", "--source",
                             str(raw), "--target", f"sqlite:///{tmp_path / 'raw.db'}", "--no-progress"],
                            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "UNIQUE constraint failed" in result.stderr
    moved = tmp_path / "b" / "mlruns"
    shutil.copytree(src, moved)
    result = subprocess.run([sys.executable, "-m", "kerasflow", "migrate", str(moved)],
                            capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "duplicate metric lines" in result.stdout
    db = moved.parent / "mlflow.db"
    c = client("sqlite", db.parent)
    run_id = info["runs"]["alpha-0"]
    assert "plot.png" in {a.path for a in c.list_artifacts(run_id)}
    model = mlflow.pyfunc.load_model("models:/cells@champion")
    assert model.predict(np.array(info["sample_input"], np.float32)).shape[0] == 3


# --- bad input: exit 2, one line, nothing changed ----------------------------------------------------

def run_relocate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kerasflow", "relocate", *args], capture_output=True,
                          text=True,
                          cwd=ROOT)


def assert_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout + result.stderr)[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_not_a_store_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_error(run_relocate(str(tmp_path / "empty")), "is empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert_error(run_relocate(str(tmp_path / "junk")), "is not an MLflow store")
    assert_error(run_relocate(str(tmp_path / "missing")), "no MLflow store at")


def test_corrupted_sqlite_and_newer_schema(built, tmp_path):
    path, _ = moved_copy(built, "sqlite", tmp_path)
    db = path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'abcdef123456'")
    before = snapshot(path)
    assert_error(run_relocate(str(path)), "was written by a newer MLflow")
    assert snapshot(path) == before
    ui = subprocess.run([str(ROOT / "run_mlflow_ui.bash"), str(path), "--port", str(free_port())],
                        capture_output=True, text=True, cwd=ROOT)
    assert_error(ui, "newer MLflow")
    db.write_bytes(b"SQLite format 3\x00" + b"\x00garbage" * 200)
    assert_error(run_relocate(str(path)), "is not a readable sqlite database")


def test_from_that_matches_nothing(built, tmp_path):
    path, _ = moved_copy(built, "file", tmp_path)
    before = snapshot(path)
    assert_error(run_relocate(str(path), "--from", "/no/such/prefix"), "--from /no/such/prefix matches no")
    assert snapshot(path) == before


def test_invalid_meta_yaml_is_named_and_nothing_changes(built, tmp_path):
    path, info = moved_copy(built, "file", tmp_path)
    bad = next(path.glob(f"*/{info['runs']['beta-1']}/meta.yaml"))
    bad.write_text("artifact_uri: [unclosed\n")
    before = snapshot(path)
    assert_error(run_relocate(str(path)), str(bad), "is not valid YAML")
    assert snapshot(path) == before


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_read_only_store(built, kind, tmp_path):
    path, _ = moved_copy(built, kind, tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(path), str(ro)], capture_output=True).returncode != 0:
        require_tool("a read-only bind mount (root)", available=False)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True)
        before = snapshot(path)
        assert_error(run_relocate(str(ro)), "is read-only")
        assert snapshot(path) == before
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_ui_refuses_missing_store_and_busy_port(tmp_path):
    import socket

    result = subprocess.run([str(ROOT / "run_mlflow_ui.bash"), str(tmp_path / "none")], capture_output=True,
                            text=True, cwd=ROOT)
    assert_error(result, "no MLflow store at")
    (tmp_path / "s").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([str(ROOT / "run_mlflow_ui.bash"), str(tmp_path / "s"), "--port", str(port)],
                                capture_output=True, text=True, cwd=ROOT)
    assert_error(result, f"port {port} on 127.0.0.1 is busy")


def test_schema_revisions_match_mlflows_own():
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert store.mlflow_schema_revisions()[1] == _get_latest_schema_revision()


def test_proxied_and_remote_locations_are_left_alone(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    store.init_sqlite(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE experiments SET artifact_location = 'mlflow-artifacts:/0'")
        conn.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage, workspace) "
                     "VALUES ('s3', 's3://bucket/x', 'active', 'default')")
    report = relocate.relocate(db.parent)
    assert report.changed.total() == 0
    assert report.skipped == {"proxied experiments": 1, "remote experiments": 1}
    with pytest.raises(UserError, match="matches no stored location"):
        relocate.relocate(db.parent, old="/elsewhere")
