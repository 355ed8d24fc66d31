# Sourced by run.sh and test.sh: make .venv with the project installed.
# Usage: bootstrap_venv [extras]   e.g. bootstrap_venv dev
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11 is required (python3.11 not found)" >&2
  return 1
}

bootstrap_venv() {
  local extras="${1:-}"
  local py
  py=$(_python)
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      # Debian splits venv out of the interpreter package.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv >/dev/null
        rm -rf "$VENV"; "$py" -m venv "$VENV"
      else
        echo "cannot create a virtual environment: install python3.11-venv" >&2; return 1
      fi
    fi
  fi
  # Reinstall only when the declared dependencies change or more extras are asked for.
  local stamp="$VENV/.installed-$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
  if [ ! -f "$stamp" ] || ! grep -qx "${extras:-base}" "$stamp"; then
    local target="$ROOT"
    [ -n "$extras" ] && target="$ROOT[$extras]"
    # pip warns once per package about index folders this machine does not have: noise.
    "$VENV/bin/python" -m pip install -q -e "$target" 2> >(grep -v 'is ignored: it is neither' >&2)
    local previous=""
    [ -f "$stamp" ] && previous=$(cat "$stamp")
    rm -f "$VENV"/.installed-*
    printf '%s\nbase\n%s\n' "$previous" "${extras:-base}" | sed '/^$/d' | sort -u > "$stamp"
  fi
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
