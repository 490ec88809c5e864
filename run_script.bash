#!/usr/bin/env bash
# Run any command inside the project image, with this checkout mounted at /workspace:
#
#   ./run_script.bash python train.py --set epochs=3
#   GPU=off ./run_script.bash make test          # GPU=auto (default) | on | off; GPUS=all | 0 | 0,1
#   DATA=/srv/cells ./run_script.bash python train.py --set data_source=image_dir --set image_dir=/data
#   PORTS="8888 5000" ./run_script.bash jupyter lab --ip 0.0.0.0 --no-browser
#
# Builds the image when it is missing or stale (tag: the git commit, -dirty for a dirty tree), runs as
# your UID:GID (files it writes are yours), --rm --init, the GPU when one is usable, every published
# port bound to 127.0.0.1 only, and the CUDA JIT cache in the volume kerasflow-cuda-cache.
set -euo pipefail

# shellcheck source=docker/lib.bash
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker/lib.bash"

[ "$#" -gt 0 ] || die "give the command to run: ./run_script.bash python train.py --set epochs=3"
check_docker
gpu="$(gpu_args)"
data="$(data_dir)"
image="$(ensure_image)"

# the label finds this checkout's containers: docker ps --filter label=kerasflow.checkout=$PWD
args=(run --rm --init --user "$(id -u):$(id -g)" --volume "$KF_ROOT:/workspace" --workdir /workspace
      --volume kerasflow-cuda-cache:/cache/nv --label "kerasflow.checkout=$KF_ROOT")
[ -t 0 ] && [ -t 1 ] && args+=(--interactive --tty)
[ -n "$gpu" ] && args+=(--gpus "$gpu")
[ -n "$data" ] && args+=(--volume "$data:/data:ro")
for port in ${PORTS:-}; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORTS must be port numbers, got '$port'"
  args+=(--publish "127.0.0.1:$port:$port")
done
exec docker "${args[@]}" "$image" "$@"
