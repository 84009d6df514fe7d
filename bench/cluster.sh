#!/usr/bin/env bash
# Fan-out through a Herald cluster next to a single node, with the same
# herald-bench command: one node with the in-memory broker, one node over
# Redis, and three nodes over Redis with the subscribers spread evenly over
# them (publications always enter through the first node's HTTP API).
#
#   bench/cluster.sh [REDIS_URL] [SUBSCRIBERS] [RATE] [DURATION]
#
# Defaults: redis://127.0.0.1:6379, 1000 subscribers, 100 publications/s,
# 10s. The server CPU per delivery is every node's CPU added up. One
# herald-bench process holds every subscriber, so SUBSCRIBERS stays under
# this machine's per-process file limit — unless PER_NODE=1: then each
# node gets SUBSCRIBERS of its own, held by a herald-bench process of its
# own (the first publishes, the others only listen, all measuring one
# window from a common start time), and each process's latency is told
# apart (the first node's deliveries are same-node, the others'
# cross-node). NATS=nats://… adds three nodes with the NATS broker and
# presence in Redis. Every server listens on 127.0.0.1; each run uses its
# own key prefix. Prints one JSON report line per case (and a summary on
# stderr), prefixed with the case name.
set -euo pipefail
cd "$(dirname "$0")/.."

redis=${1:-redis://127.0.0.1:6379}
subscribers=${2:-1000}
rate=${3:-100}
duration=${4:-10s}
per_node=${PER_NODE:-0}
nats=${NATS:-}

cargo build --release --locked -q -p herald -p herald-bench
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_node NAME CONFIG: starts `herald serve --dev`, remembers its PID
# and sets node_addr to its address (no subshell, so the PID is kept).
start_node() {
  local log="$work/$1.log"
  target/release/herald serve --dev --port 0 -c "$2" --data-dir "$work/$1" >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    node_addr=$(grep -o 'addr=[0-9.:]*' "$log" | head -n 1 | cut -d= -f2 || true)
    if [ -n "$node_addr" ]; then return; fi
    sleep 0.1
  done
  cat "$log" >&2
  echo "node $1 did not start" >&2
  exit 1
}

stop_nodes() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

run_case() {
  local name=$1; shift
  if [ "$per_node" = 1 ]; then
    run_per_node "$name" "$@"
    return
  fi
  local urls=("$@")
  local also=()
  for u in "${urls[@]:1}"; do also+=(--also-url "ws://$u/connection/websocket"); done
  # Every node's CPU is charged to the deliveries (added up).
  local servers=()
  for pid in "${pids[@]}"; do servers+=(--server-pid "$pid"); done
  echo "== $name" >&2
  local json
  json=$(target/release/herald-bench fanout --url "ws://${urls[0]}/connection/websocket" \
    "${also[@]}" "${servers[@]}" --subscribers "$subscribers" --rate "$rate" --duration "$duration" \
    --warmup 2s --connect-concurrency 200 --quiet --json)
  echo "$name $json"
  echo "$json" | jq -r --arg n "$name" \
    '"\($n): \(.delivered_per_s|floor) delivered/s, \(.server_cpu_s_per_million*100|round/100) CPU-s per 1M (all nodes), p50 \(.latency.p50_us/1000) ms, p99 \(.latency.p99_us/1000) ms, lost \(.lost)"' >&2
}

# run_per_node NAME ADDR...: a herald-bench process per node, SUBSCRIBERS
# each; the first also publishes and reads every node's CPU.
run_per_node() {
  local name=$1; shift
  local urls=("$@")
  local servers=()
  for pid in "${pids[@]}"; do servers+=(--server-pid "$pid"); done
  # Time for every process to connect its share first (1,000 a second:
  # the processes connect at once, sharing the cores with the nodes).
  local start=$(($(date +%s%3N) + 5000 + subscribers))
  local common=(--subscribers "$subscribers" --rate "$rate" --duration "$duration" --warmup 2s
    --connect-concurrency 200 --start-at "$start" --quiet --json)
  echo "== $name (one process per node, $subscribers subscribers each)" >&2
  local listeners=() i
  for i in $(seq 1 $((${#urls[@]} - 1))); do
    target/release/herald-bench fanout --url "ws://${urls[$i]}/connection/websocket" \
      --listen-only "${common[@]}" >"$work/part$i.json" &
    listeners+=($!)
  done
  target/release/herald-bench fanout --url "ws://${urls[0]}/connection/websocket" \
    "${servers[@]}" "${common[@]}" >"$work/part0.json"
  for i in "${listeners[@]}"; do wait "$i"; done
  local json
  json=$(for i in $(seq 0 $((${#urls[@]} - 1))); do tail -n 1 "$work/part$i.json"; done | jq -cs '{
    processes: length,
    delivered_per_s: (map(.delivered_per_s) | add),
    deliveries_measured: (map(.usage.operations) | add),
    server_cpu_s: .[0].usage.server_cpu_s,
    server_cpu_s_per_million: (.[0].usage.server_cpu_s * 1e6 / (map(.usage.operations) | add)),
    published: .[0].published, lost: .[0].lost,
    p99_ms_by_process: map(.latency.p99_us / 1000),
    p50_ms_by_process: map(.latency.p50_us / 1000),
    dropped: (map(.subscribers_dropped) | add)}')
  echo "$name $json"
  echo "$json" | jq -r --arg n "$name" \
    '"\($n): \(.delivered_per_s|floor) delivered/s, \(.server_cpu_s_per_million*100|round/100) CPU-s per 1M (all nodes), p50 by process \(.p50_ms_by_process) ms, p99 by process \(.p99_ms_by_process) ms (first: same node), lost \(.lost), dropped \(.dropped)"' >&2
}

memory="$work/memory.json"
echo '{"log":{"level":"info"},"client":{"connection_rate_limit_per_ip":0}}' >"$memory"
start_node single "$memory"
run_case "1-node-memory" "$node_addr"
stop_nodes

cluster="$work/cluster.json"
printf '{"log":{"level":"info"},"client":{"connection_rate_limit_per_ip":0},"engine":{"type":"redis","redis":{"address":"%s","prefix":"bench%s"}}}\n' \
  "$redis" "$$" >"$cluster"
start_node r1 "$cluster"
run_case "1-node-redis" "$node_addr"
stop_nodes

start_node c1 "$cluster"; a=$node_addr
start_node c2 "$cluster"; b=$node_addr
start_node c3 "$cluster"; c=$node_addr
run_case "3-nodes-redis" "$a" "$b" "$c"
stop_nodes

if [ -n "$nats" ]; then
  over_nats="$work/nats.json"
  # (The --dev chat namespace keeps history in memory, which NATS cannot
  # carry: replaced by one without.)
  printf '{"log":{"level":"info"},"client":{"connection_rate_limit_per_ip":0},"channel":{"namespaces":[{"name":"chat"}]},"broker":{"enabled":true,"type":"nats","nats":{"url":"%s","prefix":"bench%s"}},"presence_manager":{"enabled":true,"type":"redis","redis":{"address":"%s","prefix":"bench%s"}}}\n' \
    "$nats" "$$" "$redis" "$$" >"$over_nats"
  start_node n1 "$over_nats"; a=$node_addr
  start_node n2 "$over_nats"; b=$node_addr
  start_node n3 "$over_nats"; c=$node_addr
  run_case "3-nodes-nats" "$a" "$b" "$c"
  stop_nodes
fi
