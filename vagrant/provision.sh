#!/usr/bin/env bash
# Provision one kernel-matrix box (Ubuntu, Debian or Fedora) for the live suite:
#  - bcc from the distribution, and headers for the kernel the box is running;
#  - the real programs the live tests drive (openssl, curl, nghttp2 server and client, jq,
#    tshark, bpftool, util-linux script and setpriv);
#  - tracefs mounted;
#  - a virtualenv with Python >= 3.11 and the project installed from the synced tree.
#
# usage: provision.sh [SRC]   (SRC: the synced source tree; default: the tree this script
#                              is in, else /vagrant). Needs root; Vagrant runs it with sudo.
# Idempotent: a second run only checks, and installs what is missing.
#
# If no headers package exists for the running kernel (distributions drop old kernel ABIs
# from their archives, and a box image can be older than that), the script installs the
# newest kernel of the same flavour with its headers and leaves /run/ecapture-reboot-required;
# run-boxes.sh then reboots the box and runs this script again. /run empties at boot, so the
# marker only ever speaks about the kernel that is running.
set -euo pipefail

log() { printf 'provision: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root"

here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${1:-}" ]; then
    src=$1
elif [ -f "$here/../pyproject.toml" ]; then
    src=$(cd "$here/.." && pwd)
else
    src=/vagrant
fi
[ -f "$src/pyproject.toml" ] || die "no source tree at $src (pyproject.toml missing)"

# Outside the synced tree: rsync --delete on the next `vagrant rsync` must not touch it,
# and the host's own .venv (excluded from the sync) must not be confused with it.
venv=${ECAPTURE_VENV:-/opt/ecapture-venv}
reboot_mark=/run/ecapture-reboot-required
rel=$(uname -r)
rm -f "$reboot_mark"

# shellcheck source=/dev/null
. /etc/os-release
case "${ID:-}" in
    ubuntu|debian) family=debian ;;
    fedora) family=fedora ;;
    *) die "unsupported distribution: ${PRETTY_NAME:-unknown} (Ubuntu, Debian or Fedora)" ;;
esac
log "${PRETTY_NAME:-$ID}, kernel $rel"

# The newest kernel release under /lib/modules that has a headers tree.
newest_with_headers() {
    local d best=""
    for d in /lib/modules/*/; do
        d=${d%/}
        [ -d "$d/build/include" ] || continue
        best=$(printf '%s\n%s\n' "$best" "${d##*/}" | sed '/^$/d' | sort -V | tail -n 1)
    done
    printf '%s\n' "$best"
}

