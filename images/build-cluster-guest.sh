#!/bin/bash
# Build the sharedisk cluster guest: a Debian 12 userland with the real cluster stack, booted by
# the small guest's kernel.
#
# Usage: images/build-cluster-guest.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/cluster
#
# Outputs (in CACHE_DIR): root.img (a raw ext4 file system, the guests' root, used read-only
# with a private copy-on-write overlay per guest: QEMU's snapshot=on), vmlinuz (the same Debian
# cloud kernel as images/build-guest.sh), kernel-version, stamp, packages (what is installed).
#
# Contents: debootstrap --variant=minbase bookworm, then apt-get install (no recommends) of
# python3, fence-agents, sg3-utils, pacemaker, corosync, crmsh, resource-agents, multipath-tools,
# e2fsprogs, util-linux, iproute2, udev, kmod, procps, psmisc (fuser, for the Filesystem agent),
# open-iscsi (iscsiadm and iscsid, for the iSCSI-attached node of tests/e2e_iscsi_fence_scsi.rs);
# the kernel's modules (depmod'ed); and
#   /sbin/sharedisk-init       images/cluster-init: PID 1, same serial command agent as images/init
#   /usr/lib/ocf/resource.d/sharedisk/recorder   images/recorder.ocf: the test application
#   /usr/share/sharedisk/cluster.crm             images/cluster.crm: the Pacemaker configuration
# Nothing in the guest is patched or wrapped: the packages are Debian's, as installed.
#
# The kernel mounts the root directly (NVMe and ext4 are built into the cloud kernel), so there is
# no initramfs: `root=/dev/nvme0n1 init=/sbin/sharedisk-init`. The root disk is an NVMe namespace
# so that /dev/vda and /dev/sda stay sharedisk's devices.
#
# Idempotent: a fast no-op when the stamp (hash of this script, cluster-init, recorder.ocf,
# cluster.crm and the kernel version) matches; the Debian userland (CACHE_DIR/base) is only
# rebuilt when the package list changes, so other changes take about 20 s.
# SHAREDISK_CLUSTER_FORCE=1 rebuilds both. Downloaded .debs are kept in CACHE_DIR/debs. Needs root (debootstrap, chroot; it runs
# itself through sudo otherwise) and the Debian mirror (SHAREDISK_DEBIAN_MIRROR, default
# http://deb.debian.org/debian); installs debootstrap and e2fsprogs with apt-get when missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}
CACHE=${1:-$CACHE_ROOT/cluster}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
MIRROR=${SHAREDISK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
ROOT_SIZE=3G

PACKAGES="python3 fence-agents sg3-utils pacemaker corosync crmsh resource-agents multipath-tools
e2fsprogs util-linux iproute2 udev kmod procps psmisc open-iscsi"

msg() { echo "build-cluster-guest: $*" >&2; }
die() { msg "ERROR: $*"; exit 1; }

if [ "$(id -u)" != 0 ]; then
    # debootstrap and chroot need root: run this script again through sudo, on the same cache.
    command -v sudo >/dev/null || die "needs root (debootstrap, chroot) and sudo is missing"
    exec sudo env SHAREDISK_CACHE="$CACHE_ROOT" SHAREDISK_CLUSTER_FORCE="${SHAREDISK_CLUSTER_FORCE:-0}" \
        SHAREDISK_DEBIAN_MIRROR="$MIRROR" bash "$0" "$CACHE"
fi

# The kernel: the small guest's build downloads and unpacks it (a no-op when done).
SMALL_CACHE=$CACHE_ROOT/guest
"$HERE/build-guest.sh" "$SMALL_CACHE"
KVER=$(cat "$SMALL_CACHE/kernel-version")
KDIR=$SMALL_CACHE/kernel/$KVER
MODDIR="$KDIR/lib/modules/$KVER"
[ -d "$MODDIR" ] || MODDIR="$KDIR/usr/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no modules for $KVER in $KDIR"

inputs_hash() {
    cat "$HERE/build-cluster-guest.sh" "$HERE/cluster-init" "$HERE/recorder.ocf" "$HERE/cluster.crm" | sha256sum | cut -d' ' -f1
}
STAMP_WANT="inputs=$(inputs_hash) kernel=$KVER"

up_to_date() {
    [ -s "$CACHE/root.img" ] && [ -s "$CACHE/vmlinuz" ] && [ -f "$CACHE/stamp" ] &&
        [ "$(cat "$CACHE/stamp")" = "$STAMP_WANT" ]
}
if [ "${SHAREDISK_CLUSTER_FORCE:-0}" != 1 ] && up_to_date; then
    exit 0
fi
exec 9>"$CACHE/.lock"
flock 9
if [ "${SHAREDISK_CLUSTER_FORCE:-0}" != 1 ] && up_to_date; then
    exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    msg "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 || {
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
    }
