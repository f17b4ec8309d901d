# Shared by the benchmark scripts (sourced, not run).

# Installs qemu-system-x86 when qemu-system-x86_64 is missing (Debian/Ubuntu, as root or via sudo).
ensure_qemu() {
    command -v qemu-system-x86_64 >/dev/null && return
    echo "bench: installing qemu-system-x86" >&2
    local sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq qemu-system-x86 >/dev/null
}

# destroy_vms VMCTL RUN_DIR PIDS NAME...: destroys the VMs and waits for their vmrun to exit (frees their RAM).
# PIDS names an associative array of VM name -> vmrun pid; destroyed VMs leave it.
destroy_vms() {
    local vmctl=$1 dir=$2
    local -n pids=$3
    shift 3
    local name pid deadline
    for name in "$@"; do
        "$vmctl" --run-dir "$dir" destroy "$name" >/dev/null 2>&1 || true
        pid="${pids[$name]:-}"
        [ -n "$pid" ] || continue
        deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "pids[$name]"
    done
}

# stop_jobs_and_remove DIR: the end of every script's cleanup: its background jobs stopped, its work folder gone.
stop_jobs_and_remove() {
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -z "$1" ] || rm -rf "$1"
}
