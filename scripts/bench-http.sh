#!/usr/bin/env bash
# HTTP benchmark of the hot API paths (trigger, retrieve) with wrk, against a release
# build of `runnel serve`. Figures go to docs/BENCHMARKS.md.
#
#   cargo build --release
#   scripts/bench-http.sh                                   # embedded SQLite
#   scripts/bench-http.sh --database-url postgres://…/db    # PostgreSQL (an empty database)
#
# Needs wrk (Debian: apt-get install wrk), curl and python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/runnel"
port=${BENCH_PORT:-3999}
duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-32}
work=$(mktemp -d)
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" "$@" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 50); do grep -q "listening" "$work/out" 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'tr_dev_[A-Za-z0-9]*' "$work/out") || { echo "no dev key printed (use an empty database)" >&2; exit 1; }
url="http://127.0.0.1:$port"

cat >"$work/trigger.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"payload":{"n":1},"options":{"tags":["a"]}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
echo "== trigger (POST /api/v1/tasks/bench/trigger, $connections connections, $duration)"
wrk -t2 -c"$connections" -d"$duration" -s "$work/trigger.lua" --latency "$url/api/v1/tasks/bench/trigger" \
  | grep -E "Requests/sec|  50%|  99%|Non-2xx"

id=$(curl -sf -X POST "$url/api/v1/tasks/bench/trigger" -H "Authorization: Bearer $key" -d '{}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$key" >"$work/retrieve.lua"
echo "== retrieve (GET /api/v3/runs/{id}, $connections connections, $duration)"
wrk -t2 -c"$connections" -d"$duration" -s "$work/retrieve.lua" --latency "$url/api/v3/runs/$id" \
  | grep -E "Requests/sec|  50%|  99%|Non-2xx"
echo "== server RSS after both: $(ps -o rss= -p "$pid") KiB"