# ---------------------------------------------------------------------------------------
# Debian and Ubuntu
# ---------------------------------------------------------------------------------------
if [ "$family" = debian ]; then
    export DEBIAN_FRONTEND=noninteractive
    export NEEDRESTART_MODE=a  # Ubuntu >= 22.04: needrestart must not wait for an answer
    # DPkg::Lock::Timeout: wait for a dpkg lock held by something else instead of failing;
    # confdef/confold: never ask about changed configuration files.
    apt=(apt-get -y -qq -o DPkg::Lock::Timeout=600
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

    # Fresh boxes start apt-daily/unattended-upgrades right after boot; they hold the apt
    # locks for minutes. Stop the timers (this box is disposable) and wait for a run
    # already in progress to end.
    if command -v systemctl >/dev/null; then
        systemctl stop apt-daily.timer apt-daily-upgrade.timer >/dev/null 2>&1 || true
        systemd-run --quiet --wait --property=After=apt-daily.service \
            --property=After=apt-daily-upgrade.service /bin/true >/dev/null 2>&1 || true
    fi

    apt_updated=0
    apt_update() {
        if [ "$apt_updated" -eq 0 ]; then
            log "apt-get update"
            "${apt[@]}" update
            apt_updated=1
        fi
    }
    apt_has() { apt-cache show "$1" >/dev/null 2>&1; }
    deb_missing() {
        local p
        for p in "$@"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
                || printf '%s\n' "$p"
        done
    }
    apt_install() {
        local missing=()
        mapfile -t missing < <(deb_missing "$@")
        [ "${#missing[@]}" -gt 0 ] || return 0
        apt_update
        log "installing ${missing[*]}"
        "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
    }

    # bcc (python3-bpfcc is its pure-Python half, libbpfcc the compiler library); the
    # programs the live tests drive; bsdutils has `script`, util-linux `setpriv`.
    pkgs=(python3 python3-bpfcc bpfcc-tools libbpfcc openssl curl ca-certificates
          nghttp2-server nghttp2-client jq tshark bsdutils util-linux)
    if [ "$ID" = ubuntu ]; then
        # Ubuntu's bpftool is the linux-tools one: a wrapper in linux-tools-common that runs
        # the binary built for the running kernel (linux-tools-$rel, added below).
        pkgs+=(linux-tools-common)
    else
        pkgs+=(bpftool)
    fi
    apt_install "${pkgs[@]}"

    # Headers for exactly this kernel: bcc compiles against /lib/modules/$rel/build.
    if [ ! -d "/lib/modules/$rel/build/include" ]; then
        apt_update
        if apt_has "linux-headers-$rel"; then
            apt_install "linux-headers-$rel"
        else
            # "5.4.0-182-generic" -> "generic", "6.1.0-18-amd64" -> "amd64": the flavour's
            # metapackages move to the newest kernel of the same series, with its headers.
            flavour=${rel#*-*-}
            metas=("linux-image-$flavour" "linux-headers-$flavour")
            [ "$ID" = ubuntu ] && metas+=("linux-tools-$flavour")
            for m in "${metas[@]}"; do
                apt_has "$m" || die "no linux-headers-$rel, and no $m to move to a kernel that has headers"
            done
            log "no linux-headers-$rel in the archive; installing the newest $flavour kernel and its headers"
            "${apt[@]}" install --no-install-recommends "${metas[@]}" >/dev/null
        fi
    fi
    if [ "$ID" = ubuntu ] && [ -d "/lib/modules/$rel/build/include" ] \
            && [ -n "$(deb_missing "linux-tools-$rel")" ]; then
        apt_update
        if apt_has "linux-tools-$rel"; then
            apt_install "linux-tools-$rel"
        else
            log "warning: no linux-tools-$rel: bpftool will not run on this kernel"
        fi
    fi

    # Python >= 3.11 (the package's floor). Debian 12 and Ubuntu 24.04 have it; Ubuntu
    # 20.04 (3.8) and 22.04 (3.10) get 3.11 from the deadsnakes PPA, beside the system one
    # (which apt's own tools keep using).
    if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py=python3
        apt_install python3-venv
    elif [ "$ID" = ubuntu ]; then
        if ! grep -rqs deadsnakes /etc/apt/sources.list /etc/apt/sources.list.d/; then
            apt_install software-properties-common gnupg
            log "adding ppa:deadsnakes/ppa"
            add-apt-repository -y ppa:deadsnakes/ppa >/dev/null
            apt_updated=0
        fi
        apt_install python3.11 python3.11-venv
        py=python3.11
    else
        die "python3 is older than 3.11 and there is no known source of a newer one here"
    fi

    bcc_init=$(dpkg -L python3-bpfcc | awk '/\/bcc\/__init__\.py$/ && !n {print; n = 1}')
fi

# ---------------------------------------------------------------------------------------
# Fedora
# ---------------------------------------------------------------------------------------
if [ "$family" = fedora ]; then
    rpm_missing() {
        local p
        for p in "$@"; do rpm -q "$p" >/dev/null 2>&1 || printf '%s\n' "$p"; done
    }
    dnf_install() {
        local missing=()
        mapfile -t missing < <(rpm_missing "$@")
        [ "${#missing[@]}" -gt 0 ] || return 0
        log "installing ${missing[*]}"
        dnf -y -q install "${missing[@]}"
    }

    # bcc, bcc-tools and python3-bcc (the pure-Python half); nghttp2 holds both nghttp
    # and nghttpd; wireshark-cli holds tshark; util-linux has script and setpriv.
    dnf_install bcc bcc-tools python3-bcc bpftool openssl curl ca-certificates nghttp2 jq \
        wireshark-cli util-linux python3 tar

    if [ ! -d "/lib/modules/$rel/build/include" ]; then
        if ! dnf -y -q install "kernel-devel-$rel"; then
            # Fedora's repositories keep the release kernel and the newest update only;
            # a box built in between has no kernel-devel left for its kernel.
            log "no kernel-devel-$rel; upgrading to the newest kernel and its kernel-devel"
            dnf -y -q upgrade kernel kernel-core kernel-modules
            newest=$(rpm -q kernel-core --qf '%{VERSION}-%{RELEASE}.%{ARCH}\n' | sort -V | tail -n 1)
            dnf_install "kernel-devel-$newest"
        fi
    fi

    # Fedora's python3 is >= 3.11 on every release this targets.
    py=python3
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "python3 is older than 3.11"

    # The live tests drop privileges with `setpriv --regid=nogroup`, Debian's name for the
    # unprivileged group; Fedora calls GID 65534 "nobody". Add the Debian name as an alias.
    if ! getent group nogroup >/dev/null; then
        groupadd -o -g "$(id -g nobody)" nogroup
        log "added group nogroup (alias of GID $(id -g nobody)) for setpriv in the live tests"
    fi

    bcc_init=$(rpm -ql python3-bcc | awk '/\/bcc\/__init__\.py$/ && !n {print; n = 1}')
fi

# ---------------------------------------------------------------------------------------
# Common to all: headers outcome, tracefs, bcc where bccload finds it, the virtualenv
# ---------------------------------------------------------------------------------------
if [ ! -d "/lib/modules/$rel/build/include" ]; then
    newest=$(newest_with_headers)
    # Only a newer kernel helps: the boot loader starts the newest one installed.
    if [ -n "$newest" ] && [ "$newest" != "$rel" ] \
            && [ "$(printf '%s\n%s\n' "$rel" "$newest" | sort -V | tail -n 1)" = "$newest" ]; then
        touch "$reboot_mark"
        log "kernel $newest has headers, $rel has none: reboot into it and provision again"
    else
        die "no kernel headers for $rel, and no other kernel with headers to boot"
    fi
fi

# ecapture looks tracepoints up in tracefs (/sys/kernel/tracing); older bcc releases use
# the copy under debugfs (/sys/kernel/debug/tracing). systemd mounts both on these
# distributions; mount them here if a box did not.
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -d /sys/kernel/debug/tracing/events ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
[ -d /sys/kernel/tracing/events ] || [ -d /sys/kernel/debug/tracing/events ] \
    || die "tracefs is not mounted and could not be mounted"

# ecapture.live.bccload imports bcc from sys.path first, then from the distributions'
# directories (Debian's /usr/lib/python3/dist-packages, Fedora's versioned
# /usr/lib{,64}/python3.X/site-packages) and $ECAPTURE_BCC_PATH. Check that the package
# the distribution installed is in one of them.
[ -n "${bcc_init:-}" ] || die "cannot find the bcc Python package the distribution installed"
bcc_dir=${bcc_init%/__init__.py}
case "$bcc_dir" in
    /usr/lib/python3/dist-packages/bcc|/usr/lib/python3/site-packages/bcc) ;;
    /usr/lib/python3.*/site-packages/bcc|/usr/lib64/python3.*/site-packages/bcc) ;;
    *) die "bcc is at $bcc_dir, where ecapture does not look: set ECAPTURE_BCC_PATH" ;;
