#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need. Idempotent.
# make, binutils (strip), mandoc (man page lint) and man-db (man -l) are for `make install` and its test.
set -euo pipefail
need=(liblz4-dev libxxhash-dev pkg-config nasm netcat-openbsd lz4 time bsdutils python3 make binutils mandoc man-db)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
