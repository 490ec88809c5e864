"""The README's three quickstarts, from its own blocks (tests/helpers/readme_journeys.py), on a real
engine: (a) `make demo` on the host, `devcontainer up`, the demo, a tracked demo and the notebook inside
(JupyterLab answers 403/200; the notebook also runs over a store holding an embedded run and a `make run`
run); (b) a fresh clone with only the light env, a detached `make run` to FINISHED, seen through a
forwarded port; (c) a fresh clone with only the light env pulls (b)'s store and opens the UI on another
port. Fixtures: tests/helpers/engine.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from helpers import free_port, readme_journeys, require_tool, wait_http
from helpers.engine import (
    JOURNEY_PATH,
    User,
    background,
    docker,
    foreign_files,
    fresh_clone,
    stop,
)

pytestmark = [pytest.mark.slow, pytest.mark.engine]


# --- the README's quickstarts, as a newcomer runs them (tests/helpers/readme_journeys.py) ---------------
#
# The commands come from the README's marked blocks; a failure names the README line. Each journey starts
# from its user's state: (a) a checkout where `make demo` ran on the host first (a real .venv there), (b)
# and (c) fresh clones with only the light env (any Python >= 3.10, no TensorFlow).

@pytest.fixture(scope="module")
def devcontainer(image, user: User, checkout: Path, workdir: Path,  # noqa: PLR0913  (fixtures)
                 build_env: dict[str, str], package_cache: dict[str, str]) -> dict:
    """Quickstart (a), host part: `make demo` on the host (it makes a real .venv in the checkout), then
    `devcontainer up` as the README says, with what CI adds: host networking (an override GENERATED from
    .devcontainer.json: the engine has no bridge) and a label to remove the container afterwards."""
    import json5

    cli = require_tool("devcontainer")
    config = json5.loads((checkout / ".devcontainer.json").read_text())
    port = free_port()
    config["runArgs"] = [*config.get("runArgs", []), "--network=host"]
    config["build"]["options"] = [*config["build"].get("options", []), "--network=host"]
    config["build"]["dockerfile"] = str(checkout / config["build"]["dockerfile"])
    config["build"]["context"] = str(checkout / config["build"]["context"])
    config["containerEnv"] = {**config.get("containerEnv", {}), "JUPYTER_PORT": str(port)}
    override = workdir / "devcontainer.override.json"
    override.write_text(json.dumps(config, indent=2))
    os.chown(override, user.uid, user.gid)
    label = f"kerasflow.test={uuid.uuid4().hex[:12]}"
    common = ["--workspace-folder", str(checkout), "--id-label", label]
    env = {**build_env, **package_cache, "DOCKER_BUILDKIT": "0", "PATH": JOURNEY_PATH}
    before = set(docker("images", "-q", "--no-trunc").stdout.split())
    info = {"cli": cli, "common": common, "env": env, "port": port, "label": label}

    def host(command: str) -> subprocess.CompletedProcess[str]:
        if command.startswith("devcontainer up "):  # what CI adds to the README's command
            command += f" --id-label {label} --override-config {shlex.quote(str(override))}"
        t0 = time.monotonic()
        done = user.run(["bash", "-c", command], cwd=checkout, env=env, timeout=1800)
        info[command.split(" --")[0]] = time.monotonic() - t0
        if command.startswith("devcontainer up ") and done.returncode == 0:
            info["up"] = json.loads(done.stdout.strip().splitlines()[-1])
        return done

    try:
        steps = readme_journeys.journeys()[("devcontainer", "host")]
        readme_journeys.run(steps, host, background(user, checkout, env))
        print(f"quickstart (a), host part: {info}")
        yield info
    finally:
        for container in docker("ps", "-aq", "--filter", f"label={label}").stdout.split():
            docker("rm", "-fv", container)
        made = set(docker("images", "-q", "--no-trunc").stdout.split()) - before
        for _ in range(3):  # the UID-update image is a child of the built one: children go first
            made = {i for i in made if docker("rmi", "-f", i).returncode != 0}


def dc_exec(
    dc: dict, user: User, checkout: Path, *cmd: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    remote_env = [x for k, v in (env or {}).items() for x in ("--remote-env", f"{k}={v}")]
    return user.run(
        [dc["cli"], "exec", *dc["common"], *remote_env, *cmd], cwd=checkout, env=dc["env"], timeout=timeout
    )


@pytest.fixture(scope="module")
def container_journey(devcontainer, user: User, checkout: Path) -> dict[str, float]:
    """Quickstart (a), in the container's terminal: the README's block through `devcontainer exec`."""
    seconds: dict[str, float] = {}

    def inside(command: str) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        done = dc_exec(devcontainer, user, checkout, "bash", "-c", command, timeout=1800)
        seconds[command] = time.monotonic() - t0
        return done

    steps = readme_journeys.journeys()[("devcontainer", "container")]
    readme_journeys.run(steps, inside, background(user, checkout, devcontainer["env"]))
    print(f"quickstart (a), container part: {seconds}")
    return seconds


def test_quickstart_a_reopen_in_container_after_a_demo_on_the_host(devcontainer, container_journey, user,
                                                                   checkout, image):
    """The host's .venv is in the mounted checkout; in the container `make` used it (its python is the
    host's) before the image's env won. Both demos trained, the container's as the remote user."""
    assert devcontainer["up"]["outcome"] == "success"
    assert (checkout / ".venv" / "bin" / "python").exists()  # the host demo made it
    demos = sorted(p for p in (checkout / "outputs").glob("demo-*") if (p / "model.keras").is_file())
    assert len(demos) >= 2, demos  # one on the host, one in the container (make track-demo)
    whoami = dc_exec(devcontainer, user, checkout, "bash", "-c", "id -un; id -u; make -n demo | head -n 1")
    assert whoami.stdout.split()[:2] == ["dev", str(user.uid)], whoami.stdout
    assert "/opt/venv/bin/python -m kerasflow train" in whoami.stdout
    # "Reopen in Container" reused `make image`'s layers (docker/lib.bash build_args): all but the last
    # three, which hold the user, the code and its link and differ by UID. (It installed TensorFlow
    # again when the two passed their build args differently.)
    container_image = docker("inspect", "--format", "{{.Image}}", devcontainer["up"]["containerId"],
                             check=True).stdout.strip()
    ours, theirs = (json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", i,
                                      check=True).stdout) for i in (image["id"], container_image))
    pairs = zip(ours, theirs, strict=False)
    shared = next((n for n, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
    assert shared >= len(ours) - 3, f"the devcontainer shares {shared} of the image's {len(ours)} layers"
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{checkout / 'store' / 'mlflow.db'}")
    assert c.get_model_version_by_alias("demo", "candidate").run_id
    assert not foreign_files(checkout, user.uid)


def test_devcontainer_serves_jupyterlab_with_a_token(devcontainer, checkout):
    url_file = checkout / "logs" / "jupyter.url"
    deadline = time.monotonic() + 120
    while not url_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    url = url_file.read_text().strip()
    port = devcontainer["port"]
    assert url.startswith(f"http://127.0.0.1:{port}/lab?token=")
    token = url.split("token=")[1]
    api = f"http://127.0.0.1:{port}/api/sessions"
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{api}?token={token}", timeout=5)
            break
        except OSError:
            time.sleep(1)
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(api, timeout=10)
    assert denied.value.code == 403
    assert urllib.request.urlopen(f"{api}?token={token}", timeout=10).status == 200


def test_the_notebook_explores_embedded_and_make_run_runs_in_the_containers_kernel(
    devcontainer, container_journey, foreground_run, user, checkout
):
    """The quickstart's embedded demo run (`make track-demo` in the container) beside the `make run`
    runs of this store; the notebook lists both, plots their curves and classifies images with the
    model `make run` registered."""
    import nbformat

    out = "outputs/explore.executed.ipynb"
    executed = dc_exec(
        devcontainer,
        user,
        checkout,
        "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "notebooks/explore.ipynb",
        "--output",
        f"/workspace/{out}",
        env={"KF_STORE": "store", "KF_MODEL": "models:/kfdemo@candidate"},
    )
    assert executed.returncode == 0, executed.stdout[-3000:] + executed.stderr[-3000:]
    nb = nbformat.read(checkout / out, as_version=4)
    text = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )
    images = [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert "embedded (make track)" in text and "mlflow run (make run)" in text, text[-3000:]
    assert "demo-" in text  # the quickstart's tracked demo run
    assert images, "the curves figure"
    assert "model models:/kfdemo@candidate: image size 32" in text
    assert "predicted" in text and ("parasitized" in text or "uninfected" in text)
    assert not [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]


@pytest.fixture(scope="module")
def box_journey(image, user: User, checkout: Path, workdir: Path,  # noqa: PLR0913  (fixtures)
                build_env: dict[str, str], package_cache: dict[str, str]) -> dict:
    """Quickstart (b) on the box: a fresh clone with only the light env; `make run ARGS=--detach` (the
    offline demo, as the README says for a box without internet), to its end."""
    require_tool("tmux")
    clone = fresh_clone(user, checkout, workdir, "journey-b")
    # no PORT: the store's server takes a port of its own (kept in store/server-port), as for a user
    env = {**build_env, **package_cache, "PATH": JOURNEY_PATH, "HOST_PYTHON": "python3",
           "KF_TMUX_SESSION": f"kf-journey-{uuid.uuid4().hex[:8]}", "TMUX_TMPDIR": str(workdir)}
    info = {"clone": clone, "env": env}
    try:
        t0 = time.monotonic()
        readme_journeys.run(readme_journeys.journeys()[("gpu-server", "box")],
                            lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env, timeout=1200),
                            background(user, clone, env))
        info["detach_seconds"] = time.monotonic() - t0
        status = clone / "logs" / "journey.status"
        deadline = time.monotonic() + 900
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(2)
        info["run_seconds"] = time.monotonic() - t0
        log_file = clone / "logs" / "journey.log"
        log = log_file.read_text() if log_file.exists() else ""
        assert status.exists() and status.read_text().strip() == "0", log[-4000:]
        print(f"quickstart (b), box: detached in {info['detach_seconds']:.0f} s, run ended after "
              f"{info['run_seconds']:.0f} s")
        yield info
    finally:
        pid_file = clone / "logs" / "mlflow-server.pid"
        if pid_file.is_file():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
        user.run(["tmux", "kill-server"], cwd=workdir, env={"TMUX_TMPDIR": str(workdir)})


def test_quickstart_b_a_detached_make_run_seen_through_a_forwarded_port(box_journey, user, image):
    """The run ends FINISHED, and the laptop sees it through `ssh -L 5001:127.0.0.1:5000` (socat stands in
    for the SSH forward): before, the server refused any Host but its own port (403 Invalid Host)."""
    require_tool("socat")
    clone, env = box_journey["clone"], {**box_journey["env"], "FORWARD_PORT": str(free_port())}
    procs = readme_journeys.run(readme_journeys.journeys()[("gpu-server", "laptop")],
                                lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env),
                                background(user, clone, env))
    try:
        forwarded = f"http://localhost:{env['FORWARD_PORT']}"
        wait_http(f"{forwarded}/health")
        with urllib.request.urlopen(f"{forwarded}/", timeout=30) as page:  # the UI's page itself
            assert page.status == 200 and b"MLflow" in page.read()
        import mlflow

        c = mlflow.MlflowClient(forwarded)
        [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.docker.image.id"] == image["id"]
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(5))
        assert run.data.params["data_source"] == "synthetic" and "test_accuracy" in run.data.metrics
        assert (clone / ".venv-host").is_dir() and not (clone / ".venv").exists()  # the light env only
        assert not foreign_files(clone, user.uid)
    finally:
        stop(procs)


