#!/usr/bin/env bash
# sweep-containers.sh removes the containers (with their anonymous volumes) and
# networks that testcontainers-go created, i.e. everything labelled
# org.testcontainers=true. Tests run with Ryuk disabled, so a test binary that
# is killed (timeout, ^C, crash) leaves its containers behind; run this to
# clean up.
#
# Beware: without --session this also removes the containers of test runs
# that are still going on against the same Docker engine.
#
# Usage: scripts/sweep-containers.sh [--dry-run] [--session SESSION_ID]
#   --dry-run            list what would be removed, remove nothing
#   --session ID         only resources labelled org.testcontainers.sessionId=ID
set -euo pipefail

dry_run=0
filters=(--filter label=org.testcontainers=true)
while [[ $# -gt 0 ]]; do
	case "$1" in
	--dry-run) dry_run=1 ;;
	--session)
		[[ $# -ge 2 ]] || { echo "sweep-containers: --session needs a value" >&2; exit 2; }
		filters+=(--filter "label=org.testcontainers.sessionId=$2")
		shift
		;;
	-h | --help)
		awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
		exit 0
		;;
	*) echo "sweep-containers: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done

log() { printf 'sweep-containers: %s\n' "$*" >&2; }

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
	{ log "error: no Docker engine reachable: start Docker or set DOCKER_HOST"; exit 1; }

mapfile -t containers < <(docker ps --all --quiet --no-trunc "${filters[@]}")
mapfile -t networks < <(docker network ls --quiet --no-trunc "${filters[@]}")

if [[ ${#containers[@]} -gt 0 ]]; then
	docker ps --all --no-trunc "${filters[@]}" --format '  container {{.ID}} {{.Image}} {{.Status}}' | cut -c1-110 >&2
fi
if [[ ${#networks[@]} -gt 0 ]]; then
	docker network ls --no-trunc "${filters[@]}" --format '  network {{.ID}} {{.Name}}' >&2
fi
if [[ ${dry_run} -eq 1 ]]; then
	log "dry run: would remove ${#containers[@]} container(s) and ${#networks[@]} network(s)"
	exit 0
fi

if [[ ${#containers[@]} -gt 0 ]]; then
	log "removing ${#containers[@]} container(s)"
	docker rm --force --volumes "${containers[@]}" >/dev/null
fi
if [[ ${#networks[@]} -gt 0 ]]; then
	log "removing ${#networks[@]} network(s)"
	docker network rm "${networks[@]}" >/dev/null
fi
log "removed ${#containers[@]} container(s) and ${#networks[@]} network(s)"
