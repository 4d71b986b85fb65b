#!/usr/bin/env bash
# A real Slurm (slurmctld, one slurmd per node, munge) on the local cluster of
# cluster/local_cluster.sh, so that `sbatch 9_submit_multinode.sh` and srun-started Parsl
# managers and Dragon run under Slurm for real.
#
#   eval "$(bash cluster/local_cluster.sh up 2)"
#   eval "$(bash cluster/slurm.sh up)"       # prints `export SLURM_CONF=...` only
#   bash cluster/local_cluster.sh run 1 sbatch --wait -N 2 9_submit_multinode.sh
#   bash cluster/slurm.sh status              # sinfo
#   bash cluster/slurm.sh down                # jobs, daemons, spool, keys: all gone
#   bash cluster/slurm.sh install             # only install the packages (up does it too)
#
# Each node runs its own munged (socket in the node's own /run) with a key made for this
# cluster; node1 runs slurmctld too. Configuration, key and logs live in
# cluster/.state/slurm; the daemons' state and spool in each node's own /tmp and /run.
# Nothing of the machine's own is read or changed (/etc/slurm, /etc/munge): the daemons and
# the commands are pointed at the files here (slurmd -f, SLURM_CONF, munged --key-file).
# Taking the local cluster down also ends all of it. See docs/slurm.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd -P)
STATE=$HERE/.state
DIR=$STATE/slurm
CLUSTER=$HERE/local_cluster.sh
SUBNET=10.250.0             # as in local_cluster.sh: node K is $SUBNET.K
# the daemons get a clean environment: not the caller's (its venv, its test tags)
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "SLURM_CONF=$DIR/slurm.conf")

say() { echo "slurm: $*" >&2; }
die() { say "$*"; exit 1; }

nodes_up() { cat "$STATE/nodes" 2>/dev/null || echo 0; }

# `local_cluster.sh run K ...`, quietly, from the repository (shared by all nodes)
in_node() {
    local k=$1
    shift
    (cd "$HERE/.." && bash "$CLUSTER" run "$k" "$@")
}

# ---------------------------------------------------------------------------------- up
cmd_up() {
    ((EUID == 0)) || die "up needs root (it starts daemons in the cluster's nodes)"
    local n k deadline states
    n=$(nodes_up)
    ((n > 0)) || die "no local cluster is up: run 'eval \"\$(bash $CLUSTER up 2)\"' first"
    need_slurm
    mkdir -m 0700 "$DIR" 2>/dev/null ||
        die "Slurm is up already (or left from a failed up): run 'bash $HERE/slurm.sh down' first"

    trap 'up_failed' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    # a key for this cluster only; munged wants it readable by its user alone
    mungekey --create --keyfile="$DIR/munge.key" 2>/dev/null ||
        head -c 1024 /dev/urandom >"$DIR/munge.key"
    chmod 0400 "$DIR/munge.key"
    write_config "$n"
    for ((k = 1; k <= n; k++)); do
        in_node "$k" "${DAEMON_ENV[@]}" bash "$HERE/slurm.sh" _start "$k"
    done
    # slurmd registers with slurmctld: wait until every node takes jobs
    deadline=$((SECONDS + 60))
    until states=$(in_node 1 "${DAEMON_ENV[@]}" sinfo -h -N -o %t 2>/dev/null) &&
          [[ $(grep -c '^idle$' <<<"$states") == "$n" ]]; do
        ((SECONDS <= deadline)) || die "the nodes did not become idle: $(tr '\n' ' ' <<<"$states") (see $DIR/*.log)"
        sleep 0.2
    done
    trap - EXIT INT TERM HUP
    echo "export SLURM_CONF='$DIR/slurm.conf'"
    say "slurmctld on node1, slurmd on node1..node$n: run e.g. 'bash $CLUSTER run 1 sbatch --wait -N $n SCRIPT'"
}

up_failed() {
    local status=$?
    trap - EXIT INT TERM HUP
    say "up failed; stopping what was started"
    cmd_down 2>/dev/null || true
    exit "$((status ? status : 1))"
}

# Debian's Slurm and munge are installed when missing (install_packages.sh: the one place;
# their services are not used: the daemons here are started with this cluster's files)
need_slurm() {
    bash "$HERE/install_packages.sh" slurm || die "no Slurm, and 'bash cluster/install_packages.sh slurm' could not install it"
}

