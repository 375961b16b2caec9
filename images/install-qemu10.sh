#!/usr/bin/env bash
# Installs QEMU 10.0 from the machine's Debian backports suite beside the system QEMU (Debian 12's
# 7.2), without touching the system's apt setup or its packages, and prints the path of a wrapper
# that is the whole QEMU 10.0:
#
#   SHAREDISK_QEMU=$(images/install-qemu10.sh) cargo test --test guest_blk
#
# Layout, under ${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/qemu10:
#   bin/qemu-system-x86_64   the wrapper: runs root/usr/bin/qemu-system-x86_64 with
#                            -L root/usr/share/qemu -L /usr/share/seabios and its own module dir
#   root/                    qemu-system-x86, -common and -data, and qemu-block-extra (the
#                            block-iscsi module: libiscsi, for tests/e2e_iscsi_guest.rs),
#                            unpacked with dpkg-deb -x
#   apt/                     a private apt configuration: one sources file for <codename>-backports
#                            (the URIs and Signed-By of the machine's own Debian entry, read from
#                            /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list), its
#                            package lists and cache
#   debs/                    the downloaded packages
#
# Idempotent: a fast no-op when the wrapper exists and was made by this version of the script.
# SHAREDISK_QEMU10_FORCE=1 downloads and unpacks again (e.g. to pick up a newer backport).
#
# Needs root (or sudo) only if a shared library the backport links against, or seabios, is not
# installed yet: those come from the system's own suite through apt-get install.
set -euo pipefail

DIR=${SHAREDISK_CACHE:-$HOME/.cache/sharedisk}/qemu10
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
case "$DIR" in *"'"*) echo "install-qemu10: the cache path $DIR must not contain a quote" >&2; exit 1 ;; esac
WRAPPER=$DIR/bin/qemu-system-x86_64
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data qemu-block-extra)
WANT_MAJOR=10

msg() { echo "install-qemu10: $*" >&2; }
die() { msg "ERROR: $*"; exit 1; }

STAMP_WANT="script=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1) dir=$DIR"
up_to_date() {
    [ -x "$WRAPPER" ] && [ -f "$DIR/stamp" ] && [ "$(cat "$DIR/stamp")" = "$STAMP_WANT" ]
}
done_() {
    echo "$WRAPPER"
    exit 0
}

if [ "${SHAREDISK_QEMU10_FORCE:-0}" != 1 ] && up_to_date; then done_; fi
# Serialise concurrent installers.
exec 9>"$DIR/.lock"
flock 9
if [ "${SHAREDISK_QEMU10_FORCE:-0}" != 1 ] && up_to_date; then done_; fi

# ---- the backports source, derived from the machine's own Debian entry ---------------------------
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$CODENAME" ] || die "no VERSION_CODENAME in /etc/os-release"
SUITE=$CODENAME-backports

# Prints, as a deb822 stanza for $SUITE, the first enabled deb822 stanza of the given files whose
# Suites hold $CODENAME and whose Components hold main; its Signed-By (a path or an inline key) is
# kept verbatim.
from_deb822() {
    awk -v codename="$CODENAME" -v suite="$SUITE" '
        function has(list, word,   n, i, a) {
            n = split(list, a, /[ \t]+/)
            for (i = 1; i <= n; i++) if (a[i] == word) return 1
            return 0
        }
        function flush() {
            if (!done && has(f["types"], "deb") && has(f["suites"], codename) &&
                has(f["components"], "main") && tolower(f["enabled"]) != "no" && f["uris"] != "") {
                printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n", f["uris"], suite
                if (signed != "") printf "Signed-By:%s\n", signed
                done = 1
            }
            delete f; signed = ""; key = ""
        }
        /^#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ {
            if (key == "signed-by") signed = signed "\n" $0
            else if (key != "") f[key] = f[key] " " $0
            next
        }
        {
            key = tolower(substr($0, 1, index($0, ":") - 1))
            val = substr($0, index($0, ":") + 1)
            if (key == "signed-by") signed = val
            else { sub(/^[ \t]+/, "", val); sub(/[ \t]+$/, "", val); f[key] = val }
        }
        END { flush() }
    ' "$@"
}

