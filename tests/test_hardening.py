"""Hardening: the one `mlflow server` command, stores opened by several processes at once, paths that
a URL would misread, pulls that must not destroy data, writes that survive kills, secrets kept out of
logs, and runs never left RUNNING. Each test here failed on the code before its fix."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    TINY,
    assert_user_error,
    client_for,
    fake_ssh,
    free_port,
    require_tool,
    set_args,
    wait_http,
)

from kerasflow import files
from kerasflow.track import store

PY = sys.executable


def py(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
       cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


# --- one `mlflow server` command line ------------------------------------------------------------------


def test_every_server_is_started_by_the_one_module():
    """The Makefile, the driver, the UI and the notebook's server all go through storeops.server."""
    for path in ("Makefile", "project_driver.bash", "run_mlflow_ui.bash", "docker/lib.bash"):
        code = [line for line in (ROOT / path).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r"mlflow\S*\s+(server|ui)\b", line)], path
    for path in (ROOT / "kerasflow").rglob("*.py"):
        if path.name != "server.py" and path != ROOT / "kerasflow" / "cli" / "main.py":  # the command table
            assert not re.search(r"""["'](server|ui)["']""", path.read_text()), path
    assert "-m kerasflow server " in (ROOT / "Makefile").read_text()
    assert "-m kerasflow server " in (ROOT / "project_driver.bash").read_text()


def test_the_compose_servers_flags_are_the_builders(tmp_path):
    """docker/compose.yaml cannot import the builder: its flags are held to it (same flags, same host and
    origin rules); only what a container needs differs (PostgreSQL, /artifacts, 0.0.0.0, the service name)."""
    import yaml

    from kerasflow.storeops import server

    cmd, _ = server.command(tmp_path / "store", 5000)
    built = dict(zip(cmd[2::2], cmd[3::2], strict=True))  # mlflow server --flag value ...
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["mlflow"]["command"]
    flags = dict(item.split("=", 1) for item in compose)
    assert set(flags) == set(built), (flags, built)
    assert flags["--allowed-hosts"].split(",")[:len(server.ALLOWED_HOSTS)] == list(server.ALLOWED_HOSTS)
    assert flags["--cors-allowed-origins"] == built["--cors-allowed-origins"]
    assert flags["--port"] == built["--port"]


@pytest.mark.slow
def test_server_on_a_new_store_checks_host_headers_and_proxies_artifacts(tmp_path):
    port = free_port()
    new = tmp_path / "new store"
    proc = subprocess.Popen([PY, "-m", "kerasflow", "server", str(new), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc=proc)
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
        with urllib.request.urlopen(search, timeout=10) as r:
            exps = json.load(r)["experiments"]
        assert exps[0]["artifact_location"] == str(new / "artifacts" / "0")  # inside the store
        forged = urllib.request.Request(search, headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 403  # DNS rebinding: only 127.0.0.1/localhost names are served
        # a forward to another local port (`ssh -L 5001:127.0.0.1:PORT`, VS Code): its Host is served
        for host in ("localhost:5001", "127.0.0.1:61234"):
            forwarded = urllib.request.Request(search, headers={"Host": host})
            with urllib.request.urlopen(forwarded, timeout=10) as r:
                assert r.status == 200, host
        for host in ("attacker.example:5001", "192.168.1.7:5001", "localhost.attacker.example:5001"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(search, headers={"Host": host}), timeout=10)
            assert refused.value.code == 403, host
        import mlflow

        client = mlflow.MlflowClient(url)
        exp = client.create_experiment("proxied")
        run = client.create_run(exp)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (new / "mlflow.db").is_file()


def test_server_refuses_bad_ports_and_non_stores(tmp_path):
    assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", "70000"), "out of range")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", str(busy)), "busy")
    (tmp_path / "notes.txt").write_text("not a store")
    assert_user_error(py("-m", "kerasflow", "server", str(tmp_path), "--port", str(free_port())),
                      "not an MLflow store")
    assert not (tmp_path / "mlflow.db").exists()


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


# --- pull: never destroys a store, copies only a store ---------------------------------------------

BUILDER = str(ROOT / "tests" / "helpers" / "store_builder.py")


def bulk(path: Path, n: int, kind: str = "sqlite") -> None:
    out = py(BUILDER, "bulk", kind, str(path), str(n))
    assert out.returncode == 0, out.stderr[-3000:]


