"""`make env`'s installer: uv with the user's pip settings translated, pip when that cannot be done."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error, free_port

from kerasflow import env


def test_every_pip_setting_that_matters_reaches_uv():
    settings = {
        "index-url": "https://mirror.example/simple",
        "extra-index-url": "file:///opt/a/simple file:///opt/b/simple",
        "find-links": "/opt/wheels",
        "constraint": "/etc/pip/constraints.txt",
        "cert": "/etc/ssl/mine.pem",
        "default-timeout": "180",
        "trusted-host": "mirror.example",
        "disable-pip-version-check": "1",
    }
    args, variables = env.uv_command("uv", "/v/bin/python", "requirements.txt", settings)
    pairs = list(itertools.pairwise(args))
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert ("--extra-index-url", "file:///opt/a/simple") in pairs and (
        "--extra-index-url",
        "file:///opt/b/simple",
    ) in pairs
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/pip/constraints.txt") in pairs
    assert ("--allow-insecure-host", "mirror.example") in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's choice over all indexes
    assert variables["SSL_CERT_FILE"] == "/etc/ssl/mine.pem" and variables["UV_HTTP_TIMEOUT"] == "180"
    assert variables["UV_PYTHON_DOWNLOADS"] == "never"
    with pytest.raises(ValueError, match="'no-binary' has no uv equivalent"):
        env.uv_command("uv", "/v/bin/python", "requirements.txt", {"no-binary": ":all:"})


def test_settings_are_read_back_from_pip_with_the_environment_last(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://from-file.example/simple\nfind-links = /from/file\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "/from/env"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kerasflow import env; print(env.pip_settings(sys.executable))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    ).stdout
    assert "'index-url': 'https://from-file.example/simple'" in out and "'find-links': '/from/env'" in out


def _fresh_env(tmp_path: Path, name: str) -> Path:
    venv.create(tmp_path / name, with_pip=True)
    return tmp_path / name / "bin" / "python"


@pytest.mark.slow
def test_a_lock_installs_with_uv_and_falls_back_to_pip_in_one_line(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("six==1.17.0\n")
    run = ["-m", "kerasflow", "env", str(lock)]
    for name, extra, used in (
        ("uv", {}, "with uv"),
        ("forced", {"KERASFLOW_INSTALLER": "pip"}, "with pip"),
        ("untranslatable", {"PIP_NO_BINARY": "six"}, "with pip"),
    ):
        python = _fresh_env(tmp_path, name)
        result = subprocess.run(
            [str(python), *run],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **extra},  # as in CI: nothing compiles later
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert used in result.stderr, result.stderr
        # compiled at install (uv leaves .pyc out by default): without it every process compiled TF again
        assert list(python.parent.parent.glob("lib/python3*/site-packages/__pycache__/six.*.pyc")), name
        if name == "untranslatable":
            assert (
                "pip setting 'no-binary' has no uv equivalent here; installing with pip instead"
                in result.stderr
            )
        check = subprocess.run(
            [str(python), "-c", "import six; print(six.__version__)"], capture_output=True, text=True
        )
        assert check.stdout.strip() == "1.17.0"
        # the checkout is linked: `import kerasflow` from anywhere, and the `kerasflow` command
        linked = subprocess.run(
            [str(python.parent / "kerasflow"), "--help"], capture_output=True, text=True, cwd=tmp_path
        )
        assert linked.returncode == 0 and "kerasflow train" in linked.stdout, linked.stderr
        where = subprocess.run(
            [str(python), "-c", "import kerasflow; print(kerasflow.__file__)"],
            capture_output=True, text=True, cwd=tmp_path,
        )
        assert where.stdout.strip() == str(ROOT / "kerasflow" / "__init__.py")


@pytest.mark.slow
def test_the_light_host_env_on_python_310_runs_the_stores_server_without_tensorflow(tmp_path):
    """`make run` and `make ui` on a GPU server need MLflow, not Python 3.11 and the TF lock."""
    import glob

    from helpers import assert_user_error, require_tool, wait_http

    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3")))
    python310 = require_tool("python3.10", bool(found)) and found[-1]
    venv_dir = tmp_path / "host"
    made = subprocess.run(["make", "host-env", f"HOST_VENV={venv_dir}", f"HOST_PYTHON={python310}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    py = str(venv_dir / "bin" / "python")
    version = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True)
    assert version.stdout.strip() == "(3, 10)"
    no_tf = subprocess.run([py, "-c", "import tensorflow"], capture_output=True, text=True)
    assert no_tf.returncode != 0, "the host env must not carry TensorFlow"
    # every store command, make run's launcher and promote/versions import with what the light lock has
    # (tqdm: progress on stores of 2,000+ files, which the light lock lacked), and none pulls in TensorFlow
    imports = ("import sys, tqdm, kerasflow.storeops.pull, kerasflow.storeops.relocate, "
               "kerasflow.storeops.ui, kerasflow.storeops.migrate, kerasflow.storeops.proxy_artifacts, "
               "kerasflow.cli.pull, kerasflow.cli.relocate, kerasflow.cli.ui, kerasflow.cli.migrate, "
               "kerasflow.cli.server, kerasflow.cli.run, kerasflow.launch.run, kerasflow.launch.image, "
               "kerasflow.cli.promote, kerasflow.cli.versions, kerasflow.track.registry, "
               "mlflow.projects.utils, kerasflow.preflight; "
               "kerasflow.preflight.run_config(kerasflow.config.DEFAULT_CONFIG, ['epochs=2']); "
               "assert 'tensorflow' not in sys.modules")
    light = subprocess.run([py, "-c", imports], capture_output=True, text=True, cwd=ROOT)
    assert light.returncode == 0, light.stderr[-2000:]
    port = free_port()
    cmd = [py, "-m", "kerasflow", "server", str(tmp_path / "store"), "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=server)
    finally:
        server.terminate()
        server.wait(timeout=30)
    env = {**os.environ, "KERASFLOW_PYTHON": py}
    ui_cmd = [str(ROOT / "run_mlflow_ui.bash"), str(tmp_path / "store"), "--port", str(free_port()),
              "--print-command"]
    ui = subprocess.run(ui_cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ui.returncode == 0 and f"{venv_dir}/bin/mlflow server" in ui.stdout, ui.stderr[-2000:]
    creds = subprocess.run([py, "-c", "import sys; from kerasflow import urlauth; "
                            "print(urlauth.write_env_file(sys.argv[1]))", str(tmp_path / "mlflow.env")],
                           capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": "http://u:p@127.0.0.1:1"})
    assert creds.stdout.strip() == "http://127.0.0.1:1"
    assert (tmp_path / "mlflow.env").stat().st_mode & 0o77 == 0
    bad_port = [py, "-m", "kerasflow", "server", str(tmp_path / "store"), "--port", "99999"]
    assert_user_error(subprocess.run(bad_port, capture_output=True, text=True), "out of range")
    # with no full .venv, `make run` takes the light env (its stamp is up to date: nothing is rebuilt)
    plan = subprocess.run(["make", "-n", "--no-print-directory", "run", f"VENV={tmp_path / 'no-full-env'}",
                           f"HOST_VENV={venv_dir}", "ARGS=--foreground"], cwd=ROOT, capture_output=True,
                          text=True)
    expected = f"{venv_dir}/bin/python -m kerasflow run --foreground"
    assert plan.stdout.strip().splitlines() == [expected], plan.stdout  # (under `make test` too)


# --- which environment runs -----------------------------------------------------------------------


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
