#!/bin/bash
# Boot one sharedisk test guest (kernel + initramfs from images/build-guest.sh) in QEMU.
#
# Usage: qemu-scripts/run-guest.sh [options] [-- extra QEMU args...]
#   --name NAME        guest name (QEMU -name, guest hostname; default "guest")
#   --blk SOCK         vhost-user-blk socket  -> guest /dev/vda  (optional)
#   --scsi SOCK        vhost-user-scsi socket -> guest /dev/sda  (optional)
#   --memory SIZE      guest RAM = memfd backend size (default 512M)
#   --serial stdio|unix:PATH
#                      serial console on stdio (default) or on a unix server socket PATH
#                      (QEMU does not wait for a client; attach with
#                       `socat -,raw,echo=0 UNIX-CONNECT:PATH`)
#   --cache DIR        guest image dir (default ${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest)
#   --reconnect        let QEMU reconnect the vhost-user chardevs when the daemon restarts
#                      (reconnect=1 on QEMU <= 9.1, reconnect-ms=1000 on newer)
#   --append ARGS      extra kernel command line arguments
#   --allow-reboot     a guest reboot stays inside QEMU (default: QEMU exits on reboot/panic)
#   --cluster          boot the cluster guest (images/build-cluster-guest.sh: Debian 12 with
#                      pacemaker, corosync, fence-agents, multipath-tools) instead of the small
#                      one: its root.img as an NVMe disk with a private copy-on-write overlay
#                      (snapshot=on: nothing is written back), default cache .../cluster, 1G RAM
#   --net GROUP:PORT   (cluster) eth0 on a private guest network: a UDP multicast group on the
#                      loopback interface, shared by the guests given the same GROUP:PORT
#   --mac MAC          (cluster) eth0's MAC address (unique per guest on one network)
#   --ip ADDR/PREFIX   (cluster) eth0's address
#   --hosts N1=IP1,... (cluster) every node of the cluster: /etc/hosts and corosync.conf
#   --ack FILE         (cluster) the guest's second serial port (/dev/ttyS1) is appended to FILE
#   --root FILE        (cluster) the root disk is FILE, a qcow2 overlay of root.img whose writes
#                      are kept (instead of a private snapshot), on virtio-blk (QEMU cannot
#                      migrate NVMe) through an initramfs (FILE.initrd, see cluster-root-init):
#                      a live migration's destination QEMU, started with the same FILE, carries
#                      on with the same disk
#   --                 everything after is passed to QEMU verbatim
#
# The guest prints "@@READY@@ ..." on the serial console when booted, then runs each line it
# reads as `sh -c LINE` and prints "@@RC=<status>@@" after the output.  "poweroff" ends it.
# QEMU runs with -no-reboot, so a guest panic ends QEMU too.  Accelerator: see accel.sh
# (SHAREDISK_ACCEL=kvm|tcg forces).  The QEMU binary is $SHAREDISK_QEMU (default:
# qemu-system-x86_64 on the PATH; images/install-qemu10.sh prints a QEMU 10.0 to use here).
#
# Example without the daemon (QEMU's own emulated disks):
#   truncate -s 64M /tmp/d.img
#   qemu-scripts/run-guest.sh --name t -- \
#     -drive file=/tmp/d.img,if=none,id=d0,format=raw,file.locking=off -device virtio-blk-pci,drive=d0 \
#     -drive file=/tmp/d.img,if=none,id=d1,format=raw,file.locking=off -device virtio-scsi-pci \
#     -device scsi-hd,drive=d1
set -euo pipefail

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPTS/.." && pwd)

