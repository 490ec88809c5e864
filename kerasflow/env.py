"""Install a lock file into a fresh virtual environment, fast: `make env` runs this with the new venv's
python, before any dependency exists (standard library only).

Why: pip takes ~75 s to install TensorFlow's lock here, uv ~16 s. But uv does not read pip's
configuration (index, extra indexes, find-links, certificate, constraints), where many users' mirror
and proxy settings live. So uv is used only with the settings read back from `pip config list` and
translated one by one; a setting with no uv equivalent, uv failing to install, or
KERASFLOW_INSTALLER=pip falls back to pip, saying why in one line.

    python -m kerasflow env requirements.txt     # the lock, then the project (below)
    python -m kerasflow env --link-only          # the project only (the image's code layer)

The project itself is linked, not installed: a `kerasflow.pth` path entry to this checkout (the one
way `import kerasflow` works in .venv and the image; a script's own folder, e.g. a mounted checkout
at /workspace, still comes first on sys.path) and the console scripts of pyproject.toml's
[project.scripts] (`kerasflow`). An editable install would put a meta-path finder in front of
sys.path instead, so a mounted checkout could no longer take precedence.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger(__name__)

UV_VERSION = "0.13.9"


def project_scripts(pyproject: str) -> dict[str, str]:
    """[project.scripts] of pyproject.toml. tomllib is 3.11+; the light host env runs on 3.10, where the
    table's plain `name = "module:func"` lines are read directly."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        table = re.search(r"^\[project\.scripts\]\s*$(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
        lines = table.group(1).splitlines() if table else []
        return dict(re.findall(r'^\s*([\w.-]+)\s*=\s*"([^"]+)"', "\n".join(lines), re.M))
    return tomllib.loads(pyproject)["project"].get("scripts", {})
# pip settings that change nothing about what gets installed
_IGNORED = {"disable-pip-version-check", "no-color", "progress-bar", "quiet", "verbose", "no-input",
            "root-user-action", "no-warn-script-location", "no-python-version-warning"}


_UV_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
_UV_ENV = {"cert": ("SSL_CERT_FILE",), "timeout": ("UV_HTTP_TIMEOUT",),
           "default-timeout": ("UV_HTTP_TIMEOUT",), "proxy": ("HTTPS_PROXY", "HTTP_PROXY")}


def pip_settings(python: str) -> dict[str, str]:
    """The effective pip settings: config files first, then PIP_* variables (pip's own precedence)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        m = re.fullmatch(r"([^.]*)\.([a-z0-9-]+)='(.*)'", line.strip())
        if not m:
            continue
        section, key, value = m.groups()
        if section not in (":env:", "global", "install"):
            continue
        (env if section == ":env:" else files)[key] = value
    return {**files, **env}


def uv_command(uv: str, python: str, lock: str, settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """`uv pip install` with pip's settings; ValueError naming a setting uv cannot take."""
    args = [uv, "pip", "install", "--python", python, "-r", lock, "--quiet",
            # pip picks the best version over ALL indexes; uv's default stops at the first that has it
            "--index-strategy", "unsafe-best-match",
            # .pyc files now, as pip writes them: uv leaves them out, and where PYTHONDONTWRITEBYTECODE is
            # set (CI, many containers) every later process would compile TensorFlow and MLflow again
            # (importing both took 24 s instead of 8 here)
            "--compile-bytecode"]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    for key, value in settings.items():
        if key in _IGNORED:
            continue
        if key in _UV_FLAGS:  # one uv flag per value of a space-separated list
            args += [x for word in shlex.split(value) for x in (_UV_FLAGS[key], word)]
        elif key in _UV_ENV:
            env.update(dict.fromkeys(_UV_ENV[key], value))
        elif key == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            args += ["--no-index"]
        else:
            raise ValueError(f"pip setting '{key}' has no uv equivalent here")
    return args, env


def install(python: str, lock: str) -> str:
    """Install `lock` into the environment of `python`; returns which installer did it."""
    if os.environ.get("KERASFLOW_INSTALLER", "uv") != "pip":
        why = _try_uv(python, lock)
        if why is None:
            return f"uv {UV_VERSION}"
        log.info(f"env: {why}; installing with pip instead")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", lock], check=True)
    return "pip"


def _try_uv(python: str, lock: str) -> str | None:
    """None when uv installed the lock, else why not."""
    settings = pip_settings(python)
    got = subprocess.run([python, "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
                         capture_output=True, text=True)
    uv = os.path.join(os.path.dirname(python), "uv")
    if got.returncode != 0 or not os.path.exists(uv):
        return f"uv {UV_VERSION} could not be installed ({(got.stderr.strip().splitlines() or ['?'])[-1]})"
    try:
        args, env = uv_command(uv, python, lock, settings)
    except ValueError as exc:
        return str(exc)
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"uv failed ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
    return None


def link_project(project: Path) -> list[Path]:
    """The path entry and console scripts that make this checkout the environment's kerasflow."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    (purelib / "kerasflow.pth").write_text(f"{project.resolve()}\n")
    scripts = project_scripts((project / "pyproject.toml").read_text())
    bin_dir = Path(sysconfig.get_paths()["scripts"])
    written = [purelib / "kerasflow.pth"]
    for name, target in scripts.items():
        module, func = target.split(":")
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\nimport sys\n\nfrom {module} import {func}\n\n"
                        f"sys.exit({func}())\n")
        path.chmod(0o755)
        written.append(path)
    return written
