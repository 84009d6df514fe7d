#!/usr/bin/env bash
# Side-by-side comparison: the Go `centrifuge` peer server, Herald (release,
# --dev) and the bare reference server (`herald-bench bare-server`), one
# after the other, each pinned to CPU 0 with the load generator pinned to
# CPU 1, the same herald-bench command for all three. A fresh server is
# started for every run. Everything is on 127.0.0.1 and every run is bounded.
#
#   bench/compare.sh PEER_BINARY PEER_ADDR [OUT_DIR]
#
# PEER_BINARY  the Go peer (started as `PEER_BINARY -addr PEER_ADDR`; it
#              speaks client protocol v1 JSON at /connection/websocket and
#              takes publications at POST /publish)
# PEER_ADDR    host:port for it, e.g. 127.0.0.1:18200
# OUT_DIR      where the JSON line of each run goes (default: a new temp dir)
#
# Needs taskset, curl and jq. Environment: CASES (regex over case names,
# default all), SERVERS (default "go herald bare"), HERALD_PORT (18210), BARE_PORT (18220), DURATION (10s),
# WARMUP (3s), NO_PIN=1 to run unpinned, HERALD2_BIN=path to add a server
# "herald2" (another Herald build, e.g. before a change) to SERVERS,
# HERALD2_CONFIG=path (a config file for herald2; the binary defaults to
# this build then, e.g. to compare `client.write_delay` settings; for the
# chat case it needs the `chat` namespace of the default config below),
# REPEAT (1) rounds of the fixed-rate cases (servers interleaved in each
# round, files suffixed .1, .2, …), SAT_PUBLISHERS (8) HTTP publishers in
# the saturation search.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  sed -n '2,24p' "$0" >&2
  exit 2
fi
peer_bin=$1
peer_addr=$2
out=${3:-$(mktemp -d)}
mkdir -p "$out"
cases_re=${CASES:-.}
servers=${SERVERS:-go herald bare}
herald_port=${HERALD_PORT:-18210}
bare_port=${BARE_PORT:-18220}
duration=${DURATION:-10s}
warmup=${WARMUP:-3s}

cargo build --release --locked -p herald -p herald-bench >&2
bench=$PWD/target/release/herald-bench
herald=$PWD/target/release/herald
work=$(mktemp -d)
# No per-address connect limit: the load comes from a few loopback addresses.
# The chat case's rooms are in namespace `chat`: presence and a history of
# 20 in memory, as the Go peer keeps them with -presence -history-size 20
# (neither sends join/leave pushes).
echo '{"log":{"level":"warn"},"client":{"connection_rate_limit_per_ip":0},
  "channel":{"namespaces":[{"name":"chat","presence":true,"history_size":20,"history_ttl":"300s"}]}}' >"$work/herald.json"
# Flags the Go peer starts with (set for the chat case).
peer_flags=()

pin() { # pin CPU COMMAND... (exec: a server started with `pin … &` keeps $! as its PID)
  if [ "${NO_PIN:-0}" = 1 ]; then exec "${@:2}"; else exec taskset -c "$1" "${@:2}"; fi
}

server_pid=""
start_server() { # start_server NAME -> sets server_pid, url, proto, publish
  local name=$1 health
  case $name in
    go)
      pin 0 "$peer_bin" -addr "$peer_addr" "${peer_flags[@]}" >"$work/go.log" 2>&1 &
      url="ws://$peer_addr/connection/websocket"; proto=centrifuge-v1-json
      publish="http://$peer_addr/publish"; health="http://$peer_addr/health" ;;
    herald|herald2)
      local bin=$herald config=$work/herald.json
      if [ "$name" = herald2 ]; then
        bin=${HERALD2_BIN:-$herald}
        config=${HERALD2_CONFIG:-$config}
      fi
      pin 0 "$bin" serve --dev -c "$config" --address 127.0.0.1 \
        --port "$herald_port" --data-dir "$work/data" >"$work/$name.log" 2>&1 &
      url="ws://127.0.0.1:$herald_port/connection/websocket"; proto=centrifuge-v2-json
      publish="http://127.0.0.1:$herald_port/api/publish"; health="http://127.0.0.1:$herald_port/health" ;;
    bare)
      pin 0 "$bench" bare-server --port "$bare_port" --max-runtime 10m >"$work/bare.log" 2>&1 &
      url="ws://127.0.0.1:$bare_port/connection/websocket"; proto=centrifuge-v2-json
      publish="http://127.0.0.1:$bare_port/api/publish"; health="http://127.0.0.1:$bare_port/health" ;;
  esac
  server_pid=$!
  for _ in $(seq 1 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    curl -fsS "$health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$name did not come up" >&2
  cat "$work/$name.log" >&2
  return 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  sleep 1 # let sockets in TIME_WAIT and the CPU settle
}
trap stop_server EXIT