NAME=guest
BLK=
SCSI=
MEM=512M
MEM_SET=0
SERIAL=stdio
CACHE=${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest
RECONNECT=0
APPEND_EXTRA=
NO_REBOOT=-no-reboot
CLUSTER=0
NET=
MAC=
IP=
HOSTS=
ACK=
ROOT=
EXTRA=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
need_arg() { [ $# -ge 2 ] || { echo "run-guest: $1 needs an argument" >&2; exit 2; }; }

while [ $# -gt 0 ]; do
    case "$1" in
        --name) need_arg "$@"; NAME=$2; shift 2 ;;
        --blk) need_arg "$@"; BLK=$2; shift 2 ;;
        --scsi) need_arg "$@"; SCSI=$2; shift 2 ;;
        --memory) need_arg "$@"; MEM=$2; MEM_SET=1; shift 2 ;;
        --serial) need_arg "$@"; SERIAL=$2; shift 2 ;;
        --cache) need_arg "$@"; CACHE=$2; shift 2 ;;
        --append) need_arg "$@"; APPEND_EXTRA="$APPEND_EXTRA $2"; shift 2 ;;
        --reconnect) RECONNECT=1; shift ;;
        --allow-reboot) NO_REBOOT=; shift ;;
        --cluster) CLUSTER=1; shift ;;
        --net) need_arg "$@"; NET=$2; shift 2 ;;
        --mac) need_arg "$@"; MAC=$2; shift 2 ;;
        --ip) need_arg "$@"; IP=$2; shift 2 ;;
        --hosts) need_arg "$@"; HOSTS=$2; shift 2 ;;
        --ack) need_arg "$@"; ACK=$2; shift 2 ;;
        --root) need_arg "$@"; ROOT=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "run-guest: unknown option $1" >&2; usage ;;
    esac
done

case "$NAME" in
    *[!A-Za-z0-9_.-]*|"") echo "run-guest: --name must match [A-Za-z0-9_.-]+" >&2; exit 2 ;;
esac

