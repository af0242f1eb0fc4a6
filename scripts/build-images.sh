#!/usr/bin/env bash
# build-images.sh makes sure the two container images used by the integration
# and e2e tests exist in the local Docker engine:
#
#   rowcast/postgres:15   (override with ROWCAST_POSTGRES_IMAGE)
#   rowcast/redis:7       (override with ROWCAST_REDIS_IMAGE)
#
# For each image that is missing it first tries a quick pull of the official
# image (postgres:15-bookworm, redis:7-bookworm) and tags it with our name.
# When no registry is reachable it builds an equivalent image from Debian
# bookworm packages with debootstrap (one root filesystem holding both
# postgresql-15 and redis-server, imported once and finished twice).
# The apt mirror is read from this machine's apt sources.
#
# The script is idempotent: images already present are left alone.
#
# Environment:
#   ROWCAST_POSTGRES_IMAGE  name of the postgres image (default rowcast/postgres:15)
#   ROWCAST_REDIS_IMAGE     name of the redis image    (default rowcast/redis:7)
#   ROWCAST_CACHE_DIR       parent directory of the temporary build root (default /tmp)
#   ROWCAST_PULL_TIMEOUT    seconds allowed for each official pull (default 20)
#   ROWCAST_DEBIAN_MIRROR   Debian mirror URL; default: taken from the apt sources
set -euo pipefail

POSTGRES_IMAGE="${ROWCAST_POSTGRES_IMAGE:-rowcast/postgres:15}"
REDIS_IMAGE="${ROWCAST_REDIS_IMAGE:-rowcast/redis:7}"
POSTGRES_OFFICIAL="postgres:15-bookworm"
REDIS_OFFICIAL="redis:7-bookworm"
PULL_TIMEOUT="${ROWCAST_PULL_TIMEOUT:-20}"
SUITE="bookworm"
BASE_IMAGE="rowcast/debian-services:bookworm-build"

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SUDO=()
if [[ ${EUID} -ne 0 ]]; then
	command -v sudo >/dev/null 2>&1 || die "debootstrap needs root; run as root or install sudo"
	SUDO=(sudo)
fi

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
	die "no Docker engine reachable: start Docker or set DOCKER_HOST"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# try_pull IMAGE OFFICIAL: pull OFFICIAL within PULL_TIMEOUT and tag it IMAGE.
try_pull() {
	local image="$1" official="$2"
	if have_image "${official}"; then
		log "found ${official} locally, tagging it ${image}"
		docker tag "${official}" "${image}"
		return 0
	fi
	log "pulling ${official} (timeout ${PULL_TIMEOUT}s)"
	if timeout "${PULL_TIMEOUT}" docker pull --quiet "${official}" >/dev/null 2>&1; then
		log "pulled ${official}, tagging it ${image}"
		docker tag "${official}" "${image}"
		return 0
	fi
	log "cannot pull ${official}; will build ${image} from Debian packages"
	return 1
}

# debian_mirror prints the URI of the apt source that serves the bookworm suite.
# It reads deb822 files (/etc/apt/sources.list.d/*.sources) first, then the
# classic one-line format (/etc/apt/sources.list and *.list).
debian_mirror() {
	if [[ -n "${ROWCAST_DEBIAN_MIRROR:-}" ]]; then
		printf '%s\n' "${ROWCAST_DEBIAN_MIRROR}"
		return 0
	fi
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -r "$f" ]] || continue
		# A stanza ends at a blank line; keep the first URI of the first stanza
		# whose Suites field has the word "bookworm" (not bookworm-updates etc.).
		uri="$(awk -v suite="${SUITE}" '
			function flush() {
				if (!found && types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no" && has_suite && uri != "") {
					print uri; found = 1
				}
				types = "deb"; uri = ""; has_suite = 0; enabled = "yes"
			}
			BEGIN { types = "deb"; enabled = "yes" }
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { flush(); next }
			{
				key = tolower($1); sub(/:$/, "", key)
				if (key == "types") { types = ""; for (i = 2; i <= NF; i++) types = types " " $i }
				else if (key == "uris") { uri = $2 }
				else if (key == "enabled") { enabled = tolower($2) }
				else if (key == "suites") { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
			}
			END { flush() }
		' "$f")"
		if [[ -n "${uri}" ]]; then
			printf '%s\n' "${uri}"
			return 0
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -r "$f" ]] || continue
		# deb [options] URL SUITE COMPONENTS...
		uri="$(awk -v suite="${SUITE}" '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
				if ($(i + 1) == suite) { print $i; exit }
			}
		' "$f")"
		if [[ -n "${uri}" ]]; then
			printf '%s\n' "${uri}"
			return 0
		fi
	done
	return 1
}