def count_runs(store_dir: Path) -> int:
    with sqlite3.connect(store.readonly_uri(store_dir / "mlflow.db"), uri=True) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def pull(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return py("-m", "kerasflow", "pull", *args, env=env)


@pytest.mark.slow
def test_pull_never_replaces_another_store(tmp_path):
    """`make pull` replaced the local store's mlflow.db: the runs of `make track` were gone."""
    src, dest = tmp_path / "server" / "store", tmp_path / "laptop" / "store"
    bulk(src, 3)
    bulk(dest, 2)  # the user's own runs
    assert_user_error(pull(str(src), str(dest)), "holds another store", "--force")
    assert count_runs(dest) == 2
    forced = pull(str(src), str(dest), "--force")
    assert forced.returncode == 0, forced.stderr
    backups = list(dest.parent.glob("store.backup-*"))
    assert len(backups) == 1 and count_runs(backups[0]) == 2 and count_runs(dest) == 3
    again = pull(str(src), str(dest))  # the same source again: an update, no --force needed
    assert again.returncode == 0, again.stderr
    other = tmp_path / "elsewhere" / "store"
    bulk(other, 1)
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
    bulk(home / "runs" / "store", 2)
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
    bulk(src, 3)
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


# --- writes that survive a full disk and kills -----------------------------------------------------


@pytest.mark.slow
def test_relocation_on_a_full_disk_changes_nothing_and_says_so(tmp_path):
    """Relocation ignored short writes and renamed truncated meta.yaml files into place; now every file
    is whole (old or new), the error is one line, and the rerun completes the job."""
    import shutil

    built = tmp_path / "a" / "store"
    bulk(built, 20, kind="file")
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


def test_memmap_cache_survives_interrupts_and_torn_metadata(tmp_path, monkeypatch):
    """The cache wrote its JSON after the .u8 file and not atomically: a torn JSON killed every later run;
    an interrupted fill left its multi-GB temp file behind."""
    from helpers import write_png_tree

    from kerasflow import config
    from kerasflow.train import sources

    tree = write_png_tree(tmp_path / "images", {"Parasitized": 12, "Uninfected": 12})
    cfg = config.load(None, [*TINY, "data_source=image_dir", f"image_dir={tree}", "cache_ram_mb=0",
                             f"cache_dir={tmp_path / 'cache'}"])
    real = sources.content_digest
    monkeypatch.setattr(sources, "content_digest", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        sources.load_image_dir(cfg)
    assert list((tmp_path / "cache").iterdir()) == []  # no temp file, nothing published
    monkeypatch.setattr(sources, "content_digest", real)
    first = sources.load_image_dir(cfg)
    published = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert published == [".json", ".u8"]
    meta = next((tmp_path / "cache").glob("*.json"))
    meta.write_text(meta.read_text()[:20])  # torn by a kill of an older version
    again = sources.load_image_dir(cfg)
    assert again.digest == first.digest and (again.images == first.images).all()
    json.loads(meta.read_text())  # rebuilt whole


def test_run_outputs_follow_the_umask(tmp_path):
    """config.yaml, history.json and metrics.json were 0600 (mkstemp) while the PNGs were 0644."""
    out = tmp_path / "outputs"
    shrunk = set_args([*TINY, f"output_dir={out}", f"cache_dir={tmp_path / 'c'}", "run_name=shared"])
    result = subprocess.run([PY, "train.py", *shrunk], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            preexec_fn=lambda: os.umask(0o002))
    assert result.returncode == 0, result.stderr[-3000:]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (out / "shared").iterdir() if p.is_file()}
    assert {"config.yaml", "history.json", "metrics.json", "model.keras"} <= modes.keys()
    assert set(modes.values()) == {0o664}, modes


# --- secrets --------------------------------------------------------------------------------------


def test_logged_diff_leaves_out_secret_files_caps_its_size_and_says_so(tmp_path):
    from kerasflow.track import envinfo

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    files = {"config.yaml": "epochs: 1\n", ".env": "TOKEN=a\n", "deploy.pem": "-----\n", "api_key.txt": "k\n",
             "zbig.txt": "x\n"}
    for name, text in files.items():
        (repo / name).write_text(text)
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    (repo / "config.yaml").write_text("epochs: 2\n")
    (repo / ".env").write_text("TOKEN=the-real-secret\n")
    (repo / "deploy.pem").write_text("PRIVATE\n")
    (repo / "api_key.txt").write_text("sk-live\n")
    (repo / "zbig.txt").write_text("y" * 80 + "\n" * 1 + ("z" * 99 + "\n") * 12000)
    (repo / "notes.txt").write_text("untracked\n")
    state = envinfo.git_state(repo)
    assert "+epochs: 2" in state["diff"]
    assert not [s for s in ("the-real-secret", "PRIVATE", "sk-live") if s in state["diff"]]
    assert sorted(state["skipped"]) == [".env", "api_key.txt", "deploy.pem"]
    assert state["capped"] > envinfo.MAX_DIFF_BYTES >= len(state["diff"].encode())
    assert state["untracked"] == ["notes.txt"]


def test_dockerignore_keeps_the_same_secret_files_out_of_the_image():
    from kerasflow.track import envinfo

    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert all(f"**/{pattern}" in ignored for pattern in envinfo.SECRET_NAMES)
    # ... and none of the project's own files looks like one (kerasflow/secrets.py once fell out of the
    # image and out of every logged diff)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked and not [f for f in tracked if envinfo.looks_secret(f)]


def test_credentials_never_show_and_reach_mlflow_as_its_variables(monkeypatch):
    from kerasflow import urlauth

    assert urlauth.redact("postgresql://kf:s3cr%40t@db:5432/optuna") == "postgresql://kf:***@db:5432/optuna"
    assert urlauth.redact("http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa%3Ass@127.0.0.1:5000/")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert store.tracking_uri() == "http://127.0.0.1:5000/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pa:ss"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000/"


def test_a_wrong_kind_of_tracking_uri_is_one_line(tmp_path):
    result = py("train_mlflow.py", *set_args(TINY), env={"MLFLOW_TRACKING_URI": "ftp://user:hunter2@example/x"})
    assert_user_error(result, "neither an http(s) server nor a sqlite database", "ftp://example/x")
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.slow
def test_basic_auth_server_takes_a_real_login_and_refuses_a_wrong_one(tmp_path, monkeypatch):
    import base64

    new, port = tmp_path / "team store", free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    first = subprocess.run([PY, "-m", "kerasflow", "server", str(new), "--port", str(port), "--auth"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(first, "MLFLOW_AUTH_ADMIN_PASSWORD")
    proc = subprocess.Popen([PY, "-m", "kerasflow", "server", str(new), "--port", str(port), "--auth"],
                            cwd=ROOT, env={**env, "MLFLOW_AUTH_ADMIN_PASSWORD": "Adm1n-pass-for-tests"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        wait_http(f"{url}/health", proc=proc)

        def status(user: str | None, password: str = "") -> int:
            headers = {}
            if user:
                headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            try:
                with urllib.request.urlopen(urllib.request.Request(api, headers=headers), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert status(None) == 401
        assert status("admin", "wrong") == 401
        assert status("admin", "Adm1n-pass-for-tests") == 200
        # our own check (every command runs it before training) logs in the way MLflow's client does
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:Adm1n-pass-for-tests@127.0.0.1:{port}")
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        store.check_backend(store.tracking_uri())
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        from kerasflow.errors import UserError

        with pytest.raises(UserError, match="refused the login"):
            store.check_backend(store.tracking_uri())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ini = new / "auth" / "basic_auth.ini"
    assert ini.stat().st_mode & 0o777 == 0o600 and (new / "auth" / "basic_auth.db").is_file()
    assert "Adm1n-pass" not in ini.read_text()


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


@pytest.mark.slow
def test_serve_loads_only_keras_models_unless_told(tmp_path):
    """A pulled store is data from another machine: a pickled pyfunc model runs its code when loaded."""
    code = """
import sys, mlflow
from kerasflow.track import store, tracking
class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input
with store.open_store(sys.argv[1]) as uri:
    mlflow.set_experiment(experiment_id=tracking.experiment_id(mlflow.MlflowClient(), uri, "e"))
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="m", python_model=Echo(), registered_model_name="pickled")
"""
    made = py("-c", code, str(tmp_path / "store"))
    assert made.returncode == 0, made.stderr[-2000:]
    refused = py("-m", "kerasflow", "serve", "models:/pickled/1", "--store", str(tmp_path / "store"),
                 "--port", str(free_port()))
    assert_user_error(refused, "not a Keras model", "--any-flavor")


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


LOAD = """
import sys
from kerasflow import config
from kerasflow.train import data
examples = data.load_examples(config.load(None, sys.argv[1:]))
print(examples.digest, int(examples.images.astype("int64").sum()), len(examples))
"""


@pytest.mark.heavy  # stress of the cache's atomic fill
@pytest.mark.slow
def test_sigkill_at_seeded_moments_while_the_cache_is_built(tmp_path):
    """A kill between the .u8 and its JSON left a cache entry that killed every later run."""
    import random
    import shutil

    from helpers import write_png_tree

    tree = write_png_tree(tmp_path / "images", {"Parasitized": 150, "Uninfected": 150}, size=64)
    cache = tmp_path / "cache"
    args = [*TINY, "data_source=image_dir", f"image_dir={tree}", "cache_ram_mb=0", f"cache_dir={cache}",
            "image_size=64"]
    t0 = time.monotonic()
    reference = py("-c", LOAD, *args)
    full = time.monotonic() - t0
    assert reference.returncode == 0, reference.stderr[-2000:]
    rng = random.Random(13)
    for moment in sorted(rng.uniform(0.3 * full, full) for _ in range(3)):
        shutil.rmtree(cache)
        proc = subprocess.Popen([PY, "-c", LOAD, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.kill()
        proc.wait()
        for u8 in cache.glob("*.u8"):  # a published entry always has its whole metadata beside it
            json.loads(u8.with_suffix(".json").read_text())
        again = py("-c", LOAD, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        assert again.stdout == reference.stdout
        assert not list(cache.glob("*.tmp*")), "a killed fill's temp file was left behind"
