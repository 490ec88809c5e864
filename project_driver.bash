#!/usr/bin/env bash
# `make run` = `kerasflow run` (kerasflow/launch/): train with `mlflow run` in the project image, tracked by
# this store's MLflow server, in tmux over SSH. Options and environment: ./project_driver.bash --help.
set -euo pipefail

# shellcheck source=docker/lib.bash
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker/lib.bash"

python="$(host_python "make run")"
exec "$python" -m kerasflow run --root "$KF_ROOT" "$@"
