#!/usr/bin/env bash
# Proves the install step: `make install` into a staging root puts every file where it belongs, the tools
# report one version, the man pages render, the completions load in bash and complete VM names, no Swift
# runtime library is linked, and vmrecv and vmstream run in a root holding only the tools, /dev/kvm and the .so
# files ldd names (what a destination host without a Swift toolchain has). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/vmsend-install-test.XXXXXX)
cleanup() {
    # The sample VM of the minimal-root check, should the script stop while it runs.
    if [ -S "$work/vms/sample.sock" ]; then "$work/dest$prefix/bin/vmctl" --run-dir "$work/vms" destroy sample || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }
ok() { echo "test-install: ok: $*"; }

prefix=/usr/local
dest=$work/dest
# As a user does it: make, then make install (which does not build again).
{ make --no-print-directory && make --no-print-directory install PREFIX=$prefix DESTDIR="$dest"; } >"$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; fail "make install"; }
root=$dest$prefix
tools=(vmrun vmctl vmsend vmrecv vmstream)

# The install tree.
expected=(share/man/man1/vmstream.1 share/man/man5/vmstream.5)
for page in vmctl vmrecv vmrun vmsend; do expected+=("share/man/man8/$page.8"); done
for tool in "${tools[@]}"; do
    expected+=("bin/$tool" "share/bash-completion/completions/$tool" "share/zsh/site-functions/_$tool"
        "share/fish/vendor_completions.d/$tool.fish")
done
for file in "${expected[@]}"; do [ -s "$root/$file" ] || fail "missing $prefix/$file"; done
for tool in "${tools[@]}"; do [ -x "$root/bin/$tool" ] || fail "$prefix/bin/$tool is not executable"; done
found=$(cd "$dest" && find . -type f | wc -l)
[ "$found" -eq "${#expected[@]}" ] || fail "install put $found files, expected ${#expected[@]}: $(cd "$dest" && find . -type f)"
ok "install tree: ${#expected[@]} files under $prefix"

# One version for all five tools, the one a stream's BEGIN records.
version=$("$root/bin/vmsend" --version)
[[ $version =~ ^vmsend\ ([0-9][^ ]*)\ \(stream\ format\ ([0-9]+)\)$ ]] || fail "vmsend --version: '$version'"
release=${BASH_REMATCH[1]}
for tool in "${tools[@]}"; do
    line=$("$root/bin/$tool" --version)
    [ "$line" = "$tool $release (stream format ${BASH_REMATCH[2]})" ] || fail "$tool --version: '$line'"
done
recorded=$("$root/bin/vmstream" sample --size 1M | "$root/bin/vmstream" dump | sed -n 's/^\ttool = //p')
[ "$recorded" = "vmstream $release" ] || fail "the stream records '$recorded', --version says $release"
ok "--version: $version on all five, and in BEGIN"