if [ $CLUSTER = 1 ]; then
    [ "$CACHE" != "${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest" ] ||
        CACHE=${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/cluster
    [ "$MEM_SET" = 1 ] || MEM=1024M
    if [ ! -s "$CACHE/vmlinuz" ] || [ ! -s "$CACHE/root.img" ]; then
        echo "run-guest: cluster guest image missing in $CACHE, building" >&2
        "$REPO/images/build-cluster-guest.sh" "$CACHE" >&2
    fi
elif [ ! -s "$CACHE/vmlinuz" ] || [ ! -s "$CACHE/initramfs.img" ]; then
    echo "run-guest: guest images missing in $CACHE, building" >&2
    "$REPO/images/build-guest.sh" "$CACHE" >&2
fi

QEMU=${SHAREDISK_QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || {
    echo "run-guest: $QEMU not found (images/install-deps.sh installs qemu-system-x86; SHAREDISK_QEMU names another)" >&2
    exit 127
}

# shellcheck source=accel.sh
source "$SCRIPTS/accel.sh"

RECONNECT_OPT=
SCSI_RECONNECT_OPT=
if [ $RECONNECT = 1 ]; then
    ver=$("$QEMU" --version | sed -n 's/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n1)
    read -r major minor <<<"${ver:-0 0}"
    if [ "$major" -gt 9 ] || { [ "$major" -eq 9 ] && [ "$minor" -ge 2 ]; }; then
        RECONNECT_OPT=",reconnect-ms=1000"
    else
        RECONNECT_OPT=",reconnect=1"
    fi
    # vhost-user-scsi learnt to reconnect in QEMU 8.2; before that a reconnecting chardev makes
    # the device fail to realize ("Failed to set msg fds"), so it keeps a plain connection.
    if [ "$major" -gt 8 ] || { [ "$major" -eq 8 ] && [ "$minor" -ge 2 ]; }; then
        SCSI_RECONNECT_OPT=$RECONNECT_OPT
    fi
fi

ARGS=(
    -name "$NAME"
    "${SHAREDISK_ACCEL_ARGS[@]}"
    -machine q35,memory-backend=mem
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -m "$MEM"
    -smp 1
    -nodefaults -no-user-config
    -display none
    $NO_REBOOT
    -kernel "$CACHE/vmlinuz"
)
APPEND="console=ttyS0 panic=-1 quiet loglevel=3 sharedisk.name=$NAME mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable"
if [ $CLUSTER = 1 ]; then
    # clocksource=hpet: under TCG on a busy host the kernel can calibrate the TSC wrongly at boot,
    # and a guest clock that runs fast makes corosync's and Pacemaker's timers fire early. The
    # HPET counts QEMU's virtual clock, which follows the host's.
    APPEND="$APPEND net.ifnames=0 clocksource=hpet"
    if [ -n "$ROOT" ]; then
        # QEMU cannot migrate an NVMe controller: this root is a virtio-blk disk at the last PCI
        # slot (after the vhost-user-blk device, which stays /dev/vda), mounted by
        # cluster-root-init from an initramfs: the test guest's, with that /init appended.
        GUEST_CACHE=${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/guest
        [ -s "$GUEST_CACHE/initramfs.img" ] || "$REPO/images/build-guest.sh" "$GUEST_CACHE" >&2
        extra=$(mktemp -d)
        install -m 755 "$SCRIPTS/cluster-root-init" "$extra/init"
        { cat "$GUEST_CACHE/initramfs.img"; (cd "$extra" && echo init | cpio -o -H newc --quiet | gzip -1); } \
            >"$ROOT.initrd"
        rm -rf "$extra"
        ARGS+=(-drive "file=$ROOT,if=none,id=root,format=qcow2"
            -device virtio-blk-pci,drive=root,serial=sharedisk-root,bus=pcie.0,addr=0x1e
            -initrd "$ROOT.initrd")
    else
        # NVMe and ext4 are built into the kernel: no initramfs. The root is an NVMe namespace so
        # that /dev/vda and /dev/sda stay sharedisk's devices.
        ARGS+=(-drive "file=$CACHE/root.img,if=none,id=root,format=raw,snapshot=on"
            -device nvme,drive=root,serial=sharedisk-root)
        APPEND="$APPEND root=/dev/nvme0n1 rw rootfstype=ext4 init=/sbin/sharedisk-init"
    fi
    [ -z "$IP" ] || APPEND="$APPEND sharedisk.ip=$IP"
    [ -z "$HOSTS" ] || APPEND="$APPEND sharedisk.hosts=$HOSTS"
    if [ -n "$NET" ]; then
        # Multicast on 127.0.0.1: the datagrams never leave the loopback interface.
        ARGS+=(-netdev "socket,id=net0,mcast=$NET,localaddr=127.0.0.1"
            -device "virtio-net-pci,netdev=net0${MAC:+,mac=$MAC}")
    fi
else
    ARGS+=(-initrd "$CACHE/initramfs.img")
fi
ARGS+=(-append "$APPEND$APPEND_EXTRA")

if [ -n "$BLK" ]; then
    ARGS+=(-chardev "socket,id=blk0,path=$BLK$RECONNECT_OPT"
        -device vhost-user-blk-pci,chardev=blk0,num-queues=1)
fi
if [ -n "$SCSI" ]; then
    ARGS+=(-chardev "socket,id=scsi0,path=$SCSI$SCSI_RECONNECT_OPT"
        -device vhost-user-scsi-pci,chardev=scsi0,num_queues=1)
fi

case "$SERIAL" in
    stdio) ARGS+=(-serial stdio -monitor none) ;;
    unix:?*)
        path=${SERIAL#unix:}
        ARGS+=(-chardev "socket,id=ser0,path=$path,server=on,wait=off" -serial chardev:ser0 -monitor none)
        ;;
    *) echo "run-guest: --serial must be stdio or unix:PATH" >&2; exit 2 ;;
esac
if [ -n "$ACK" ]; then
    # append=on: a migration's destination QEMU continues the file instead of truncating it.
    ARGS+=(-chardev "file,id=ack0,path=$ACK,append=on" -serial chardev:ack0)
fi

exec "$QEMU" "${ARGS[@]}" "${EXTRA[@]}"
