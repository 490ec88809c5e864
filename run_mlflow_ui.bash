#!/usr/bin/env bash
# Open the MLflow UI on a store copied from another machine: fixes its absolute artifact paths, then
# starts the store's MLflow server on 127.0.0.1. Usage: ./run_mlflow_ui.bash [STORE] [--port N]   (default: ./store)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The first that exists: KERASFLOW_PYTHON (`make ui` passes its choice), the project image's /opt/venv
# (inside the container, even when the mounted checkout holds a host's .venv), the checkout's full
# .venv, the light .venv-host (MLflow, no TensorFlow). Each has this checkout linked as kerasflow.
python="${KERASFLOW_PYTHON:-}"
if [[ -z "$python" ]]; then
  for candidate in /opt/venv/bin/python "$here/.venv/bin/python" "$here/.venv-host/bin/python"; do
    if [[ "$candidate" != /opt/venv/* || -e /opt/venv/.kerasflow-image ]] && [[ -x "$candidate" ]]; then
      python="$candidate"
      break
    fi
  done
fi
if [[ -z "$python" || ! -x "$python" ]]; then
  echo "error: no Python environment with MLflow for this checkout: run \`make ui\` (it makes the light one, MLflow without TensorFlow, on demand), or set KERASFLOW_PYTHON" >&2
  exit 2
fi
exec "$python" -m kerasflow ui "$@"
