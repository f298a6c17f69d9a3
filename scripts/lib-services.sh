# shellcheck shell=bash
# Helpers for scripts/services.sh (sourced, not executed).
# Kept generic: nothing here knows about a particular server.

log()  { printf '[services] %s\n' "$*" >&2; }
die()  { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# Ports come from the environment, so reject garbage before it reaches a config file.
check_port() { # NAME VALUE
  if [[ ! "$2" =~ ^[0-9]{1,5}$ ]] || (( 10#$2 < 1 || 10#$2 > 65535 )); then
    die "$1='$2' is not a valid TCP port"
  fi
}

# True when something (anyone) listens on TCP port $1 on any local address.
# ss sees listeners bound to other addresses too; /dev/tcp is the fallback
# for minimal images without iproute2.
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
  else
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
  fi
}

tcp_connect() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Refuse to start when the port belongs to a process we did not start.
ensure_port_free() { # PORT ENVVAR WHAT
  if port_in_use "$1"; then
    die "port $1 (for $3) is already in use by a process this script did not start; \
stop it or choose another port with $2=<port>"
  fi
}

# Alive and not a zombie: our daemons are reparented to PID 1, which here
# may reap them only seconds later, and kill -0 succeeds on a zombie.
pid_alive() {
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${st:0:1}" != Z ]]
}

# PID from a pidfile if that process is alive AND is the expected program;
# the name check guards against a stale pidfile whose PID was reused.
pid_of() { # PIDFILE COMM
  local pid comm
  [[ -r "$1" ]] || return 1
  pid="$(head -n1 "$1" 2>/dev/null | tr -dc '0-9')"
  [[ -n "$pid" ]] && pid_alive "$pid" || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  [[ "$comm" == "$2" ]] || return 1
  printf '%s\n' "$pid"
}

# Poll a command until it succeeds or TIMEOUT seconds pass; exit status
# $GIVE_UP from the command means "will never succeed" (the server died).
# (Not 2: psql and others use 2 for a plain "could not connect".)
GIVE_UP=99
wait_until() { # TIMEOUT DESCRIPTION CMD...
  local timeout="$1" what="$2" rc; shift 2
  local deadline=$(( SECONDS + timeout ))
  while :; do
    rc=0; "$@" >/dev/null 2>&1 || rc=$?
    (( rc == 0 )) && return 0
    (( rc == GIVE_UP )) && { log "gave up waiting for $what: process exited"; return 1; }
    (( SECONDS < deadline )) || { log "timed out after ${timeout}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

# SIGTERM one of OUR pids and wait for it to go; SIGKILL only as a last resort.
stop_pid() { # PID NAME [TIMEOUT]
  local pid="$1" name="$2" timeout="${3:-20}" deadline
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$(( SECONDS + timeout ))
  while pid_alive "$pid"; do
    if (( SECONDS >= deadline )); then
      log "$name (pid $pid) ignored SIGTERM for ${timeout}s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
}

# apt-get update at most once per run, and only when something is missing.
APT_UPDATED=0
apt_install() { # PKG...
  (( $# )) || return 0
  if (( EUID != 0 )); then
    die "missing packages: $*. As root run:
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $*"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Another apt run (a colleague's) may hold the lock; wait instead of failing.
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  if (( ! APT_UPDATED )); then
    log "apt-get update"
    "${apt[@]}" update >&2
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  "${apt[@]}" install --no-install-recommends "$@" >&2
}

# Unix socket paths are limited to ~107 bytes; a deep clone path would make
# the servers fail to start, so callers drop the socket in that case.
socket_dir_ok() { # DIR PORTLEN_SUFFIX
  (( ${#1} + ${#2} < 100 ))
}

# Append a line to a file unless present; never rewrite the file, since
# other people edit it too.
append_line_once() { # FILE LINE
  if [[ -f "$1" ]] && grep -qxF "$2" "$1"; then return 0; fi
  if [[ -s "$1" && -n "$(tail -c1 "$1")" ]]; then printf '\n' >>"$1"; fi
  printf '%s\n' "$2" >>"$1"
}
