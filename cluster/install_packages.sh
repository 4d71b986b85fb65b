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
# a fresh machine may have no package lists yet
"${install[@]}" >&2 || { apt_get update -q >&2 && "${install[@]}" >&2; }

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
