#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need. Idempotent.
set -euo pipefail
need=(liblz4-dev libxxhash-dev pkg-config nasm netcat-openbsd lz4 time bsdutils python3 mandoc)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
