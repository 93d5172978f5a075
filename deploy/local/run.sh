#!/usr/bin/env bash
# `make run`: start the local stack (unless DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS
# are given), then `python -m worker serve` in the foreground. Ctrl-C stops
# the service and the servers this script started.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
started=()
cleanup() {
  for script in "${started[@]}"; do "$here/$script" stop || true; done
}
trap cleanup EXIT
if [ -z "${DATABASE_URL:-}" ]; then
  started+=(postgres.sh)
  DATABASE_URL=$("$here/postgres.sh" start)
  export DATABASE_URL
fi
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  started+=(kafka.sh)
  KAFKA_BOOTSTRAP_SERVERS=$("$here/kafka.sh" start)
  export KAFKA_BOOTSTRAP_SERVERS
fi
# A development secret unless one is configured; `python -m worker sign`
# uses the same variable to sign test requests.
export FANFARE_WEBHOOK_SECRET=${FANFARE_WEBHOOK_SECRET:-whsec_local_development_only}
export LOG_FORMAT=${LOG_FORMAT:-console}
echo "database: $DATABASE_URL  kafka: $KAFKA_BOOTSTRAP_SERVERS" >&2
# Not exec: the trap must run after serve exits to stop the servers.
"$repo/.venv/bin/python" -m worker serve || status=$?
exit "${status:-0}"
