#!/usr/bin/env bash
# Open the MLflow UI on a store copied from another machine: fixes its absolute artifact paths, then
# starts the store's MLflow server on 127.0.0.1. Usage: ./run_mlflow_ui.bash [STORE] [--port N]   (default: ./store)
set -euo pipefail

# shellcheck source=docker/lib.bash
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker/lib.bash"

python="$(host_python "make ui")"  # KERASFLOW_PYTHON from make ui, else the image's, .venv, .venv-host
exec "$python" -m kerasflow ui "$@"
