#!/usr/bin/env bash
# The Pusher protocol side by side: Herald's Pusher endpoint, soketi and
# Sockudo, each serving one app (id app-id, key app-key, secret app-secret)
# on loopback, pinned to CPU 0, driven by herald-bench's Pusher client
# pinned to CPU 1. For each server: fan-out (SUBSCRIBERS sockets on one
# public channel, RATE events/s through the signed HTTP API) and idle
# memory (IDLE sockets, each on its own channel). Rounds alternate the
# servers REPEAT times; the medians are printed.
#
#   SOKETI=/path/to/node_modules/.bin/soketi SOCKUDO=/path/to/sockudo bench/pusher.sh [OUT_DIR]
#
# A server whose path is not given is left out; HERALD_BASE=/path/to/herald
# adds another Herald build (herald-base), to compare two builds in one
# run. Environment: SUBSCRIBERS
# (1000), RATE (100), DURATION (10s), IDLE (5000), REPEAT (3), PORT (18240),
# NO_PIN=1 to run unpinned. Needs taskset, curl, jq.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-$(mktemp -d)}
mkdir -p "$out"
subscribers=${SUBSCRIBERS:-1000}
rate=${RATE:-100}
duration=${DURATION:-10s}
idle=${IDLE:-5000}
repeat=${REPEAT:-3}
port=${PORT:-18240}

cargo build --release --locked -p herald -p herald-bench >&2
bench=$PWD/target/release/herald-bench
herald=$PWD/target/release/herald
work=$(mktemp -d)

pin() { # pin CPU COMMAND... (exec keeps $! as the command's PID)
  if [ "${NO_PIN:-0}" = 1 ]; then exec "${@:2}"; else exec taskset -c "$1" "${@:2}"; fi
}

cat >"$work/herald.json" <<JSON
{"log": {"level": "warn"},
 "client": {"connection_rate_limit_per_ip": 0, "queue_max_size": 10485760},
 "channel": {"namespaces": [{"name": "bench"}]},
 "pusher": {"apps": [{"id": "app-id", "key": "app-key", "secret": "app-secret",
                      "namespace": "bench"}]}}
JSON

server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() { # start NAME
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is taken: stop what listens there first" >&2
    exit 1
  fi
  case $1 in
    herald|herald-base)
      bin=$herald
      [ "$1" = herald-base ] && bin=$HERALD_BASE
      ( pin 0 "$bin" serve -c "$work/herald.json" --port "$port" --address 127.0.0.1 \
                --data-dir "$work/data" >"$work/herald.log" 2>&1 ) & ;;
    soketi) ( SOKETI_PORT=$port SOKETI_DEFAULT_APP_ID=app-id SOKETI_DEFAULT_APP_KEY=app-key \
                SOKETI_DEFAULT_APP_SECRET=app-secret SOKETI_DEFAULT_APP_MAX_CONNS=-1 \
                pin 0 "$SOKETI" start >"$work/soketi.log" 2>&1 ) & ;;
    sockudo) ( PORT=$port HOST=127.0.0.1 RATE_LIMITER_ENABLED=false SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 SOCKUDO_DEFAULT_APP_ID=app-id SOCKUDO_DEFAULT_APP_KEY=app-key \
                 SOCKUDO_DEFAULT_APP_SECRET=app-secret \
                 pin 0 "$SOCKUDO" >"$work/sockudo.log" 2>&1 ) & ;;
  esac
  server_pid=$!
  # Ready when the app's socket path answers the upgrade request line.
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
  done
  sleep 0.5
}

stop() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  sleep 0.5
}

common() {
  echo --url "ws://127.0.0.1:$port/app/app-key?protocol=7" --protocol pusher \
    --server-pid "$server_pid" --json
}

servers=(herald)
[ -n "${HERALD_BASE:-}" ] && servers+=(herald-base)
[ -n "${SOKETI:-}" ] && servers+=(soketi)
[ -n "${SOCKUDO:-}" ] && servers+=(sockudo)

for round in $(seq "$repeat"); do
  for name in "${servers[@]}"; do
    start "$name"
    # shellcheck disable=SC2046
    ( pin 1 "$bench" fanout $(common) --publish-url "http://127.0.0.1:$port/apps/app-id/events" \
      --api-key app-key:app-secret --channel news --subscribers "$subscribers" --rate "$rate" \
      --duration "$duration" --warmup 2s >"$out/fanout-$name-$round.json" ) || true
    stop
    start "$name"
    # shellcheck disable=SC2046
    ( pin 1 "$bench" idle $(common) --connections "$idle" --settle 2s --hold 3s \
      >"$out/idle-$name-$round.json" ) || true
    stop
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f\n", a[int((NR+1)/2)]; else print "-"}'; }
printf '%-12s %18s %18s %12s %12s %16s\n' server "CPU µs/delivery" "of it kernel µs" "p50 ms" "p99 ms" "idle B/conn"
for name in "${servers[@]}"; do
  cpu=$(cat "$out"/fanout-"$name"-[0-9]*.json | jq -r '.server_cpu_s_per_million // empty' | median)
  sys=$(cat "$out"/fanout-"$name"-[0-9]*.json | jq -r '.server_system_s_per_million // empty' | median)
  p50=$(cat "$out"/fanout-"$name"-[0-9]*.json | jq -r '.latency.p50_us // empty | . / 1000' | median)
  p99=$(cat "$out"/fanout-"$name"-[0-9]*.json | jq -r '.latency.p99_us // empty | . / 1000' | median)
  mem=$(cat "$out"/idle-"$name"-[0-9]*.json | jq -r '.rss_per_connection // empty' | median)
  printf '%-12s %18s %18s %12s %12s %16s\n' "$name" "$cpu" "$sys" "$p50" "$p99" "$mem"
done
echo "raw results in $out"
