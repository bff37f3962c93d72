# Sourced by scripts/setup.sh and scripts/matrix-setup.sh: which Debian packages are
# missing, and installing them quietly. Defines functions only.

# The packages among "$@" that dpkg does not have installed, one per line.
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
            || printf '%s\n' "$p"
    done
}

# Install "$@" without questions, recommends or chatter (the caller ran apt-get update).
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" >/dev/null
}
