#!/usr/bin/env bash
# The benchmark suite of issue 10 (tests/bench/suite.rs): installs what it needs if missing (fio,
# gnuplot, qemu-storage-daemon; as root, or through sudo), builds the release daemon, then runs
# `cargo bench --bench suite`, which prints the table and the targets and leaves
# <target>/bench/suite-<UTC timestamp>.csv (every sample) and <target>/bench/suite.png.
# Knobs (environment): SHAREDISK_BENCH_SECS (per sample, 3), SHAREDISK_BENCH_ROUNDS (3),
# SHAREDISK_BENCH_DIR (/dev/shm: the image lives on tmpfs), SHAREDISK_BENCH_PATTERNS and
# SHAREDISK_BENCH_SYSTEMS (comma-separated substrings of pattern and system names, or `=name` for
# that name alone, e.g. SHAREDISK_BENCH_PATTERNS=4k-randwrite-qd32-1q
# SHAREDISK_BENCH_SYSTEMS=sharedisk,qsd; `=sharedisk` is the plain daemon without its variants),
# SHAREDISK_BENCH_DIRECT=1 (O_DIRECT everywhere).
# The system sharedisk-cluster (issue 11: cluster mode on a local single-member etcd, from
# Debian's etcd-server) is in the run only with SHAREDISK_BENCH_DIRECT=1 and a build with the
# cluster feature, which this script does not ask for: run
# `SHAREDISK_BENCH_DIRECT=1 cargo bench --features cluster --bench suite` for it.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
# qemu-system-common carries /usr/bin/qemu-storage-daemon.
packages=(fio gnuplot-nox qemu-system-common)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "bench: cargo build --release"
cargo build --release
echo "bench: cargo bench --bench suite"
cargo bench --bench suite