write_config() {
    local n=$1 k cpus
    cpus=$(nproc)
    cat >"$DIR/slurm.conf" <<EOF
# made by cluster/slurm.sh for the local cluster; removed by 'slurm.sh down'
ClusterName=pcc
SlurmctldHost=node1($SUBNET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# nothing that needs cgroups (the nodes have no cgroup file system of their own);
# task/affinity, not task/none: srun --cpu-bind=none (Dragon's) then works without a warning
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# every node "has" all the machine's cores: they share them
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MailProg=/bin/true
StateSaveLocation=/tmp/slurmctld
SlurmdSpoolDir=/tmp/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
    for ((k = 1; k <= n; k++)); do
        echo "NodeName=node$k NodeAddr=$SUBNET.$k CPUs=$cpus State=UNKNOWN" >>"$DIR/slurm.conf"
    done
    echo "PartitionName=pcc Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$DIR/slurm.conf"
    # slurmd initializes a cgroup plugin even when no plugin uses it; autodetection fails
    # without /sys/fs/cgroup, an explicit v1 loads and is never used
    echo "CgroupPlugin=cgroup/v1" >"$DIR/cgroup.conf"
}

# ------------------------------------------------------------------ inside node K (run)
node_start() {
    local k=$1
    mkdir -m 0755 /run/munge
    munged --key-file="$DIR/munge.key" --socket=/run/munge/munge.socket.2 \
        --pid-file=/run/munge/munged.pid --seed-file=/run/munge/munged.seed \
        --log-file="$DIR/munged-node$k.log" </dev/null >>"$DIR/munged-node$k.log" 2>&1
    if ((k == 1)); then
        mkdir -m 0700 /tmp/slurmctld
        slurmctld -f "$DIR/slurm.conf" </dev/null >>"$DIR/slurmctld.log" 2>&1
    fi
    mkdir -m 0755 /tmp/slurmd
    slurmd -f "$DIR/slurm.conf" </dev/null >>"$DIR/slurmd-node$k.log" 2>&1
}

# the pids of $1's process tree, $1 first
tree() {
    local child
    echo "$1"
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$child"; done
}

# jobs' processes (slurmstepd and what it started), then the daemons; the node's own
# /tmp and /run entries
node_stop() {
    local pid pids=() name file deadline
    for pid in $(ps -e -o pid= -o comm= | awk '$2 == "slurmstepd" {print $1}'); do
        mapfile -t -O "${#pids[@]}" pids < <(tree "$pid")
    done
    for file in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        pid=$(cat "$file" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] || continue
        name=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        # a stale pid file may name another process by now
        [[ $name == slurmd || $name == slurmctld || $name == munged ]] && pids+=("$pid")
    done
    ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [[ $(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
            ((SECONDS <= deadline)) || { echo "process $pid does not die" >&2; return 1; }
            sleep 0.02
        done
    done
    rm -rf /tmp/slurmd /tmp/slurmctld /run/munge /run/slurmd.pid /run/slurmctld.pid
}

# -------------------------------------------------------------------------------- down
cmd_down() {
    ((EUID == 0)) || die "down needs root"
    local n k failed=0
    n=$(nodes_up)
    if [[ ! -d $DIR ]]; then
        say "no Slurm was up"
        return 0
    fi
    # no scancel first: a job is only processes in the nodes, and those go here
    for ((k = 1; k <= n; k++)); do
        in_node "$k" "${DAEMON_ENV[@]}" bash "$HERE/slurm.sh" _stop "$k" || failed=1
    done
    ((!failed)) || die "could not stop every Slurm process (see above); 'local_cluster.sh down' ends them all"
    rm -rf "$DIR"
    say "Slurm down"
}

cmd_status() {
    [[ -d $DIR ]] || { echo "no Slurm up"; return 0; }
    in_node 1 "${DAEMON_ENV[@]}" sinfo -N
}

# -------------------------------------------------------------------------------- main
case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    install) ((EUID == 0)) || die "install needs root"; need_slurm ;;
    _start) node_start "$2" ;;
    _stop) node_stop ;;
    *) die "usage: $0 up | status | down | install" ;;
esac
