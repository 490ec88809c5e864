"""`make pull` (kerasflow/storeops/pull.py): a consistent snapshot of a store (local or over SSH) that never
replaces another store, copies only a store, completes after an interruption and can be taken while the
store is written. A re-pull merges: tests/test_push.py; the laptop quickstart:
tests/test_engine_journeys.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    PY,
    ROOT,
    assert_user_error,
    bulk_store,
    client_for,
    fake_ssh,
    py,
    require_tool,
)

from kerasflow.storeops import relocate
from kerasflow.track import store

BUILDER = str(ROOT / "tests" / "helpers" / "store_builder.py")


# --- never destroys a store, copies only a store --------------------------------------------------


def count_runs(store_dir: Path) -> int:
    with sqlite3.connect(store.readonly_uri(store_dir / "mlflow.db"), uri=True) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def pull(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return py("-m", "kerasflow", "pull", *args, env=env)


@pytest.mark.slow
def test_pull_never_replaces_another_store(tmp_path):
    """`make pull` replaced the local store's mlflow.db: the runs of `make track` were gone."""
    src, dest = tmp_path / "server" / "store", tmp_path / "laptop" / "store"
    bulk_store(src, 3)
    bulk_store(dest, 2)  # the user's own runs
    assert_user_error(pull(str(src), str(dest)), "holds another store", "--force")
    assert count_runs(dest) == 2
    forced = pull(str(src), str(dest), "--force")
    assert forced.returncode == 0, forced.stderr
    backups = list(dest.parent.glob("store.backup-*"))
    assert len(backups) == 1 and count_runs(backups[0]) == 2 and count_runs(dest) == 3
    again = pull(str(src), str(dest))  # the same source again: an update, no --force needed
    assert again.returncode == 0, again.stderr
    other = tmp_path / "elsewhere" / "store"
    bulk_store(other, 1)
    assert_user_error(pull(str(other), str(dest)), "holds another store")
    assert count_runs(dest) == 3


@pytest.mark.slow
def test_pull_checks_the_source_is_a_store_before_copying(tmp_path):
    """`FROM=host:.` copied a whole home folder, ~/.ssh included, before noticing it was no store."""
    require_tool("rsync")
    home, remote_tmp, dest = tmp_path / "home", tmp_path / "remote-tmp", tmp_path / "laptop" / "store"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    remote_tmp.mkdir()
    ssh = str(fake_ssh(tmp_path))
    env = {"HOME": str(home), "TMPDIR": str(remote_tmp)}
    for source in ("me@server:.", "me@server:~"):
        assert_user_error(pull("--ssh", ssh, source, str(dest), env=env), "not an MLflow store")
    assert not dest.exists()
    assert not list(tmp_path.rglob("id_ed25519"))[1:], "the key was copied"
    bulk_store(home / "runs" / "store", 2)
    ok = pull("--ssh", ssh, "me@server:~/runs/store", str(dest), env=env)  # `~` expands on the source
    assert ok.returncode == 0, ok.stderr
    assert count_runs(dest) == 2
    assert list(remote_tmp.iterdir()) == []  # the snapshot's private folder is removed
    assert_user_error(pull("--ssh", ssh, "--", "-oProxyCommand=x:store", str(tmp_path / "d"), env=env),
                      "starts with '-'")


def test_rsync_errors_show_the_first_real_line():
    from kerasflow.storeops.pull import first_error

    text = ('rsync: [sender] change_dir "/srv/store/artifacts" failed: No such file or directory (2)\n'
            "rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n")
    assert first_error(text).startswith('rsync: [sender] change_dir "/srv/store/artifacts"')


@pytest.mark.slow
def test_an_interrupted_first_pull_completes_on_rerun(tmp_path):
    src, dest = tmp_path / "server" / "store", tmp_path / "laptop" / "store"
    bulk_store(src, 3)
    proc = subprocess.Popen([PY, "-m", "kerasflow", "pull", str(src), str(dest)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (dest / ".kerasflow-pull.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    rerun = pull(str(src), str(dest))
    assert rerun.returncode == 0, rerun.stderr
    assert count_runs(dest) == 3
    assert json.loads((dest / ".kerasflow-pull.json").read_text()) == {"source": str(src), "complete": True}


# --- a store that is being written ----------------------------------------------------------------


def _live_runs(db: Path) -> int:
    """Runs of the writer's experiment so far (0 while it has not started or the database is busy)."""
    try:
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) "
                                "WHERE experiments.name = 'live'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_pull_a_store_that_is_being_written(tmp_path):
    src = tmp_path / "server" / "store"
    bulk_store(src, 20)
    writer = subprocess.Popen([sys.executable, BUILDER, "write", str(src), "25"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ssh = fake_ssh(tmp_path)
    try:
        # the writer imports MLflow first (seconds on a busy machine): pull once it is writing runs
        deadline = time.monotonic() + 120
        while _live_runs(src / "mlflow.db") == 0:
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read()[-2000:]
            time.sleep(0.2)
        copies = []
        for i in range(3):
            dest = tmp_path / f"laptop{i}" / "store"
            source = str(src) if i % 2 == 0 else f"me@server:{src}"
            if i % 2:
                require_tool("rsync")
            result = subprocess.run([sys.executable, "-m", "kerasflow", "pull", "--ssh", str(ssh),
                                     source,
                                     str(dest)], capture_output=True, text=True, cwd=ROOT)
            assert result.returncode == 0, result.stderr[-2000:]
            copies.append(dest)
            time.sleep(1)
        assert writer.poll() is None, "the writer stopped before the pulls ended"
    finally:
        writer.wait(timeout=60)
    assert json.loads(writer.stdout.read().strip().splitlines()[-1])["written"] > 10
    counts = []
    for dest in copies:
        with sqlite3.connect(dest / "mlflow.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c = client_for(dest)
        exp = c.get_experiment_by_name("live")
        counts.append(len(c.search_runs([exp.experiment_id], max_results=50000)))
        assert relocate.check(dest)[1] == []
    assert counts == sorted(counts) and counts[-1] > counts[0]  # each copy a later consistent state
