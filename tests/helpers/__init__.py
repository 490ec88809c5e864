"""What the tests share that is not a fixture: paths, the tiny config, runners for our commands, waits,
one-line error checks. Tests import it (`from helpers import ...`); tests/conftest.py holds the fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent


# CI sets this so a test that needs a system tool fails instead of skipping when the tool is missing.
REQUIRE_TOOLS = os.environ.get("KERASFLOW_REQUIRE_TOOLS") == "1"


def require_tool(name: str, available: bool | None = None) -> str:
    """The tool's path; else skip with the reason (a failure under KERASFLOW_REQUIRE_TOOLS=1)."""
    path = shutil.which(name) if available is None else (name if available else None)
    if path:
        return path
    message = f"needs {name}, which is not available here (.ci/run installs it)"
    if REQUIRE_TOOLS:
        pytest.fail(f"{message}; KERASFLOW_REQUIRE_TOOLS=1 makes a missing tool a failure")
    pytest.skip(message)


# The real config.yaml, shrunk by presets/tiny.yaml so a training run takes seconds on a 2-core CPU.
TINY = [f"{k}={v}" for k, v in yaml.safe_load((ROOT / "presets" / "tiny.yaml").read_text()).items()]


def run_script(script: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a top-level script of the repo as a user would, in its own process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=timeout)


PY = sys.executable


def let_other_uids_run_the_venv() -> None:
    """Another UID (a second user of the box) must reach this checkout's .venv and the interpreter it
    links to (pyenv's lives under /root, 0700): search (x) permission on the folders on the way, nothing
    more. Without it, that user's Python runs but cannot exec another (MLflow's server, a re-exec)."""
    venv = ROOT / ".venv"
    interpreter = (venv / "bin" / "python").resolve()
    for folder in {*venv.parents, venv, *interpreter.parents}:
        if folder.stat().st_mode & 0o001 == 0:
            print(f"note: o+x on {folder} so that other UIDs reach {interpreter}")
            folder.chmod(folder.stat().st_mode | 0o001)


def py(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
       cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in its own process (this interpreter), in the checkout unless told."""
    return subprocess.run([PY, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def kerasflow(command: str, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `python -m kerasflow COMMAND ARGS` (= `kerasflow COMMAND`) as a user would, in its own process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kerasflow", command, *args], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=timeout)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_PASSWORD = "pg-" + os.urandom(6).hex()


def wait_http(url: str, timeout: float = 600, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers; fails at once when the server process `proc` has exited (with its stderr)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise AssertionError(f"server exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def bulk_store(path: Path, n: int, kind: str = "sqlite") -> None:
    """A store of `n` runs made by real MLflow (tests/helpers/store_builder.py), sqlite or a file store."""
    out = py(str(ROOT / "tests" / "helpers" / "store_builder.py"), "bulk", kind, str(path), str(n))
    assert out.returncode == 0, out.stderr[-3000:]


def fake_ssh(folder: Path) -> Path:
    """An ssh stand-in that drops the options and the host and runs the command here (rsync -e too)."""
    path = folder / "ssh"
    path.write_text("#!/usr/bin/env bash\n# ssh stand-in: drop options and host, run the command here\n"
                    'while [[ $# -gt 0 && "$1" == -* ]]; do case "$1" in -l|-p|-o|-i) shift 2;; '
                    '*) shift;; esac; done\nshift\nexec bash -c "$*"\n')
    path.chmod(0o755)
    return path


def client_for(store_dir: Path):
    """An MLflow client of an embedded store folder (its sqlite database, opened directly)."""
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{store_dir / 'mlflow.db'}")


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def write_png_tree(root: Path, counts: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """An NIH-style image tree of real PNG files drawn by the synthetic generator."""
    from PIL import Image

    from kerasflow.train.sources.synthetic import draw

    for c, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        images, _ = draw(n, size, seed + c)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"C{c}P{i % 5}ThinF_IMG_{i:04d}_cell_{i}.png")
    return root


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, no traceback, exactly one `error:` line, and it holds every fragment."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def sigkill_after_epochs(proc: subprocess.Popen, run_dir: Path, epochs: int = 2) -> None:
    """SIGKILL a training process once its run folder's history log holds `epochs` finished epochs."""
    log = run_dir / "history.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= epochs:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real tracking server on `port` over a sqlite store in `folder` (its own process group)."""
    folder.mkdir(exist_ok=True)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
         f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc=server)
    return server


def kill_group(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
