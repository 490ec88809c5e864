"""The traps a newcomer following the README met first (issue: the three user journeys), each fixed:
`make run` checks in the foreground before it detaches or builds; `make help` is grouped and fits a
terminal; the driver's --help is whole; the image's env wins over a host .venv in the checkout; the
light env runs every store command (tqdm included). The journeys themselves: tests/test_journeys.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error, free_port
from helpers.stand_ins import calls, script

from kerasflow import config, preflight
from kerasflow.launch import run
from kerasflow.storeops import server

# --- make run: the foreground checks ----------------------------------------------------------------------


def driver(sb: dict, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    return script(sb, "project_driver.bash", *args, KERASFLOW_PYTHON=str(venv_bin / "python"), PORT="1",
                  **env)


def test_a_detached_run_without_its_dataset_fails_in_the_foreground_before_building(sandbox):
    """Before: `make run ARGS=--detach` with the default config and no data exited 0; the image was
    built (8 GB) in tmux, and the missing dataset surfaced only in logs/NAME.log."""
    result = driver(sandbox, "--detach", "--name", "nodata")
    assert_user_error(result, "TFDS malaria is not in", "make data", "data_source=synthetic")
    assert not calls(sandbox, "build") and not calls(sandbox, "run")
    assert "started 'nodata' in tmux" not in result.stdout
    # an image folder that is not there, and a /data path without DATA: named, with the fix
    assert_user_error(driver(sandbox, "--detach", "-P", "data_source=image_dir", "-P", "image_dir=cells"),
                      "is not a folder", "image_dir")
    assert_user_error(driver(sandbox, "--detach", "-P", "tfds_data_dir=/data/tfds"), "DATA is not set")
    # a wrong value is refused by the config, here too, not in the container
    assert_user_error(driver(sandbox, "--detach", "-P", "epochs=many"), "epochs")


@pytest.mark.slow
def test_two_make_runs_started_in_one_second_get_two_names(sandbox):
    """Before: both took ENTRY-TIME, so the second found the first's tmux session (or slot, log and
    container name) and was refused. Now the automatic name is claimed by creating its log exclusively.
    (A stand-in tmux records the sessions; the real detached flow runs in test_engine_make_run.)"""
    tmux = sandbox["bin"] / "tmux"
    tmux.unlink(missing_ok=True)
    tmux.write_text('#!/bin/sh\n[ "$1" = new-session ] && echo "$4" >> "$FAKE_DOCKER_DIR/sessions"; '
                    '[ "$1" != has-session ]\n')
    tmux.chmod(0o755)
    venv_bin = Path(sys.executable).parent
    # GPU=off: one slot per run name, so the two are not refused by the one-run-per-GPU lock (which one
    # of two same-second runs on one GPU gets the slot is a race; CI saw either)
    env = {**sandbox["env"], "KERASFLOW_PYTHON": str(venv_bin / "python"), "KF_PREFLIGHT_DONE": "1",
           "GPU": "off"}
    procs = [subprocess.Popen([str(sandbox["repo"] / "project_driver.bash"), "--detach"], cwd=sandbox["repo"],
                              env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    try:  # (each makes its MLflow run before it detaches: the store's server is started once, for both)
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        server.stop(Path(env["STORE"]))
    assert [p.returncode for p in procs] == [0, 0], outs
    names = sorted(re.search(r"started '([^']+)'", out).group(1) for out, _ in outs)
    assert names[0] != names[1], names  # main-TIME and main-TIME-2 (or two seconds' names)
    sessions = (sandbox["state"] / "sessions").read_text().split()
    assert len(set(sessions)) == 2
    runs = sorted(p.stem for p in Path(sandbox["env"]["LOGS"]).glob("*.log") if p.stem != "mlflow-server")
    assert runs == names


def test_no_engine_or_no_gpu_runtime_fails_before_detaching(sandbox):
    down = driver(sandbox, "--detach", "-P", "data_source=synthetic", FAKE_DOCKER_DAEMON="down")
    assert_user_error(down, "the Docker daemon is not reachable", "systemctl start docker")
    no_gpu = driver(sandbox, "--detach", "-P", "data_source=synthetic", GPU="on")
    assert_user_error(no_gpu, "GPU=on but no NVIDIA container runtime", "nvidia-container-toolkit", "GPU=off")
    assert not calls(sandbox, "build")


def test_the_first_build_is_announced_with_its_time_and_size(sandbox, tmp_path, monkeypatch):
    """The image does not exist: the user learns in the foreground that the run builds it, and how big."""
    checks = preflight.image("kerasflow:abc-u1.1", present=False)
    assert checks.status == preflight.NOTE and "8.1 GB" in checks.line and "minutes" in checks.line
    # make run's checks, on a stand-in engine that has no image yet
    for key, value in {**sandbox["env"], "GPU": "off"}.items():
        monkeypatch.setenv(key, value)
    notes: list[str] = []
    request = run.Request(root=sandbox["repo"], store=tmp_path / "store", logs=tmp_path / "logs",
                          port=free_port(), params=["data_source=synthetic"], err=notes.append)
    run.check(request)
    tag = f"kerasflow:{sandbox['sha']}-u{os.getuid()}.{os.getgid()}"
    assert f"note: {tag} is not built yet: this run builds it first" in "\n".join(notes), notes
    assert "8.1 GB" in "\n".join(notes) and not calls(sandbox, "build")


def test_the_data_check_finds_a_prepared_tfds_folder_and_maps_data(tmp_path):
    cfg = config.load(None, [])
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.FAIL
    (tmp_path / "data" / "tfds" / "malaria" / "1.0.0").mkdir(parents=True)
    version = tmp_path / "data" / "tfds" / "malaria" / "1.0.0"
    (version / "dataset_info.json").write_text("{}")
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.FAIL  # the info file alone
    (version / "malaria-train.tfrecord-00000-of-00001").write_bytes(b"")
    assert preflight.data(cfg, "main", tmp_path, "").status == preflight.PASS
    mounted = config.load(None, ["tfds_data_dir=/data/tfds"])
    assert preflight.data(mounted, "main", tmp_path / "elsewhere", str(tmp_path / "data")).status == "pass"
    assert preflight.data(cfg, "analyze", tmp_path / "nothing", "").status == preflight.PASS


def test_the_drivers_help_is_whole():
    """Before: `sed -n '2,16p'` stopped mid-sentence ("... MLflow-3 models logged")."""
    out = subprocess.run([str(ROOT / "project_driver.bash"), "--help"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0
    text = out.stdout.strip()
    assert "A stopped run (make cancel, Ctrl-C, a hangup) ends KILLED." in text  # the whole docstring
    assert text.startswith("usage: kerasflow run ")
    for word in ("-e ENTRY", "--experiment", "--name", "--detach", "-P key=value", "GPU=", "DATA=", "PORT"):
        assert word in text, word
    assert not any(line.startswith("#") or line.startswith("set -") for line in text.splitlines())


# --- make help ------------------------------------------------------------------------------------------


def test_make_help_is_grouped_everyday_first_and_fits_100_columns():
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    groups = [line for line in lines if line and not line.startswith(" ")]
    assert groups == ["Everyday", "Tracking and models", "Stores", "Experiments", "Containers", "Maintenance"]
    listed = re.findall(r"^  make (\S+)", out, re.M)
    documented = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert sorted(listed) == sorted(documented) and len(listed) == len(set(listed))
    everyday = lines[lines.index("Everyday") + 1:lines.index("Tracking and models")]
    named = set(re.findall(r"make (\S+)", "\n".join(everyday)))
    assert {"demo", "train", "track", "run", "ui", "data"} <= named


# --- environments ---------------------------------------------------------------------------------------


def test_inside_the_image_its_env_wins_over_a_host_venv_in_the_checkout(tmp_path):
    """A user who ran `make demo` on the host has .venv in the checkout; in the container its python is
    the host's (absent there). Before, the Makefile preferred that .venv over the image's /opt/venv."""
    marker = tmp_path / "marker"
    marker.write_text("")
    assert (ROOT / ".venv" / "bin" / "python").exists()  # the host .venv of this checkout
    dry = subprocess.run(["make", "-n", "--no-print-directory", "demo", f"IMAGE_MARKER={marker}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("/opt/venv/bin/python -m kerasflow train --preset demo"), dry.stdout
    ui = subprocess.run(["make", "-n", "--no-print-directory", "ui", f"IMAGE_MARKER={marker}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert 'KERASFLOW_PYTHON="/opt/venv/bin/python"' in ui.stdout, ui.stdout


def test_the_light_env_lists_every_library_the_store_commands_import():
    """relocate/pull/ui show tqdm progress on stores of 2,000+ files; the light lock lacked it."""
    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        return {line.split("==")[0].lower(): line for line in lines if "==" in line and line[0] != "#"}

    host, full = pins("requirements-host.txt"), pins("requirements.txt")
    assert "tqdm" in host
    assert host["tqdm"] == full["tqdm"]  # the same version in both locks
    # and the light targets use the light env when there is no full one
    for target in ("pull", "relocate", "migrate", "ui", "run", "server"):
        dry = subprocess.run(["make", "-n", "--no-print-directory", target, "VENV=/nonexistent", "FROM=x",
                              "HOST_VENV=.venv"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ".venv/bin/" in dry.stdout and "/nonexistent" not in dry.stdout, (target, dry.stdout)


def test_run_mlflow_ui_without_any_env_names_make_ui(tmp_path):
    copy = tmp_path / "run_mlflow_ui.bash"  # a checkout with no environment at all
    shutil.copy2(ROOT / "run_mlflow_ui.bash", copy)
    (tmp_path / "docker").mkdir()
    shutil.copy2(ROOT / "docker" / "lib.bash", tmp_path / "docker" / "lib.bash")
    result = subprocess.run([str(copy)], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"]})
    assert_user_error(result, "run `make ui`", "light one")
    assert "GPU server" not in result.stderr


# --- the README (what the docs show is checked against the code in tests/test_docs.py) ------------------

def test_the_readme_is_a_newcomers_page():
    """About 150-200 lines: what it is, prerequisites, the two commands, three quickstarts, the targets
    by group, links; the rest lives in docs/ (it was 711 lines)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## Prerequisites", "## The two commands", "## Quickstarts", "## Make targets"):
        assert heading in text, heading
    assert "```mermaid" in text
    assert "make test" in text and "\nmake test\n" in (ROOT / ".ci" / "run").read_text()  # CI's command


