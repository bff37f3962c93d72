#!/usr/bin/env bash
# The local, offline kernel matrix (what `tox -e matrix` runs): Debian kernels 5.10, 6.1,
# 6.12 and 7.x plus the host's own, each booted under qemu with virtme-ng, the live suite
# run inside. Arguments go to `python -m ecapture.testing.matrix run`, e.g.
#   vagrant/local-matrix.sh --kernels 6.1,7 --jobs 1
# Vagrant boxes (vagrant/Vagrantfile) run the same suite and table code on other distros.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/tox -e matrix -- "$@"
