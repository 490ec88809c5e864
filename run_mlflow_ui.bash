#!/usr/bin/env bash
# Open the MLflow UI on a store copied from another machine: fixes its absolute artifact paths, then
# starts `mlflow ui` on 127.0.0.1. Usage: ./run_mlflow_ui.bash [STORE] [--port N]   (default: ./store)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${KERASFLOW_PYTHON:-$here/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
  echo "error: no environment at $here/.venv: run \`make env\` first (or set KERASFLOW_PYTHON)" >&2
  exit 2
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m kerasflow.storeops.ui "$@"
