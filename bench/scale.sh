#!/usr/bin/env bash
# scale.sh — usernet under many idle flows and under connection churn.
#
#   bench/scale.sh [ENGINE]        ENGINE defaults to target/release/usernet (copied first)
#
# 1. Churn, first, on the fresh engine: CHURN sequential (connect, read 1-byte greeting,
#    close) from the guest to a host server through the engine; engine RSS, VmHWM and
#    fds before, right after, and SETTLE seconds later.
# 2. One iperf3 flow, guest → host (10.0.2.2 = host 127.0.0.1) and host → guest (-R),
#    while 0, then 1 000, then 10 000 other TCP flows from the guest to a host-side
#    server are open and idle; then again with all of them closed.
#    Engine RSS (/proc/PID/status VmRSS) and fd count just before the first idle flow and
#    with each set open → RSS per idle flow. After each level every idle flow is checked
#    end to end (1 byte each way).
# Writes bench/results/scale.md (and scale.jsonl) and prints the table.
#
# Knobs: FLOWS="1000 10000" REPS=3 DURATION=10 CHURN=100000 MTU=65520 SETTLE=5
#        LIFETIME=1200 (hard cap, s, on every process started) OUT=bench/results
#
# Topology (made here, removed on exit; only loopback and these namespaces are used):
#   usc-host   network namespace standing in for the host: lo, veth ext0/ext0p with
#              198.51.100.1/24 and a default route to 198.51.100.254 (nobody behind it;
#              its tx counter must stay 0). Engine, iperf3 server and helper server
#              (bound to 127.0.0.1) run here.
#   guest      `unshare -r -n` namespace (user+net) holding tap0 = 10.0.2.100/24, made by
#              the engine's --configure; its default route is replaced by nothing.
#   sysctls in the guest namespace only: ip_local_port_range 1024-65535, tcp_tw_reuse=1
#   (100 000 sequential connections from one address).
set -Eeuo pipefail
{ # the whole script is read before it runs: editing this file mid-run is harmless

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ENGINE_SRC=${1:-target/release/usernet}
FLOWS=${FLOWS:-1000 10000}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
CHURN=${CHURN:-100000}
MTU=${MTU:-65520}
SETTLE=${SETTLE:-5}
LIFETIME=${LIFETIME:-1200}
OUT=${OUT:-bench/results}
WORK=/tmp/usernet-scale
HNS=usc-host
GW=10.0.2.2
GUEST=10.0.2.100
P_IPERF=5201 P_HOLD=7101 P_GREET=7102
PY=$(python3 -c 'import sys; print(sys.executable)')
TOOL="$ROOT/bench/scale_tool.py"

log() { printf '[scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
tool() { "$PY" "$TOOL" "$@"; }

[ "$(id -u)" = 0 ] || die "run as root (namespaces, tap)"
for c in ip iperf3 unshare nsenter flock timeout ss; do
    command -v "$c" >/dev/null || die "missing $c"
done
[ -x "$ENGINE_SRC" ] || die "engine $ENGINE_SRC not found (cargo build --release -p usernet-engine)"
max_flows=0; for n in $FLOWS; do [ "$n" -gt "$max_flows" ] && max_flows=$n; done
[ "$max_flows" -le 16000 ] || die "FLOWS above 16000: the engine caps guest TCP flows at 16384"
# the engine holds one host fd per flow, the helper server one per flow, the guest client
# one per flow: raise the limit for everything started from here
NEED=$((max_flows + 2048))
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt "$NEED" ]; then
    ulimit -Hn "$NEED" 2>/dev/null || die "ulimit -Hn is $HARD, below the $NEED fds that $max_flows flows need"
    HARD=$NEED
fi
ulimit -n "$HARD" || die "cannot raise ulimit -n to $HARD"

mkdir -p "$WORK" "$OUT"; chmod 700 "$WORK"
exec 9>"$WORK.lock"
flock -n 9 || die "another scale.sh run holds $WORK.lock"

# ------------------------------------------------------------------ process tracking
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0; s=${s##*) }; set -- $s; [ "$1" != Z ] && echo "${20}"; return 0; }
track() { echo "$1 $(starttime "$1")" >> "$WORK/pids"; }
is_ours() { [ -n "$2" ] && [ "$(starttime "$1")" = "$2" ]; }
kill_tracked() {
    [ -s "$WORK/pids" ] || { rm -f "$WORK/pids"; return 0; }
    local p st i alive
    while read -r p st; do if is_ours "$p" "$st"; then kill "$p" 2>/dev/null || true; fi; done < "$WORK/pids"
    for i in $(seq 50); do
        alive=0
        while read -r p st; do if is_ours "$p" "$st"; then alive=1; fi; done < "$WORK/pids"
        [ $alive = 0 ] && break
        sleep 0.1
    done
    while read -r p st; do if is_ours "$p" "$st"; then kill -9 "$p" 2>/dev/null || true; fi; done < "$WORK/pids"
    rm -f "$WORK/pids"
}
MY_NETNS=$(readlink /proc/self/ns/net)
cleanup() {
    set +e
    trap - EXIT INT TERM
    exec 7>&- 2>/dev/null
    kill_tracked
    wait 2>/dev/null
    ip netns del "$HNS" 2>/dev/null
    rm -f "$WORK/idle.fifo" "$WORK/api.sock"
}
kill_tracked                      # leftovers of a run killed hard
ip netns del "$HNS" 2>/dev/null || true
trap cleanup EXIT
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

ENGINE="$WORK/usernet"
cp -f "$ENGINE_SRC" "$ENGINE.tmp" && mv -f "$ENGINE.tmp" "$ENGINE"
VERSION="$("$ENGINE" --version 2>/dev/null | head -1), file of $(date -u -r "$ENGINE_SRC" +%Y-%m-%dT%H:%MZ)"
RES="$WORK/scale.jsonl"; : > "$RES"
echo "nameserver 127.0.0.1" > "$WORK/resolv.conf"

hx() { ip netns exec "$HNS" "$@"; }

# ------------------------------------------------------------------ topology
ip netns add "$HNS"
[ "$(ip netns exec "$HNS" readlink /proc/self/ns/net)" != "$MY_NETNS" ] || die "$HNS is our own netns"
hx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$HNS" link set lo up
ip -n "$HNS" link add ext0 type veth peer name ext0p
ip -n "$HNS" addr add 198.51.100.1/24 dev ext0
ip -n "$HNS" link set ext0 up
ip -n "$HNS" link set ext0p up
ip -n "$HNS" route add default via 198.51.100.254
LEAK0=$(hx cat /sys/class/net/ext0/statistics/tx_packets)

unshare --user --map-root-user --net sleep "$LIFETIME" </dev/null >/dev/null 2>&1 &
HOLD=$!; track $HOLD
for i in $(seq 50); do
    [ "$(readlink /proc/$HOLD/ns/net 2>/dev/null)" != "$MY_NETNS" ] && [ "$(cat /proc/$HOLD/comm 2>/dev/null)" = sleep ] && break
    sleep 0.1
done
[ "$(readlink /proc/$HOLD/ns/net)" != "$MY_NETNS" ] || die "guest holder never entered its namespace"
gx() { nsenter -t "$HOLD" -n -- "$@"; }     # the guest's network namespace
gx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1

API="$WORK/api.sock"; rm -f "$API" "$WORK/engine.pid"
log "engine: $ENGINE ($VERSION), MTU $MTU, ulimit -n $(ulimit -n)"
ip netns exec "$HNS" timeout "$LIFETIME" sh -c 'mount --bind "$1" /etc/resolv.conf || exit 97; shift; exec "$@"' \
    sh "$WORK/resolv.conf" "$ENGINE" --configure --mtu="$MTU" --api-socket "$API" \
    --pid-file "$WORK/engine.pid" "$HOLD" tap0 </dev/null >"$WORK/engine.log" 2>&1 &
track $!; TMO_PID=$!
NAT=""
for i in $(seq 100); do
    [ -s "$WORK/engine.pid" ] && NAT=$(cat "$WORK/engine.pid") && [ -d "/proc/$NAT" ] && break
    [ -n "$(starttime $TMO_PID)" ] || { cat "$WORK/engine.log" >&2; die "engine exited"; }
    sleep 0.05
done
[ -n "$NAT" ] || die "engine wrote no pid file"
track "$NAT"
alive() { [ -n "$(starttime "$NAT")" ]; }
for i in $(seq 100); do
    gx ip -4 -o addr show dev tap0 2>/dev/null | grep -q "inet $GUEST/" && break
    sleep 0.1
done
gx ip -4 -o addr show dev tap0 | grep -q "inet $GUEST/" || { cat "$WORK/engine.log" >&2; die "tap0 never got $GUEST"; }
gx ip route del default 2>/dev/null || true     # only 10.0.2.0/24 is reachable
GUEST_MTU=$(gx ip -o link show tap0 | sed -n 's/.* mtu \([0-9]*\).*/\1/p')

ip netns exec "$HNS" timeout "$LIFETIME" iperf3 -s -B 127.0.0.1 -p $P_IPERF </dev/null >"$WORK/iperf-server.log" 2>&1 &
track $!
ip netns exec "$HNS" timeout "$LIFETIME" "$PY" "$TOOL" serve --bind 127.0.0.1 --hold $P_HOLD --greet $P_GREET \
    --lifetime "$LIFETIME" </dev/null >"$WORK/serve.log" 2>&1 &
track $!
for p in $P_IPERF $P_HOLD $P_GREET; do
    for i in $(seq 100); do hx ss -Hltn "sport = :$p" | grep -q . && break; sleep 0.1; done
    hx ss -Hltn "sport = :$p" | grep -q . || die "nothing listens on $p"
done
for i in $(seq 50); do [ -S "$API" ] && break; sleep 0.1; done

# the idle-flow holder: commands through a FIFO, one JSON answer line per command
mkfifo "$WORK/idle.fifo"; : > "$WORK/idle.out"
nsenter -t "$HOLD" -n -- timeout "$LIFETIME" "$PY" "$TOOL" idle $GW $P_HOLD "$LIFETIME" \
    <"$WORK/idle.fifo" >"$WORK/idle.out" 2>"$WORK/idle.err" &
track $!
exec 7>"$WORK/idle.fifo"
idle_cmd() { # CMD [TIMEOUT_S] -> prints the answer line
    local n0 i
    n0=$(wc -l < "$WORK/idle.out")
    echo "$1" >&7
    for i in $(seq $((${2:-120} * 10))); do
        [ "$(wc -l < "$WORK/idle.out")" -gt "$n0" ] && { tail -1 "$WORK/idle.out"; return 0; }
        sleep 0.1
    done
    cat "$WORK/idle.err" >&2
    die "idle client: no answer to '$1'"
}
jget() { "$PY" -c 'import json,sys; j=json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, j))' "$@"; }
stats_json() { hx timeout 5 "$ENGINE" stats -a "$API" --json 2>/dev/null | tr -d '\n' || echo null; }

# ------------------------------------------------------------------ measurements
iperf_once() { # g2h|h2g -> Gbit/s on stdout ("" on failure)
    local js="$WORK/iperf.json" extra=()
    [ "$1" = h2g ] && extra=(-R)
    if ! gx timeout $((DURATION + 30)) iperf3 -c $GW -p $P_IPERF -t "$DURATION" -O 1 -J \
            --connect-timeout 3000 "${extra[@]}" > "$js" 2>>"$WORK/iperf-client.err"; then
        log "WARN: iperf3 $1 failed: $(grep -o '"error":.*' "$js" | head -1)"; echo ""; return 0
    fi
    tool iperf "$js" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["gbps"])'
}

# level LABEL FLOWS: open FLOWS idle flows (total), snapshot, iperf reps, check
RSS_BEFORE=""; FDS_BEFORE=""; OPENED="[]"
level() {
    local label=$1 n=$2 ans snap g2h=() h2g=() rep v chk="null"
    if [ "$n" -gt 0 ]; then
        ans=$(idle_cmd "open $n" 400)
        log "open $n: $ans"
        OPENED=$("$PY" -c 'import json,sys; a=json.loads(sys.argv[1]); a.append(json.loads(sys.argv[2])); print(json.dumps(a))' "$OPENED" "$ans")
        [ "$(jget "$ans" held)" = "$n" ] || log "WARN: only $(jget "$ans" held) of $n idle flows opened"
        sleep "$SETTLE"
    fi
    alive || die "engine died at level $label"
    snap=$(tool snap "$NAT")
    log "$label idle flows open: engine $(jget "$snap" '"rss %.1f MiB, %d fds" % (rss_kb/1024, fds)')"
    for rep in $(seq "$REPS"); do
        v=$(iperf_once g2h); [ -n "$v" ] && g2h+=("$v")
        v=$(iperf_once h2g); [ -n "$v" ] && h2g+=("$v")
        log "$label rep $rep: g2h ${g2h[*]: -1} h2g ${h2g[*]: -1} Gbit/s"
        alive || die "engine died during iperf3 at level $label"
    done
    local after; after=$(tool snap "$NAT")
    if [ "$n" -gt 0 ]; then chk=$(idle_cmd check 120); log "check: $chk"; fi
    "$PY" - "$label" "$n" "$snap" "$after" "$chk" "$(stats_json)" "${g2h[*]:-}" "${h2g[*]:-}" >> "$RES" <<'EOF'
import json, sys
label, n, snap, after, chk, st, g2h, h2g = sys.argv[1:9]
snap, after = json.loads(snap), json.loads(after)
print(json.dumps({"kind": "level", "label": label, "flows": int(n),
    "rss_open_kb": snap["rss_kb"], "fds_open": snap["fds"], "rss_after_iperf_kb": after["rss_kb"],
    "hwm_kb": after["hwm_kb"], "check": json.loads(chk), "stats": json.loads(st or "null"),
    "g2h": [float(x) for x in g2h.split()], "h2g": [float(x) for x in h2g.split()]}))
EOF
}

log "=== churn: $CHURN × connect+read+close"
tool hwm-reset "$NAT"
B=$(tool snap "$NAT")
R=$(gx timeout $((CHURN / 200 + 120)) "$PY" "$TOOL" churn $GW $P_GREET "$CHURN" $((CHURN / 250 + 60))) ||
    die "churn client failed: $R"
A=$(tool snap "$NAT")
ST_AFTER=$(stats_json)
log "churn: $R"
sleep "$SETTLE"
S=$(tool snap "$NAT")
log "churn: engine before $(jget "$B" '"%.1f MiB %d fds" % (rss_kb/1024, fds)'), peak $(jget "$A" '"%.1f MiB" % (hwm_kb/1024)'), after $(jget "$A" '"%.1f MiB %d fds" % (rss_kb/1024, fds)'), +${SETTLE}s $(jget "$S" '"%.1f MiB %d fds" % (rss_kb/1024, fds)')"
alive || die "engine died during churn"
"$PY" - "$CHURN" "$SETTLE" "$B" "$A" "$S" "$R" "$ST_AFTER" >> "$RES" <<'EOF'
import json, sys
count, settle, b, a, s, r, st = sys.argv[1:8]
def brief(j):  # the engine's counters, flattened to the nonzero ones that matter here
    if not isinstance(j, dict):
        return None
    flat = {}
    def walk(p, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{p}.{k}" if p else k, x)
        elif isinstance(v, (int, float)) and v and not isinstance(v, bool):
            flat[p] = v
    walk("", j)
    keep = [k for k in flat if any(w in k.lower() for w in ("tcp", "flow", "drop", "error", "refus"))]
    return ", ".join(f"{k}={flat[k]}" for k in sorted(keep)[:24]) or None
print(json.dumps({"kind": "churn", "count": int(count), "settle": int(settle), "before": json.loads(b),
                  "after": json.loads(a), "settled": json.loads(s), "result": json.loads(r),
                  "stats_after": brief(json.loads(st or "null"))}))
EOF

log "=== idle flows: levels 0 $FLOWS; iperf3 ${DURATION}s × $REPS per direction"
level 0 0
snap=$(tool snap "$NAT"); RSS_BEFORE=$(jget "$snap" rss_kb); FDS_BEFORE=$(jget "$snap" fds)
for n in $FLOWS; do level "$n" "$n"; done
ans=$(idle_cmd close 60); log "close: $ans"
sleep "$SETTLE"
AFTER_CLOSE=$(tool snap "$NAT")
log "after closing: $(jget "$AFTER_CLOSE" '"rss %.1f MiB, %d fds" % (rss_kb/1024, fds)')"
level "0, after closing all" 0

LEAK=$(( $(hx cat /sys/class/net/ext0/statistics/tx_packets) - LEAK0 ))
[ "$LEAK" = 0 ] || log "WARN: $LEAK packets left through ext0"
grep -v '^$' "$WORK/engine.log" | tail -5 | sed 's/^/[engine log] /' >&2 || true

export S_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) S_HOST="$(uname -r), $(nproc) CPUs, iperf3 $(iperf3 --version | head -1 | awk '{print $2}')" \
    S_ENGINE="$ENGINE_SRC" S_VERSION="$VERSION" S_MTU="$GUEST_MTU" S_DUR="$DURATION" S_REPS="$REPS" \
    S_RSS0="$RSS_BEFORE" S_FDS0="$FDS_BEFORE" S_OPENED="$OPENED" S_AFTER_CLOSE="$AFTER_CLOSE" \
    S_SETTLE="$SETTLE" S_LEAK="$LEAK" S_NOFILE="$(ulimit -n)"
"$PY" - "$WORK/meta.json" <<'EOF'
import json, os, sys
e = os.environ
json.dump({"date": e["S_DATE"], "host": e["S_HOST"], "engine": e["S_ENGINE"], "version": e["S_VERSION"],
           "mtu": int(e["S_MTU"] or 0), "duration": int(e["S_DUR"]), "reps": int(e["S_REPS"]),
           "rss_before_flows_kb": int(e["S_RSS0"]), "fds_before_flows": int(e["S_FDS0"]),
           "opened": json.loads(e["S_OPENED"]), "after_close": json.loads(e["S_AFTER_CLOSE"]),
           "settle": int(e["S_SETTLE"]),
           "notes": [f"ext0 (198.51.100.0/24 sink) tx packets during the run: {e['S_LEAK']}",
                     f"ulimit -n for the engine and helpers: {e['S_NOFILE']}",
                     "guest namespace sysctls: ip_local_port_range 1024-65535, tcp_tw_reuse=1"]},
          open(sys.argv[1], "w"))
EOF
tool table "$RES" "$WORK/meta.json" > "$OUT/scale.md.tmp" && mv "$OUT/scale.md.tmp" "$OUT/scale.md"
cp "$RES" "$OUT/scale.jsonl"
cat "$OUT/scale.md"
log "wrote $OUT/scale.md"
exit 0
}
