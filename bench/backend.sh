#!/usr/bin/env bash
# The backend in the loop, measured: connect-storm against a release Herald
# whose clients are identified by a JWT, then by the connect proxy (the
# backend is `herald-bench backend` on loopback), then by JWT with a
# webhook for every connect (events delivered to the same backend). Each
# case runs on a fresh server (SQLite storage in a fresh directory), the
# server pinned to CPU 0 and the load generator and backend to CPU 1; the
# cases alternate REPEAT times and the medians are printed.
#
#   bench/backend.sh [OUT_DIR]
#
# Environment: CLIENTS (10000), CONCURRENCY (200), REPEAT (3), PORT (18230),
# BACKEND_PORT (18231), NO_PIN=1 to run unpinned. Needs taskset, curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-$(mktemp -d)}
mkdir -p "$out"
clients=${CLIENTS:-10000}
concurrency=${CONCURRENCY:-200}
repeat=${REPEAT:-3}
port=${PORT:-18230}
backend_port=${BACKEND_PORT:-18231}

cargo build --release --locked -p herald -p herald-bench >&2
bench=$PWD/target/release/herald-bench
herald=$PWD/target/release/herald
work=$(mktemp -d)
secret=bench-secret

pin() { # pin CPU COMMAND... (exec keeps $! as the command's PID)
  if [ "${NO_PIN:-0}" = 1 ]; then exec "${@:2}"; else exec taskset -c "$1" "${@:2}"; fi
}

config() { # config CASE > file
  local base='"log":{"level":"warn"},"channel":{"without_namespace":{"allow_subscribe_for_client":true}},"client":{"connection_rate_limit_per_ip":0,"token":{"hmac_secret_key":"'$secret'"}'
  case $1 in
    jwt) echo "{$base}}" ;;
    proxy) echo "{$base,\"proxy\":{\"connect\":{\"enabled\":true,\"endpoint\":\"http://127.0.0.1:$backend_port/connect\"}}}}" ;;
    webhook) echo "{$base},\"webhooks\":[{\"name\":\"bench\",\"url\":\"http://127.0.0.1:$backend_port/hook\",\"events\":[\"connect\"]}]}" ;;
  esac
}

( pin 1 "$bench" backend --port "$backend_port" --max-runtime 60m >"$work/backend.log" 2>&1 ) &
backend_pid=$!
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  kill "$backend_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

run_case() { # run_case CASE ROUND
  local name=$1 round=$2 dir="$work/data-$1-$2" auth=()
  config "$name" >"$work/$name.json"
  ( pin 0 "$herald" serve -c "$work/$name.json" --port "$port" --address 127.0.0.1 --data-dir "$dir" \
      >"$work/herald-$name.log" 2>&1 ) &
  server_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  [ "$name" = proxy ] || auth=(--hmac-secret "$secret")
  curl -sf -X POST "http://127.0.0.1:$backend_port/reset" >/dev/null
  ( pin 1 "$bench" connect-storm --url "ws://127.0.0.1:$port/connection/websocket" "${auth[@]}" \
      --clients "$clients" --concurrency "$concurrency" --server-pid "$server_pid" --json --quiet ) \
    >"$out/$name.$round.json"
  if [ "$name" = webhook ]; then
    # Delivery: until every connect event has reached the backend (bounded).
    for _ in $(seq 600); do
      [ "$(curl -s "http://127.0.0.1:$backend_port/stats" | jq .events)" -ge "$clients" ] && break
      sleep 0.1
    done
    curl -s "http://127.0.0.1:$backend_port/stats" >"$out/$name.$round.backend.json"
  fi
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

for round in $(seq "$repeat"); do
  for name in jwt proxy webhook; do
    run_case "$name" "$round"
    jq -c "{case: \"$name\", round: $round, connects_per_s, server_cpu_ms_per_connect, p99_us: .latency.p99_us}" \
      "$out/$name.$round.json"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "medians over $repeat rounds ($clients clients, concurrency $concurrency):"
for name in jwt proxy webhook; do
  cps=$(for f in "$out/$name".*[0-9].json; do jq .connects_per_s "$f"; done | median)
  cpu=$(for f in "$out/$name".*[0-9].json; do jq .server_cpu_ms_per_connect "$f"; done | median)
  echo "  $name: $cps connects/s, $cpu server CPU-ms per connect"
done
echo "  webhook delivery: $(for f in "$out"/webhook.*.backend.json; do jq .events_per_s "$f"; done | median) events/s (first to last event at the backend)"
echo "JSON lines in $out"
