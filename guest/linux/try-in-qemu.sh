#!/usr/bin/env bash
# Boots the Linux test guest under QEMU (-M microvm, KVM, PVH direct boot of vmlinux) with an 8 MiB
# virtio-mmio disk, shows the serial console with the seconds since QEMU started, and stops it once the
# guest has run a while after its ready line. Ends with one summary line; exits 0 when the guest got ready,
# kept beating and reported no failure. Leaves nothing behind (QEMU stopped, temp folder removed).
#
# Usage: guest/linux/try-in-qemu.sh [--smp N] [--mem 128M] [--run SECONDS] [--timeout SECONDS]
#                                   [--kernel VMLINUX --initrd FILE] [--no-disk] [--append 'EXTRA ARGS']
#   --run      seconds to watch after the ready line (default 60)
#   --timeout  give up if no ready line after this many seconds (default 900: a loaded host is slow)
# Without --kernel/--initrd it runs scripts/build-linux-guest.sh (cached) to get them.
set -euo pipefail
me="try-in-qemu.sh"
die() { echo "$me: $*" >&2; exit 1; }

smp=1 mem=128M run=60 timeout=900 kernel="" initrd="" disk=1 extra=""
while (($#)); do
    case "$1" in
        --smp) smp="$2"; shift ;;
        --mem) mem="$2"; shift ;;
        --run) run="$2"; shift ;;
        --timeout) timeout="$2"; shift ;;
        --kernel) kernel="$2"; shift ;;
        --initrd) initrd="$2"; shift ;;
        --no-disk) disk=0 ;;
        --append) extra="$2"; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "$me: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
    dir="$("$here/../../scripts/build-linux-guest.sh" --print-dir)" || exit 1
    kernel="${kernel:-$dir/vmlinux}"
    initrd="${initrd:-$dir/initramfs}"
fi
[ -r "$kernel" ] && [ -r "$initrd" ] || die "cannot read $kernel or $initrd"
[ -e /dev/kvm ] || die "/dev/kvm is missing"
if ! command -v qemu-system-x86_64 >/dev/null; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq \
        --no-install-recommends qemu-system-x86; } >/dev/null 2>&1 || die "cannot install qemu-system-x86"
fi

tmp="$(mktemp -d)"
qpid=""
cleanup() {
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The command line this host needs: see guest/linux/README.md (clearcpuid hides what ring 0 cannot run here).
cmdline="console=ttyS0 earlyprintk=serial,ttyS0 nokaslr lpj=1000000 tsc=reliable no_timer_check mitigations=off"
cmdline+=" panic=-1 rodata=off rdinit=/init clearcpuid=xsave,cx16,popcnt,smap,erms,fsrm"
cmdline+=" rcupdate.rcu_cpu_stall_suppress_at_boot=1 $extra"
drive=()
if ((disk)); then
    truncate -s 8M "$tmp/disk.img"
    drive=(-drive "id=d0,file=$tmp/disk.img,format=raw,if=none" -device virtio-blk-device,drive=d0)
fi
log="$tmp/console.log"
: > "$log"
# acpi=off makes QEMU add virtio_mmio.device=... for the disk to the command line itself.
qemu-system-x86_64 -M microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off -enable-kvm \
    -cpu host,arch-capabilities=off -m "$mem" -smp "$smp" -nodefaults -no-user-config -display none \
    -serial "file:$log" -no-reboot -kernel "$kernel" -initrd "$initrd" -append "$cmdline" "${drive[@]}" \
    </dev/null >"$tmp/qemu.out" 2>&1 &
qpid=$!
start=$(date +%s%N)

elapsed() { echo $((($(date +%s%N) - start) / 1000000)); }
shown=0 ready_ms="" stop_ms=""
while :; do
    sleep 0.2
    now=$(elapsed)
    # print the complete lines that arrived since the last look
    total=$(wc -l < "$log")
    if ((total > shown)); then
        sed -n "$((shown + 1)),${total}p" "$log" | tr -d '\r' | while IFS= read -r l; do
            printf '%7.1f %s\n' "$(echo "scale=1; $now / 1000" | bc)" "$l"
        done
        if [ -z "$ready_ms" ] && sed -n "$((shown + 1)),${total}p" "$log" | grep -q '^vmtest: ready'; then
            ready_ms=$now; stop_ms=$((now + run * 1000))
        fi
        shown=$total
    fi
    kill -0 "$qpid" 2>/dev/null || { cat "$tmp/qemu.out" >&2; die "QEMU stopped (see above)"; }
    if [ -z "$ready_ms" ] && ((now > timeout * 1000)); then die "no ready line after $timeout s"; fi
    if [ -n "$stop_ms" ] && ((now >= stop_ms)); then break; fi
done

# whole lines only (the last one may still be arriving)
head -n "$(wc -l < "$log")" "$log" | tr -d '\r' > "$tmp/whole.log"
last="$(grep '^vmtest: beat=' "$tmp/whole.log" | tail -1)"
beats="$(grep -c '^vmtest: beat=' "$tmp/whole.log" || true)"
fails="$(grep -c '^vmtest: FAIL' "$tmp/whole.log" || true)"
field() { echo "$last" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
printf '%s: smp=%s ready_after_s=%s beats=%s fail_lines=%s mem_failures=%s disk=%s disk_failures=%s clock_jumps=%s max_gap_ms=%s\n' \
    "$me" "$smp" "$(echo "scale=1; $ready_ms / 1000" | bc)" "$beats" "$fails" "$(field mem_failures)" "$(field disk)" \
    "$(field disk_failures)" "$(field clock_jumps)" "$(field max_gap_ms)"
[ "$fails" = 0 ] && [ "$(field mem_failures)" = 0 ] && [ "$(field disk_failures)" = 0 ] && \
    [ "$(field clock_jumps)" = 0 ] && ((beats >= run / 2))
