"""The engine tests' user, checkout, image and `make run` helpers, shared by tests/test_engine_*.py.

Everything runs as a NON-root user (the fixtures make one, `kftest`, when the tests run as root, as CI
does), in a checkout that user owns, with the CPU variant of the image built ONCE per session for that
user's UID by `make image` (build args from the environment: a local Debian base, weights served on
127.0.0.1). The fixtures are session-scoped and registered in tests/conftest.py. The engine has no bridge
network (never made here): containers use the host network.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT, TINY, free_port, let_other_uids_run_the_venv, require_tool

# `make test` runs a test file to an xdist worker (--dist loadfile): these tests share one user, checkout
# and image (session fixtures), so they run one after another on one worker while the others take the
# rest of the suite. (xdist_group does not group under pytest 9: xdist renames `_nodeid`, which pytest
# 9 no longer reads.)

USER_NAME = "kftest"
BASE = "localhost/py311-base:bookworm"
BASE_CA = f"{BASE}-ca"  # + this machine's CA bundle, for pip inside the build (TLS-intercepting networks)
VENV = ROOT / ".venv"


def tiny_p(**changes: object) -> list[str]:
    """TINY as `-P key=value` pairs, some changed (MLflow refuses a repeated -P)."""
    values = dict(item.split("=", 1) for item in TINY)
    values.update({k: str(v) for k, v in changes.items()})
    return [arg for k, v in values.items() for arg in ("-P", f"{k}={v}")]


def docker(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class User:
    """Who runs the flows: a non-root user, reached with runuser when the tests run as root."""

    name: str
    uid: int
    gid: int
    home: Path
    via_root: bool

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        path = f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        base = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": path,
            "LANG": "C.UTF-8",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            # the host env the shims (./run_script.bash, ./project_driver.bash) run kerasflow with, as
            # `make` passes it; without one they would make the light env first (a minute of installing)
            "KERASFLOW_PYTHON": str(VENV / "bin" / "python"),
        }
        for name in ("DOCKER_HOST", "SSL_CERT_FILE", "PIP_CERT"):
            if os.environ.get(name):
                base[name] = os.environ[name]
        return {**base, **(extra or {})}

    def argv(self, cmd: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        if self.via_root:
            return (
                ["runuser", "-u", self.name, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *cmd],
                {"PATH": os.environ["PATH"]},
            )
        return cmd, {**os.environ, **env}

    def run(
        self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        argv, full_env = self.argv(cmd, self.env(env))
        return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)

    def popen(
        self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None, new_session: bool = False
    ) -> subprocess.Popen[str]:
        argv, full_env = self.argv(cmd, self.env(env))
        return subprocess.Popen(
            argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=new_session,
        )


def foreign_files(folder: Path, uid: int) -> list[str]:
    """Files and folders under `folder` NOT owned by uid (.git aside: the test made it)."""
    out = []
    for path in folder.rglob("*"):
        if ".git" in path.relative_to(folder).parts:
            continue
        if path.lstat().st_uid != uid:
            out.append(f"{path.relative_to(folder)} (uid {path.lstat().st_uid})")
    return out


# --- fixtures: engine, user, checkout, image ------------------------------------------------------------


@pytest.fixture(scope="session")
def engine() -> None:
    require_tool("docker")
    started = subprocess.run(
        ["bash", str(ROOT / "tests" / "engine.bash"), "start"], capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        require_tool(f"a Docker engine ({started.stderr.strip()})", available=False)
    we_started = "dockerd started" in started.stdout  # else it ran before: leave it running after
    networks = docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    volumes = set(docker("volume", "ls", "-q").stdout.split())
    yield
    for volume in set(docker("volume", "ls", "-q").stdout.split()) - volumes:
        if volume.startswith("kerasflow-"):  # the CUDA cache and /data volumes the flows created
            docker("volume", "rm", volume)
    # no test may create a network: a bridge's private-range traffic is forbidden on these machines
    assert docker("network", "ls", "--format", "{{.Name}}").stdout.split() == networks
    if we_started:
        subprocess.run(
            ["bash", str(ROOT / "tests" / "engine.bash"), "stop"], capture_output=True, timeout=120
        )


@pytest.fixture(scope="session")
def user(engine) -> User:
    if os.geteuid() != 0:  # a user's machine: the user is non-root already and can reach their engine
        entry = pwd.getpwuid(os.getuid())
        return User(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), via_root=False)
    require_tool("runuser")
    try:
        pwd.getpwnam(USER_NAME)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--user-group", "--shell", "/bin/bash", USER_NAME], check=True
        )
    socket_path = Path(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://"))
    group = subprocess.run(
        ["stat", "-c", "%G", str(socket_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["usermod", "-aG", group, USER_NAME], check=True)
    entry = pwd.getpwnam(USER_NAME)
    let_other_uids_run_the_venv()  # the project's .venv, and the interpreter it links to
    return User(USER_NAME, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), via_root=True)


@pytest.fixture(scope="session")
def workdir(user: User) -> Path:
    base = Path(
        subprocess.run(
            ["mktemp", "-d", "/tmp/kf-engine-XXXXXX"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    base.chmod(0o755)
    os.chown(base, user.uid, user.gid)
    yield base
    # files the containers wrote are the user's; root (CI) or the user removes them
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def checkout(user: User, workdir: Path) -> Path:
    """A git checkout of this working tree, owned by the user, committed (so the image tag is clean)."""
    repo = workdir / "repo"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = ROOT / name
        if not src.is_file():
            continue
        dst = repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(repo)], check=True)
    git = [
        "git",
        "-c",
        "user.name=kftest",
        "-c",
        "user.email=kftest@localhost",
        "-c",
        "init.defaultBranch=main",
    ]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout for the engine tests"]):
        result = user.run([*git, *cmd], cwd=repo)
        assert result.returncode == 0, result.stderr
    # `make` uses the project's .venv (VENV=...): its stamp must be newer than this copy's lock
    os.utime(repo / "requirements.txt", (0, 0))
    return repo


@pytest.fixture(scope="session")
def weights(workdir: Path) -> dict[str, str]:
    """A VGG16 notop weights file in Keras' own h5 format, served on 127.0.0.1 like the real download."""
    folder = workdir / "weights"
    folder.mkdir()
    path = folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import h5py, keras
        from keras.src.legacy.saving import legacy_h5_format
        keras.utils.set_random_seed(0)
        model = keras.applications.VGG16(include_top=False, weights=None)
        with h5py.File({str(path)!r}, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        """),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield {
        "VGG16_WEIGHTS_URL": f"http://127.0.0.1:{port}/{path.name}",
        "VGG16_WEIGHTS_MD5": hashlib.md5(path.read_bytes()).hexdigest(),
    }
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def build_env(engine, weights: dict[str, str]) -> dict[str, str]:
    """What a user without registry access sets to build: a local base, the CPU variant, a weights URL."""
    if docker("image", "inspect", BASE_CA).returncode != 0:
        require_tool("mmdebstrap")
        made = subprocess.run(
            ["bash", str(ROOT / "docker" / "bootstrap-base.bash"), "--host-ca", BASE],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stderr[-3000:]
    return {"BASE_IMAGE": BASE_CA, "TF_VARIANT": "cpu", **weights}


@pytest.fixture(scope="session")
def image(user: User, checkout: Path, build_env: dict[str, str]) -> dict:
    """The CPU image, built once by `make image` as the user; the tag of the checkout's commit."""
    mine = f"u{user.uid}.{user.gid}"  # images are per user: kerasflow:<commit>-u<UID>.<GID>
    old_latest = docker("image", "inspect", "--format", "{{.Id}}", f"kerasflow:latest-{mine}").stdout.strip()
    t0 = time.monotonic()
    built = user.run(["make", "image", f"VENV={VENV}"], cwd=checkout, env=build_env, timeout=2400)
    seconds = time.monotonic() - t0
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sha = user.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=checkout).stdout.strip()
    tag = f"kerasflow:{sha}-{mine}"
    image_id = docker("image", "inspect", "--format", "{{.Id}}", tag, check=True).stdout.strip()
    print(f"image {tag} built in {seconds:.0f} s")
    if old_latest and old_latest != image_id:
        docker("rmi", old_latest)  # the last run's image: only its own top layers go, the cache stays
    yield {"tag": tag, "id": image_id, "seconds": seconds}
    docker("rmi", tag)  # kerasflow:latest-<user> (a fixed tag) keeps the layers for the next run's cache


