# shellcheck shell=bash
# What the stack, tool and benchmark scripts share (sourced, never run):
#
#   siphon_load_versions             set each KEY=VALUE of e2e/versions.env not set already
#   siphon_abspath PATH              canonical absolute path (need not exist yet)
#   siphon_port_busy PORT            0 when something listens on PORT (any address)
#   siphon_port_open PORT            0 when 127.0.0.1:PORT accepts a connection
#   siphon_pid_matching FILE WORD... the pid in FILE, when that process's command
#                                    line holds every WORD (ours, not a reused pid)
#   siphon_err TAG MESSAGE...        "TAG: MESSAGE" on stderr
#
#   PG_MAIN_CONF                     the main PostgreSQL instance's settings beyond
#                                    postgres.sh's defaults: stack.sh starts it with
#                                    them, bench/run.sh restarts a stopped one with them
#
# Written for callers running `set -euo pipefail`.

SIPHON_ROOT="${SIPHON_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)}"

PG_MAIN_CONF=("max_replication_slots = 160" "max_wal_senders = 160" "max_connections = 600")

siphon_load_versions() {
  local f="$SIPHON_ROOT/e2e/versions.env" line key val
  [[ -r $f ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
    val=${val%\"} val=${val#\"} val=${val%\'} val=${val#\'}
    [[ -n ${!key:-} ]] || printf -v "$key" '%s' "$val"
  done <"$f"
}

siphon_abspath() { realpath -m -- "$1"; }

siphon_port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

siphon_port_busy() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]] && return 0
  fi
  siphon_port_open "$port"
}

siphon_pid_matching() {
  local file=$1 pid cmd word
  shift
  [[ -r $file ]] || return 1
  pid=$(head -n1 "$file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  for word in "$@"; do
    [[ "$cmd " == *"$word"* ]] || return 1
  done
  echo "$pid"
}

siphon_err() {
  local tag=$1
  shift
  echo "$tag: $*" >&2
}
