#!/usr/bin/env bash
# The main job on the embedded default (SQLite, in-process cache, django-q2's ORM broker):
# install, migrate, load the demo data, then run the web server, one django-q2 cluster and the
# payment gateway simulator in the foreground. Ctrl-C stops all three.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"

bootstrap_venv
PY="$VENV/bin/python"
export DJANGO_SETTINGS_MODULE=l2c.settings.base
export DJANGO_DEBUG="${DJANGO_DEBUG:-true}"
WEB_PORT="${WEB_PORT:-8000}"
GATEWAY_PORT="${GATEWAY_PORT:-8001}"
export PAYMENT_GATEWAY_URL="${PAYMENT_GATEWAY_URL:-http://127.0.0.1:$GATEWAY_PORT}"
VAR_DIR="${L2C_VAR_DIR:-$ROOT/var}"
export L2C_VAR_DIR="$VAR_DIR"
mkdir -p "$VAR_DIR"

"$PY" manage.py migrate --noinput
"$PY" manage.py load_demo

pids=()
stop_all() {
  trap - INT TERM HUP EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all INT TERM HUP EXIT

"$PY" manage.py gateway_simulator --host 127.0.0.1 --port "$GATEWAY_PORT" --db "$VAR_DIR/gateway.sqlite3" &
pids+=($!)
# Own session: Ctrl-C reaches the whole foreground group, and django-q2 deadlocks when a
# second signal (the TERM below) lands while it handles the first. stop_all sends one TERM.
setsid "$PY" manage.py qcluster &
pids+=($!)
"$PY" manage.py runserver "127.0.0.1:$WEB_PORT" --noreload &
pids+=($!)

echo "Console: http://127.0.0.1:$WEB_PORT/admin/   API: http://127.0.0.1:$WEB_PORT/api/   (Ctrl-C stops)"
# Stop everything as soon as any one of the three exits.
wait -n "${pids[@]}"
