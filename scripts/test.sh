#!/usr/bin/env bash
# The whole test suite on a throwaway PostgreSQL and Redis: installs what is missing (Debian
# packages and the Python environment), starts both on free ports, runs lint and pytest, and
# stops them at exit. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
source "$(dirname "$0")/services.sh"
cd "$ROOT"

echo "== installing what the tests need"
ci_apt_install_services
bootstrap_venv dev
PY="$VENV/bin/python"

echo "== lint"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== starting PostgreSQL and Redis"
trap ci_services_down EXIT
ci_pg_up "$(free_port)"
ci_redis_up "$(free_port)"
export L2C_REQUIRE_SERVICES=true
export L2C_TEST_OUTPUT="${L2C_TEST_OUTPUT:-$ROOT/var/test-output}"
mkdir -p "$L2C_TEST_OUTPUT"

echo "== checks"
DJANGO_SETTINGS_MODULE=l2c.settings.test "$PY" manage.py makemigrations --check --dry-run >/dev/null \
  || { echo "models and migrations differ: run manage.py makemigrations" >&2; exit 1; }

echo "== pytest"
"$PY" -m pytest "$@"
