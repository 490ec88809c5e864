"""The project image on this host: its tag, building it when missing or stale, and the one name MLproject
gives (`kerasflow:latest`) pointed at the user's image while their run's container starts.

The image bakes in its user's UID/GID (files it writes in the checkout are theirs), so on a server shared
by several users each gets their own: kerasflow:<commit>[-dirty]-u<UID>.<GID>.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from kerasflow import runqueue
from kerasflow.errors import UserError

REPO_ENV = "KF_IMAGE_REPO"  # the image's repository name (tests use their own)
LATEST_LOCK_ENV = "KF_LATEST_LOCK"
LATEST_LOCK = "/tmp/kerasflow-latest.lock"  # noqa: S108 - engine-wide on purpose: every user's make run
# `docker build` arguments taken from the environment, so a user behind a mirror (or a machine with no
# registry) builds without editing files. The same list as .devcontainer.json's build args, passed the
# same way, empty when unset (the Dockerfile reads empty as its default): the builder's cache key holds
# each value, so only then do `make run` and "Reopen in Container" share the dependency layers.
BUILD_VARS = ("BASE_IMAGE", "TF_VARIANT", "VGG16_WEIGHTS_URL", "VGG16_WEIGHTS_MD5", "PIP_INDEX_URL",
              "PIP_EXTRA_INDEX_URL")
TIMEOUT = 30  # seconds for one docker CLI call that is not a build or a run


def docker(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """One docker CLI call, bounded; a missing CLI or a hang reads as a failed call, never a traceback."""
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                              errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["docker", *args], 1, "", str(exc))


def repo() -> str:
    return os.environ.get(REPO_ENV, "kerasflow")


def user_suffix() -> str:
    return f"u{os.getuid()}.{os.getgid()}"


def tag(root: Path) -> str:
    """kerasflow:<commit>[-dirty]-u<UID>.<GID>: a dirty tree's tag cannot tell what changed, so a dirty
    tree is rebuilt every run (the layer cache makes that a code-layer-only build)."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "nogit"
    dirty = "-dirty" if git("status", "--porcelain") else ""
    return f"{repo()}:{commit}{dirty}-{user_suffix()}"


def present(image: str) -> bool:
    return docker("image", "inspect", image).returncode == 0


def build_args(env: Mapping[str, str]) -> list[str]:
    """`docker build` arguments: BUILD_VARS (each, empty when unset), the user's UID/GID, and the host
    network on an engine without the default bridge (--bridge=none)."""
    args = [a for name in BUILD_VARS for a in ("--build-arg", f"{name}={env.get(name, '')}")]
    args += ["--build-arg", f"USER_UID={os.getuid()}", "--build-arg", f"USER_GID={os.getgid()}"]
    if docker("network", "inspect", "bridge").returncode != 0:
        args += ["--network", "host"]
    return args


def builder_env(env: Mapping[str, str]) -> dict[str, str]:
    """The classic builder where the CLI has no buildx (BuildKit would refuse to start)."""
    run_env = dict(env)
    if docker("buildx", "version").returncode != 0:
        run_env["DOCKER_BUILDKIT"] = "0"
    return run_env


def build_command(root: Path, image: str, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """`docker build` of docker/Dockerfile as `image` (and latest-u<UID>.<GID>), and its environment."""
    run_env = builder_env(env)
    return (["docker", "build", "--file", str(root / "docker" / "Dockerfile"), *build_args(env),
             "--tag", image, "--tag", f"{repo()}:latest-{user_suffix()}", str(root)], run_env)


def ensure(root: Path, run: Callable[[list[str], dict[str, str]], int], say: Callable[[str], None]) -> str:
    """The user's image, built when missing or the tree is dirty; `run(cmd, env)` runs the build with its
    output shown (and logged). Returns the tag."""
    image = tag(root)
    if image.endswith("-dirty") or not present(image):
        say(f"note: building {image} (docker/Dockerfile): the first build takes minutes, later ones reuse "
            "its layers")
        cmd, env = build_command(root, image, os.environ)
        if run(cmd, env) != 0:
            raise UserError(f"building {image} failed (see the docker output above)")
    return image


def point_latest(image: str, container: str, alive: Callable[[], bool], say: Callable[[str], None],
                 limit: float = 600) -> threading.Thread:
    """MLproject's docker_env names ONE image, kerasflow:latest, for every user of the engine: point it at
    `image` under an engine-wide lock held until `container` exists (MLflow's lookup of the name and its
    `docker run` both fall inside), the run ended (`alive()` false) or `limit` seconds passed. Another
    user's make run waits those seconds instead of starting our image, or we theirs. The lock file is
    created readable by all and opened read-only (flock needs no more), so one another user created in a
    sticky /tmp opens too. Returns the thread that holds the lock."""
    path = os.environ.get(LATEST_LOCK_ENV, LATEST_LOCK)
    with contextlib.suppress(OSError):
        old = os.umask(0o022)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
        finally:
            os.umask(old)
    said = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(f"cannot open the image lock {path} ({exc.strerror}): remove it (it holds nothing) "
                        f"or set {LATEST_LOCK_ENV}") from None
    deadline = time.monotonic() + limit  # a lock another user holds for ever costs one line, not a hang
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                holder = runqueue.lock_holder(Path(path)) or "?"
                raise UserError(f"the image lock {path} has been held for {limit:.0f} s (by pid {holder}): "
                                "a make run starting its container holds it for seconds; ask its owner, or "
                                f"set {LATEST_LOCK_ENV}=a file of your own (then your runs may start "
                                "another user's kerasflow:latest)") from None
            if not said:
                say(f"note: another make run is starting its container (lock {path}): waiting")
                said = True
            time.sleep(0.5)
    if docker("tag", image, f"{repo()}:latest").returncode != 0:
        os.close(fd)
        raise UserError(f"cannot tag {image} as {repo()}:latest: is the engine still up? (make doctor)")

    def hold() -> None:
        end = time.monotonic() + limit
        try:
            while time.monotonic() < end and alive():
                if docker("container", "inspect", container).returncode == 0:
                    return
                time.sleep(0.5)
        finally:
            os.close(fd)

    holder = threading.Thread(target=hold, name="kerasflow-latest-lock", daemon=True)
    holder.start()
    return holder


def gpus_value(want: str, count: int) -> str:
    """docker's --gpus value for GPUS=all|0|0,1. docker reads the value as CSV, so a list keeps its
    double quotes: `--gpus "device=0,1"` (unquoted, device=0,1 means device 0 plus count=1)."""
    if want == "all":
        return "all"
    parts = want.split(",")
    if not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise UserError(f"GPUS={want} is not 'all' or GPU indices like 0 or 0,1")
    for index in parts:
        if int(index) >= count:
            raise UserError(f"GPUS={want} names GPU {index}, but `nvidia-smi` lists {count} "
                            f"(0-{count - 1})")
    return f'"device={want}"'