def test_quickstart_c_a_laptop_pulls_the_box_store_and_opens_the_ui_on_another_port(
    box_journey, user, checkout, workdir, package_cache
):
    """A fresh clone with only the light env (`make pull`/`make ui` needed the full TensorFlow env
    before): the box's store, in use by its server, pulled from a path; the UI on another port lists the
    run's artifacts."""
    require_tool("rsync")
    clone = fresh_clone(user, checkout, workdir, "journey-c")
    env = {**package_cache, "PATH": JOURNEY_PATH, "HOST_PYTHON": "python3",
           "BOX_STORE": str(box_journey["clone"] / "store"), "UI_PORT": str(free_port())}
    procs = readme_journeys.run(readme_journeys.journeys()[("laptop", "")],
                                lambda cmd: user.run(["bash", "-c", cmd], cwd=clone, env=env, timeout=900),
                                background(user, clone, env))
    try:
        ui = f"http://localhost:{env['UI_PORT']}"
        wait_http(f"{ui}/health", proc=procs[0])
        import mlflow

        c = mlflow.MlflowClient(ui)
        [run] = c.search_runs([c.get_experiment_by_name("kerasflow").experiment_id])
        listed = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "curves.png", "metrics.json"} <= listed, listed
        # what make run registered (-P register_model=demo) was promoted on the laptop, in the light env
        champion = c.get_model_version_by_alias("demo", "champion")
        assert champion.run_id == run.info.run_id, champion
        assert (clone / "store" / "mlflow.db").is_file() and not (clone / ".venv").exists()
    finally:
        stop(procs)
