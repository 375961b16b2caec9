#!/usr/bin/env bash
# A shared-disk lab: the daemon and N guests (1 to 8) on one image, each guest with its
# vhost-user-blk (/dev/vda) and vhost-user-scsi (/dev/sda) device and a root shell on a serial
# console you can attach to.
#
#   qemu-scripts/lab.sh N [--size 1G] [--dir DIR] [--tmux]
#   qemu-scripts/lab.sh --cluster N [--size 1G] [--dir DIR] [--tmux]
#
# --cluster N (2 to 8) boots the Debian cluster guest (images/build-cluster-guest.sh) instead:
# guests node1..nodeN on a private loopback-only network (10.77.0.K), corosync and pacemakerd
# started at boot. Then, on one node: `mkfs.ext4 /dev/vda` and
# `crm configure load update /usr/share/sharedisk/cluster.crm` (fence_scsi with unfencing, an
# ext4 Filesystem and the record-writing test application; its pcmk_host_list names node1-3).
#
# Consoles are Unix sockets (DIR/vmK.console, DIR/nodeK.console): attach with
#   socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:DIR/vmK.console     (Ctrl-] detaches)
# With --tmux (and tmux installed) a tmux session "sharedisk-lab" gets one window per guest.
# Stop everything with Ctrl-C here, or `kill $(cat DIR/lab.pid)` from elsewhere. The image and
# its reservation state stay in DIR, so the next lab starts where this one stopped.
# SHAREDISK_ACCEL=kvm|tcg forces the accelerator (see accel.sh); SHAREDISK_QEMU names the QEMU
# binary (default: qemu-system-x86_64 on the PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
CLUSTER=0
if [ "${1:-}" = --cluster ]; then
    CLUSTER=1
    shift
fi
N=${1:-}
[[ "$N" =~ ^[1-8]$ ]] || usage
[ $CLUSTER = 0 ] || [ "$N" -ge 2 ] || usage
shift
SIZE=1G
DIR=${TMPDIR:-/tmp}/sharedisk-lab
TMUX_MODE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --tmux) TMUX_MODE=1; shift ;;
        *) usage ;;
    esac
done

images/install-deps.sh
images/build-guest.sh >/dev/null
[ $CLUSTER = 0 ] || images/build-cluster-guest.sh
cargo build --release --quiet
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
echo $$ > "$DIR/lab.pid"

# shellcheck source=accel.sh
source qemu-scripts/accel.sh

guests=()
prefix=vm
[ $CLUSTER = 0 ] || prefix=node
for i in $(seq 1 "$N"); do guests+=("$prefix$i"); done
hosts=$(for i in $(seq 1 "$N"); do printf 'node%d=10.77.0.%d,' "$i" "$i"; done)
hosts=${hosts%,}
# The cluster's private network: a multicast group on the loopback interface, on a port of this
# lab's own.
net=239.255.77.2:$((30000 + $$ % 20000))
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "lab: stopping ${#pids[@]} processes"
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$TMUX_MODE" = 1 ] && tmux kill-session -t sharedisk-lab 2>/dev/null || true
    rm -f "$DIR/lab.pid"
    echo "lab: stopped; image and reservations kept in $DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RUST_LOG=${RUST_LOG:-info} target/release/sharedisk serve --image "$DIR/disk.img" --size "$SIZE" \
    --socket-dir "$DIR/sock" --guests "$(IFS=,; echo "${guests[*]}")" >"$DIR/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 1 100); do
    [ -S "$DIR/sock/${guests[$((N - 1))]}-scsi.sock" ] && break
    kill -0 $daemon 2>/dev/null || { cat "$DIR/daemon.log"; exit 1; }
    sleep 0.1
done

for i in $(seq 1 "$N"); do
    g=${guests[$((i - 1))]}
    cluster_args=()
    if [ $CLUSTER = 1 ]; then
        cluster_args=(--cluster --net "$net" --mac "$(printf '52:54:00:77:00:%02x' "$i")"
            --ip "10.77.0.$i/24" --hosts "$hosts" --ack "$DIR/$g.ttyS1" --append sharedisk.autostart)
    fi
    qemu-scripts/run-guest.sh --name "$g" --blk "$DIR/sock/$g-blk.sock" --scsi "$DIR/sock/$g-scsi.sock" \
        --serial "unix:$DIR/$g.console" --reconnect --allow-reboot --append sharedisk.interactive \
        "${cluster_args[@]}" >"$DIR/$g.qemu.log" 2>&1 &
    pids+=($!)
done
pids+=($daemon)

echo "sharedisk lab: $N guests on $DIR/disk.img ($SHAREDISK_ACCEL_NAME, $("${SHAREDISK_QEMU:-qemu-system-x86_64}" --version | head -n1))"
echo "  daemon log: $DIR/daemon.log"
for g in "${guests[@]}"; do
    echo "  $g console: socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:$DIR/$g.console   (Ctrl-] detaches)"
done
if [ "$TMUX_MODE" = 1 ] && command -v tmux >/dev/null; then
    sleep 1
    tmux new-session -d -s sharedisk-lab -n "${guests[0]}" \
        "socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:$DIR/${guests[0]}.console"
    for g in "${guests[@]:1}"; do
        tmux new-window -t sharedisk-lab -n "$g" "socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:$DIR/$g.console"
    done
    echo "  tmux: tmux attach -t sharedisk-lab"
fi
echo "  stop: Ctrl-C here, or kill \$(cat $DIR/lab.pid)"
wait $daemon
