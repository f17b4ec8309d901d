#!/usr/bin/env bash
# Moves 1 GiB of guest memory through a pipe as a migration stream (raw and LZ4) and compares
# with cat moving the same image through the same kind of pipe, in the same run.
# Memory: the standard image of bench/make-image.py, half zero, a quarter code (files under /usr/lib), a quarter random.
# Usage: bench/stream-throughput.sh [size-in-MiB] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
repeats=${2:-3}

swift build -c release --product vmstream >/dev/null
vmstream=$(swift build -c release --show-bin-path)/vmstream

work=$(mktemp -d /dev/shm/vmstream-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
image=$work/memory.img
python3 bench/make-image.py "$image" --size "${size_mib}M" >/dev/null

bytes=$((size_mib << 20))
names=("cat image | cat" "vmstream sample | vmstream dump" "... with -c lz4" "vmstream sample > /dev/null" "vmstream sample -c lz4 > /dev/null")
commands=(
    "cat '$image' | cat > /dev/null"
    "'$vmstream' sample --image '$image' | '$vmstream' dump > /dev/null"
    "'$vmstream' sample --image '$image' -c lz4 | '$vmstream' dump > /dev/null"
    "'$vmstream' sample --image '$image' > /dev/null"
    "'$vmstream' sample --image '$image' -c lz4 > /dev/null"
)
# The machine is noisy: alternate the cases and keep each one's best time.
declare -a best
for _ in $(seq "$repeats"); do
    for i in "${!commands[@]}"; do
        start=$(date +%s.%N)
        bash -c "${commands[$i]}"
        end=$(date +%s.%N)
        best[i]=$(echo "$end - $start" | bc -l | awk -v b="${best[i]:-}" '{ if (b == "" || $1 < b) print $1; else print b }')
    done
done

stream_raw=$("$vmstream" sample --image "$image" | wc -c)
stream_lz4=$("$vmstream" sample --image "$image" -c lz4 | wc -c)
echo "guest memory: $bytes bytes; stream: $stream_raw bytes raw, $stream_lz4 bytes with LZ4"
for i in "${!commands[@]}"; do
    awk -v n="${names[$i]}" -v t="${best[i]}" -v b="$bytes" 'BEGIN { printf "%-34s %7.3f s  %6.2f GB/s of guest memory\n", n, t, b / t / 1e9 }'
done
