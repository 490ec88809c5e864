"""Render MLproject from config.yaml, so its parameters mirror the config exactly (types, defaults).

    kerasflow mlproject > MLproject      # `make mlproject`; a test fails when it is stale

Each entry point runs `python -m kerasflow COMMAND` (the command of the same name; `main` is `track`):
in the container MLflow runs it in the project folder, so that checkout's kerasflow is the one imported.
"""

from __future__ import annotations

import json
import re
import sys
from typing import get_type_hints

from kerasflow import cli, config

HEADER = """\
# Generated from config.yaml by `make mlproject`: edit config.yaml (or kerasflow/cli/mlproject.py), not this.
# Each parameter mirrors a config key (same name and default); each entry point takes only the config
# sections it uses (config.SECTIONS), the rest comes from config.yaml; `--set` validates the values.
# Run it with `make run` (kerasflow/launch: tracking server, image build, GPU, tmux over SSH), or:
#   mlflow run . -A network=host [-A gpus=all] -P epochs=3 --experiment-name kerasflow
# with MLFLOW_TRACKING_URI=http://127.0.0.1:5000 (`make server`): MLflow mounts only the run's artifact
# folder into the container, so models logged to a local store from inside it would be lost.
name: kerasflow
docker_env:
  # built by make run / make image from docker/Dockerfile (tagged with the commit too)
  image: kerasflow:latest
  # MLflow runs this command with bash in the project folder, so ${PWD} is this checkout: the code,
  # data/ and outputs/ are the host's; the CUDA JIT cache survives in a named volume.
  volumes: ["${PWD}:/workspace", "kerasflow-cuda-cache:/cache/nv"]
  environment:
    - ["PYTHONHASHSEED", "0"]
    - ["TF_DETERMINISTIC_OPS", "1"]
    - ["KERAS_HOME", "/opt/keras"]
    - ["TFDS_DATA_DIR", "/workspace/data/tfds"]
    - ["CUDA_CACHE_MAXSIZE", "4294967296"]
"""

MLFLOW_TYPES = {str: "string", bool: "string", int: "float", float: "float"}


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z0-9_./-]+", value) else json.dumps(value)  # YAML-safe
    return repr(value)


TRAINING = ("data", "model", "train", "speed", "output", "resources")
ENTRY_POINTS = {
    # name: (kerasflow command, the config sections it takes as parameters, extra parameters as (name, type,
    # default, flag)); keys of other sections come from config.yaml, so `-P` cannot set what the entry
    # point does not use (the splits entry point takes no learning_rate)
    "main": ("track", TRAINING, [("register_model", "string", '""', "--register"),
                                           ("model_alias", "string", "candidate", "--alias")]),
    "splits": ("splits", ("data", "folds", "resources"),
               [("out", "string", "outputs/splits.json", "--out")]),
    "cv": ("cv", (*TRAINING, "folds"), [("n_outer", "float", "0", "--n-outer"),
                                           ("n_inner", "float", "0", "--n-inner")]),
    "tune": ("tune", (*TRAINING, "search"),
             [("trials", "float", "20", "--trials"), ("workers", "float", "1", "--workers"),
              ("study", "string", "search", "--study"), ("storage", "string", '""', "--storage"),
              ("role", "string", "lead", "--role"),
              ("register_model", "string", '""', "--register"),
              ("model_alias", "string", "candidate", "--alias")]),
}
ANALYZE = [("filter", "string", '""', "--filter"), ("positive", "string", '""', "--positive"),
           ("max_runs", "float", "200", "--max-runs")]
REPRODUCE = [("tolerance", "float", "1e-6", "--tolerance")]


def render() -> str:
    cfg = config.load()
    hints = get_type_hints(config.Config)
    # the search space is a mapping: it comes from the config file, not from a parameter
    values = cfg.to_dict()
    lines = [HEADER, "entry_points:"]
    for name, (command, sections, extra) in ENTRY_POINTS.items():
        # in config.yaml's order; the search space is a mapping: it comes from the file, not a parameter
        params = [(k, MLFLOW_TYPES[hints[k]], _default(values[k])) for k in config.keys()
                  if config.section_of(k) in sections and hints[k] is not dict]
        sets = " ".join(f"--set {k}={{{k}}}" for k, _, _ in params)
        lines += [f"  {name}:", "    parameters:"]
        lines += [f"      {k}: {{type: {t}, default: {d}}}" for k, t, d in params]
        lines += [f"      {k}: {{type: {t}, default: {d}}}" for k, t, d, _ in extra]
        flags = " ".join(f"{flag} {{{k}}}" for k, _, _, flag in extra)
        lines += ["    command: >-", f"      python -m kerasflow {command} {sets}", f"      {flags}"]
    lines += ["  analyze:", "    parameters:"]
    lines += [f"      {k}: {{type: {t}, default: {d}}}" for k, t, d, _ in ANALYZE]
    lines += ["    command: >-", "      python -m kerasflow analyze "
              + " ".join(f"{flag} {{{k}}}" for k, _, _, flag in ANALYZE)]
    lines += ["  reproduce:", "    parameters:", "      run_id: {type: string}"]
    lines += [f"      {k}: {{type: {t}, default: {d}}}" for k, t, d, _ in REPRODUCE]
    lines += ["    command: >-", "      python -m kerasflow reproduce {run_id} "
              + " ".join(f"{flag} {{{k}}}" for k, _, _, flag in REPRODUCE), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__, config_flags=False)
    p.parse_args(argv)
    return cli.guard(lambda: sys.stdout.write(render()))
