#!/usr/bin/env bash
# Run psycopg's and redis-py's own test suites directly against the real servers and through
# an ogelkit gateway (Postgres session mode, Postgres transaction mode, Redis; all seven
# layers, enterprise tenants), and print the counts of each run (docs/compat.md).
#
#   scripts/client_suites.sh PSYCOPG_CHECKOUT REDIS_PY_CHECKOUT [RUN ...]
#
# The checkouts are source trees of the versions in uv.lock that you obtained yourself
# (psycopg's repository at a 3.3 tag, its tests/ directory is not in the sdist; redis-py's
# v8.1.0 tag or its sdist); this script downloads no code. RUN is any of pg-direct
# pg-session pg-tx (psycopg's tests/ without tests/pool and its slow tests), pool-direct
# pool-session pool-tx (tests/pool), slow-direct slow-session slow-tx (the slow tests but
# the gc leak and mypy ones), redis-direct redis-gw (redis-py 8's default protocol, RESP3),
# redis2-direct redis2-gw (--protocol=2) (default: all thirteen, one at a time).
# Test dependencies go into two virtualenvs under $SUITES_DIR (default
# /tmp/ogelkit-client-suites), installed with pip the first time; nothing is written into
# the repository or into the checkouts' parents. The gateway runs from this repository's
# .venv. The direct Redis run uses a private redis-server (redis-py's suite runs FLUSHALL,
# CONFIG SET, DEBUG ...: not on the shared test server), the direct psycopg run a database
# psycopg_suite on the real PostgreSQL.
#
# SUITES_PYTEST_ARGS adds pytest arguments to every run, split on spaces (e.g. "-k notify";
# the slow-* runs' own -k wins over one given here); SUITES_*_PORT
# move the gateway's and the private Redis's ports.
# Outputs in $SUITES_DIR/out: <run>.log, <run>.xml (JUnit) and summary.txt; compare two runs
# with: scripts/client_suites.sh --diff out/pg-direct.xml out/pg-session.xml
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SUITES_DIR="${SUITES_DIR:-/tmp/ogelkit-client-suites}"
OUT="$SUITES_DIR/out"
PY="${SUITES_PYTHON:-python3}"
GW_HTTP="${SUITES_HTTP_PORT:-23080}"
GW_PG="${SUITES_PG_PORT:-23432}"
GW_REDIS="${SUITES_REDIS_PORT:-23379}"
DIRECT_REDIS="${SUITES_DIRECT_REDIS_PORT:-23380}"
TIMEOUT="${SUITES_TEST_TIMEOUT:-60}"  # psycopg (redis-py sets 30 s in its pyproject)
PASSWORD="suite-password"
read -r -a EXTRA <<<"${SUITES_PYTEST_ARGS:-}"  # more pytest arguments for every run (-k ...)