esac

# The virtualenv. Rebuilt if its interpreter is gone or too old (e.g. after a distribution
# upgrade); the project is (re)installed when pyproject.toml changes. Extras "test" only:
# the box runs pytest, not the linters.
if [ -e "$venv" ] && ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "rebuilding $venv"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $("$py" -V)"
    "$py" -m venv "$venv"
fi
stamp=$venv/.ecapture-installed
if [ ! -e "$stamp" ] || [ "$src/pyproject.toml" -nt "$stamp" ] \
        || ! "$venv/bin/python" -c 'import ecapture, pytest, hypothesis, h2' 2>/dev/null; then
    log "installing the project from $src into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # Never `pip install bcc`: the PyPI package of that name is an unrelated library.
    "$venv/bin/python" -m pip install -q -e "$src[test]"
    touch "$stamp"
fi

# Ubuntu 20.04's bcc (0.12) imports MutableMapping from `collections`, which Python 3.10
# removed (bcc fixed it in 0.17). bccload would find that copy first and fail on it, so
# give the virtualenv a patched copy on sys.path, which bccload tries before its list.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if grep -qs '^from collections import MutableMapping$' "$bcc_dir/table.py"; then
    rm -rf "$site/bcc"
    cp -r "$bcc_dir" "$site/bcc"
    find "$site/bcc" -name '*.py' -exec sed -i \
        's/^from collections import MutableMapping$/from collections.abc import MutableMapping/' {} +
    touch "$site/bcc/.ecapture-patched-copy"
    log "copied bcc into $site with collections.abc imports (bcc older than 0.17)"
elif [ -e "$site/bcc/.ecapture-patched-copy" ]; then
    rm -rf "$site/bcc"  # the distribution's bcc no longer needs it
fi

# Checks: bcc loads through the same code the live sessions use, and the programs exist.
"$venv/bin/python" - <<'PY'
from ecapture.live.bccload import load_bcc

bcc = load_bcc()
print(f"provision: bcc {getattr(bcc, '__version__', '?')} from {bcc.__file__}", flush=True)
PY
for prog in openssl curl nghttp nghttpd jq tshark script setpriv bpftool; do
    command -v "$prog" >/dev/null || die "$prog is missing"
done
if [ ! -e "$reboot_mark" ] && ! bpftool version >/dev/null 2>&1; then
    log "warning: bpftool does not run on $rel (the bpftool test will fail)"
fi

if [ -e "$reboot_mark" ]; then
    log "done, but REBOOT REQUIRED: vagrant reload NAME && vagrant provision NAME --provision-with setup"
else
    log "ready: kernel $rel, headers /lib/modules/$rel/build, $("$venv/bin/python" -V)"
fi
