# Sourced by the top-level scripts (project_driver.bash, run_script.bash, run_mlflow_ui.bash), which are
# shims over `python -m kerasflow ...`: the one place that finds the host's Python environment.
# shellcheck shell=bash

KF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "error: $*" >&2
  exit 2
}

# The Python environment of this checkout's host-side commands, which has MLflow and this checkout linked
# as kerasflow: the first that exists of KERASFLOW_PYTHON (make passes its choice: the full .venv, else
# the light .venv-host), the project image's /opt/venv (inside the container, even when the mounted
# checkout holds a host's .venv), the checkout's .venv, its .venv-host.
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
  # none yet: make the light one (MLflow, no TensorFlow; Python >= 3.10), as `make run` would
  command -v make > /dev/null || die "no Python environment with MLflow for this checkout: run \`$target\` (it makes the light one, MLflow without TensorFlow, on demand), or set KERASFLOW_PYTHON"
  echo "note: no Python environment for this checkout yet: making the light one (make host-env, once)" >&2
  make -C "$KF_ROOT" --no-print-directory host-env >&2 || die "making the light one (MLflow without TensorFlow) failed (see above): run \`$target\` once it is fixed, or set KERASFLOW_PYTHON"
  echo "$KF_ROOT/.venv-host/bin/python"
}