summarize() {  # summarize FILE.xml ...: one line of counts per JUnit file (an xpass counts as
  # passed, an xfail as skipped, a test failing in its call and its teardown twice: pytest's
  # own last line in <run>.log is the count to quote)
  "$REPO/.venv/bin/python" - "$@" <<'EOF'
import sys
import xml.etree.ElementTree as ET
for path in sys.argv[1:]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ET.parse(path).iter("testcase"):
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["error"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    print(f"{path}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
EOF
}

diff_runs() {  # diff_runs DIRECT.xml GATEWAY.xml: tests that pass directly and not through it
  "$REPO/.venv/bin/python" - "$1" "$2" <<'EOF'
import sys
import xml.etree.ElementTree as ET
def outcomes(path):
    out = {}
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = [c for c in case if c.tag in ("failure", "error")]
        skip = [c for c in case if c.tag == "skipped"]
        if bad:
            out[name] = ("FAIL", (bad[0].get("message") or "").splitlines()[0][:200]
                         if bad[0].get("message") else "")
        elif skip:
            out[name] = ("SKIP", "")
        else:
            out[name] = ("PASS", "")
    return out
direct, gw = outcomes(sys.argv[1]), outcomes(sys.argv[2])
for name, (kind, msg) in sorted(gw.items()):
    if kind == "FAIL" and direct.get(name, ("?",))[0] == "PASS":
        print(f"{name}\t{msg}")
print(f"# {sum(1 for n, (k, _) in gw.items() if k == 'FAIL' and direct.get(n, ('?',))[0] == 'PASS')}"
      " fail through the gateway and pass directly", file=sys.stderr)
EOF
}

if [[ "${1:-}" == "--diff" ]]; then diff_runs "$2" "$3"; exit 0; fi
if [[ "$#" -lt 2 ]]; then sed -n '2,20p' "$0" >&2; exit 2; fi
PSYCOPG_DIR="$(cd "$1" && pwd)"; REDIS_DIR="$(cd "$2" && pwd)"; shift 2
RUNS=("$@")
[[ "${#RUNS[@]}" -gt 0 ]] || RUNS=(pg-direct pg-session pg-tx pool-direct pool-session pool-tx
                                    slow-direct slow-session slow-tx
                                    redis-direct redis-gw redis2-direct redis2-gw)
[[ -d "$PSYCOPG_DIR/tests" && -d "$REDIS_DIR/tests" ]] || { echo "no tests/ in a checkout" >&2; exit 2; }

# shellcheck disable=SC1091
source "$REPO/.services/env.sh"
mkdir -p "$OUT" "$SUITES_DIR/gw" "$SUITES_DIR/redis"

venv() {  # venv NAME PACKAGES...: a virtualenv under $SUITES_DIR with the test dependencies
  local dir="$SUITES_DIR/venv-$1"; shift
  if [[ ! -x "$dir/bin/python" ]]; then
    "$PY" -m venv "$dir"
    "$dir/bin/pip" install -q "$@"
  fi
  echo "$dir/bin/python"
}
PG_PY="$(venv pg "psycopg[binary]==3.3.9" psycopg-pool "anyio>=4.0" pproxy pytest \
  pytest-randomly pytest-timeout)"
REDIS_PY="$(venv redis "redis==8.1.0" hiredis==3.5.0 pytest "pytest-asyncio>=0.24.0" \
  pytest-timeout "coverage<7.11.1" pytest-cov ujson numpy pybreaker aiohttp xxhash==3.6.0 \
  opentelemetry-api opentelemetry-sdk opentelemetry-exporter-otlp-proto-http \
  redis-entraid==1.2.1 packaging)"

PIDS=()
GW_PID=""
OGELKIT_SECRET_KEY="$("$REPO/.venv/bin/ogelkit" secret-key)"
export OGELKIT_SECRET_KEY
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n "$GW_PID" ]]; then  # drop the tenants' databases, roles and ACL users upstream
    wait "$GW_PID" 2>/dev/null || true
    for tenant in suites suitet; do
      "$REPO/.venv/bin/ogelkit" -c "$SUITES_DIR/gw/gateway.toml" tenants delete --yes "$tenant" \
        >/dev/null 2>&1 || echo "could not delete tenant $tenant upstream" >&2
    done
  fi
}
trap cleanup EXIT

start_gateway() {
  cat >"$SUITES_DIR/gw/gateway.toml" <<EOF
[listen]
host = "127.0.0.1"
http = $GW_HTTP
postgres = $GW_PG
redis = $GW_REDIS

[gateway]
drain_timeout = "5s"
public_host = "127.0.0.1"

[control]
url = "sqlite:///$SUITES_DIR/gw/control.db"
secret_key = "\${OGELKIT_SECRET_KEY}"

[backends.pgs]
type = "postgres"
dsn = "$OGELKIT_TEST_PG_DSN"
pool_mode = "session"

[backends.pgt]
type = "postgres"
dsn = "$OGELKIT_TEST_PG_DSN"
pool_mode = "transaction"

[backends.cache]
type = "redis"
url = "$OGELKIT_TEST_REDIS_URL"

[[layers]]
type = "gatekeeper"
[[layers]]
type = "ratelimit"
[[layers]]
type = "cost"
[[layers]]
type = "session"
[[layers]]
type = "timeout"
[[layers]]
type = "usage"
[[layers]]
type = "intelligence"

# One tenant per Postgres backend (a tenant with databases on two backends of one server
# loses the first one's upstream password: ogelkit/plugins/postgres/tests/test_suite_cases.py).
[tenants.suites]
tier = "enterprise"
password = "$PASSWORD"
[tenants.suites.databases.sess]
backend = "pgs"
[tenants.suites.databases.cache]
backend = "cache"

[tenants.suitet]
tier = "enterprise"
password = "$PASSWORD"
[tenants.suitet.databases.tx]
backend = "pgt"
EOF
  rm -f "$SUITES_DIR/gw/control.db"*
  "$REPO/.venv/bin/ogelkit" run "$SUITES_DIR/gw/gateway.toml" >"$OUT/gateway.log" 2>&1 &
  GW_PID="$!"
  PIDS+=("$GW_PID")
  for _ in $(seq 60); do
    grep -qs '"msg": "ready"' "$OUT/gateway.log" && return 0
    sleep 0.5
  done
  echo "gateway did not start: $OUT/gateway.log" >&2; exit 1
}