@pytest.fixture
def cleanup_containers():
    """Containers a test starts are removed by label/name even when it fails."""
    names: list[str] = []
    yield names
    for name in names:
        docker("rm", "-fv", name)


def docker_build(checkout: Path, tag: str, build_args: dict[str, str]) -> tuple[float, str]:
    """docker build of the checkout with the build args `make image` passes (kerasflow/launch/image.py's
    build_args: every one, empty when unset, since an empty arg and a missing one are different cache
    keys), these values put in; (seconds, error)."""
    from kerasflow.launch import image

    printed = image.build_args({**os.environ, **build_args})
    pairs = list(zip(printed[::2], printed[1::2], strict=True))
    # The caller's own UID/GID are left out: a test that wants another user sets its own.
    args = [x for flag, value in pairs if not value.startswith("USER_") for x in (flag, value)]
    users = [k for k in ("USER_UID", "USER_GID") if k in build_args]
    args += [x for k in users for x in ("--build-arg", f"{k}={build_args[k]}")]
    t0 = time.monotonic()
    built = subprocess.run(
        ["docker", "build", "-q", "-f", "docker/Dockerfile", *args, "-t", tag, "."],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return time.monotonic() - t0, "" if built.returncode == 0 else built.stderr[-3000:]


@pytest.fixture(scope="session")
def run_env(workdir: Path) -> dict[str, str]:
    """One tracking-server port for the session (make run, the notebook, tune workers); the server the
    driver starts is stopped by its pid."""
    env = {
        "GPU": "off",
        "PORT": str(free_port()),
        "KF_TMUX_SESSION": f"kf-engine-{uuid.uuid4().hex[:8]}",
        "TMUX_TMPDIR": str(workdir),
        "KERASFLOW_QUEUE_DIR": str(workdir / "queue"),  # the machine's line, private to this session
    }
    yield env
    pid_file = workdir / "repo" / "logs" / "mlflow-server.pid"
    if pid_file.is_file():
        subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
    subprocess.run(
        ["runuser", "-u", USER_NAME, "--", "env", f"TMUX_TMPDIR={workdir}", "tmux", "kill-server"]
        if os.geteuid() == 0
        else ["env", f"TMUX_TMPDIR={workdir}", "tmux", "kill-server"],
        capture_output=True,
    )


def make_run(
    user: User, checkout: Path, run_env: dict[str, str], args: list[str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return user.run(
        ["make", "run", f"VENV={VENV}", f"ARGS={shlex.join(args)}"],
        cwd=checkout,
        env=run_env,
        timeout=timeout,
    )


def client(run_env: dict[str, str]):
    import mlflow

    return mlflow.MlflowClient(f"http://127.0.0.1:{run_env['PORT']}")


def runs_named(run_env: dict[str, str], experiment: str = "kerasflow", filter_string: str = "") -> list:
    c = client(run_env)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string) if exp else []


@pytest.fixture(scope="session")
def foreground_run(image, user, checkout, run_env) -> subprocess.CompletedProcess[str]:
    """The README's headline command, registering its model as kfdemo (the notebook loads it too).
    Before it, kerasflow:latest (MLproject's image) is another user's image: make run must not use it."""
    docker("tag", BASE_CA, "kerasflow:latest", check=True)
    args = [
        "--foreground",
        "--name",
        "fg",
        *tiny_p(epochs=2, augment="false"),
        "-P",
        "register_model=kfdemo",
    ]
    return make_run(user, checkout, run_env, args)


JOURNEY_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"  # no project .venv on it


@pytest.fixture(scope="session")
def package_cache(user: User, workdir: Path) -> dict[str, str]:
    """The user's uv cache, hard-linked from this machine's (`make env` filled it): the journeys' `make env`
    and light env install the same locks without downloading them again."""
    mine = Path.home() / ".cache" / "uv"
    if not user.via_root or not mine.is_dir():
        return {}
    theirs = workdir / "uv-cache"
    subprocess.run(["cp", "-al", str(mine), str(theirs)], check=True)
    subprocess.run(["find", str(theirs), "-type", "d", "-exec", "chown", f"{user.uid}:{user.gid}", "{}", "+"],
                   check=True)
    # symlinks into that cache: the kernel refuses the user hard links to root's files (protected_hardlinks),
    # and a copy of the TensorFlow lock costs minutes
    return {"UV_CACHE_DIR": str(theirs), "UV_LINK_MODE": "symlink"}


def fresh_clone(user: User, checkout: Path, workdir: Path, name: str) -> Path:
    """`git clone` of the engine tests' checkout (the same commit, so the same image tag), as the user."""
    dest = workdir / name
    cloned = user.run(["git", "clone", "-q", str(checkout), str(dest)], cwd=workdir)
    assert cloned.returncode == 0, cloned.stderr
    return dest


def background(user: User, cwd: Path, env: dict[str, str]):
    def start(command: str) -> subprocess.Popen[str]:
        return user.popen(["bash", "-c", command], cwd=cwd, env=env, new_session=True)

    return start


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
