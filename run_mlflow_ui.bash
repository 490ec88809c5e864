#!/usr/bin/env bash
# Open the MLflow UI on a store copied from another machine: fixes its absolute artifact paths, then
# starts the store's MLflow server on 127.0.0.1. Usage: ./run_mlflow_ui.bash [STORE] [--port N]   (default: ./store)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The checkout's .venv, else the project image's /opt/venv (inside the container), else KERASFLOW_PYTHON:
# each has this checkout linked as kerasflow (make env / the Dockerfile: kerasflow/envinstall.py).
python="${KERASFLOW_PYTHON:-$here/.venv/bin/python}"
if [[ -z "${KERASFLOW_PYTHON:-}" && ! -x "$python" && -e /opt/venv/.kerasflow-image ]]; then
  python=/opt/venv/bin/python
fi
# ... else the light host environment of a GPU server (make host-env: MLflow, no TensorFlow)
if [[ -z "${KERASFLOW_PYTHON:-}" && ! -x "$python" && -x "$here/.venv-host/bin/python" ]]; then
  python="$here/.venv-host/bin/python"
fi
if [[ ! -x "$python" ]]; then
  echo "error: no environment at $here/.venv: run \`make env\` (or \`make host-env\` on a GPU server) first, or set KERASFLOW_PYTHON" >&2
  exit 2
fi
exec "$python" -m kerasflow.storeops.ui "$@"