start_direct_redis() {
  redis-cli -p "$DIRECT_REDIS" ping >/dev/null 2>&1 && return 0  # already started by this run
  cat >"$SUITES_DIR/redis/redis.conf" <<EOF
bind 127.0.0.1
port $DIRECT_REDIS
daemonize no
dir $SUITES_DIR/redis
save ""
appendonly no
enable-debug-command no
EOF
  redis-server "$SUITES_DIR/redis/redis.conf" >"$SUITES_DIR/redis/log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 30); do redis-cli -p "$DIRECT_REDIS" ping >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "private redis-server did not start" >&2; exit 1
}

run_psycopg() {  # run_psycopg NAME DSN SELECTION: main (tests/ but tests/pool), pool or slow
  # (psycopg's conftest needs pytest's cache plugin: it writes .pytest_cache in the checkout,
  # and a run that was killed leaves a "segfault" flag there that --cache-clear removes.)
  # psycopg's "slow" marker is left out of main and pool: its gc leak tests take minutes of
  # gc.collect() each and never touch the wire; "slow" runs the rest of the slow tests.
  local sel
  case "$3" in
    main) sel=(--ignore=tests/pool -m 'not slow' tests) ;;
    pool) sel=(-m 'not slow' tests/pool) ;;
    slow) sel=(--ignore=tests/pool -m slow -k 'not leak and not typing' tests) ;;
  esac
  (cd "$PSYCOPG_DIR" && nice -n 10 "$PG_PY" -m pytest -p no:randomly -q --cache-clear \
     --timeout="$TIMEOUT" --test-dsn="$2" --junit-xml="$OUT/$1.xml" "${EXTRA[@]}" "${sel[@]}" \
     >"$OUT/$1.log" 2>&1) || true
}

run_redis() {  # run_redis NAME URL [PROTOCOL]: without PROTOCOL redis-py's default, RESP3
  (cd "$REDIS_DIR" && nice -n 10 "$REDIS_PY" -m pytest -p no:randomly -p no:cacheprovider -q \
     --ignore=tests/test_scenario --ignore=tests/test_asyncio/test_scenario \
     -m 'not onlycluster and not fixed_client and not multidb_integration and not redismod and not ssl' \
     ${3:+--protocol="$3"} --redis-url="$2" --junit-xml="$OUT/$1.xml" "${EXTRA[@]}" tests >"$OUT/$1.log" 2>&1) || true
}

need_gateway=0
for r in "${RUNS[@]}"; do [[ "$r" == *-direct ]] || need_gateway=1; done
[[ "$need_gateway" == 1 ]] && start_gateway

PG_ADMIN="${OGELKIT_TEST_PG_DSN%/*}"
sel_of() { case "$1" in pg-*) echo main ;; pool-*) echo pool ;; slow-*) echo slow ;; esac; }
fresh_db() {  # the direct psycopg runs' database on the real server, empty
  psql "$PG_ADMIN/postgres" -qAtc "DROP DATABASE IF EXISTS psycopg_suite" >/dev/null
  psql "$PG_ADMIN/postgres" -qAtc "CREATE DATABASE psycopg_suite" >/dev/null
}
for r in "${RUNS[@]}"; do
  echo "== $r ($(date -u +%H:%M:%S))"
  case "$r" in
    pg-direct|pool-direct|slow-direct)
      fresh_db; run_psycopg "$r" "$PG_ADMIN/psycopg_suite" "$(sel_of "$r")" ;;
    pg-session|pool-session|slow-session)
      run_psycopg "$r" "postgresql://suites:$PASSWORD@127.0.0.1:$GW_PG/sess" "$(sel_of "$r")" ;;
    pg-tx|pool-tx|slow-tx)
      run_psycopg "$r" "postgresql://suitet:$PASSWORD@127.0.0.1:$GW_PG/tx" "$(sel_of "$r")" ;;
    redis-direct) start_direct_redis; run_redis redis-direct "redis://127.0.0.1:$DIRECT_REDIS/0" ;;
    redis-gw) run_redis redis-gw "redis://suites:$PASSWORD@127.0.0.1:$GW_REDIS" ;;
    redis2-direct)
      start_direct_redis; run_redis redis2-direct "redis://127.0.0.1:$DIRECT_REDIS/0" 2 ;;
    redis2-gw) run_redis redis2-gw "redis://suites:$PASSWORD@127.0.0.1:$GW_REDIS" 2 ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
  { echo "$r: $(grep -E '(passed|failed|deselected).* in [0-9.]+s' "$OUT/$r.log" | tail -n 1)"
    summarize "$OUT/$r.xml"; } | tee -a "$OUT/summary.txt"
done