fi
started=$(date +%s)
STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
R=$STAGE/root
B=$STAGE/base
cleanup() {
    for m in "$B/var/cache/apt/archives" "$B/dev/pts" "$B/dev" "$B/sys" "$B/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    # Never delete through a mount that is still there (the bind-mounted /dev).
    if grep -q " $STAGE/" /proc/self/mountinfo; then
        msg "mounts left under $STAGE: not removing it"
    else
        rm -rf "$STAGE"
    fi
}
trap cleanup EXIT
mkdir -p "$CACHE/debs/partial"

# Stage 1, the Debian userland, kept in CACHE/base and rebuilt only when the package list or the
# mirror changes (the slow part: a few minutes).
BASE_STAMP="suite=$SUITE mirror=$MIRROR packages=$(echo $PACKAGES)"
if [ "${SHAREDISK_CLUSTER_FORCE:-0}" = 1 ] || [ ! -d "$CACHE/base" ] || [ ! -f "$CACHE/base.stamp" ] ||
    [ "$(cat "$CACHE/base.stamp")" != "$BASE_STAMP" ]; then
    msg "debootstrap $SUITE (minbase) from $MIRROR"
    debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$B" "$MIRROR" >"$STAGE/debootstrap.log" 2>&1 ||
        { tail -n 30 "$STAGE/debootstrap.log" >&2; die "debootstrap failed"; }
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s/debian-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "${MIRROR%/debian}" "$SUITE" >"$B/etc/apt/sources.list"
    # No service starts inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$B/usr/sbin/policy-rc.d"
    chmod 755 "$B/usr/sbin/policy-rc.d"
    mount -t proc proc "$B/proc"
    mount -t sysfs sysfs "$B/sys"
    mount --bind /dev "$B/dev"
    mount --bind /dev/pts "$B/dev/pts"
    mount --bind "$CACHE/debs" "$B/var/cache/apt/archives"
    in_base() { chroot "$B" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
    msg "apt-get install: $(echo $PACKAGES)"
    in_base apt-get update -q >"$STAGE/apt.log" 2>&1 || { tail -n 30 "$STAGE/apt.log" >&2; die "apt-get update failed"; }
    # shellcheck disable=SC2086
    in_base apt-get install -y -q --no-install-recommends $PACKAGES >>"$STAGE/apt.log" 2>&1 ||
        { tail -n 40 "$STAGE/apt.log" >&2; die "apt-get install failed"; }
    in_base dpkg-query -W -f='${Package} ${Version}\n' >"$CACHE/packages"
    umount "$B/var/cache/apt/archives" "$B/dev/pts" "$B/dev" "$B/sys" "$B/proc"
    rm -f "$B/usr/sbin/policy-rc.d"
    # Only inside the staged tree: lists, documentation and translations the guest never reads.
    find "$B/var/lib/apt/lists" "$B/usr/share/doc" "$B/usr/share/man" "$B/usr/share/locale" -mindepth 1 -delete
    rm -rf "$CACHE/base"
    mv "$B" "$CACHE/base"
    echo "$BASE_STAMP" >"$CACHE/base.stamp"
fi

# Stage 2, the root file system: the base plus the kernel's modules and sharedisk's files.
cp -a "$CACHE/base" "$R"

# Kernel modules (the guest loads them with modprobe).
mkdir -p "$R/lib/modules"
cp -a "$MODDIR" "$R/lib/modules/$KVER"
depmod -b "$R" "$KVER"

install -m 0755 "$HERE/cluster-init" "$R/sbin/sharedisk-init"
install -D -m 0755 "$HERE/recorder.ocf" "$R/usr/lib/ocf/resource.d/sharedisk/recorder"
install -D -m 0644 "$HERE/cluster.crm" "$R/usr/share/sharedisk/cluster.crm"
mkdir -p "$R/mnt/shared"
echo "$KVER" >"$R/etc/sharedisk-kernel"
# Root logs in without a password on the consoles (a lab machine without network access).
sed -i 's/^root:[^:]*:/root::/' "$R/etc/shadow"
: >"$R/etc/fstab"

msg "making root.img ($ROOT_SIZE, ext4)"
rm -f "$STAGE/root.img"
mkfs.ext4 -q -F -L sharedisk-root -E lazy_itable_init=0,root_owner=0:0 -d "$R" "$STAGE/root.img" "$ROOT_SIZE" ||
    die "mkfs.ext4 -d failed"
cp "$KDIR/boot/vmlinuz-$KVER" "$STAGE/vmlinuz"
mv -f "$STAGE/root.img" "$CACHE/root.img"
mv -f "$STAGE/vmlinuz" "$CACHE/vmlinuz"
echo "$KVER" >"$CACHE/kernel-version"
echo "$STAMP_WANT" >"$CACHE/stamp"
msg "built $CACHE/root.img ($(du -h "$CACHE/root.img" | cut -f1) used) in $(($(date +%s) - started)) s"
