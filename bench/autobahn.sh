#!/usr/bin/env bash
# Runs the Autobahn WebSocket conformance suite (fuzzingclient) against a
# Herald release build and prints a summary: how many cases ended how, and
# the close code Herald sent in each group.
#
#   bench/autobahn.sh [OUT_DIR] [CASES...]      (default: 1.* … 7.* and 9.*)
#
# Needs `wstest` on PATH (pip install autobahntestsuite, under Python 2.7).
# Herald runs on 127.0.0.1:18210 with client.insecure on, from
# target/release/herald (build it first).
set -euo pipefail

out="${1:-autobahn-report}"
shift || true
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=("1.*" "2.*" "3.*" "4.*" "5.*" "6.*" "7.*" "9.*")
command -v wstest >/dev/null || { echo "wstest not found (pip install autobahntestsuite, Python 2.7)" >&2; exit 2; }
port=18210
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

printf '{"http_server":{"port":%d},"client":{"insecure":true},"log":{"level":"warn"}}' "$port" \
  > "$work/herald.json"
target/release/herald --config "$work/herald.json" --data-dir "$work/data" > "$work/herald.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

list=$(printf '"%s",' "${cases[@]}")
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cat > "$work/spec.json" <<SPEC
{"outdir": "$out", "servers": [{"agent": "herald", "url": "ws://127.0.0.1:$port/connection/websocket"}],
 "cases": [${list%,}], "exclude-cases": [], "exclude-agent-cases": {}}
SPEC
(cd "$work" && wstest -m fuzzingclient -s "$work/spec.json" > "$work/wstest.log" 2>&1)

python3 - "$out" <<'SUMMARY'
import collections, json, sys
out = sys.argv[1]
index = json.load(open(out + "/index.json"))["herald"]
groups = collections.defaultdict(list)
for case, r in index.items():
    report = json.load(open(out + "/" + r["reportfile"]))
    passed = r["behavior"] in ("OK", "INFORMATIONAL") and r["behaviorClose"] in ("OK", "INFORMATIONAL")
    code = "-" if passed else report.get("remoteCloseCode")
    key = (r["behavior"], r["behaviorClose"], code, report.get("wasClean"))
    groups[key].append(case)
order = lambda c: [int(x) for x in c.split(".")]
print(f"{len(index)} cases")
print("behavior / close behavior / Herald's close code / clean: count, first cases")
for key, found in sorted(groups.items(), key=lambda kv: -len(kv[1])):
    print(*key, len(found), " ".join(sorted(found, key=order)[:5]), sep="  ")
SUMMARY
