#!/usr/bin/env bash
# A real Docker engine for the container tests and CI, on machines where none runs yet.
#
#   tests/engine.bash start   # no-op when `docker info` already answers; else starts dockerd (root)
#   tests/engine.bash stop    # stops the daemon ONLY if `start` started it (by its pid)
#   tests/engine.bash status
#
# The daemon gets no bridge network (--bridge=none, no iptables/masquerading): containers use the
# host network (`--network host`) or none. Its state lives in $KF_ENGINE_DIR (default
# /var/lib/kerasflow-engine), so the layer cache survives between runs on the same machine.
set -euo pipefail

dir="${KF_ENGINE_DIR:-/var/lib/kerasflow-engine}"
marker="$dir/started.pid"

die() {
  echo "error: $*" >&2
  exit 2
}

answers() {
  timeout 20 docker info --format '{{.ServerVersion}}' > /dev/null 2>&1
}

start() {
  if answers; then
    echo "engine: a Docker engine already answers (left as it is)"
    return 0
  fi
  command -v docker > /dev/null || die "no docker CLI: apt-get install docker.io"
  command -v dockerd > /dev/null || die "no dockerd: apt-get install docker.io containerd runc"
  [ "$(id -u)" = 0 ] || die "starting dockerd needs root: run tests/engine.bash start as root, or start your engine"
  mkdir -p "$dir/root" "$dir/exec"
  # a stale pid file of a daemon that died would stop the new one from starting
  rm -f "$dir/docker.pid"
  getent group docker > /dev/null || groupadd --system docker
  nohup dockerd --data-root "$dir/root" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    --host unix:///var/run/docker.sock --group docker \
    --bridge=none --iptables=false --ip-masq=false > "$dir/dockerd.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$marker"
  for _ in $(seq 1 120); do
    if answers; then
      echo "engine: dockerd started (pid $pid, state in $dir, log $dir/dockerd.log)"
      return 0
    fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.5
  done
  kill "$pid" 2> /dev/null || true
  rm -f "$marker"
  die "dockerd did not answer within 60 s: see $dir/dockerd.log ($(tail -n 1 "$dir/dockerd.log" 2> /dev/null))"
}

stop() {
  if [ ! -f "$marker" ]; then
    echo "engine: not started by this script (left as it is)"
    return 0
  fi
  local pid
  pid="$(cat "$marker")"
  if kill -0 "$pid" 2> /dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.5
    done
    kill -0 "$pid" 2> /dev/null && kill -9 "$pid"
  fi
  rm -f "$marker"
  echo "engine: dockerd (pid $pid) stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "engine: answers"; else echo "engine: not reachable"; exit 1; fi ;;
  *) die "usage: tests/engine.bash start|stop|status" ;;
esac
