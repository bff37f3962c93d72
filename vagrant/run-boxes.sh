#!/usr/bin/env bash
# The kernel matrix in Vagrant boxes. For each box (all of the Vagrantfile's, or those
# named): bring it up and provision it, reboot once if provisioning had to install a newer
# kernel to get headers, run the shared suite in it, copy its results back, destroy it
# (unless KEEP=1). Then print the table with the shared table code, on the host.
# Untested where it was written; see README.md.
#
# usage: vagrant/run-boxes.sh [NAME...]        e.g. vagrant/run-boxes.sh ubuntu2004 fedora
# env:   KEEP=1         keep the boxes (default: destroy each when its results are back)
#        PROVIDER=NAME  vagrant provider for `vagrant up` (libvirt, virtualbox, ...)
#        RESULTS=DIR    results on the host (default: matrix-results/vagrant in the repo)
#        and the Vagrantfile's ECAPTURE_* variables (boxes, memory, CPUs, suite timeout)
# Exit status: the table's, 0 only if every box passed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export VAGRANT_CWD=$here
results=${RESULTS:-$root/matrix-results/vagrant}
guest_results=/vagrant/matrix-results/vagrant  # RESULTS in the Vagrantfile
reboot_mark=/run/ecapture-reboot-required      # left by provision.sh

log() { printf 'run-boxes: %s\n' "$*" >&2; }

command -v vagrant >/dev/null || { log "vagrant is not installed"; exit 2; }
# The table needs neither bcc nor root: the project's virtualenv if there is one, else
# any python3 with the source tree on its path.
if [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=python3; fi
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}

mapfile -t defined < <(vagrant status --machine-readable </dev/null \
                       | awk -F, '$3 == "state" && $2 != "" {print $2}')
[ "${#defined[@]}" -gt 0 ] || { log "no machines in $here/Vagrantfile"; exit 2; }
if [ "$#" -gt 0 ]; then
    names=("$@")
    for n in "${names[@]}"; do
        printf '%s\n' "${defined[@]}" | grep -qx -- "$n" \
            || { log "no machine $n (have: ${defined[*]})"; exit 2; }
    done
else
    names=("${defined[@]}")
fi

up_args=(--provision-with setup)
[ -n "${PROVIDER:-}" ] && up_args+=(--provider "$PROVIDER")

ssh_config=$(mktemp)
current=""
cleanup() {
    if [ -n "$current" ] && [ "${KEEP:-0}" != 1 ]; then
        log "destroying $current"
        vagrant destroy -f "$current" </dev/null >/dev/null 2>&1 || true
    fi
    rm -f "$ssh_config"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A row for a box that produced no result.json, in the shape the shared runner writes for
# a guest that never got that far, so the table shows it as ERROR.
no_result() {  # DIR LABEL MESSAGE
    "$py" -c 'import json, sys
with open(sys.argv[1], "w") as f:
    json.dump({"label": sys.argv[2], "error": sys.argv[3], "tests": []}, f)
    f.write("\n")' "$1/result.json" "$2" "$3"
}

run_box() {  # NAME; always leaves DIR/result.json
    local name=$1 dest=$results/$1
    local vlog=$dest/vagrant.log
    rm -rf "$dest"
    mkdir -p "$dest"
    # Every vagrant command's output goes to the console and to the box's vagrant.log.
    v() { vagrant "$@" </dev/null 2>&1 | tee -a "$vlog"; }
    on_box() { ssh -n -F "$ssh_config" "$name" "$@"; }

    current=$name
    log "$name: up and provision (log: $vlog)"
    if ! v up "$name" "${up_args[@]}"; then
        no_result "$dest" "$name" "vagrant up or provisioning failed; see $vlog"
        return
    fi
    # `up` on a box kept from an earlier run does not sync: make sure it has this tree.
    v rsync "$name" >/dev/null || true
    if ! vagrant ssh-config "$name" </dev/null >"$ssh_config" 2>>"$vlog"; then
        no_result "$dest" "$name" "vagrant ssh-config failed; see $vlog"
        return
    fi

    if on_box test -e "$reboot_mark"; then
        log "$name: rebooting into the kernel that has headers"
        if ! v reload "$name" || ! v provision "$name" --provision-with setup \
                || ! vagrant ssh-config "$name" </dev/null >"$ssh_config" 2>>"$vlog" \
                || on_box test -e "$reboot_mark"; then
            no_result "$dest" "$name" "reboot into a kernel with headers failed; see $vlog"
            return
        fi
    fi

    log "$name: running the suite"
    v provision "$name" --provision-with suite || log "$name: the suite exited non-zero"

    # rsync only goes host -> guest: stream the results back through ssh.
    if ! on_box "sudo tar -C '$guest_results/$name' -cf - ." | tar -C "$dest" -xf -; then
        log "$name: could not copy results back"
    fi
    if [ ! -f "$dest/result.json" ]; then
        no_result "$dest" "$name" "no result.json came back from the box; see $vlog"
    fi
}

dirs=()
for name in "${names[@]}"; do
    run_box "$name"
    dirs+=("$results/$name")
    if [ "${KEEP:-0}" != 1 ]; then
        log "$name: destroying"
        vagrant destroy -f "$name" </dev/null >>"$results/$name/vagrant.log" 2>&1 \
            || log "$name: destroy failed"
    fi
    current=""
done

rc=0
"$py" -m ecapture.testing.matrix table "${dirs[@]}" --out "$results" || rc=$?
exit "$rc"
