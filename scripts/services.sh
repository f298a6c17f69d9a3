#!/usr/bin/env bash
# The *_pid/*_ready functions are called indirectly (wait_until, status).
# shellcheck disable=SC2329
# Installs (if missing) and runs, on 127.0.0.1 only, the real servers that
# ogelkit's tests and benchmarks talk to:
#   PostgreSQL 15, PgBouncer, Redis 7, twemproxy (nutcracker), FerretDB 1.24.2.
#
# Usage: scripts/services.sh up|down|status|env
#   up      install what is missing, start what is not running, wait until ready
#   down    stop only the servers this script started (data is kept)
#   status  show each server as running/stopped (exit 3 if any is stopped)
#   env     print `export` lines for the test/bench environment variables
#
# All state lives in $OGELKIT_SERVICES_DIR (default <repo>/.services).
# Fixed default ports, each overridable by the variable shown in `env`.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
# shellcheck source=scripts/lib-services.sh
. "$SCRIPT_DIR/lib-services.sh"

SVC="${OGELKIT_SERVICES_DIR:-$REPO_DIR/.services}"
[[ "$SVC" = /* ]] || SVC="$PWD/$SVC"   # servers run from other cwds

PG_PORT="${OGELKIT_PG_PORT:-55432}"
REDIS_PORT="${OGELKIT_REDIS_PORT:-56379}"
FDB_PORT="${OGELKIT_FERRETDB_PORT:-57017}"
PGB_PORT="${OGELKIT_PGBOUNCER_PORT:-56432}"
TWEM_PORT="${OGELKIT_TWEMPROXY_PORT:-52121}"
TWEM_STATS_PORT="${OGELKIT_TWEMPROXY_STATS_PORT:-52222}"
for _v in OGELKIT_PG_PORT:$PG_PORT OGELKIT_REDIS_PORT:$REDIS_PORT \
          OGELKIT_FERRETDB_PORT:$FDB_PORT OGELKIT_PGBOUNCER_PORT:$PGB_PORT \
          OGELKIT_TWEMPROXY_PORT:$TWEM_PORT OGELKIT_TWEMPROXY_STATS_PORT:$TWEM_STATS_PORT; do
  check_port "${_v%%:*}" "${_v#*:}"
done

PG_PASSWORD=postgres
PG_BIN=/usr/lib/postgresql/15/bin
# set_pg_dirs: $SVC/pg and $SVC/pgbouncer may be symlinks (see relocate_pg_dirs);
# the postgres user must be handed the real paths.
set_pg_dirs() {
  PG_DIR="$SVC/pg"; PGB_DIR="$SVC/pgbouncer"
  if [[ -L "$PG_DIR" ]]; then PG_DIR="$(readlink -f "$PG_DIR")"; fi
  if [[ -L "$PGB_DIR" ]]; then PGB_DIR="$(readlink -f "$PGB_DIR")"; fi
  PG_DATA="$PG_DIR/data"; PG_SOCK="$PG_DIR/run"
}
set_pg_dirs
REDIS_DIR="$SVC/redis"
TWEM_DIR="$SVC/nutcracker"
FDB_DIR="$SVC/ferretdb"
FDB_VERSION=1.24.2
CACHE_DIR="${OGELKIT_CACHE_DIR:-${HOME:-/root}/.cache/ogelkit}"
FDB_BIN="$CACHE_DIR/bin/ferretdb"

PG_DSN="postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres"
PGB_DSN="postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PGB_PORT/bench"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
FDB_URL="mongodb://127.0.0.1:$FDB_PORT/"

# PostgreSQL and PgBouncer refuse to run as root; as non-root we are already fine.
as_pg() {
  if (( EUID == 0 )); then runuser -u postgres -- "$@"; else "$@"; fi
}
# cd first: the postgres user usually cannot read root's cwd, and initdb fails then.
as_pg_in() { local d="$1"; shift; (cd "$d" && as_pg "$@"); }
own_pg() { if (( EUID == 0 )); then chown -R postgres:postgres "$@"; fi; }

psql_tcp() { # client calls go over TCP so they also exercise scram auth
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -U postgres "$@"
}

# ---------------------------------------------------------------- install ---

ensure_packages() {
  local pkgs=()
  [[ -x "$PG_BIN/postgres" && -x "$PG_BIN/psql" ]] || pkgs+=(postgresql)
  [[ -x "$PG_BIN/pgbench" ]]     || pkgs+=(postgresql-contrib)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  { command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; } || pkgs+=(redis-tools)
  command -v pgbouncer  >/dev/null || pkgs+=(pgbouncer)
  command -v nutcracker >/dev/null || pkgs+=(nutcracker)
  # The Studio's browser tests drive Debian's Chromium headless (Playwright cannot download
  # browser builds here).
  command -v chromium   >/dev/null || pkgs+=(chromium)
  # Postinst scripts may start system copies on the stock ports (5432, 6379,
  # 6432, 22121); ours use other ports, so those are left alone.
  apt_install "${pkgs[@]}"
}

ferretdb_ok() {
  # No `| grep -q` here: grep exiting early can SIGPIPE ferretdb, and with
  # pipefail that randomly reads as "wrong version" and triggers a rebuild.
  local out
  [[ -x "$FDB_BIN" ]] && out="$("$FDB_BIN" --version 2>/dev/null)" \
    && [[ "$out" == *"version: v$FDB_VERSION"* ]]
}

# Why not plain `go install .../cmd/ferretdb@vX`: the module zip lacks the
# generated build/version/version.txt, and such a binary panics on start
# ("Invalid build/version/version.txt file content"). So fetch the module
# source through the Go module proxy, add version.txt, and `go build` it.
fdb_build() { # DIR GO   (honours GOSUMDB etc. from the caller's env)
  local dir="$1" go="$2" src
  # -json reports errors (e.g. checksum database unreachable) on stdout: keep them.
  "$go" mod download -json "github.com/FerretDB/FerretDB@v$FDB_VERSION" >"$dir/download.json" \
    || { cat "$dir/download.json"; return 1; }
  src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$dir/download.json")"
  [[ -n "$src" && -d "$src" ]] || { cat "$dir/download.json"; return 1; }
  rm -rf "$dir/src"
  cp -R "$src" "$dir/src" && chmod -R u+w "$dir/src"   # module cache is read-only
  printf 'v%s\n' "$FDB_VERSION" >"$dir/src/build/version/version.txt"
  # CGO off: FerretDB's SQLite driver is pure Go, so no C compiler is needed.
  (cd "$dir/src" && CGO_ENABLED=0 "$go" build -trimpath -buildvcs=false \
      -o "$dir/ferretdb" ./cmd/ferretdb)
}

ensure_ferretdb() {
  ferretdb_ok && return 0
  local go; go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x "$go" ]] || die "Go toolchain not found (need Go on PATH or at /usr/local/go/bin/go) to build FerretDB"
  mkdir -p "$CACHE_DIR/bin"
  local tmp; tmp="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
  log "building FerretDB $FDB_VERSION with $("$go" version | cut -d' ' -f3) (first run only, ~1-3 minutes)"
  if ! fdb_build "$tmp" "$go" >"$tmp/build.log" 2>&1; then
    # Only for an unreachable checksum DB; a checksum *mismatch* must stay fatal.
    if grep -qE 'sum\.golang\.org|sumdb' "$tmp/build.log" && ! grep -q 'checksum mismatch' "$tmp/build.log"; then
      log "checksum database unreachable; retrying with GOSUMDB=off"
      GOSUMDB=off fdb_build "$tmp" "$go" >"$tmp/build.log" 2>&1 \
        || { tail -n 30 "$tmp/build.log" >&2; die "FerretDB build failed (log: $tmp/build.log)"; }
    else
      tail -n 30 "$tmp/build.log" >&2; die "FerretDB build failed (log: $tmp/build.log)"
    fi
  fi
  mv -f "$tmp/ferretdb" "$FDB_BIN"   # only a complete binary lands in the cache
  rm -rf "$tmp"
  ferretdb_ok || die "$FDB_BIN does not report version $FDB_VERSION"
}

# ------------------------------------------------------------- postgresql ---

pg_pid() { pid_of "$PG_DATA/postmaster.pid" postgres; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres; }

pg_init() {
  log "initdb $PG_DATA"
  local tmp="$PG_DIR/data.init"
  rm -rf "$tmp"
  printf '%s\n' "$PG_PASSWORD" >"$PG_DIR/pwfile"
  own_pg "$PG_DIR"
  # Init into a temp dir and rename, so an interrupted initdb never leaves a
  # half-made cluster that later runs would trip over.
  as_pg_in "$PG_DIR" "$PG_BIN/initdb" -D "$tmp" -U postgres --pwfile="$PG_DIR/pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
      >"$PG_DIR/initdb.log" 2>&1 \
    || { rm -f "$PG_DIR/pwfile"; tail -n 20 "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  rm -f "$PG_DIR/pwfile"
  mv "$tmp" "$PG_DATA"
  printf "\ninclude 'ogelkit.conf'\n" >>"$PG_DATA/postgresql.conf"
}

# Regenerated on every start so a changed OGELKIT_PG_PORT takes effect.
pg_write_conf() {
  local sockdirs="''"   # no unix socket when the path would be too long
  if socket_dir_ok "$PG_SOCK" "/.s.PGSQL.$PG_PORT"; then
    mkdir -p "$PG_SOCK"; own_pg "$PG_SOCK"; sockdirs="'$PG_SOCK'"
  fi
  cat >"$PG_DATA/ogelkit.conf" <<EOF
# Written by scripts/services.sh on each start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = $sockdirs
max_connections = 300
shared_buffers = 256MB
# Test/bench data is disposable: trade durability for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = scram-sha-256
EOF
  cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# Written by scripts/services.sh on each start; edits are overwritten.
local all all                trust
host  all all 127.0.0.1/32   scram-sha-256
host  all all ::1/128        scram-sha-256
EOF
  own_pg "$PG_DATA/ogelkit.conf" "$PG_DATA/pg_hba.conf"
}

# A clone under a private directory (e.g. /root, mode 700) is unreachable for
# the postgres OS user. Rather than loosen permissions on someone's home,
# keep pg and pgbouncer state in a per-checkout dir under /var/tmp and
# symlink it from $SVC.
relocate_pg_dirs() {
  (( EUID == 0 )) || return 0
  runuser -u postgres -- test -x "$SVC" && return 0
  [[ -L "$SVC/pg" && -L "$SVC/pgbouncer" ]] && { set_pg_dirs; return 0; }
  local alt d
  alt="/var/tmp/ogelkit-services-$(printf '%s' "$SVC" | cksum | cut -d' ' -f1)"
  log "the postgres OS user cannot reach $SVC; keeping pg/pgbouncer state in $alt (symlinked)"
  mkdir -p "$alt"; chmod 755 "$alt"
  for d in pg pgbouncer; do
    if [[ -e "$SVC/$d" && ! -L "$SVC/$d" ]]; then
      die "$SVC/$d exists but the postgres user cannot reach it; move it to $alt/$d or remove it"
    fi
    mkdir -p "$alt/$d"; ln -sfn "$alt/$d" "$SVC/$d"
  done
  set_pg_dirs
}

pg_up() {
  relocate_pg_dirs
  mkdir -p "$PG_DIR"
  if (( EUID == 0 )); then chown postgres:postgres "$PG_DIR"; fi
  if (( EUID == 0 )) && ! runuser -u postgres -- test -w "$PG_DIR"; then
    die "the postgres OS user cannot write $PG_DIR"
  fi
  if ! pg_pid >/dev/null; then
    ensure_port_free "$PG_PORT" OGELKIT_PG_PORT postgres
    [[ -f "$PG_DATA/PG_VERSION" ]] || pg_init
    rm -f "$PG_DATA/postmaster.pid"   # stale: pg_pid proved no postgres owns it
    pg_write_conf
    log "starting postgres on 127.0.0.1:$PG_PORT"
    as_pg_in "$PG_DIR" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/postgres.log" -w -t 90 -s start 9>&- \
      || { tail -n 20 "$PG_DIR/postgres.log" >&2; die "postgres failed to start"; }
  fi
  # Line 4 of postmaster.pid is the port: catch a changed OGELKIT_PG_PORT early.
  local running_port; running_port="$(sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
  [[ -z "$running_port" || "$running_port" == "$PG_PORT" ]] \
    || die "our postgres is running on port $running_port, not $PG_PORT; run '$0 down' first"
  wait_until 60 "postgres on port $PG_PORT" pg_ready \
    || die "postgres is not answering on 127.0.0.1:$PG_PORT (log: $PG_DIR/postgres.log)"
  pg_bench_db
}

# Benchmarks expect a pgbench-initialised `bench` database; do -i only once
# (a marker remembers it) so a warm `up` stays instant and keeps bench data.
pg_bench_db() {
  local marker="$PG_DIR/bench-initialized-s10"
  if [[ -z "$(psql_tcp -p "$PG_PORT" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='bench'")" ]]; then
    psql_tcp -p "$PG_PORT" -d postgres -c 'CREATE DATABASE bench'
    rm -f "$marker"
  fi
  if [[ ! -f "$marker" ]]; then
    log "pgbench -i -s 10 bench (once)"
    PGPASSWORD="$PG_PASSWORD" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres \
        -i -s 10 -q bench >"$PG_DIR/pgbench-init.log" 2>&1 \
      || { tail -n 20 "$PG_DIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
    touch "$marker"
  fi
}

pg_down() {
  if pg_pid >/dev/null; then
    log "stopping postgres"
    as_pg_in "$PG_DIR" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop
  fi
}

# -------------------------------------------------------------- pgbouncer ---

pgb_pid() { pid_of "$PGB_DIR/pgbouncer.pid" pgbouncer; }
# Admin-console query: proves pgbouncer is up AND that auth works.
pgb_ready() {
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PGB_PORT" -U postgres \
    -d pgbouncer -tAc 'SHOW VERSION'
}

pgb_write_conf() {
  local sockdir=""
  if socket_dir_ok "$PGB_DIR" "/.s.PGSQL.$PGB_PORT"; then sockdir="$PGB_DIR"; fi
  cat >"$PGB_DIR/pgbouncer.ini" <<EOF
; Written by scripts/services.sh on each start; edits are overwritten.
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
bench_tx = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=transaction

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $sockdir
; A plain-text password in auth_file lets pgbouncer do SCRAM both towards
; clients and towards the server (which only accepts scram-sha-256).
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
admin_users = postgres
pool_mode = session
max_client_conn = 2000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
EOF
  printf '"postgres" "%s"\n' "$PG_PASSWORD" >"$PGB_DIR/userlist.txt"
  chmod 600 "$PGB_DIR/userlist.txt"
  own_pg "$PGB_DIR"
}

pgb_up() {
  mkdir -p "$PGB_DIR"
  if ! pgb_pid >/dev/null; then
    ensure_port_free "$PGB_PORT" OGELKIT_PGBOUNCER_PORT pgbouncer
    rm -f "$PGB_DIR/pgbouncer.pid"
    pgb_write_conf
    log "starting pgbouncer on 127.0.0.1:$PGB_PORT"
    # runuser's PAM session resets the fd soft limit to 1024, too few for
    # max_client_conn=2000; raise it (up to the hard limit) before exec.
    # shellcheck disable=SC2016  # expanded by the inner sh, on purpose
    as_pg_in "$PGB_DIR" sh -c 'ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
        exec pgbouncer -d -q "$1"' sh "$PGB_DIR/pgbouncer.ini" 9>&- \
      || { tail -n 20 "$PGB_DIR/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
  fi
  wait_until 30 "pgbouncer on port $PGB_PORT" pgb_ready \
    || { tail -n 20 "$PGB_DIR/pgbouncer.log" >&2 || true; die "pgbouncer is not answering on 127.0.0.1:$PGB_PORT"; }
}

pgb_down() {
  local pid
  if pid="$(pgb_pid)"; then log "stopping pgbouncer"; stop_pid "$pid" pgbouncer; fi
}

# ------------------------------------------------------------------ redis ---

redis_pid() { pid_of "$REDIS_DIR/redis.pid" redis-server; }
# NOAUTH/WRONGPASS also prove the server is there (tests may lock the default user).
redis_ready() {
  local out; out="$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>&1 || true)"
  [[ "$out" =~ PONG|NOAUTH|WRONGPASS|NOPERM ]]
}

redis_up() {
  mkdir -p "$REDIS_DIR"
  if ! redis_pid >/dev/null; then
    ensure_port_free "$REDIS_PORT" OGELKIT_REDIS_PORT redis
    rm -f "$REDIS_DIR/redis.pid"
    cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by scripts/services.sh on each start; edits are overwritten.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_DIR/redis.pid
logfile $REDIS_DIR/redis.log
dir $REDIS_DIR
# Disposable test data: no persistence.
save ""
appendonly no
enable-debug-command no
EOF
    log "starting redis on 127.0.0.1:$REDIS_PORT"
    redis-server "$REDIS_DIR/redis.conf" 9>&- \
      || { tail -n 20 "$REDIS_DIR/redis.log" >&2 || true; die "redis failed to start"; }
  fi
  wait_until 30 "redis on port $REDIS_PORT" redis_ready "$REDIS_PORT" \
    || { tail -n 20 "$REDIS_DIR/redis.log" >&2 || true; die "redis is not answering on 127.0.0.1:$REDIS_PORT"; }
}

not_alive() { ! pid_alive "$1"; }

redis_down() {
  local pid
  if pid="$(redis_pid)"; then
    log "stopping redis"
    # Graceful first; tests may have added a password, so fall back to SIGTERM.
    timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    wait_until 5 "redis to exit" not_alive "$pid" || stop_pid "$pid" redis-server
  fi
}

# -------------------------------------------------------------- twemproxy ---

twem_pid() { pid_of "$TWEM_DIR/nutcracker.pid" nutcracker; }
twem_ready() { tcp_connect "$TWEM_PORT" && tcp_connect "$TWEM_STATS_PORT"; }

twem_up() {
  mkdir -p "$TWEM_DIR"
  if ! twem_pid >/dev/null; then
    ensure_port_free "$TWEM_PORT" OGELKIT_TWEMPROXY_PORT twemproxy
    ensure_port_free "$TWEM_STATS_PORT" OGELKIT_TWEMPROXY_STATS_PORT "twemproxy stats"
    rm -f "$TWEM_DIR/nutcracker.pid"
    cat >"$TWEM_DIR/nutcracker.yml" <<EOF
# Written by scripts/services.sh on each start; edits are overwritten.
ogelkit:
  listen: 127.0.0.1:$TWEM_PORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  server_connections: 1
  auto_eject_hosts: false
  timeout: 5000
  servers:
    - 127.0.0.1:$REDIS_PORT:1
EOF
    nutcracker -t -c "$TWEM_DIR/nutcracker.yml" >/dev/null 2>&1 \
      || die "twemproxy rejected $TWEM_DIR/nutcracker.yml"
    log "starting twemproxy on 127.0.0.1:$TWEM_PORT"
    nutcracker -d -c "$TWEM_DIR/nutcracker.yml" -s "$TWEM_STATS_PORT" -a 127.0.0.1 \
        -p "$TWEM_DIR/nutcracker.pid" -o "$TWEM_DIR/nutcracker.log" 9>&- \
      || { tail -n 20 "$TWEM_DIR/nutcracker.log" >&2 || true; die "twemproxy failed to start"; }
  fi
  wait_until 30 "twemproxy on port $TWEM_PORT" twem_ready \
    || { tail -n 20 "$TWEM_DIR/nutcracker.log" >&2 || true; die "twemproxy is not answering on 127.0.0.1:$TWEM_PORT"; }
}

twem_down() {
  local pid
  if pid="$(twem_pid)"; then log "stopping twemproxy"; stop_pid "$pid" nutcracker; fi
}

# --------------------------------------------------------------- ferretdb ---

fdb_pid() { pid_of "$FDB_DIR/ferretdb.pid" ferretdb; }
fdb_ready() {
  # Give up at once if the process died (e.g. bad flag): no point waiting.
  [[ -n "${1:-}" ]] && ! pid_alive "$1" && return "$GIVE_UP"
  tcp_connect "$FDB_PORT" && grep -q 'Listening on' "$FDB_DIR/ferretdb.log"
}

fdb_up() {
  mkdir -p "$FDB_DIR/data"
  local pid
  if ! pid="$(fdb_pid)"; then
    ensure_port_free "$FDB_PORT" OGELKIT_FERRETDB_PORT ferretdb
    rm -f "$FDB_DIR/ferretdb.pid"
    [[ -f "$FDB_DIR/ferretdb.log" ]] && mv -f "$FDB_DIR/ferretdb.log" "$FDB_DIR/ferretdb.log.prev"
    log "starting ferretdb on 127.0.0.1:$FDB_PORT"
    # --debug-addr=- turns off the metrics/pprof HTTP listener (one port less
    # to clash); --state-dir keeps state.json out of the caller's cwd.
    # setsid+nohup: the server must outlive this script and its terminal.
    # (cd on its own line: `cd && cmd &` would background a subshell and
    # $! would be that subshell, not ferretdb.)
    ( cd "$FDB_DIR"
      DO_NOT_TRACK=1 setsid nohup "$FDB_BIN" \
        --handler=sqlite --sqlite-url="file:$FDB_DIR/data/" \
        --listen-addr="127.0.0.1:$FDB_PORT" --debug-addr=- \
        --state-dir="$FDB_DIR" --telemetry=disable --log-level=info \
        >>"$FDB_DIR/ferretdb.log" 2>&1 </dev/null 9>&- &
      echo $! >"$FDB_DIR/ferretdb.pid" )
    pid="$(head -n1 "$FDB_DIR/ferretdb.pid")"
  fi
  wait_until 60 "ferretdb on port $FDB_PORT" fdb_ready "$pid" \
    || { tail -n 20 "$FDB_DIR/ferretdb.log" >&2 || true; die "ferretdb is not answering on 127.0.0.1:$FDB_PORT"; }
  fdb_pid >/dev/null || die "ferretdb pid in $FDB_DIR/ferretdb.pid is not the ferretdb process"
}

fdb_down() {
  local pid
  if pid="$(fdb_pid)"; then log "stopping ferretdb"; stop_pid "$pid" ferretdb; fi
}

# ---------------------------------------------------------------- commands --

env_lines() {
  cat <<EOF
export OGELKIT_PG_PORT=$PG_PORT
export OGELKIT_PGBOUNCER_PORT=$PGB_PORT
export OGELKIT_REDIS_PORT=$REDIS_PORT
export OGELKIT_TWEMPROXY_PORT=$TWEM_PORT
export OGELKIT_TWEMPROXY_STATS_PORT=$TWEM_STATS_PORT
export OGELKIT_FERRETDB_PORT=$FDB_PORT
export OGELKIT_TEST_PG_DSN=$PG_DSN
export OGELKIT_TEST_REDIS_URL=$REDIS_URL
export OGELKIT_TEST_FERRETDB_URL=$FDB_URL
export OGELKIT_BENCH_PGBOUNCER_DSN=$PGB_DSN
export OGELKIT_BENCH_PGBOUNCER_TX_DSN=${PGB_DSN%/bench}/bench_tx
export OGELKIT_BENCH_TWEMPROXY=127.0.0.1:$TWEM_PORT
EOF
}

where_lines() {
  printf '%-10s %-16s %s\n' \
    postgres  "127.0.0.1:$PG_PORT"    "$PG_DSN" \
    pgbouncer "127.0.0.1:$PGB_PORT"   "$PGB_DSN (bench_tx: transaction pooling)" \
    redis     "127.0.0.1:$REDIS_PORT" "$REDIS_URL" \
    twemproxy "127.0.0.1:$TWEM_PORT"  "redis://127.0.0.1:$TWEM_PORT (stats 127.0.0.1:$TWEM_STATS_PORT)" \
    ferretdb  "127.0.0.1:$FDB_PORT"   "$FDB_URL"
}

# Serialise up/down: two colleagues running `up` at once must not race.
# Every server start in this file closes fd 9 (`9>&-`): a daemon inheriting it
# would hold this lock for its whole life and block every later run.
take_lock() {
  mkdir -p "$SVC"
  chmod 755 "$SVC"   # the postgres user must traverse it
  exec 9>"$SVC/.lock"
  flock -w 900 9 || die "another services.sh run holds $SVC/.lock"
}

cmd_up() {
  append_line_once "$REPO_DIR/.gitignore" ".services/"
  take_lock
  ensure_packages
  ensure_ferretdb
  pg_up
  pgb_up
  redis_up
  twem_up
  fdb_up
  env_lines >"$SVC/env.sh"
  where_lines
}

cmd_down() {
  [[ -d "$SVC" ]] || return 0
  take_lock
  twem_down
  pgb_down
  fdb_down
  redis_down
  pg_down
}

cmd_status() {
  local rc=0 name addr pidfn pid state
  while read -r name addr pidfn; do
    if pid="$($pidfn 2>/dev/null)"; then state="running (pid $pid)"
    else state="stopped"; rc=3; fi
    printf '%-10s %-16s %s\n' "$name" "$addr" "$state"
  done <<EOF
postgres 127.0.0.1:$PG_PORT pg_pid
pgbouncer 127.0.0.1:$PGB_PORT pgb_pid
redis 127.0.0.1:$REDIS_PORT redis_pid
twemproxy 127.0.0.1:$TWEM_PORT twem_pid
ferretdb 127.0.0.1:$FDB_PORT fdb_pid
EOF
  return "$rc"
}

main() {
  case "${1:-}" in
    up)     cmd_up ;;
    down)   cmd_down ;;
    status) cmd_status ;;
    env)    env_lines ;;
    *)      sed -n '/^# Installs/,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p;}' "$0" >&2; exit 2 ;;
  esac
}
# One line, so bash has read all of it before running: editing or pulling
# this file while an `up` is in progress cannot change what that run does.
main "$@"; exit $?
