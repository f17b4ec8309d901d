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

# settle MAX_SECONDS: waits (at most MAX_SECONDS) until the kernel's free page reporting has been idle
# for 3 s, so that every measure starts from the same state of free memory. On a host that is itself
# a guest with free page reporting, memory freed by the previous measure is handed back to the
# hypervisor in 2 MiB blocks over the next ~10 s, and whoever allocates it next pays for faulting
# it in again: without this, a measure's time depends on what ran just before it. Uses the
# page_reporting module's reported_kib counter where the kernel has one; else sleeps 3 s.
settle() {
    local max="$1" counter=/sys/module/page_reporting/parameters/reported_kib
    local before after quiet=0 waited=0
    if [ ! -r "$counter" ]; then sleep 3; return; fi
    before="$(cat "$counter")"
    while ((quiet < 6 && waited < max * 2)); do
        sleep 0.5
        after="$(cat "$counter")"
        if [ "$after" = "$before" ]; then quiet=$((quiet + 1)); else quiet=0; before="$after"; fi
        waited=$((waited + 1))
    done
}

# Host settings freshmem changes for a run and puts back itself; saved here too, so that whatever
# happens (a SIGKILL of freshmem) the script's cleanup restores them.
HOST_SETTINGS=(/proc/sys/vm/nr_hugepages /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
               /sys/kernel/mm/transparent_hugepage/shmem_enabled)
declare -A saved_host_setting=()
save_host_settings() {
    local path value
    for path in "${HOST_SETTINGS[@]}"; do
        [ -r "$path" ] || continue
        value="$(cat "$path")"
        [[ "$value" == *"["* ]] && value="$(sed 's/.*\[\(.*\)\].*/\1/' <<<"$value")"
        saved_host_setting["$path"]="$value"
    done
}
restore_host_settings() {
    local path value
    for path in "${!saved_host_setting[@]}"; do
        value="$(cat "$path")"
        [[ "$value" == *"["* ]] && value="$(sed 's/.*\[\(.*\)\].*/\1/' <<<"$value")"
        [ "$value" = "${saved_host_setting[$path]}" ] || echo "${saved_host_setting[$path]}" > "$path" 2>/dev/null || true
    done
}
