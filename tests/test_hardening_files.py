"""Hardening of files a run writes: the data cache through interrupts, torn metadata and SIGKILLs, the
umask, the logged diff and the image keeping secret files out. Each test here failed on the code before
its fix."""


from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from helpers import (
    PY,
    ROOT,
    TINY,
    assert_user_error,
    client_for,
    py,
    require_tool,
    set_args,
)

# --- the data cache and a run's files -------------------------------------------------------------


def test_memmap_cache_survives_interrupts_and_torn_metadata(tmp_path, monkeypatch):
    """The cache wrote its JSON after the .u8 file and not atomically: a torn JSON killed every later run;
    an interrupted fill left its multi-GB temp file behind."""
    from helpers import write_png_tree

    from kerasflow import config
    from kerasflow.train.sources import image_dir

    tree = write_png_tree(tmp_path / "images", {"Parasitized": 12, "Uninfected": 12})
    cfg = config.load(None, [*TINY, "data_source=image_dir", f"image_dir={tree}", "cache_ram_mb=0",
                             f"cache_dir={tmp_path / 'cache'}"])
    real = image_dir.content_digest
    monkeypatch.setattr(image_dir, "content_digest", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        image_dir.load(cfg)
    assert list((tmp_path / "cache").iterdir()) == []  # no temp file, nothing published
    monkeypatch.setattr(image_dir, "content_digest", real)
    first = image_dir.load(cfg)
    published = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert published == [".json", ".u8"]
    meta = next((tmp_path / "cache").glob("*.json"))
    meta.write_text(meta.read_text()[:20])  # torn by a kill of an older version
    again = image_dir.load(cfg)
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
    from kerasflow.train import envinfo

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
    from kerasflow.train import envinfo

    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert all(f"**/{pattern}" in ignored for pattern in envinfo.SECRET_NAMES)
    # ... and none of the project's own files looks like one (kerasflow/secrets.py once fell out of the
    # image and out of every logged diff)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked and not [f for f in tracked if envinfo.looks_secret(f)]


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


FILL_AFTER_EPOCHS = """
set -euo pipefail
mount -t tmpfs -o size=4m tmpfs "$DISK"
run() { "$PY" train.py "${SETS[@]}" 2>> "$KEEP/stderr.$1"; }
run first & pid=$!
until [ "$(cat "$DISK/out/full/history.jsonl" 2> /dev/null | wc -l)" -ge "$EPOCHS_BEFORE_FULL" ]; do
  kill -0 "$pid" 2> /dev/null || break
  sleep 0.005
done
avail="$(df -B1 --output=avail "$DISK" | tail -n 1)"
fallocate -l "$((avail - 8192))" "$DISK/filler"  # two pages left: a history row fits, weights do not
status=0; wait "$pid" || status=$?
echo "$status" > "$KEEP/status.first"
rm "$DISK/filler"
status=0; run rerun || status=$?
echo "$status" > "$KEEP/status.rerun"
cp -r "$DISK/out" "$KEEP/out"
"""


def _in_a_private_tmpfs(script: str, sets: list[str], env: dict[str, str]) -> None:
    """Run `script` (bash, with SETS=(the --set args)) in a mount namespace of the test's own, where it
    mounts a small tmpfs on $DISK; $KEEP is outside it. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("a private tmpfs needs root (CI runs as root)")
    require_tool("unshare")
    script = "SETS=(" + " ".join(f"'{a}'" for a in set_args(sets)) + ")\n" + script
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path):
    """Before: h5py's RuntimeError (errno 28) escaped Keras' OSError-only fallback: a traceback, exit 1,
    and `latest.weights.h5`, written in place, was torn, so the rerun after freeing space died on it.
    Now a checkpoint is whole or absent (AtomicBackupAndRestore), the full disk is one line with exit
    2, and the rerun resumes from the last whole checkpoint. The disk is a 4 MB tmpfs in a mount
    namespace of the test's own, filled once the run has finished 2 epochs."""
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    sets = [*TINY, "synthetic_examples=600", "epochs=6", f"output_dir={disk / 'out'}", "run_name=full",
            f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "DISK": str(disk), "KEEP": str(keep), "PY": PY, "EPOCHS_BEFORE_FULL": "2"}
    _in_a_private_tmpfs(FILL_AFTER_EPOCHS, sets, env)
    first = (keep / "stderr.first").read_text()
    assert (keep / "status.first").read_text().strip() == "2", first[-3000:]
    assert "error: no space left" in first and "Traceback" not in first, first[-3000:]
    rerun = (keep / "stderr.rerun").read_text()
    assert (keep / "status.rerun").read_text().strip() == "0", rerun[-3000:]
    assert "(resuming)" in rerun
    history = json.loads((keep / "out" / "full" / "history.json").read_text())
    assert history["epoch"] == list(range(6))  # every epoch once: none lost, none run twice
    assert (keep / "out" / "full" / "model.keras").is_file()


FILL_STORE_AFTER_EPOCHS = """
set -u
mount -t tmpfs -o size=8m tmpfs "$DISK"
run() { "$PY" train_mlflow.py --store "$DISK/store" "${SETS[@]}" 2>> "$KEEP/stderr.$1"; }
run first & pid=$!
until [ "$(cat "$KEEP/out/full/history.jsonl" 2> /dev/null | wc -l)" -ge 2 ]; do
  kill -0 "$pid" 2> /dev/null || break
  sleep 0.005
done
avail="$(df -B1 --output=avail "$DISK" | tail -n 1)"
fallocate -l "$avail" "$DISK/filler" || true
status=0; wait "$pid" || status=$?
echo "$status" > "$KEEP/status.first"
rm "$DISK/filler"
status=0; "$PY" -m kerasflow runs --store "$DISK/store" > "$KEEP/runs.out" 2> "$KEEP/stderr.runs" || status=$?
echo "$status" > "$KEEP/status.runs"
status=0; run rerun || status=$?
echo "$status" > "$KEEP/status.rerun"
cp -r "$DISK/store" "$KEEP/store"
"""


@pytest.mark.slow
def test_a_full_store_mid_run_is_one_line_and_the_run_is_not_left_running(tmp_path):
    """Before: a store that filled up mid-run ended the run in a traceback (MLflow's "database or disk
    is full"), and its MLflow run stayed RUNNING for good, since ending it needed a write too. Now the
    training goes on (the epochs are in the run folder), the end is one line naming the run folder and
    the rerun, the next command that opens the store (here `kerasflow runs`) marks the run FAILED (its
    process is gone), and the rerun ends that same run FINISHED with every epoch once. The store is an
    8 MB tmpfs in a mount namespace of the test's own, filled after epoch 2; the run folder is elsewhere."""
    disk, keep = tmp_path / "disk", tmp_path / "keep"
    disk.mkdir()
    keep.mkdir()
    sets = [*TINY, "synthetic_examples=600", "epochs=5", f"output_dir={keep / 'out'}", "run_name=full",
            f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "DISK": str(disk), "KEEP": str(keep), "PY": PY}
    env.pop("MLFLOW_TRACKING_URI", None)
    _in_a_private_tmpfs(FILL_STORE_AFTER_EPOCHS, sets, env)
    first = (keep / "stderr.first").read_text()
    assert_user_error(subprocess.CompletedProcess([], int((keep / "status.first").read_text()), "", first),
                      "store is full", str(keep / "out" / "full"), "run_name=full")
    history = json.loads((keep / "out" / "full" / "history.json").read_text())
    assert history["epoch"] == list(range(5))  # training went on, every epoch once
    runs = (keep / "stderr.runs").read_text()
    assert (keep / "status.runs").read_text().strip() == "0", runs[-3000:]
    assert "run 'full'" in runs and "marked FAILED" in runs, runs[-3000:]
    assert "FAILED" in (keep / "runs.out").read_text()
    rerun = (keep / "stderr.rerun").read_text()
    assert (keep / "status.rerun").read_text().strip() == "0", rerun[-3000:]
    c = client_for(keep / "store")
    [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
    assert run.info.status == "FINISHED"
    for metric in ("loss", "val_accuracy", "test_accuracy"):
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, metric))
        assert steps == ([0] if metric.startswith("test_") else list(range(5))), (metric, steps)