ROOT_PARENT=""
cleanup_root() {
	[[ -n "${ROOT_PARENT}" && -d "${ROOT_PARENT}" ]] || return 0
	# debootstrap mounts /proc and /sys inside the root and may leave them
	# mounted when it fails: unmount everything below the root before deleting.
	local mnt
	while read -r mnt; do
		"${SUDO[@]}" umount -l "${mnt}" 2>/dev/null || true
	done < <(awk -v p="${ROOT_PARENT}/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
	log "removing build root ${ROOT_PARENT}"
	"${SUDO[@]}" rm -rf --one-file-system "${ROOT_PARENT}"
	ROOT_PARENT=""
}
trap cleanup_root EXIT

# write_entrypoint ROOT installs /usr/local/bin/docker-entrypoint.sh, which
# follows the contracts of the official postgres and redis images.
write_entrypoint() {
	local root="$1"
	"${SUDO[@]}" tee "${root}/usr/local/bin/docker-entrypoint.sh" >/dev/null <<'ENTRYPOINT'
#!/bin/bash
# Entry point of the rowcast/postgres and rowcast/redis images built from
# Debian packages. It mimics the official images:
#   postgres ARGS...       initialise $PGDATA on first start, then run postgres
#   redis-server ARGS...   run redis-server (also when ARGS start with - or a .conf)
#   anything else          exec'd unchanged
set -Eeuo pipefail

as_user() {
	local user="$1"
	shift
	exec setpriv --reuid="${user}" --regid="${user}" --init-groups -- "$@"
}

postgres_init() {
	local user="${POSTGRES_USER:-postgres}"
	local db="${POSTGRES_DB:-$user}"
	local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [[ -z "${POSTGRES_PASSWORD:-}" && "${auth}" != "trust" ]]; then
		echo "docker-entrypoint: POSTGRES_PASSWORD is empty; set it or POSTGRES_HOST_AUTH_METHOD=trust" >&2
		exit 1
	fi
	echo "docker-entrypoint: initialising database cluster in ${PGDATA}"
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, like in the official image
	initdb -D "${PGDATA}" --username="${user}" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
		--encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host="${auth}" \
		${POSTGRES_INITDB_ARGS:-} >/dev/null
	printf '\nhost all all all %s\n' "${auth}" >>"${PGDATA}/pg_hba.conf"
	printf "\nlisten_addresses = '*'\n" >>"${PGDATA}/postgresql.conf"

	# A temporary server reachable only through the unix socket runs the setup.
	pg_ctl -D "${PGDATA}" -o "-c listen_addresses=''" -w start
	local psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username="${user}")
	if [[ "${db}" != "postgres" ]]; then
		"${psql[@]}" --dbname=postgres --set=db="${db}" <<-'SQL'
			CREATE DATABASE :"db";
		SQL
	fi
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sh) echo "docker-entrypoint: running $f"; bash "$f" ;;
		*.sql) echo "docker-entrypoint: running $f"; "${psql[@]}" --dbname="${db}" -f "$f" ;;
		*.sql.gz) echo "docker-entrypoint: running $f"; gzip -dc "$f" | "${psql[@]}" --dbname="${db}" ;;
		*) [[ -e "$f" ]] && echo "docker-entrypoint: ignoring $f" ;;
		esac
	done
	pg_ctl -D "${PGDATA}" -m fast -w stop
	echo "docker-entrypoint: PostgreSQL init process complete; ready for start up."
}