def test_the_readme_quickstarts_parse_into_the_journeys_ci_runs():
    from helpers import readme_journeys

    found = readme_journeys.journeys()
    assert set(found) == {("devcontainer", "host"), ("devcontainer", "container"), ("gpu-server", "box"),
                          ("gpu-server", "laptop"), ("laptop", "")}
    assert sum(len(steps) for steps in found.values()) <= 3 * 10  # at most ~10 commands a quickstart
    box = {s.shown: s for s in found[("gpu-server", "box")]}
    assert box["make data"].command == ""  # needs the internet: CI skips it, as the README says
    assert "data_source=synthetic" in box['make run ARGS="--detach -P register_model=demo"'].command
    readme = (ROOT / "README.md").read_text()
    offline = "-P data_source=synthetic -P model=cnn -P image_size=48 -P register_model=demo"
    assert f'make run ARGS="--detach {offline}"' in readme
    # a replacement whose command the README no longer has is an error, not a silently dropped step
    broken = "<!-- journey: x -->\n<!-- ci: make gone => skip -->\n```bash\nmake demo\n```\n"
    with pytest.raises(ValueError, match="make gone"):
        readme_journeys.journeys(broken)


def test_make_data_without_a_full_env_downloads_inside_the_image(sandbox):
    """A GPU server has only the light env: `make data` stopped at "no Python 3.11, 3.12 or 3.13
    found". Now it runs the download in the project image (here: a stand-in docker records it)."""
    sb = sandbox
    shutil.copy2(ROOT / "Makefile", sb["repo"] / "Makefile")
    env = {**os.environ, **sb["env"], "PATH": f"{sb['bin']}:/usr/bin:/bin", "GPU": "off",
           "KERASFLOW_PYTHON": sys.executable}  # the light env's place (run_script.bash runs kerasflow)
    done = subprocess.run(["make", "--no-print-directory", "data", "VENV=/nonexistent"], cwd=sb["repo"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "downloading inside the project image" in done.stdout
    run = calls(sb, "run")[-1]
    assert run[-3:] == ["make", "data", "ARGS="], run
    assert "--volume" in run and f"{sb['repo']}:/workspace" in run  # data/tfds lands in the checkout
