#!/usr/bin/env bash
# run-anchors.sh — one run of the shared anchors harness with every engine side by side:
# veth, slirp4netns-1500, slirp4netns-65520, pasta (../shared/bench/anchors.sh all), then
# usernet at MTU 65520 (`usernet`) and at MTU 1500 (`usernet-1500`), then the table.
#
#   bench/run-anchors.sh            everything (~13 min built-in engines + ~15 min usernet)
#   bench/run-anchors.sh usernet    only the two usernet rows (the built-in rows already in
#                                   $RESULTS stay; only compare rows from one invocation)
#   bench/run-anchors.sh table      only rebuild $RESULTS/anchors.md
#
# Environment: RESULTS (default bench/results), BUILD=0 to skip `cargo build`, and the
# harness's own knobs (REPS, DURATION, RR_COUNT, CRR_COUNT, UDP_COUNT, UDPW_COUNT, ...),
# passed through unchanged. Run as root from anywhere; paths are taken from the project root.
set -Eeuo pipefail
{ # read whole before running: editing this file mid-run is harmless

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ANCHORS=../shared/bench/anchors.sh
[ -x "$ANCHORS" ] || { echo "run-anchors: $ROOT/$ANCHORS not found" >&2; exit 1; }
export RESULTS=${RESULTS:-bench/results}
MODE=${1:-all}
case "$MODE" in all|usernet|table) ;; *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;; esac

log() { printf '[run-anchors %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [ "$MODE" = table ]; then
    "$ANCHORS" table
    log "wrote $RESULTS/anchors.md"; exit 0
fi

if [ "${BUILD:-1}" != 0 ]; then
    log "cargo build --release -p usernet-engine"
    cargo build --release -p usernet-engine
fi
# Snapshot the binary: other people rebuild target/ on this machine, and both usernet
# rows must come from the very same build.
BIN=bench/.bin/usernet
mkdir -p bench/.bin
cp -f target/release/usernet "$BIN.tmp" && mv -f "$BIN.tmp" "$BIN"
log "engine: $BIN ($("$BIN" --version 2>/dev/null | head -1), built $(date -u -r target/release/usernet +%Y-%m-%dT%H:%MZ); tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' with uncommitted changes'))"

mkdir -p "$RESULTS"
rc=0
if [ "$MODE" = all ]; then
    # a fresh table: rows from an earlier invocation must not mix with this one
    rm -f "$RESULTS"/anchors-*.jsonl "$RESULTS"/anchors.md
    log "built-in engines (veth, slirp4netns-1500, slirp4netns-65520, pasta)"
    "$ANCHORS" all || { rc=1; log "anchors.sh all: some engine failed (see above)"; }
fi
log "usernet, MTU 65520"
CUSTOM_NAME=usernet "$ANCHORS" custom "$BIN" || { rc=1; log "usernet run failed"; }
log "usernet-1500, MTU 1500"
CUSTOM_NAME=usernet-1500 CUSTOM_MTU=1500 "$ANCHORS" custom "$BIN" || { rc=1; log "usernet-1500 run failed"; }
"$ANCHORS" table
log "wrote $RESULTS/anchors.md (rc=$rc)"
exit $rc
}
