#!/usr/bin/env bash
# `make run`: train with `mlflow run` in the project image, tracked by an MLflow server on this host.
#
#   ./project_driver.bash [-e ENTRY] [--experiment NAME] [--name RUN] [--detach|--foreground] [--no-wait]
#                         [-P k=v ...]
#
#   -e ENTRY        the MLproject entry point: main (default), splits, cv, tune, analyze, reproduce
#   --experiment    the MLflow experiment (default: kerasflow)
#   --name RUN      the run's name: its tmux session, log and container (default: ENTRY-<time>)
#   --detach        start in a detached tmux session (the default over SSH); --foreground: never
#   --no-wait       refuse to start when the run's GPUs (or CPU slot) are busy, instead of waiting in line
#   -P key=value    a parameter of the entry point (a config.yaml key, e.g. -P epochs=3), repeatable
#   Environment: GPU=auto|on|off, GPUS=all|0|0,1, CPU_SLOTS=N (a line for CPU runs too), DATA=/host/dataset
#   (mounted at /data, read-only), PORT (default: the store's own, first free from 5000, kept in
#   STORE/server-port), STORE (./store), MLFLOW_TRACKING_URI (a team server;
#   http://user:pass@host works), KERASFLOW_QUEUE_DIR (the machine's line, /tmp/kerasflow-queue).
#
# First, in the foreground (kerasflow/preflight.py): the engine answers, the NVIDIA runtime is there
# when a GPU is asked for, the dataset the config needs is present, the server port is free or this
# store's own; each failure is one line with its fix and nothing is started.
# Then: 1. the server in MLFLOW_TRACKING_URI, or this store's own (kerasflow server on
# 127.0.0.1:$PORT over ./store: MLflow mounts only the run's artifact folder into the container, so
# models logged inside docker to a local store would be lost; through the server they are not);
# 2. the user's image, built when missing or stale (docker/lib.bash: kerasflow:<commit>-u<UID>.<GID>;
# the first build takes minutes), with kerasflow:latest, the image MLproject names, pointed at it
# until the run's container exists (an engine-wide lock: several users share one engine);
# 3. `mlflow run . -e ENTRY -A network=host [-A gpus=...] [-A volume=DATA:/data:ro] -P ...`.
# Detached, it logs to logs/<name>.log and writes the exit status to logs/<name>.status. Before step 1
# the run waits for its devices in the machine's line, every user's (kerasflow/runqueue.py: one lock per
# GPU; on CPU with CPU_SLOTS=N, N slots; `make queue` shows it, `make cancel NAME=...` leaves it);
# detached, it waits inside its tmux session. A stopped run (make cancel, Ctrl-C, a hangup) ends KILLED.
set -euo pipefail

# shellcheck source=docker/lib.bash
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker/lib.bash"

# A detached driver gets its environment from a 0600 file in a private folder (below), never from tmux's
# command line: the tmux server keeps that argv for its life, and every user of the box reads it in `ps`.
if [ -n "${KF_DETACHED_ENV:-}" ]; then
  while IFS= read -r -d '' line; do export "${line%%=*}=${line#*=}"; done < "$KF_DETACHED_ENV"
  rm -rf "$(dirname "$KF_DETACHED_ENV")"
  unset KF_DETACHED_ENV
fi