# No Swift runtime: the standard library and Foundation are linked in.
swift_runtime() { ldd "$1" | grep -E 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime'; }
# The check must see the runtime where it is: the debug build links it dynamically.
debug=$(swift build --show-bin-path)/vmsend
if [ -x "$debug" ] && ! swift_runtime "$debug" >/dev/null; then fail "the ldd check misses the Swift runtime in $debug"; fi
for tool in "${tools[@]}"; do
    if swift_runtime "$root/bin/$tool"; then fail "$tool links the Swift runtime"; fi
    if ldd "$root/bin/$tool" | grep 'not found'; then fail "$tool needs a library this host lacks"; fi
done
ok "ldd: no Swift runtime library in any tool"

# Man pages: installed where man finds them, rendered without a warning.
for page in "$root"/share/man/man*/*; do
    MANWIDTH=80 man -l "$page" >"$work/page.txt" 2>"$work/page.err" || fail "man -l $page"
    [ ! -s "$work/page.err" ] || fail "man -l $page: $(cat "$work/page.err")"
    grep -q NAME "$work/page.txt" || fail "man -l $page rendered no NAME section"
done
[ "$(MANPATH=$root/share/man man -w vmsend)" = "$root/share/man/man8/vmsend.8" ] || fail "man vmsend does not find the page"
ok "man pages render and man finds them under $prefix/share/man"

# Bash completions load, and complete VM names from the run directory named on the command line.
mkdir "$work/run"
: >"$work/run/demo.sock"
: >"$work/run/other.sock"
complete_words() { # tool, words...: what bash completes for the last word
    local tool=$1
    shift
    PATH=$root/bin:$PATH bash --norc --noprofile -c '
        source "$1"; shift
        complete -p "$1" >/dev/null || exit 3
        COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
        "_$1" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"; echo "${COMPREPLY[*]}"' - "$root/share/bash-completion/completions/$tool" "$tool" "$@"
}
for tool in "${tools[@]}"; do complete_words "$tool" "" >/dev/null || fail "bash completion of $tool does not load"; done
[ "$(complete_words vmsend --run-dir "$work/run" d)" = demo ] || fail "vmsend does not complete VM names"
[ "$(complete_words vmctl status --run-dir "$work/run" o)" = other ] || fail "vmctl status does not complete VM names"
[[ $(complete_words vmsend --compress "") == "none lz4" ]] || fail "vmsend does not complete compression methods"
ok "bash completions load and complete VM names from the run directory"

# A minimal root: the tools, and only the shared libraries ldd names. /proc is mounted in a mount namespace
# of its own (the Swift runtime reads the arguments from it), so nothing is left mounted.
check_minimal_root() {
    local minimal=$work/minimal sample=$work/sample.vms library
    mkdir -p "$minimal$prefix/bin" "$minimal/proc" "$minimal/run" "$minimal/tmp"
    cp "$root"/bin/* "$minimal$prefix/bin/"
    for library in $(ldd "$root"/bin/* | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u); do
        mkdir -p "$minimal$(dirname "$library")"
        cp -L "$library" "$minimal$library"
    done
    # vmrecv -n checks a stream against this host's KVM through vmrun --check, so the stream is a real machine's.
    local vms=$work/vms
    mkdir "$vms" "$minimal/dev"
    : >"$minimal/dev/kvm"
    "$root/bin/vmrun" --run-dir "$vms" --memory 32M --guest-working-set 4M sample >"$work/vmrun.log" 2>&1 \
        || { cat "$work/vmrun.log" >&2; fail "vmrun from the install tree"; }
    "$root/bin/vmsend" --run-dir "$vms" --warm -c lz4 sample >"$sample" 2>"$work/vmsend.log" \
        || { "$root/bin/vmctl" --run-dir "$vms" destroy sample; cat "$work/vmsend.log" >&2; fail "vmsend from the install tree"; }
    "$root/bin/vmctl" --run-dir "$vms" destroy sample || fail "vmctl destroy from the install tree"
    unshare --mount --fork sh -c '
        mount -t proc proc "$1/proc" &&
        mount --bind /dev/kvm "$1/dev/kvm" &&
        chroot "$1" "$2/bin/vmrecv" --version &&
        chroot "$1" "$2/bin/vmstream" dump <"$3" &&
        chroot "$1" "$2/bin/vmrecv" --dry-run --parsable copy <"$3"' - "$minimal" "$prefix" "$sample" \
        >"$work/minimal.out" 2>&1 || { cat "$work/minimal.out" >&2; fail "the tools do not run in the minimal root"; }
    grep -q "^vmrecv $release " "$work/minimal.out" || fail "vmrecv --version in the minimal root: $(cat "$work/minimal.out")"
    grep -q "Total stream length = $(stat -c %s "$sample") bytes" "$work/minimal.out" || fail "vmstream dump in the minimal root"
    grep -q "^summary" "$work/minimal.out" || fail "vmrecv -n -P in the minimal root"
    ok "vmrecv --version, vmstream dump and vmrecv -n run in a root of only: $(cd "$minimal" && find . -type f -not -path ".$prefix/*" | sort | tr '\n' ' ')"
}
if [ "$(id -u)" != 0 ] || ! unshare --mount true 2>/dev/null; then
    echo "test-install: skipped the minimal root: chroot and mount need root" >&2
elif [ ! -c /dev/kvm ]; then
    echo "test-install: skipped the minimal root: vmrecv -n needs /dev/kvm, which this host lacks" >&2
else
    check_minimal_root
fi

# Uninstall removes every file install put there.
make --no-print-directory uninstall PREFIX=$prefix DESTDIR="$dest" >"$work/uninstall.log" 2>&1 \
    || { cat "$work/uninstall.log" >&2; fail "make uninstall"; }
left=$(cd "$dest" && find . -type f)
[ -z "$left" ] || fail "make uninstall left: $left"
ok "make uninstall removes all ${#expected[@]} files"
