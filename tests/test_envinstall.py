"""`make env`'s installer: uv with the user's pip settings translated, pip when that cannot be done."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import ROOT

from kerasflow import envinstall


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
    args, env = envinstall.uv_command("uv", "/v/bin/python", "requirements.txt", settings)
    pairs = list(itertools.pairwise(args))
    assert ("--index-url", "https://mirror.example/simple") in pairs
    assert ("--extra-index-url", "file:///opt/a/simple") in pairs and (
        "--extra-index-url",
        "file:///opt/b/simple",
    ) in pairs
    assert ("--find-links", "/opt/wheels") in pairs and ("--constraint", "/etc/pip/constraints.txt") in pairs
    assert ("--allow-insecure-host", "mirror.example") in pairs
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's choice over all indexes
    assert env["SSL_CERT_FILE"] == "/etc/ssl/mine.pem" and env["UV_HTTP_TIMEOUT"] == "180"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    with pytest.raises(ValueError, match="'no-binary' has no uv equivalent"):
        envinstall.uv_command("uv", "/v/bin/python", "requirements.txt", {"no-binary": ":all:"})


def test_settings_are_read_back_from_pip_with_the_environment_last(tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://from-file.example/simple\nfind-links = /from/file\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "/from/env"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from kerasflow import envinstall; print(envinstall.pip_settings(sys.executable))",
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
    run = ["-m", "kerasflow.envinstall", str(lock)]
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
            env={**os.environ, **extra},
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert used in result.stderr, result.stderr
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