PORT="${PORT:-}"
STORE="$(realpath -m -- "${STORE:-$KF_ROOT/store}")"
PYTHON="$(host_python "make run")"
[[ "$PYTHON" == /* ]] || PYTHON="$PWD/$PYTHON"
MLFLOW="$(dirname "$PYTHON")/mlflow"
entry="main" experiment="kerasflow" name="" mode="auto" no_wait=()
params=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -e | --entry) entry="${2:?}"; shift 2 ;;
    --experiment) experiment="${2:?}"; shift 2 ;;
    --name) name="${2:?}"; shift 2 ;;
    --detach) mode="detach"; shift ;;
    --foreground) mode="foreground"; shift ;;
    --no-wait) no_wait=(--no-wait); shift ;;
    -P) params+=(-P "${2:?}"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1': see ./project_driver.bash --help" ;;
  esac
done
[ -z "$name" ] || [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name '$name' may only hold letters, digits, '.', '_' and '-'"
logs="$(realpath -m -- "${LOGS:-$KF_ROOT/logs}")"
mkdir -p "$logs"
if [ -z "$name" ]; then
  # An automatic name (ENTRY-TIME, then -2, -3...) is claimed by creating its log exclusively (noclobber):
  # two `make run` started in the same second are two runs, with their own log, tmux session and container.
  base="$entry-$(date +%Y%m%d-%H%M%S)" n=1 name="$base"
  until (set -o noclobber; : > "$logs/$name.log") 2> /dev/null; do
    n=$((n + 1)) name="$base-$n"
  done
  trap '[ -s "$logs/$name.log" ] || rm -f "$logs/$name.log"' EXIT  # a run that never started leaves no log
fi
session="${KF_TMUX_SESSION:-kerasflow}-$name"  # one tmux session per run

# Tracking credentials (http://user:pass@host, or MLFLOW_TRACKING_USERNAME/PASSWORD) never go on a
# command line: MLflow prints and logs the `docker run -e NAME=VALUE ...` it builds, and tmux's command
# is in `ps`. They go into a 0600 env file in a private folder, handed to docker with -A env-file=...
# and to a detached driver by its path (KF_ENV_FILE); the URI keeps only scheme://host:port. The same
# file carries KERASFLOW_STUDY_STORAGE, the database URL of a shared Optuna study (`-e tune`).
if [ -z "${KF_ENV_FILE:-}" ] && [ -n "${MLFLOW_TRACKING_URI:-}${MLFLOW_TRACKING_USERNAME:-}${KERASFLOW_STUDY_STORAGE:-}" ]; then
  KF_ENV_FILE="$(mktemp -d)/mlflow.env"
  MLFLOW_TRACKING_URI="$("$PYTHON" -m kerasflow env-file "$KF_ENV_FILE")"
  export MLFLOW_TRACKING_URI KF_ENV_FILE
fi
if [ -n "${KF_ENV_FILE:-}" ]; then
  # each line is NAME=VALUE, the value taken whole: `IFS='=' read key value` dropped a single trailing
  # '=' (base64 padding in a password)
  while IFS= read -r line || [ -n "$line" ]; do
    if [ -n "$line" ]; then export "${line%%=*}=${line#*=}"; fi
  done < "$KF_ENV_FILE"
fi

# One driver per run name: a second `make run --name X` while X runs is refused (its log, status and
# container are X's). The lock is flock(1)'s: taken atomically, released by the kernel when its holder
# dies, however it dies; a driver that re-executes itself from the queue (KF_QUEUE_HELD) keeps it.
lock="$logs/run-$name.lock"
command -v flock > /dev/null || die "flock is not installed (util-linux): apt-get install util-linux"
if [ -z "${KF_QUEUE_HELD:-}" ]; then
  exec {lock_fd}>> "$lock"
  if ! flock -n "$lock_fd"; then
    die "a run named '$name' is already in progress ($(cat "$lock.run" 2> /dev/null || echo '?')): choose another --name, or attach with: tmux attach -t $session"
  fi
fi

# Everything that can fail in seconds is checked now, in the foreground, before anything is started,
# built or detached (a detached run would fail in a log nobody reads, after building an 8 GB image).
if [ -z "${KF_PREFLIGHT_DONE:-}" ]; then
  check_shell_safe "the checkout" "$KF_ROOT"  # MLproject mounts it as ${PWD} in mlflow's bash -c line
  PORT="$("$PYTHON" -m kerasflow preflight --root "$KF_ROOT" --entry "$entry" --image "$(image_tag)" \
    ${PORT:+--port "$PORT"} --store "$STORE" --logs "$logs" "${params[@]}")"
  export PORT  # the store's own port from here on (the driver runs again from the queue)
fi

if [ "$mode" = detach ] || { [ "$mode" = auto ] && [ -n "${SSH_CONNECTION:-}" ] && [ -z "${TMUX:-}" ]; }; then
  command -v tmux > /dev/null || die "tmux is not installed (needed to keep the run alive after you log out): apt-get install tmux, or pass --foreground"
  tmux has-session -t "=$session" 2> /dev/null && die "tmux session '$session' exists: tmux attach -t $session, or end it"
  # a tmux server that already runs would not pass this shell's environment on: pass it explicitly
  if [ "${#no_wait[@]}" -gt 0 ]; then  # refused now, in the foreground, not in a log nobody reads
    "$PYTHON" -m kerasflow queue-wait --name "$name" --log /dev/null --status /dev/null --no-wait -- true
  fi
  exec {lock_fd}>&-  # the detached driver takes the name itself
  envdir="$(mktemp -d)"  # 0700: the file below is read by the detached driver, then removed with it
  GPU="${GPU:-auto}" KF_TMUX_SESSION="${KF_TMUX_SESSION:-kerasflow}" KF_PREFLIGHT_DONE=1 LOGS="$logs"
  KERASFLOW_PYTHON="$PYTHON"
  for var in PATH PORT STORE KERASFLOW_PYTHON LOGS GPU KF_TMUX_SESSION KF_PREFLIGHT_DONE HOME USER DOCKER_HOST \
    MLFLOW_TRACKING_URI KF_ENV_FILE GPUS CPU_SLOTS KERASFLOW_QUEUE_DIR DATA KERASFLOW_NOTIFY \
    KERASFLOW_NOTIFY_START KERASFLOW_NOTIFY_TIMEOUT "${BUILD_VARS[@]}"; do
    if [ -n "${!var:-}" ]; then printf '%s=%s\0' "$var" "${!var}"; fi
  done > "$envdir/env"
  cmd=(env "KF_DETACHED_ENV=$envdir/env" "$KF_ROOT/project_driver.bash" -e "$entry" --experiment "$experiment"
       --name "$name" --foreground "${no_wait[@]}" "${params[@]}")
  tmux new-session -d -s "$session" -c "$KF_ROOT" "$(printf '%q ' "${cmd[@]}")"
  trap - EXIT  # the claimed log is the detached run's now
  echo "started '$name' in tmux session '$session' (detached)"
  if [ -z "${MLFLOW_TRACKING_URI:-}" ]; then
    echo "  watch:   http://127.0.0.1:$PORT   (from a laptop: ssh -L $PORT:127.0.0.1:$PORT ${HOSTNAME:-HOST})"
  fi
  echo "  follow:  tail -f $logs/$name.log"
  echo "  attach:  tmux attach -t $session     (detach again: Ctrl-b d)"
  echo "  status:  cat $logs/$name.status      (the exit code, once it ends)"
  echo "  queue:   make queue                      (its place in line; make cancel NAME=$name stops it)"
  exit 0
fi

# The machine's line (kerasflow/runqueue.py): wait for this run's devices, then this driver is executed
# again holding their locks (inherited by `mlflow run`, released when the run ends, however it ends).
if [ -z "${KF_QUEUE_HELD:-}" ]; then
  export KF_QUEUE_HELD=1 KF_PREFLIGHT_DONE=1
  tracking_url="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$PORT}"
  rm -f "$logs/$name.status"
  exec "$PYTHON" -m kerasflow queue-wait --name "$name" --log "$logs/$name.log" --status "$logs/$name.status" \
    --session "$session" --tracking "${tracking_url%/}" "${no_wait[@]}" -- \
    "$KF_ROOT/project_driver.bash" -e "$entry" --experiment "$experiment" --name "$name" --foreground \
    "${params[@]}"
fi

echo "$name (pid $$)" > "$lock.run"
trap 'rm -f "$lock.run"; [ -z "${KF_ENV_FILE:-}" ] || rm -rf "$(dirname "$KF_ENV_FILE")"' EXIT
log="$logs/$name.log"
rm -f "$logs/$name.status"
stopped=""  # the signal a user's stop came with: the MLflow run then ends KILLED, not FAILED

answers() {  # kerasflow/ports.py: the one health probe
  "$PYTHON" -m kerasflow health "$@"
}

# The server was checked by the preflight (kerasflow/preflight.py: a given one answers, a local one on
# PORT is this store's own); here it is used, or started.
ensure_server() {
  if [ -n "${MLFLOW_TRACKING_URI:-}" ]; then
    server_url="${MLFLOW_TRACKING_URI%/}"
    note "using the MLflow server from MLFLOW_TRACKING_URI"
    return 0
  fi
  server_url="http://127.0.0.1:$PORT"
  if answers "$server_url"; then
    note "using this store's MLflow server at $server_url (over SSH: ssh -L $PORT:127.0.0.1:$PORT ${HOSTNAME:-HOST})"
    "$PYTHON" -m kerasflow proxy-artifacts "$STORE" "$experiment"
    return 0
  fi
  note "starting an MLflow server at $server_url over $STORE (over SSH: ssh -L $PORT:127.0.0.1:$PORT ${HOSTNAME:-HOST}; log: $logs/mlflow-server.log; make server-stop stops it)"
  # its own session: it outlives this run, and the hangup a detached run's tmux pane sends its process
  # group when the run ends made uvicorn restart its workers (seconds without a server, just when the
  # next run in line starts); setsid does not fork here (a background job leads no group), so $! is it
  nohup setsid "$PYTHON" -m kerasflow server "$STORE" --port "$PORT" > "$logs/mlflow-server.log" 2>&1 &
  echo "$!" > "$logs/mlflow-server.pid"
  if answers "$server_url" --wait 180 --pid "$(cat "$logs/mlflow-server.pid")"; then
    "$PYTHON" -m kerasflow proxy-artifacts "$STORE" "$experiment"
    return 0
  fi
  die "the MLflow server did not come up on $server_url: $(tail -n 1 "$logs/mlflow-server.log")"
}

# The run goes in the background and this shell waits for it, so that SIGTERM/SIGHUP (a dropped SSH
# session without tmux, `kill`, a shutdown) and Ctrl-C reach the traps below at once: bash runs a trap
# only after a foreground command ends. `mlflow run` itself ignores them (inherited SIG_IGN): killed, it
# would leave the MLflow run RUNNING and the container training. Instead a trap stops the container
# this run named; `mlflow run` then sees it fail, ends the run FAILED and exits.
launch() {
  set -e
  check_docker
  ensure_server
  gpu="$(gpu_args)"
  data="$(data_dir)"
  image="$(ensure_image)"
  point_latest "$image" "kerasflow-$name" "$BASHPID"  # this shell becomes `mlflow run` (exec below)
  # host network: the container reaches the server on 127.0.0.1; init: signals reach the training
  # (not PID 1); a name per run: `docker stop kerasflow-NAME` stops exactly this one.
  run_args=(-A network=host -A init -A "name=kerasflow-$name")
  [ -z "${KF_ENV_FILE:-}" ] || run_args+=(-A "env-file=$KF_ENV_FILE")
  # single quotes keep the value's double quotes through MLflow's `bash -c` line (gpus_value)
  [ -n "$gpu" ] && run_args+=(-A "gpus='$gpu'")
  if [ -n "$data" ]; then
    check_shell_safe DATA "$data"
    run_args+=(-A "volume=$data:/data:ro")
  fi
  # MLflow puts the experiment's id and local artifact path in its `bash -c` line unquoted: they come
  # from the server (any member of a team server makes experiments), so they are checked, and the run
  # is started by id (kerasflow/track/shell_line.py)
  experiment_id="$(MLFLOW_TRACKING_URI="$server_url" "$PYTHON" -m kerasflow experiment-id "$experiment")"
  echo "mlflow run . -e $entry --experiment-id $experiment_id ($experiment) ${run_args[*]} ${params[*]}"
  trap '' HUP TERM INT
  # its own session: a hangup or Ctrl-C reaches this driver's traps, never the `docker run` client,
  # whose signal proxy would pass it on to the training even when SIGHUP is ignored (`nohup make run`:
  # Go re-enables an ignored signal it is asked to catch); the traps stop the container themselves
  MLFLOW_TRACKING_URI="$server_url" exec setsid "$MLFLOW" run "$KF_ROOT" -e "$entry" \
    --experiment-id "$experiment_id" "${run_args[@]}" "${params[@]}"
}

# shellcheck disable=SC2329  # invoked by the traps below
stop_run() {
  stopped="$1"
  echo "driver: $1: stopping container kerasflow-$name (the MLflow run ends KILLED)" >> "$log"
  docker stop --time 10 "kerasflow-$name" > /dev/null 2>&1 || true
}

if [ -n "${KERASFLOW_NOTIFY_START:-}" ] && [ -n "${KERASFLOW_NOTIFY:-}" ]; then
  "$PYTHON" -m kerasflow notify-run --started --name "$name" --log "$log" 2>&1 | tee --output-error=warn -a "$log" || true
fi
[ -n "${KF_QUEUE_HELD:-}" ] || : > "$log"  # (from the queue: its waiting lines stay) tee appends (O_APPEND), so the traps' lines land in order; it shows the run on stderr
launch > >(trap '' HUP TERM INT; exec tee --output-error=warn -a "$log" >&2) 2>&1 &
child=$!
trap 'stop_run SIGTERM' TERM
trap 'stop_run SIGHUP' HUP
trap 'stop_run SIGINT' INT
set +e  # the run's own exit status is recorded, not acted on
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2> /dev/null || break  # a trap interrupted the wait: wait again for the real end
done
trap - TERM HUP INT
if [ -n "$stopped" ] && [ "$status" != 0 ]; then  # `mlflow run` marked the run FAILED as the container ended
  MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$PORT}" "$PYTHON" -m kerasflow end-run \
    --log "$log" --status KILLED 2>&1 | tee --output-error=warn -a "$log"
fi
if [ -n "${KERASFLOW_NOTIFY:-}" ]; then  # one message per run (kerasflow/notify.py); never fails the run
  MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$PORT}" "$PYTHON" -m kerasflow notify-run \
    --name "$name" --log "$log" --exit "$status" 2>&1 | tee --output-error=warn -a "$log" || true
fi
set -e
echo "$status" > "$logs/$name.status"
echo "exit status $status ($logs/$name.status)" | tee --output-error=warn -a "$log"
exit "$status"
