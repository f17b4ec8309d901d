#!/usr/bin/env bash
# QEMU 10 from Debian's bookworm-backports, beside the system's QEMU 7.2 and without touching it:
# the packages are fetched with `apt-get download` and unpacked with `dpkg -x` into a private
# folder; nothing of it is installed (the system's QEMU 7.2 is, when missing: QEMU 10 links its
# libraries). Prints the path of its qemu-system-x86_64. Idempotent: a second
# call only checks the folder and prints the path.
#   usage: bench/qemu10.sh [--firmware]   (--firmware: print its firmware folders instead, one a line,
#                                          for QEMU's -L)
# The folder is $QEMU10_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/vmsend-bench/qemu10 (about
# 90 MB; delete it to start over). Adds the backports suite to apt's sources when apt does not
# know it yet: /etc/apt/sources.list.d/debian-backports.sources, written like the Debian entries
# already there (same URIs and keyring). Backports have priority 100, so an ordinary
# `apt-get install` or upgrade never takes QEMU from there.
# Run QEMU 10 with `-L DIR` for each --firmware line and QEMU_MODULE_DIR=<root>/usr/lib/x86_64-linux-gnu/qemu
# (the system's modules belong to QEMU 7.2); LD_LIBRARY_PATH=<root>/lib if that folder exists.
set -euo pipefail
SUITE_FILE=/etc/apt/sources.list.d/debian-backports.sources
source "$(dirname "$0")/lib.sh"  # ensure_qemu
# qemu-system-x86 needs these from the same suite (its Depends: the same or a newer version than
# bookworm has: qemu-system-common =, qemu-system-data >>, seabios >> 1.16.3); ipxe-qemu (network
# cards' ROMs) is not needed with -nodefaults, and every shared library it links is in bookworm.
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)

say() { echo "qemu10: $*" >&2; }

codename() { . /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"; }

backports_known() {  # true when apt has a candidate for qemu-system-x86 in the backports suite
    # Not `| grep -q`: it exits at the first match, and under pipefail apt-cache's SIGPIPE reads as "unknown".
    local versions
    versions="$(apt-cache madison qemu-system-x86 2>/dev/null || true)"
    grep -q -- "$(codename)-backports" <<<"$versions"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

add_backports_suite() {
    local suite sources=/etc/apt/sources.list.d/debian.sources uris keyring
    suite="$(codename)-backports"
    # The URIs and keyring of the existing stanza that names the release itself (deb822 format).
    uris="$(awk -v rel="$(codename)" '/^$/ {u=""; s=0} /^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == rel) s=1}
                                      s && u {print u; exit}' "$sources" 2>/dev/null || true)"
    keyring="$(awk -v rel="$(codename)" '/^$/ {k=""; s=0} /^Signed-By:/ {k=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == rel) s=1}
                                         s && k {print k; exit}' "$sources" 2>/dev/null || true)"
    say "adding $suite to apt's sources ($SUITE_FILE)"
    as_root tee "$SUITE_FILE" >/dev/null <<EOF
Types: deb
URIs: ${uris:-http://deb.debian.org/debian}
Suites: $suite
Components: main
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
EOF
    as_root apt-get update -qq
}

check() {  # ROOT: the unpacked QEMU answers --version with 10.x and finds all its libraries
    local binary="$1/usr/bin/qemu-system-x86_64" missing
    [ -x "$binary" ] || return 1
    missing="$(LD_LIBRARY_PATH="$1/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$binary" | grep 'not found' || true)"
    if [ -n "$missing" ]; then
        say "libraries missing for $binary (add their packages from backports to PACKAGES, unpacked into $1/lib):"
        echo "$missing" >&2
        return 1
    fi
    "$binary" --version | head -1 | grep -q 'version 10\.'
}

main() {
    local cache="${QEMU10_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsend-bench/qemu10}"
    local mode=binary
    case "${1:-}" in
        "") ;;
        --firmware) mode=firmware ;;
        *) echo "usage: $0 [--firmware]" >&2; exit 2 ;;
    esac
    local root="$cache/root"
    if ! [ -f "$cache/complete" ] || ! check "$root"; then
        command -v apt-get >/dev/null || { say "needs apt-get (Debian)"; exit 1; }
        backports_known || add_backports_suite
        backports_known || as_root apt-get update -qq
        backports_known || { say "apt knows no qemu-system-x86 in $(codename)-backports"; exit 1; }
        rm -rf "$cache/download" "$cache/root.part" "$cache/complete"
        mkdir -p "$cache/download"
        local suite wanted=() package
        suite="$(codename)-backports"
        for package in "${PACKAGES[@]}"; do wanted+=("$package/$suite"); done
        say "downloading ${PACKAGES[*]} from $suite"
        # As root apt drops to the _apt user to download, which cannot write our folder: stay root.
        (cd "$cache/download" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${wanted[@]}" >&2)
        local deb
        for deb in "$cache"/download/*.deb; do dpkg -x "$deb" "$cache/root.part"; done
        rm -rf "$cache/download" "$root"
        mv "$cache/root.part" "$root"
        # Its shared libraries are those the system's QEMU 7.2 brings (liburing, libslirp, libfuse3...).
        ensure_qemu >&2  # stdout is the path the callers read
        check "$root" || { say "the unpacked QEMU in $root does not run"; exit 1; }
        touch "$cache/complete"
        say "$("$root/usr/bin/qemu-system-x86_64" --version | head -1) in $root"
    fi
    if [ "$mode" = firmware ]; then
        # seabios's BIOS first (bios-256k.bin), then QEMU's own blobs (kvmvapic.bin, linuxboot...).
        echo "$root/usr/share/seabios"
        echo "$root/usr/share/qemu"
    else
        echo "$root/usr/bin/qemu-system-x86_64"
    fi
}

main "$@"
