#!/usr/bin/env bash
# Throwaway PostgreSQL server on loopback for tests and `make run`, using the
# machine's PostgreSQL binaries (Debian's postgresql package).
#   postgres.sh start    initdb (first time), start; prints the DATABASE_URL
#   postgres.sh stop     fast shutdown
# initdb refuses to run as root, so as root the cluster belongs to the
# `postgres` user and lives where that user can reach it.
# Environment: STACK_DIR (default <repo>/.stack), PG_PORT (15432),
# PG_DATABASE (reservations), PG_FSYNC (on; tests set off: only an OS crash
# could lose data then, which no test simulates).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
STACK_DIR=${STACK_DIR:-$repo/.stack}
PG_PORT=${PG_PORT:-15432}
PG_DATABASE=${PG_DATABASE:-reservations}
PG_FSYNC=${PG_FSYNC:-on}
# Sized for a drop's write burst, as a production server for this service
# would be: checkpoints spaced out so a burst of holds is not doubled by
# full-page images in the WAL (the defaults checkpoint every 1 GB of WAL,
# which a million-event rebuild crosses several times).
PG_TUNING="-c shared_buffers=512MB -c wal_buffers=32MB -c max_wal_size=4GB -c checkpoint_timeout=15min -c checkpoint_completion_target=0.9"

bindir=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

datadir() {
  local d=$STACK_DIR/pg-$PG_PORT
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$STACK_DIR"
    # The postgres user must be able to traverse every parent directory.
    if ! runuser -u postgres -- test -x "$STACK_DIR"; then
      d=/tmp/fanfare-pg-$(printf '%s' "$STACK_DIR" | md5sum | cut -c1-12)-$PG_PORT
    fi
  fi
  echo "$d"
}

dir=$(datadir)

start() {
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    as_owner "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
      >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; exit 1; }
  fi
  if ! as_owner "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    as_owner "$bindir/pg_ctl" -D "$dir" -w -t 60 -l "$dir/server.log" start -o \
      "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c fsync=$PG_FSYNC -c max_connections=200 $PG_TUNING" \
      >/dev/null || { tail -n 30 "$dir/server.log" >&2; exit 1; }
  fi
  if ! as_owner "$bindir/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='$PG_DATABASE'" postgres | grep -q 1; then
    as_owner "$bindir/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$PG_DATABASE"
  fi
  echo "postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DATABASE"
}

stop() {
  if [ -f "$dir/PG_VERSION" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
