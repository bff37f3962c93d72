#!/usr/bin/env bash
# Set up this host to run the kernel matrix offline: qemu (software emulation), virtme-ng in
# its own virtualenv, a private apt configuration that reaches Debian's other suites for
# their kernels (the system's sources and apt state stay untouched), Rust virtiofsd from
# trixie run through trixie's own loader (bookworm has none, and vng refuses qemu's C one),
# and a masked set of udev rules that keeps guest boots fast under TCG.
# Idempotent; needs root. Everything lands under $ECAPTURE_MATRIX_CACHE (default
# ~/.cache/ecapture-matrix: a guest sees the host's / but /var, /usr, /tmp and /etc as empty
# overlays, so the cache cannot live there).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'matrix-setup: %s\n' "$*" >&2; }
. scripts/apt.sh
[ "$(id -u)" -eq 0 ] || { log "needs root (apt-get, qemu)"; exit 1; }

KM=${ECAPTURE_MATRIX_CACHE:-$HOME/.cache/ecapture-matrix}
mkdir -p "$KM"

# kmod: vng runs depmod on each kernel's modules; udev: the guest finds its script I/O
# ports through /dev/virtio-ports/* symlinks that udev makes.
pkgs=(qemu-system-x86 qemu-utils kmod busybox-static udev python3-venv)
mapfile -t missing < <(missing_packages "${pkgs[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    apt_install "${missing[@]}"
fi

if [ ! -x "$KM/vng/bin/vng" ]; then
    log "virtme-ng into $KM/vng"
    python3 -m venv "$KM/vng"
    "$KM/vng/bin/pip" install -q "virtme-ng==1.42"
fi

# The mirror is whatever the system's own sources use.
mirror=$(grep -hoE '^URIs: *[a-z]+://[^/ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
         | head -n 1 | sed 's/^URIs: *//')
if [ -z "$mirror" ]; then
    mirror=$(grep -hoE '^deb +[a-z]+://[^/ ]+' /etc/apt/sources.list 2>/dev/null \
             | head -n 1 | sed 's/^deb *//')
fi
[ -n "$mirror" ] || { log "cannot find the Debian mirror in /etc/apt"; exit 1; }
apt_dir="$KM/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
touch "$apt_dir/empty-status"
cat > "$apt_dir/sources.list" <<SRC
deb $mirror/debian bullseye main
deb $mirror/debian-security bullseye-security main
deb $mirror/debian bookworm main
deb $mirror/debian-security bookworm-security main
deb $mirror/debian bookworm-backports main
deb $mirror/debian trixie main
deb $mirror/debian-security trixie-security main
deb $mirror/debian trixie-backports main
SRC
cat > "$apt_dir/apt.conf" <<CONF
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$apt_dir/lists";
Dir::Cache "$apt_dir/cache";
Dir::State::status "$apt_dir/empty-status";
CONF
# Refresh the private index once a day: ABI names move as Debian publishes updates.
if [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -n 1)" ]; then
    log "apt-get update (private config)"
    APT_CONFIG="$apt_dir/apt.conf" apt-get update -qq
fi

vfs="$KM/vfs"
if [ ! -x "$vfs/bin/virtiofsd" ]; then
    log "virtiofsd from trixie into $vfs"
    mkdir -p "$vfs/debs" "$vfs/root" "$vfs/bin"
    (cd "$vfs/debs" && APT_CONFIG="$apt_dir/apt.conf" apt-get download -qq \
        virtiofsd/trixie libc6/trixie libcap-ng0/trixie libseccomp2/trixie libgcc-s1/trixie)
    for d in "$vfs"/debs/*.deb; do dpkg -x "$d" "$vfs/root"; done
    cat > "$vfs/bin/virtiofsd" <<WRAP
#!/bin/sh
R=$vfs/root
exec \$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path \$R/usr/lib/x86_64-linux-gnu \$R/usr/libexec/virtiofsd "\$@"
WRAP
    chmod +x "$vfs/bin/virtiofsd"
fi

# Mask every udev rule but the one that names virtio ports: stock rules modprobe every
# modalias, which takes seconds under TCG.
udev="$KM/udev-min.d"
if [ ! -f "$udev/50-udev-default.rules" ] || [ ! -s "$udev/50-udev-default.rules" ]; then
    mkdir -p "$udev"
    for f in /lib/udev/rules.d/*.rules; do : > "$udev/$(basename "$f")"; done
    echo 'SUBSYSTEM=="virtio-ports", KERNEL=="vport*", ATTR{name}=="?*", SYMLINK+="virtio-ports/$attr{name}"' \
        > "$udev/50-udev-default.rules"
fi
log "ready: $KM"
