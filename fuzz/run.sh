#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 30) with a fixed seed, starting from
# its committed inputs, which it only reads: fuzz/corpus/<target>, the seeds of make_seeds.py,
# and fuzz/grown/<target>, what a 30-minute campaign added, cut down to the inputs that reach new
# code. New inputs go to a temporary directory. Fails if any target crashes, panics, leaks, hangs
# (10 s per input) or runs out of memory; the input that did it is kept in
# fuzz/artifacts/<target>/ (`cargo fuzz run <target> <file>` replays it).
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# Long campaigns: fuzz/run.sh 1800 under `nice -n 19`, or `cargo fuzz run <target>` by hand.
set -euo pipefail
secs=${1:-30}
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

echo "fuzz: building the targets"
cargo fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${secs}s"
    # New inputs go to the first directory, a temporary one; the committed ones are only read.
    mkdir -p "$work/$target" "fuzz/artifacts/$target" "fuzz/grown/$target"
    if ! cargo fuzz run "$target" "$work/$target" "fuzz/corpus/$target" "fuzz/grown/$target" -- \
        -seed=1 -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 2>"$work/$target.log"; then
        failed+=("$target")
        tail -n 60 "$work/$target.log"
    fi
    # What the run did: libFuzzer's last status line (coverage, corpus) and its final stats.
    { grep -aE '^#[0-9]+' "$work/$target.log" | tail -n 1
      grep -aE '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
          "$work/$target.log"
    } | sed "s/^/fuzz: $target: /" || true
done

if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: every target ran ${secs}s without a finding"
