#!/usr/bin/env bash
# The Debian packages this project's tools and tests use, installed in one place when missing.
#
#   bash cluster/install_packages.sh GROUP...     (as root, on Debian/Ubuntu)
#
# Groups (a group is skipped when its programs are all on PATH already):
#   cluster   openssh-server sshfs                     the local cluster's nodes (sshd), its storage (sshfs)
#   mpi       mpich                                    Parsl's managers on several nodes (mpiexec)
#   slurm     slurmctld slurmd slurm-client munge      the local Slurm (cluster/slurm.sh)
#   redis     redis-server                             5_... --proxystore redis
#   lint      shellcheck                               the shell scripts' test
#   tests     all of the above: what `python -m pytest tests` needs (tests/conftest.py runs
#             this once, before any test starts)
#
# It says on stderr what it installs, and exits non-zero when a program is still missing
# after the install (no root, no apt-get, no package lists that have it).
set -uo pipefail

# group -> "packages|programs they must put on PATH"
declare -A GROUPS_=(
    [cluster]="openssh-server sshfs|sshd ssh ssh-keygen sshfs"
    [mpi]="mpich|mpiexec"
    [slurm]="slurmctld slurmd slurm-client munge|slurmctld slurmd sbatch srun scontrol sinfo munged"
    [redis]="redis-server|redis-server"
    [lint]="shellcheck|shellcheck"
)
ORDER=(cluster mpi slurm redis lint)

say() { echo "install_packages.sh: $*" >&2; }

# apt-get, one at a time (tests and cluster scripts may ask from two processes at once)
apt_get() {
    if [[ -d /run/lock ]]; then flock /run/lock/pc-apt.lock apt-get "$@"; else apt-get "$@"; fi
}

missing_programs() {
    local program
    for program in $1; do command -v "$program" >/dev/null || echo "$program"; done
}

groups=()
for group in "$@"; do
    if [[ $group == tests ]]; then groups+=("${ORDER[@]}"); continue; fi
    [[ -n ${GROUPS_[$group]:-} ]] || { say "unknown group '$group' (${ORDER[*]} tests)"; exit 2; }
    groups+=("$group")
done
((${#groups[@]})) || { say "name at least one group: ${ORDER[*]} tests"; exit 2; }

packages=() why=()
for group in "${groups[@]}"; do
    spec=${GROUPS_[$group]}
    if [[ -n $(missing_programs "${spec#*|}") ]]; then
        read -ra names <<< "${spec%%|*}"
        packages+=("${names[@]}")
        why+=("$group")
    fi
done
((${#packages[@]})) || exit 0

command -v apt-get >/dev/null || { say "missing ${packages[*]}, and there is no apt-get here"; exit 1; }
say "installing Debian packages ${packages[*]} (for: ${why[*]}) with apt-get"
install=(apt_get install -y -q --no-install-recommends "${packages[@]}")
export DEBIAN_FRONTEND=noninteractive

# The tools start their own daemons where and when they need them (sshd in the cluster's
# nodes, munged and Slurm in cluster/slurm.sh, redis-server per run): the packages must not
# start theirs on this machine (sshd on port 22, open to the network) or enable them at boot.
# Debian's packages ask policy-rc.d before starting a service; 101 means "not now".
POLICY=${PC_POLICY_RC_D:-/usr/sbin/policy-rc.d}
if [[ ! -e $POLICY ]]; then
    trap 'rm -f "$POLICY"' EXIT
    printf '#!/bin/sh\n# made by install_packages.sh for one install; it removes it\nexit 101\n' \
        > "$POLICY" && chmod 755 "$POLICY"
fi
units=(ssh munge slurmctld slurmd redis-server)
was_enabled=()
if command -v systemctl >/dev/null; then
    for unit in "${units[@]}"; do
        systemctl is-enabled --quiet "$unit" 2>/dev/null && was_enabled+=("$unit")
    done
fi

# a fresh machine may have no package lists yet
"${install[@]}" >&2 || { apt_get update -q >&2 && "${install[@]}" >&2; }

if command -v systemctl >/dev/null; then      # nothing of ours starts at the next boot either
    for unit in "${units[@]}"; do
        [[ " ${was_enabled[*]} " == *" $unit "* ]] && continue
        systemctl is-enabled --quiet "$unit" 2>/dev/null && systemctl disable --quiet "$unit" 2>/dev/null
    done
fi

status=0
for group in "${groups[@]}"; do
    spec=${GROUPS_[$group]}
    still=$(missing_programs "${spec#*|}" | tr '\n' ' ')
    if [[ -n $still ]]; then
        say "still missing after the install ($group): $still"
        status=1
    fi
done
exit "$status"
