"""Render MLproject from config.yaml, so its parameters mirror the config exactly (types, defaults).

    python -m kerasflow.mlproject > MLproject      # `make mlproject`; a test fails when it is stale
"""

from __future__ import annotations

import shlex
import sys
from typing import get_type_hints

from kerasflow import config

HEADER = """\
# Generated from config.yaml by `make mlproject`: edit config.yaml (or kerasflow/mlproject.py), not this.
# Each parameter mirrors a config key (same name and default); `--set` validates the values.
# Run: mlflow run . --env-manager local -P epochs=3 --experiment-name kerasflow
name: kerasflow
python_env: python_env.yaml
"""

MLFLOW_TYPES = {str: "string", bool: "string", int: "float", float: "float"}


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else shlex.quote(value) if " " in value else value
    return repr(value)


def render() -> str:
    cfg = config.load()
    hints = get_type_hints(config.Config)
    params = [(k, MLFLOW_TYPES[hints[k]], _default(v)) for k, v in cfg.to_dict().items()]
    lines = [HEADER, "entry_points:", "  main:", "    parameters:"]
    lines += [f"      {k}: {{type: {t}, default: {d}}}" for k, t, d in params]
    lines += ["      register_model: {type: string, default: \"\"}",
              "      model_alias: {type: string, default: candidate}"]
    sets = " ".join(f"--set {k}={{{k}}}" for k, _, _ in params)
    lines += ["    command: >-",
              f"      python train_mlflow.py {sets}",
              "      --register {register_model} --alias {model_alias}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