# run CASE SERVER SCENARIO ARGS... : one run on a fresh server; the JSON
# line goes to OUT_DIR/CASE.SERVER.json; prints "kept_up" for fanout.
run() {
  local case=$1 name=$2 scenario=$3
  shift 3
  start_server "$name"
  local publish_args=()
  case $scenario in fanout|many-channels) publish_args=(--publish-url "$publish");; esac
  echo "== $case on $name" >&2
  (pin 1 "$bench" "$scenario" --url "$url" --protocol "$proto" --server-pid "$server_pid" \
    "${publish_args[@]}" "$@") >"$work/run.txt" || true
  grep -v '^{' "$work/run.txt" >&2 || true
  tail -n 1 "$work/run.txt" | grep '^{' >"$out/$case.$name.json" || echo '{}' >"$out/$case.$name.json"
  stop_server
}

timing=(--duration "$duration" --warmup "$warmup")
repeat=${REPEAT:-1}
sat_publishers=${SAT_PUBLISHERS:-8}
suffix() { [ "$repeat" = 1 ] && echo "" || echo ".$1"; }
for round in $(seq 1 "$repeat"); do
  s=$(suffix "$round")
  for name in $servers; do
    [[ fanout-1000-r200 =~ $cases_re ]] &&
      run "fanout-1000-r200$s" "$name" fanout --subscribers 1000 --rate 200 "${timing[@]}"
    [[ fanout-1000-r1 =~ $cases_re ]] &&
      run "fanout-1000-r1$s" "$name" fanout --subscribers 1000 --rate 1 "${timing[@]}"
    [[ fanout-5000-r20 =~ $cases_re ]] &&
      run "fanout-5000-r20$s" "$name" fanout --subscribers 5000 --rate 20 "${timing[@]}"
    if [[ many-5000-g10-r2000 =~ $cases_re ]] && [ "$name" != bare ]; then
      run "many-5000-g10-r2000$s" "$name" many-channels --connections 5000 --group-size 10 \
        --rate 2000 --publishers 4 "${timing[@]}"
    fi
    # Chat: rooms of 10 to 50, messages from clients, rejoins reading
    # history and presence (not for the bare loop, which has neither).
    for chat in 2000:200:20 5000:1000:50; do
      IFS=: read -r conns rate rejoins <<<"$chat"
      [[ chat-$conns-r$rate =~ $cases_re ]] && [ "$name" != bare ] || continue
      peer_flags=(-presence -history-size 20)
      run "chat-$conns-r$rate$s" "$name" chat --connections "$conns" --rate "$rate" \
        --rejoin-rate "$rejoins" --history-limit 20 "${timing[@]}"
      peer_flags=()
    done
    [[ idle-15000 =~ $cases_re ]] &&
      run "idle-15000$s" "$name" idle --connections 15000 --settle 5s --hold 10s --connect-concurrency 200
    [[ storm-10000 =~ $cases_re ]] &&
      run "storm-10000$s" "$name" connect-storm --clients 10000 --concurrency 200
  done
done
# Saturation: raise the rate until a step does not keep up.
for name in $servers; do
  for subs in 1000 5000; do
    [[ sat-$subs =~ $cases_re ]] || continue
    if [ "$subs" = 1000 ]; then rates="200 400 600 800 1000 1200 1400 1600"; else rates="40 80 120 160 200 240"; fi
    for rate in $rates; do
      run "sat-$subs-r$rate" "$name" fanout --subscribers "$subs" --rate "$rate" \
        --publishers "$sat_publishers" --duration 6s --warmup 2s
      grep -q '"kept_up":true' "$out/sat-$subs-r$rate.$name.json" || break
    done
  done
done

echo "results in $out" >&2
# One row per run: case, server, the figures that matter.
for f in "$out"/*.json; do
  jq -r --arg f "$(basename "$f" .json)" '
    [$f, (.delivered_per_s // .connects_per_s // "-" | tostring),
     ((.latency.p99_us // 0) / 1000 | tostring), ((.latency.p999_us // 0) / 1000 | tostring),
     (.server_cpu_s_per_million // .server_cpu_ms_per_connect // "-" | tostring),
     (.server_system_s_per_million // "-" | tostring),
     ((.rss_per_connection // 0) / 1024 | tostring),
     (.usage.server_cpu_percent // .server_cpu_percent // "-" | tostring),
     (.usage.loadgen_cpu_percent // .loadgen_cpu_percent // "-" | tostring),
     (.lost // .failed // .dropped // "-" | tostring), (if has("kept_up") then (.kept_up | tostring) else "-" end)] | @tsv' "$f"
done | column -t -N "run,rate/s,p99ms,p99.9ms,cpu-s/1M|ms/conn,kernel-s/1M,KiB/conn,srv%,gen%,lost/failed,kept_up"
