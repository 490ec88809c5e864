"""Stand-ins for a GPU host without one: a `docker` CLI that records its calls and keeps "images" as
files, an `nvidia-smi` that lists FAKE_GPUS GPUs, and a git checkout of the scripts to run against them
(the `sandbox` fixture, shared through conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_DOCKER = r'''#!/usr/bin/env python3
"""Stand-in for the docker CLI: records every call, keeps "images" as files, never runs anything."""
import json, os, sys
state = os.environ["FAKE_DOCKER_DIR"]
args = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as fh:
    fh.write(json.dumps(args) + "\n")
images = os.path.join(state, "images")
os.makedirs(images, exist_ok=True)
if args[:1] == ["--version"]:
    print("Docker version 27.0.1, build fake"); sys.exit(0)
if args[:1] == ["info"]:
    if os.environ.get("FAKE_DOCKER_DAEMON") == "down":
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        sys.exit(1)
    fmt = args[args.index("--format") + 1] if "--format" in args else ""
    runtimes = os.environ.get("FAKE_DOCKER_RUNTIMES", '{"runc":{"path":"runc"}}')
    print(runtimes if "Runtimes" in fmt else "27.0.1")
    sys.exit(0)
if args[:2] == ["image", "inspect"]:
    sys.exit(0 if os.path.exists(os.path.join(images, args[2].replace("/", "_"))) else 1)
if args[:1] == ["build"]:
    for i, a in enumerate(args):
        if a == "--tag":
            open(os.path.join(images, args[i + 1].replace("/", "_")), "w").close()
    sys.exit(0)
if args[:1] == ["run"]:
    sys.exit(int(os.environ.get("FAKE_DOCKER_RUN_EXIT", "0")))
sys.exit(0)
'''

FAKE_NVIDIA_SMI = r"""#!/usr/bin/env bash
for i in $(seq 1 "${FAKE_GPUS:-0}"); do
  case "${1:-}" in
    --query-gpu=index) echo "$((i - 1))" ;;  # kerasflow/box.py's query
    *) echo "GPU $((i - 1)): NVIDIA H100 80GB HBM3 (UUID: GPU-fake-$i)" ;;
  esac
done
"""


TOOLS = [
    "bash",
    "sh",
    "env",
    "git",
    "id",
    "dirname",
    "head",
    "grep",
    "cat",
    "date",
    "seq",
    "sed",
    "mkdir",
    "rm",
    "tee",
    "sleep",
    "python3",
    "printf",
    "tmux",
    "tr",
    "ls",
    "nohup",
    "flock",
    "realpath",
    "mktemp",
]


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    """A git checkout holding the scripts, and a PATH whose `docker`/`nvidia-smi` stand in for a GPU host."""
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    scripts = ("run_script.bash", "project_driver.bash", "docker/lib.bash", "docker/Dockerfile",
               "config.yaml", "MLproject")
    for name in scripts:
        shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "scripts"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if tool == "python3":  # a real interpreter, not a pyenv shim that needs pyenv on PATH
            found = os.path.realpath(sys.executable)
        if found:
            (bin_dir / tool).symlink_to(found)
    state = tmp_path / "state"
    state.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "FAKE_DOCKER_DIR": str(state),
        "KERASFLOW_PYTHON": sys.executable,  # the env with kerasflow: the shims run `python -m kerasflow`
        "LOGS": str(tmp_path / "logs"),
        "STORE": str(tmp_path / "store"),
        "KF_TMUX_SESSION": f"kf-test-{os.getpid()}-{tmp_path.name}",
        "TMUX_TMPDIR": str(tmp_path),
    }
    return {"repo": repo, "bin": bin_dir, "state": state, "env": env, "sha": sha, "tmp": tmp_path}


def script(
    sb: dict, name: str, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(sb["repo"] / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=sb["repo"],
        env={**sb["env"], **env},
    )


def calls(sb: dict, verb: str) -> list[list[str]]:
    path = sb["state"] / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r[:1] == [verb]]