run_postgres() {
	: "${PGDATA:=/var/lib/postgresql/data}"
	export PGDATA
	if [[ "$(id -u)" == "0" ]]; then
		mkdir -p "${PGDATA}" /var/run/postgresql
		chown postgres:postgres "${PGDATA}" /var/run/postgresql
		chmod 700 "${PGDATA}"
		chmod 2775 /var/run/postgresql
		as_user postgres "${BASH_SOURCE[0]}" "$@"
	fi
	if [[ ! -s "${PGDATA}/PG_VERSION" ]]; then
		postgres_init
	fi
	shift # the "postgres" word
	exec postgres "$@"
}

run_redis() {
	shift # the "redis-server" word
	local args=()
	if [[ $# -gt 0 && "$1" != -* ]]; then
		# A configuration file comes first and owns the settings.
		args=("$1")
		shift
	else
		# Like the official image: reachable from other containers and the
		# host without a password, no persistence unless asked for.
		args=(--protected-mode no --bind 0.0.0.0 --save '' --appendonly no)
	fi
	if [[ "$(id -u)" == "0" ]]; then
		mkdir -p /data
		chown redis:redis /data
		cd /data
		as_user redis redis-server "${args[@]}" "$@"
	fi
	exec redis-server "${args[@]}" "$@"
}

if [[ $# -eq 0 ]]; then
	set -- "${ROWCAST_DEFAULT_SERVER:-postgres}"
fi
if [[ "$1" == -* || "$1" == *.conf ]]; then
	# Bare flags: the image's command decides which server they are for.
	set -- "${ROWCAST_DEFAULT_SERVER:-postgres}" "$@"
fi
case "$1" in
postgres) run_postgres "$@" ;;
redis-server) run_redis "$@" ;;
*) exec "$@" ;;
esac
ENTRYPOINT
	"${SUDO[@]}" chmod 0755 "${root}/usr/local/bin/docker-entrypoint.sh"
}

