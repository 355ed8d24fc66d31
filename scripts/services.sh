# Sourced by test.sh: a throwaway PostgreSQL and Redis on free ports, from Debian's packages.
# ci_services_up exports DATABASE_URL and REDIS_URL; ci_services_down stops both (idempotent).

ci_apt_install_services() {
  local need=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # The browser tests drive Debian's chromium through Playwright (never its own download).
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # promtool checks the alert rules and their unit tests under deploy/.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL and Redis are missing: run as root (apt-get install ${need[*]})" >&2
    return 1
  fi
  # No 'main' cluster on 5432, and the packages must not start services on install.
  mkdir -p /etc/postgresql-common
  [ -f /etc/postgresql-common/createcluster.conf ] \
    || echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  if [ $had_policy = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 \
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  local rc=$?
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  return $rc
}

ci_pg_up() {
  local port=$1
  CI_PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  CI_PG_DIR=$(mktemp -d /tmp/l2c-pg.XXXXXX)
  local as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$CI_PG_DIR"   # initdb refuses to run as root
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$CI_PG_BIN/initdb" -D "$CI_PG_DIR/data" -U postgres --auth=trust \
    -E UTF8 --locale=C.UTF-8 --no-sync >"$CI_PG_DIR/initdb.log" 2>&1 \
    || { cat "$CI_PG_DIR/initdb.log"; return 1; }
  # Throwaway data: durability settings off. max_connections covers worker processes.
  "${as_pg[@]}" "$CI_PG_BIN/pg_ctl" -D "$CI_PG_DIR/data" -l "$CI_PG_DIR/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $CI_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$CI_PG_DIR/server.log"; return 1; }
  local i
  for i in $(seq 1 100); do "$CI_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
  "$CI_PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres app || return 1
  export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/app"
  export L2C_PG_BIN="$CI_PG_BIN" L2C_PG_DATA="$CI_PG_DIR/data" L2C_PG_RUN_AS="${as_pg[*]:-}"
}

ci_pg_down() {
  [ -n "${CI_PG_DIR:-}" ] || return 0
  local as_pg=()
  [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$CI_PG_BIN/pg_ctl" -D "$CI_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$CI_PG_DIR"
  CI_PG_DIR=
}

ci_redis_up() {
  local port=$1
  CI_REDIS_DIR=$(mktemp -d /tmp/l2c-redis.XXXXXX)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$CI_REDIS_DIR" --logfile "$CI_REDIS_DIR/redis.log" --daemonize no &
  CI_REDIS_PID=$!
  local i
  for i in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
  done
  redis-cli -p "$port" ping | grep -q PONG || { cat "$CI_REDIS_DIR/redis.log"; return 1; }
  export REDIS_URL="redis://127.0.0.1:$port/0"
  export L2C_REDIS_PORT="$port"
}

ci_redis_down() {
  [ -n "${CI_REDIS_PID:-}" ] || return 0
  # An outage test may have restarted Redis on the same port as a daemon: stop that too.
  redis-cli -p "$L2C_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  kill "$CI_REDIS_PID" 2>/dev/null || true
  wait "$CI_REDIS_PID" 2>/dev/null || true
  rm -rf "$CI_REDIS_DIR"
  CI_REDIS_PID=
}

ci_services_down() { ci_redis_down; ci_pg_down; }
