#!/usr/bin/env bash
# Run any command inside the project image, with this checkout mounted at /workspace (`kerasflow
# run-script`, kerasflow/cli/run_script.py):
#
#   ./run_script.bash python train.py --set epochs=3
#   GPU=off ./run_script.bash make test          # GPU=auto (default) | on | off; GPUS=all | 0 | 0,1
#   DATA=/srv/cells ./run_script.bash python train.py --set data_source=image_dir --set image_dir=/data
#   PORTS="8888 5000" ./run_script.bash jupyter lab --ip 0.0.0.0 --no-browser
set -euo pipefail

# shellcheck source=docker/lib.bash
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker/lib.bash"

python="$(host_python "make shell")"
exec "$python" -m kerasflow run-script --root "$KF_ROOT" "$@"
