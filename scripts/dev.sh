#!/usr/bin/env bash
# dev.sh runs the whole system locally: Postgres and Redis (containers,
# unless DATABASE_URL / REDIS_URL are set), migrations, the listener and the
# app. `dev.sh alone` runs only Postgres and the app, which then relays
# in-process (no Redis, no listener). Ctrl-C stops everything it started.
#
# Usage: dev.sh [alone]
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8080}"
alone=false
case "${1:-}" in
	"") ;;
	alone) alone=true; unset REDIS_URL ;;
	*) echo "usage: dev.sh [alone]" >&2; exit 2 ;;
esac
started=()      # containers this script started
pids=()         # processes this script started

cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	for c in "${started[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_for() { # wait_for WHAT COMMAND...: retry for 30 s
	local what="$1"; shift
	for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "dev: $what did not come up" >&2; return 1
}

if [[ -z "${DATABASE_URL:-}" ]] || { ! $alone && [[ -z "${REDIS_URL:-}" ]]; }; then
	bash scripts/build-images.sh
fi
if [[ -z "${DATABASE_URL:-}" ]]; then
	name="rowcast-dev-postgres-$$"
	docker run -d --rm --name "$name" -p 127.0.0.1::5432 \
		-e POSTGRES_USER=rowcast -e POSTGRES_PASSWORD=rowcast -e POSTGRES_DB=rowcast \
		"${ROWCAST_POSTGRES_IMAGE:-rowcast/postgres:15}" postgres -c fsync=off >/dev/null
	started+=("$name")
	port=$(docker port "$name" 5432/tcp | head -n1 | sed 's/.*://')
	export DATABASE_URL="postgres://rowcast:rowcast@127.0.0.1:${port}/rowcast?sslmode=disable"
fi
if ! $alone && [[ -z "${REDIS_URL:-}" ]]; then
	name="rowcast-dev-redis-$$"
	docker run -d --rm --name "$name" -p 127.0.0.1::6379 \
		"${ROWCAST_REDIS_IMAGE:-rowcast/redis:7}" redis-server --protected-mode no >/dev/null
	started+=("$name")
	port=$(docker port "$name" 6379/tcp | head -n1 | sed 's/.*://')
	export REDIS_URL="redis://127.0.0.1:${port}/0"
fi

wait_for "postgres" ./bin/listener migrate
if ! $alone; then
	./bin/listener &
	pids+=($!)
fi
REDIS_URL="${REDIS_URL:-}" ROWCAST_DEMO=true LISTEN_ADDR="${LISTEN_ADDR:-:$PORT}" ./bin/app &
pids+=($!)
wait_for "app" curl -fsS "http://127.0.0.1:${PORT}/readyz"

cat <<MSG

  rowcast is running.
    demo page:  http://localhost:${PORT}/
    insert:     psql '${DATABASE_URL}' -c "INSERT INTO chat_message (room, author, body) VALUES ('lobby', 'me', 'hello')"
  Ctrl-C stops it.

MSG
wait -n "${pids[@]}"
