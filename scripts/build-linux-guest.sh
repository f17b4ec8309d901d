#!/usr/bin/env bash
# Builds the Linux test guest (guest/linux/): an uncompressed vmlinux with a PVH entry and a small initramfs
# whose /init is the static test program, from Debian's linux-source-6.12 package.
#
# Usage: scripts/build-linux-guest.sh [--no-host-patches] [--force] [--print-dir]
#   --no-host-patches  build a stock kernel (for hosts with VT-x/AMD-V): none of guest/linux/patches/
#   --force            rebuild even when the cache already holds this build
#   --print-dir        print the output folder instead of the two file paths
#
# Installs its Debian build dependencies itself (apt-get, only what is missing). The results are cached
# outside the clone, in ${VMSEND_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsend}/linux-guest/<hash>/,
# keyed by a hash of every input (config fragment, patches, test program, this script, the kernel package's
# version, the compilers' versions), so a second run with nothing changed returns at once.
# Prints the path of vmlinux, then of initramfs, one per line. Exits 1 with one line on stderr on failure.
set -euo pipefail

me="build-linux-guest.sh"
die() { echo "$me: $*" >&2; exit 1; }
note() { echo "$me: $*" >&2; }

host_patches=1 force=0 print_dir=0
for arg in "$@"; do
    case "$arg" in
        --no-host-patches) host_patches=0 ;;
        --force) force=1 ;;
        --print-dir) print_dir=1 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "$me: unknown option: $arg (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
repo="$PWD"
src="$repo/guest/linux"
kpkg="linux-source-6.12"
tarball="/usr/src/$kpkg.tar.xz"

# ---- Debian build dependencies ----
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
apt_install() {
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@" >"$apt_log" 2>&1
}
# The kernel source package is in bookworm-security; older mirrors have it only in bookworm-backports.
# Add that suite the way the existing deb822 entry is written, if the package cannot be found otherwise.
add_backports() {
    local codename uri
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || return 1
    # already configured (by anyone, under any file name): nothing to add
    grep -rqsE "^[^#]*\b$codename-backports\b" /etc/apt/sources.list /etc/apt/sources.list.d/ && return 1
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    uri="${uri:-http://deb.debian.org/debian}"
    note "adding $codename-backports to apt's sources for $kpkg"
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" "$codename" | $sudo_cmd tee "/etc/apt/sources.list.d/$codename-backports.sources" >/dev/null
    $sudo_cmd apt-get update -qq >"$apt_log" 2>&1
}
need=(build-essential bc bison flex libelf-dev xz-utils cpio musl-tools "$kpkg")
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    note "installing ${missing[*]}"
    $sudo_cmd apt-get update -qq >"$apt_log" 2>&1 || die "apt-get update failed (no network?): $(tail -1 "$apt_log")"
    if ! apt-cache show "$kpkg" >/dev/null 2>&1; then
        add_backports || true
        apt-cache show "$kpkg" >/dev/null 2>&1 || die "package $kpkg not found in apt's sources (not even in backports)"
    fi
    apt_install "${missing[@]}" || die "cannot install ${missing[*]}: $(grep -m1 -E '^E:' "$apt_log" || tail -1 "$apt_log")"
fi
[ -r "$tarball" ] || die "$tarball is missing although $kpkg is installed"

# ---- the cache key: every input ----
patches=()
if ((host_patches)); then
    while IFS= read -r p; do patches+=("$p"); done < <(find "$src/patches" -name '*.patch' | LC_ALL=C sort)
fi
key="$({
    echo "kernel-package $(dpkg-query -W -f='${Version}' "$kpkg")"
    echo "gcc $(gcc -dumpfullversion) musl $(dpkg-query -W -f='${Version}' musl-tools)"
    echo "host-patches $host_patches"
    for f in "$0" "$src/guest.config" "$src/vmtest.c" "${patches[@]}"; do
        echo "$(basename "$f") $(sha256sum < "$f" | cut -d' ' -f1)"
    done
} | sha256sum | cut -c1-16)"
cache_root="${VMSEND_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmsend}/linux-guest"
out="$cache_root/$key"

report() {
    if ((print_dir)); then echo "$out"; else echo "$out/vmlinux"; echo "$out/initramfs"; fi
}
if ((!force)) && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs" ]; then
    report
    exit 0
fi

# ---- build in a work folder next to the cache, removed afterwards ----
mkdir -p "$cache_root" || die "cannot create $cache_root"
work="$(mktemp -d "$cache_root/work-$key.XXXXXX")"
log="$cache_root/build-$key.log"
trap 'rm -f "$apt_log"; rm -rf "$work"' EXIT
: > "$log"
step() { note "$1"; echo "== $1" >> "$log"; }
run() { "$@" >> "$log" 2>&1 || die "failed: $* (log: $log)"; }
start=$SECONDS

step "unpacking $tarball"
run tar -C "$work" -xJf "$tarball"
ksrc="$work/$kpkg"
kout="$work/build"
[ -f "$ksrc/Makefile" ] || die "unexpected layout in $tarball (no $kpkg/Makefile)"
for p in "${patches[@]}"; do
    step "applying $(basename "$p")"
    run patch -d "$ksrc" -p1 --forward --no-backup-if-mismatch -i "$p"
done

step "configuring: tinyconfig + guest.config"
kmake() { make -C "$ksrc" O="$kout" KBUILD_BUILD_USER=vmsend KBUILD_BUILD_HOST=vmsend KBUILD_BUILD_VERSION=1 \
    KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970" "$@"; }
run kmake tinyconfig
run env KCONFIG_CONFIG="$kout/.config" "$ksrc/scripts/kconfig/merge_config.sh" -m -O "$kout" "$kout/.config" "$src/guest.config"
run kmake olddefconfig
# Every line of the fragment must have survived (a dependency missing would silently drop it).
while IFS= read -r line; do
    grep -qxF "$line" "$kout/.config" || die "config fragment not honoured: '$line' (see $kout/.config)"
done < <(grep -E '^(CONFIG_|# CONFIG_)' "$src/guest.config")

step "building vmlinux with $(nproc) jobs (a few minutes)"
run kmake -j"$(nproc)" vmlinux

step "building /init (static, musl, no AVX)"
run musl-gcc -static -O2 -Wall -Wextra -march=x86-64 -mtune=generic -mno-avx -mno-avx2 -mno-avx512f \
    -o "$work/init" "$src/vmtest.c"
run strip "$work/init"
if objdump -d "$work/init" | grep -qE '%[yz]mm'; then die "the test program uses AVX registers"; fi

step "packing the initramfs"
printf '%s\n' "dir /dev 0755 0 0" "nod /dev/console 0600 0 0 c 5 1" "dir /proc 0555 0 0" \
    "file /init $work/init 0755 0 0" > "$work/initramfs.list"
[ -x "$kout/usr/gen_init_cpio" ] || run kmake usr/gen_init_cpio
"$kout/usr/gen_init_cpio" -t 0 "$work/initramfs.list" > "$work/initramfs" 2>>"$log" || die "gen_init_cpio failed (log: $log)"

stage="$work/out"
mkdir "$stage"
cp "$kout/vmlinux" "$kout/.config" "$kout/System.map" "$work/init" "$work/initramfs" "$stage/"
mv "$stage/.config" "$stage/config"
{
    echo "kernel-package $(dpkg-query -W -f='${Version}' "$kpkg")"
    echo "host-patches $host_patches: ${patches[*]##*/}"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start)) s"
} > "$stage/BUILD-INFO"
mv "$log" "$stage/build.log"
rm -rf "$out"
mv "$stage" "$out"
note "built in $((SECONDS - start)) s"
report
