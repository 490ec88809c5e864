# Shared by run_script.bash and project_driver.bash (sourced, not run): the image tag, building it
# when missing or stale, GPU detection, and one-line errors (exit 2).
# shellcheck shell=bash

KF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KF_IMAGE_REPO="${KF_IMAGE_REPO:-kerasflow}"

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "note: $*" >&2
}

# Docker installed and its daemon reachable, or one line saying what to do.
# The Python environment of this checkout's host-side commands (make run, make ui), which has MLflow and
# this checkout linked as kerasflow: the first that exists of KERASFLOW_PYTHON (make passes its choice:
# the full .venv, else the light .venv-host), the project image's /opt/venv (inside the container, even
# when the mounted checkout holds a host's .venv), the checkout's .venv, its .venv-host.
# Argument: the make target that makes one (named in the error).
host_python() {
  local candidate target="$1"
  if [ -n "${KERASFLOW_PYTHON:-}" ]; then
    [ -x "$KERASFLOW_PYTHON" ] || die "no Python environment at KERASFLOW_PYTHON=$KERASFLOW_PYTHON: run make env (or make host-env), or unset it"
    echo "$KERASFLOW_PYTHON"
    return 0
  fi
  for candidate in /opt/venv/bin/python "$KF_ROOT/.venv/bin/python" "$KF_ROOT/.venv-host/bin/python"; do
    if [[ "$candidate" != /opt/venv/* || -e /opt/venv/.kerasflow-image ]] && [[ -x "$candidate" ]]; then
      echo "$candidate"
      return 0
    fi
  done
  die "no Python environment with MLflow for this checkout: run \`$target\` (it makes the light one, MLflow without TensorFlow, on demand), or set KERASFLOW_PYTHON"
}

check_docker() {
  command -v docker > /dev/null 2>&1 \
    || die "docker is not installed: install Docker Engine (https://docs.docker.com/engine/install/)"
  local out
  if ! out="$(docker info --format '{{.ServerVersion}}' 2>&1)"; then
    die "the Docker daemon is not reachable ($(head -n 1 <<< "$out")): start it (sudo systemctl start docker) or check DOCKER_HOST and your docker group membership"
  fi
}

# The image bakes in its user's UID/GID (files it writes in the checkout are theirs), so on a server
# shared by several users each gets their own: kerasflow:<commit>[-dirty]-u<UID>.<GID>.
user_suffix() {
  echo "u$(id -u).$(id -g)"
}

image_tag() {
  local commit dirty=""
  commit="$(git -C "$KF_ROOT" rev-parse --short=12 HEAD 2> /dev/null || echo nogit)"
  if [ -n "$(git -C "$KF_ROOT" status --porcelain 2> /dev/null)" ]; then
    dirty="-dirty"
  fi
  echo "${KF_IMAGE_REPO}:${commit}${dirty}-$(user_suffix)"
}

# MLproject's docker_env names ONE image, kerasflow:latest, for every user of the engine. So `make run`
# points kerasflow:latest at the user's image under an engine-wide lock held until the run's container
# exists, which covers MLflow's lookup of the name and its `docker run`: another user's `make run` waits
# those seconds instead of starting our image, or we theirs.
# Arguments: the image, the container name to wait for, the pid whose exit also ends the wait.
point_latest() {
  local image="$1" container="$2" owner="$3" lock="${KF_LATEST_LOCK:-/tmp/kerasflow-latest.lock}" fd
  # created readable by all; opened read-only (flock needs no more), so a file another user created
  # in a sticky /tmp opens too (an O_CREAT open of it would be refused there)
  [ -e "$lock" ] || (umask 022 && : >> "$lock") 2> /dev/null || true
  exec {fd}< "$lock" || die "cannot open the image lock $lock: remove it (it holds nothing) or set KF_LATEST_LOCK"
  if ! flock -n "$fd"; then
    note "another make run is starting its container (lock $lock): waiting"
    flock "$fd"
  fi
  docker tag "$image" "${KF_IMAGE_REPO}:latest" || die "cannot tag $image as ${KF_IMAGE_REPO}:latest"
  (
    # the lock's holder from here: until the container exists, the run ended, or 10 minutes
    for _ in $(seq 1200); do
      docker container inspect "$container" > /dev/null 2>&1 && exit 0
      kill -0 "$owner" 2> /dev/null || exit 0
      sleep 0.5
    done
  ) > /dev/null 2>&1 &
  exec {fd}<&-
}

# `docker build` arguments taken from the environment, so a user behind a mirror (or a machine with no
# registry) builds without editing files: BASE_IMAGE, TF_VARIANT, VGG16_WEIGHTS_URL, VGG16_WEIGHTS_MD5,
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL (URLs only: a host path would not exist inside the build). The same
# list as .devcontainer.json's build args, and passed the same way, empty when unset (the Dockerfile reads
# empty as its default): the builder's cache key holds each value, so only then do `make run` and "Reopen
# in Container" share the image's dependency layers instead of installing TensorFlow twice.
BUILD_VARS=(BASE_IMAGE TF_VARIANT VGG16_WEIGHTS_URL VGG16_WEIGHTS_MD5 PIP_INDEX_URL PIP_EXTRA_INDEX_URL)
build_args() {
  local name
  for name in "${BUILD_VARS[@]}"; do
    printf '%s\n' --build-arg "$name=${!name:-}"
  done
  printf '%s\n' --build-arg "USER_UID=$(id -u)" --build-arg "USER_GID=$(id -g)"
  # An engine without the default bridge network (--bridge=none) builds on the host network.
  if ! docker network inspect bridge > /dev/null 2>&1; then
    printf '%s\n' --network host
  fi
}

# docker build with the classic builder where the CLI has no buildx (BuildKit would refuse to start).
docker_build() {
  if docker buildx version > /dev/null 2>&1; then
    docker build "$@"
  else
    DOCKER_BUILDKIT=0 docker build "$@"
  fi
}

# Build the image when it is missing, or always for a dirty tree (its tag cannot tell what changed;
# the layer cache makes that a code-layer-only rebuild). Prints the image name on stdout.
ensure_image() {
  local image
  image="$(image_tag)"
  if [[ "$image" == *-dirty ]] || ! docker image inspect "$image" > /dev/null 2>&1; then
    note "building $image (docker/Dockerfile): the first build takes minutes, later ones reuse its layers"
    local args
    mapfile -t args < <(build_args)
    docker_build --file "$KF_ROOT/docker/Dockerfile" "${args[@]}" \
      --tag "$image" --tag "${KF_IMAGE_REPO}:latest-$(user_suffix)" "$KF_ROOT" >&2 \
      || die "building $image failed (see the docker output above)"
  fi
  echo "$image"
}

# docker's --gpus value for GPUS=all|0|0,1 (default all). docker reads the value as CSV, so a list must
# keep its double quotes: `--gpus "device=0,1"` (unquoted, device=0,1 means device 0 plus count=1).
gpus_value() {
  local want="${GPUS:-all}" count="${1:-}"
  if [ "$want" = all ]; then
    echo all
    return 0
  fi
  [[ "$want" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "GPUS=$want is not 'all' or GPU indices like 0 or 0,1"
  if [ -n "$count" ]; then
    local i
    for i in ${want//,/ }; do
      [ "$i" -lt "$count" ] || die "GPUS=$want names GPU $i, but \`nvidia-smi -L\` lists $count (0-$((count - 1)))"
    done
  fi
  echo "\"device=$want\""
}

# The --gpus value (gpus_value) when a GPU can be used, else nothing. GPU=auto (default) falls back to
# CPU with a note; GPU=on refuses to run without one; GPU=off never asks.
gpu_args() {
  local mode="${GPU:-auto}" runtimes="" gpus=""
  case "$mode" in
    off) return 0 ;;
    on | auto) ;;
    *) die "GPU=$mode is not one of auto, on, off" ;;
  esac
  runtimes="$(docker info --format '{{json .Runtimes}}' 2> /dev/null || true)"
  if command -v nvidia-smi > /dev/null 2>&1; then
    gpus="$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)"
  fi
  if [[ "$runtimes" == *nvidia* ]] && [ "${gpus:-0}" -gt 0 ]; then
    gpus_value "$gpus"
    return 0
  fi
  local why="no NVIDIA container runtime in \`docker info\`"
  [[ "$runtimes" == *nvidia* ]] && why="\`nvidia-smi -L\` lists no GPU"
  if [ "$mode" = on ]; then
    die "GPU=on but $why: install the NVIDIA driver and nvidia-container-toolkit, or run with GPU=off"
  fi
  note "$why: running on CPU (GPU=on makes this an error)"
}

# DATA=/host/folder: a dataset outside the checkout, mounted read-only at /data (e.g. --set
# image_dir=/data/cell_images, or tfds_data_dir=/data/tfds). Prints its absolute path, or nothing.
data_dir() {
  [ -n "${DATA:-}" ] || return 0
  [ -d "$DATA" ] || die "DATA=$DATA is not a folder: give the dataset folder to mount at /data (read-only)"
  (cd "$DATA" && pwd)
}

# `mlflow run` joins docker's arguments into ONE `bash -c` line: a path with a space or a shell
# character would be split or expanded there.
check_shell_safe() {
  [[ "$2" =~ ^[A-Za-z0-9_./@+-]+$ ]] || die "$1 $2 holds a space or a shell character, which \`mlflow run\` cannot pass to docker: move it to a plain path"
}