# build_root ROOT MIRROR: debootstrap bookworm with both servers, then trim it.
build_root() {
	local root="$1" mirror="$2"
	if ! command -v debootstrap >/dev/null 2>&1; then
		log "installing debootstrap with apt-get"
		"${SUDO[@]}" apt-get update -qq
		"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	fi
	log "debootstrap ${SUITE} (postgresql-15, redis-server, redis-sentinel) from ${mirror} into ${root}"
	local started=${SECONDS}
	if ! "${SUDO[@]}" debootstrap --variant=minbase --include=postgresql-15,redis-server,redis-sentinel \
		"${SUITE}" "${root}" "${mirror}" >"${ROOT_PARENT}/debootstrap.log" 2>&1; then
		tail -n 30 "${ROOT_PARENT}/debootstrap.log" >&2 || true
		die "debootstrap failed (log above)"
	fi
	log "debootstrap done in $((SECONDS - started))s"

	log "trimming docs, man pages, translations, apt caches and the default Debian cluster"
	"${SUDO[@]}" bash -euo pipefail -c '
		root="$1"
		rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
			"$root"/usr/share/lintian "$root"/usr/share/linda \
			"$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
			"$root"/var/cache/apt/archives/*.deb "$root"/var/cache/debconf/*-old \
			"$root"/var/log/*.log "$root"/var/log/apt/* \
			"$root"/etc/postgresql/15/main "$root"/var/lib/postgresql/15
		# translations: keep none (the C locale needs no files here)
		find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
		# locale definitions other than C.UTF-8 (normally not installed in minbase)
		if [[ -d "$root"/usr/lib/locale ]]; then
			find "$root"/usr/lib/locale -mindepth 1 -maxdepth 1 ! -iname "C.utf8" ! -iname "C.UTF-8" -exec rm -rf {} +
		fi
		mkdir -p "$root"/var/lib/postgresql/data "$root"/var/run/postgresql "$root"/data \
			"$root"/docker-entrypoint-initdb.d
		chroot "$root" chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
		chroot "$root" chown redis:redis /data
		chmod 700 "$root"/var/lib/postgresql/data
		chmod 2775 "$root"/var/run/postgresql
	' trim "${root}"
	write_entrypoint "${root}"
}

# finish_image NAME DOCKERFILE: adds image metadata on top of BASE_IMAGE.
# The legacy builder is used because it needs no registry and no buildx
# plugin; "docker import --change" cannot set STOPSIGNAL on older engines.
finish_image() {
	local name="$1" dockerfile="$2"
	log "tagging ${name}"
	if DOCKER_BUILDKIT=0 docker build --quiet --tag "${name}" - >/dev/null 2>"${ROOT_PARENT}/build.err" <<<"${dockerfile}"; then
		return 0
	fi
	cat "${ROOT_PARENT}/build.err" >&2
	die "docker build of ${name} failed"
}

main() {
	local need_pg=0 need_redis=0
	if have_image "${POSTGRES_IMAGE}"; then
		log "${POSTGRES_IMAGE} already present, skipping"
	elif ! try_pull "${POSTGRES_IMAGE}" "${POSTGRES_OFFICIAL}"; then
		need_pg=1
	fi
	if have_image "${REDIS_IMAGE}"; then
		log "${REDIS_IMAGE} already present, skipping"
	elif ! try_pull "${REDIS_IMAGE}" "${REDIS_OFFICIAL}"; then
		need_redis=1
	fi
	if [[ ${need_pg} -eq 0 && ${need_redis} -eq 0 ]]; then
		log "all images present"
		return 0
	fi

	local mirror
	mirror="$(debian_mirror)" || die "no apt source for ${SUITE} found in /etc/apt; set ROWCAST_DEBIAN_MIRROR"
	local parent="${ROWCAST_CACHE_DIR:-/tmp}"
	mkdir -p "${parent}"
	ROOT_PARENT="$(mktemp -d "${parent%/}/rowcast-rootfs.XXXXXX")"
	local root="${ROOT_PARENT}/root"
	local started=${SECONDS}
	build_root "${root}" "${mirror}"

	log "importing root filesystem as ${BASE_IMAGE} ($("${SUDO[@]}" du -sh "${root}" | cut -f1))"
	"${SUDO[@]}" tar -C "${root}" --numeric-owner -c . | docker import - "${BASE_IMAGE}" >/dev/null
	cleanup_root
	ROOT_PARENT="$(mktemp -d "${parent%/}/rowcast-build.XXXXXX")"

	local path="PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if [[ ${need_pg} -eq 1 ]]; then
		finish_image "${POSTGRES_IMAGE}" "FROM ${BASE_IMAGE}
LABEL org.rowcast.image.source=\"debian ${SUITE} postgresql-15 via scripts/build-images.sh\"
ENV ${path} LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data ROWCAST_DEFAULT_SERVER=postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT [\"docker-entrypoint.sh\"]
CMD [\"postgres\"]"
	fi
	if [[ ${need_redis} -eq 1 ]]; then
		finish_image "${REDIS_IMAGE}" "FROM ${BASE_IMAGE}
LABEL org.rowcast.image.source=\"debian ${SUITE} redis-server via scripts/build-images.sh\"
ENV ${path} LANG=C.UTF-8 ROWCAST_DEFAULT_SERVER=redis-server
WORKDIR /data
EXPOSE 6379
ENTRYPOINT [\"docker-entrypoint.sh\"]
CMD [\"redis-server\"]"
	fi
	# The finished images keep the layer; only the helper tag goes away.
	docker rmi "${BASE_IMAGE}" >/dev/null
	local name
	for name in "${POSTGRES_IMAGE}" "${REDIS_IMAGE}"; do
		log "${name}: $(docker image inspect --format '{{.Id}} {{.Size}} bytes' "${name}")"
	done
	log "built from Debian packages in $((SECONDS - started))s"
}

main "$@"