# The same from one-line entries: "deb [options] URI suite component...".
from_one_line() {
    awk -v codename="$CODENAME" -v suite="$SUITE" '
        /^[ \t]*deb[ \t]/ && !done {
            line = $0; opts = ""
            if (match(line, /\[[^]]*\]/)) {
                opts = substr(line, RSTART + 1, RLENGTH - 2)
                line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
            }
            n = split(line, w, /[ \t]+/)
            i = (w[1] == "") ? 2 : 1
            if (w[i + 2] != codename) next
            main = 0
            for (j = i + 3; j <= n; j++) if (w[j] == "main") main = 1
            if (!main) next
            printf "Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n", w[i + 1], suite
            m = split(opts, o, /[ \t]+/)
            for (j = 1; j <= m; j++)
                if (o[j] ~ /^signed-by=/) printf "Signed-By: %s\n", substr(o[j], 11)
            done = 1
        }
    ' "$@"
}

APT=$DIR/apt
mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/cache/archives/partial"
stanza=
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
    stanza=$(from_deb822 "$f")
    [ -z "$stanza" ] || { msg "backports source derived from $f"; break; }
done
if [ -z "$stanza" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        stanza=$(from_one_line "$f")
        [ -z "$stanza" ] || { msg "backports source derived from $f"; break; }
    done
fi
shopt -u nullglob
[ -n "$stanza" ] || die "found no apt entry for '$CODENAME main' in /etc/apt to derive $SUITE from"
echo "$stanza" >"$APT/backports.sources"

# Only our sources file, lists and cache: the system's apt state is neither read for sources nor
# written. The sandbox user is root because _apt may not write under $DIR.
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT/backports.sources"
    -o "Dir::Etc::SourceParts=$APT/sources.list.d"
    -o "Dir::State::Lists=$APT/lists"
    -o "Dir::Cache=$APT/cache"
    -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
)
msg "apt-get update ($SUITE, private lists in $APT)"
apt-get "${APT_OPTS[@]}" update -q >&2 || die "apt-get update of $SUITE failed"

rm -rf "$DIR/debs"
mkdir -p "$DIR/debs"
msg "downloading ${PACKAGES[*]} from $SUITE"
(cd "$DIR/debs" && apt-get "${APT_OPTS[@]}" download -q "${PACKAGES[@]/%//$SUITE}" >&2) ||
    die "apt-get download from $SUITE failed"

rm -rf "$DIR/root" "$DIR/root.new"
mkdir -p "$DIR/root.new"
for deb in "$DIR"/debs/*.deb; do
    msg "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$DIR/root.new"
done
mv "$DIR/root.new" "$DIR/root"
ROOT=$DIR/root

# ---- what the binary needs from the system ---------------------------------------------------------
# The backport is built against this release's libraries: install the ones its packages depend on
# that are missing, and seabios (its BIOS; -L /usr/share/seabios below).
need=()
for deb in "$DIR"/debs/*.deb; do
    for p in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/:any//' | tr -d ' '); do
        case "$p" in qemu-*|ipxe-qemu|seabios|"") continue ;; esac
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
    done
done
[ -f /usr/share/seabios/bios-256k.bin ] || need+=(seabios)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "not root and no sudo: cannot install ${need[*]}"
        SUDO=sudo
    fi
    msg "installing from the system's suites: ${need[*]}"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2; then
        $SUDO apt-get update -q >&2
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
            die "apt-get install ${need[*]} failed"
    fi
fi
missing=$(ldd "$ROOT/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
[ -z "$missing" ] || die "$ROOT/usr/bin/qemu-system-x86_64 lacks shared libraries:"$'\n'"$missing"

# ---- the wrapper -------------------------------------------------------------------------------------
# The binary's built-in firmware and module paths are the system QEMU's: point them at the unpacked
# ones (-L may be given twice; QEMU_MODULE_DIR is where it loads its optional modules from).
mkdir -p "$DIR/bin"
cat >"$WRAPPER.new" <<EOF
#!/bin/sh
# QEMU from $SUITE, unpacked by images/install-qemu10.sh; see that script.
QEMU_MODULE_DIR='$ROOT/usr/lib/x86_64-linux-gnu/qemu' exec '$ROOT/usr/bin/qemu-system-x86_64' \\
    -L '$ROOT/usr/share/qemu' -L /usr/share/seabios "\$@"
EOF
chmod +x "$WRAPPER.new"
mv "$WRAPPER.new" "$WRAPPER"

version=$("$WRAPPER" --version | head -n1)
case "$version" in
    "QEMU emulator version $WANT_MAJOR."*) ;;
    *) die "$WRAPPER --version says '$version', not QEMU $WANT_MAJOR" ;;
esac
msg "$version: $WRAPPER"
echo "$STAMP_WANT" >"$DIR/stamp"
done_
