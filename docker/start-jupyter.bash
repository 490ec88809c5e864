#!/usr/bin/env bash
# The devcontainer's postStartCommand: JupyterLab on 127.0.0.1:8888 INSIDE the container (VS Code
# forwards the port through `docker exec`, so nothing listens on the host's network), with a random
# token, in the background. Its log goes to logs/jupyter.log; the URL with the token to logs/jupyter.url.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
port="${JUPYTER_PORT:-8888}"
mkdir -p logs
if jupyter server list 2> /dev/null | grep -q "127.0.0.1:$port/"; then
  echo "JupyterLab already runs: jupyter server list"
  exit 0
fi
# a listener makes the bind fail; a closed connection in TIME_WAIT (SO_REUSEADDR, as Jupyter's) does not
if ! python3 -c 'import socket as s, sys; k = s.socket(); k.setsockopt(s.SOL_SOCKET, s.SO_REUSEADDR, 1)
k.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2> /dev/null; then
  echo "error: port $port on 127.0.0.1 is busy (another Jupyter or server?): set JUPYTER_PORT=another port" >&2
  exit 2
fi
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
# The token goes through the environment, not argv: `ps` would show it to anyone in the container.
extra=()
[ "$(id -u)" = 0 ] && extra=(--allow-root)  # a root container (the image itself runs as dev)
JUPYTER_TOKEN="$token" nohup jupyter lab --no-browser --ip 127.0.0.1 --port "$port" "${extra[@]}" \
  --ServerApp.port_retries=0 --ServerApp.root_dir="$PWD" > logs/jupyter.log 2>&1 &
# port_retries=0: on a busy port Jupyter fails (see its log) instead of moving to another port, so the
# URL below stays true. Jupyter masks a token it was given, so the URL is written here, readable by you only.
(umask 077 && echo "http://127.0.0.1:$port/lab?token=$token" > logs/jupyter.url)
echo "JupyterLab is starting on 127.0.0.1:$port (forwarded by VS Code); log: logs/jupyter.log"
echo "Open it with the URL in logs/jupyter.url (or: jupyter server list)"
