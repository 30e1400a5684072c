#!/usr/bin/env bash
# The fuzz campaign: runs every target of fuzz/fuzz_targets for SECONDS each (default
# 600) with libFuzzer (cargo fuzz; RUSTC_BOOTSTRAP=1 on the stable toolchain), starting
# from and growing fuzz/corpus/TARGET, then minimises each corpus, and appends one line
# per target to fuzz/tally.tsv (date, target, seconds, executions, corpus files,
# crashes). `fuzz/campaign.sh tally` prints each target's totals as a Markdown table.
# Crashes are left in fuzz/artifacts/TARGET: turn each into a unit test, fix, re-run.
#
#   cargo install cargo-fuzz        # once
#   fuzz/campaign.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
tally=fuzz/tally.tsv
if [ "${1:-}" = tally ]; then
    # Per target: runs, hours, executions, corpus files after its last run, crashes.
    printf '| target | runs | hours | executions | corpus files | crashes |\n|---|---|---|---|---|---|\n'
    awk -F'\t' 'NR > 1 { n[$2]++; s[$2] += $3; e[$2] += $4; f[$2] = $5; c[$2] += $6 }
        END { for (t in s) printf "| %s | %d | %.2f | %d | %d | %d |\n", t, n[t], s[t] / 3600, e[t], f[t], c[t] }' \
        "$tally" | sort
    exit 0
fi
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
[ -f "$tally" ] || printf 'date\ttarget\tseconds\texecutions\tcorpus_files\tcrashes\n' > "$tally"
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log=$(mktemp)
    # crashes, leaks, timeouts and OOMs count as findings; a slow unit (over 10 s) is
    # reported apart: it usually means the machine was busy, so it is re-timed below.
    findings() { ls "fuzz/artifacts/$t" | grep -cE '^(crash|leak|timeout|oom)-' || true; }
    before=$(findings)
    slow_before=$(ls "fuzz/artifacts/$t" | grep -c '^slow-unit-' || true)
    # -rss_limit_mb bounds the target's memory; -max_len covers a 64 KiB frame sequence.
    cargo fuzz run --fuzz-dir fuzz --features libfuzzer "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=70000 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1 || true
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    after=$(findings)
    slow=$(( $(ls "fuzz/artifacts/$t" | grep -c '^slow-unit-' || true) - slow_before ))
    # Minimise: merge into a fresh directory, then drop the generated inputs (named by
    # their SHA-1) that the merge did not keep. Named seeds stay: tests read them.
    min=$(mktemp -d)
    cargo fuzz run --fuzz-dir fuzz --features libfuzzer "$t" "$min" "fuzz/corpus/$t" -- -merge=1 > /dev/null 2>&1 || true
    if [ -n "$(ls "$min")" ]; then
        for f in "fuzz/corpus/$t"/*; do
            b=$(basename "$f")
            if [[ $b =~ ^[0-9a-f]{40}$ ]] && [ ! -e "$min/$b" ]; then rm -f "$f"; fi
        done
    fi
    rm -rf "$min"
    files=$(ls "fuzz/corpus/$t" | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$t" "$secs" "${execs:-0}" "$files" "$((after - before))" >> "$tally"
    echo "$t: ${execs:-0} executions in ${secs}s, corpus $files files, $((after - before)) new crashes, $slow new slow units"
    if [ "$slow" -gt 0 ]; then
        echo "  re-time them: cargo fuzz run --fuzz-dir fuzz --features libfuzzer $t fuzz/artifacts/$t/slow-unit-*"
    fi
    tail -5 "$log" | grep -iE 'crash|panic|deadly|oom|timeout' || true
    rm -f "$log"
done
