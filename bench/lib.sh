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
