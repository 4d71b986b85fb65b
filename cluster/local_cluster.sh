#!/usr/bin/env bash
# A cluster of 1-4 "nodes" on this one machine, made of Linux namespaces, so that the
# workflows run across several nodes for real: Parsl managers started by mpiexec over ssh,
# DragonHPC started with `dragon --wlm ssh`.
#
#   eval "$(bash cluster/local_cluster.sh up 3)"    # prints `export NAME=value` lines only
#   bash cluster/local_cluster.sh run 1 python 6_parsl_fs_producer_consumer.py ...
#   bash cluster/local_cluster.sh status
#   bash cluster/local_cluster.sh down               # removes everything, even after a failed up
#
# A node is a network, UTS (hostname nodeK), PID, IPC and mount namespace. Its first process
# (PID 1) is an sshd. Its only interface besides lo is the veth pcc0, address 10.250.0.K/24,
# whose other end is on a bridge in a separate "switch" network namespace: the nodes reach
# each other and nothing else. /tmp, /dev/shm and /run are the node's own (fresh tmpfs);
# everything else, the repository and its .venv included, is the machine's file system,
# shared by all nodes like a parallel file system. Nothing of the machine's own is changed:
# /etc/hosts, /etc/ssh/ssh_config and ~/.ssh are covered, inside the nodes only, by files
# in cluster/.state. The nodes' shared data directory, cluster/.state/pfs, is served by a
# storage node (a namespace like a node, with an sshd only) over the bridge: each node mounts
# it with sshfs, so a file that one node writes and another reads crosses the network, as on
# Lustre. See docs/local_cluster.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd -P)
REPO=$(dirname "$HERE")
STATE=$HERE/.state
MAX_NODES=4
SUBNET=10.250.0            # node K is $SUBNET.K/24
IFACE=pcc0                 # the same name in every node: one PARSL_IFACE for all
STORAGE_ADDR=$SUBNET.100   # the storage node (host name "storage")
# Dragon's front end finds its own address with a UDP connect() to this address (no packet
# is sent); without a route to it, it stops
DRAGON_PROBE=10.254.254.254
# netns names are global on the machine: a tag from this clone's path keeps two clones
# (e.g. a CI clone in /tmp and a working copy) from taking down each other's cluster
TAG_PREFIX=pcc             # every clone's tag starts so
TAG=$TAG_PREFIX-$(printf %s "$STATE" | md5sum | cut -c1-6)
SWITCH=$TAG-switch
# The shared data directory: the storage node serves this directory of the machine's disk,
# and each node mounts it over the same path, so that in a node the path leads through the
# network and on the machine (and in the storage node) straight to the storage's disk
PFS=$STATE/pfs
# sshfs in each node: kernel_cache keeps what this node wrote or read in its page cache, as a
# Lustre client does (files here are written once, then read); dir_cache=no: a file another
# node made is seen at once; aes128-gcm: the fastest cipher with the CPU's AES instructions
# (Lustre does not encrypt at all); a storage node that stops answering ends the mount
# within 6 s, and then every access fails, instead of hanging
SSHFS_OPTIONS=kernel_cache,dir_cache=no,Ciphers=aes128-gcm@openssh.com,ServerAliveInterval=2,ServerAliveCountMax=3

say() { echo "local_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# a node's name: node1 ... nodeN, or storage
node_ns() { echo "$TAG-$1"; }

# Dragon reads which fabric HSTA uses from dragon-config.json in its package's .hsta-config
# folder (`dragon-config add --tcp-runtime` writes it there, for every run of the
# environment). The nodes see instead the cluster's own copy, bound over that folder in
# their mount namespaces: HSTA's TCP back end on this cluster only (libfabric's providers
# here do not work with HSTA), and nothing changes outside the nodes but a folder holding
# only the file MADE_MARK, made if the environment had none and removed by the last down.
# Every cluster that binds the folder puts its own USE_MARK there, naming its state folder:
# clones that share one environment share the folder, and down removes it only when no mark
# of a cluster still up remains (a mark whose state folder is gone is stale).
MADE_MARK=.made-by-local-cluster
USE_MARK=.used-by-
hsta_config() {
    local python=$REPO/.venv/bin/python dragon
    [[ -x $python ]] || python=python3
    dragon=$("$python" -I -c 'import importlib.util as u, os; s = u.find_spec("dragon")
print(os.path.dirname(s.origin) if s and s.origin else "")' 2>/dev/null) || dragon=
    [[ -n $dragon ]] || return 0            # no Dragon: nothing to configure
    mkdir "$STATE/hsta-config"
    echo '{"tcp_runtime": true}' >"$STATE/hsta-config/dragon-config.json"
    local folder=$dragon/.hsta-config
    echo "$folder" >"$STATE/hsta_config_dir"    # before mkdir: a failed up's down finds it
    # mkdir alone decides whether a cluster made it: Dragon's launcher makes the folder at
    # every start (it runs `dragon-config --get=...`), so a run outside the cluster may make
    # it at any time (a test first, then mkdir, failed in CI with "File exists"); the mark
    # is in the folder, not in this cluster's state: another clone's cluster may use it
    if mkdir "$folder" 2>/dev/null; then
        : >"$folder/$MADE_MARK"
    elif [[ ! -d $folder ]]; then
        die "cannot use Dragon's configuration folder: $(ls -ld "$folder" 2>&1)"
    fi
    echo "$STATE" >"$folder/$USE_MARK$TAG"
}

# the single-quoted form of $1, for the `export` lines that `eval` reads
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# host pid of the PID 1 of node $1 (a name: node1, storage), if it is alive and is that
# node (a stale pid file may point at an unrelated process by now); empty otherwise
node_pid() {
    local pid cmdline
    pid=$(cat "$STATE/$1/pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 0
    cmdline=${cmdline% }                    # each argument ends with a NUL, the last one too
    # it names this node's sshd_config (or this script, before it becomes sshd: the pid file
    # is written just before, and under load `up` may look in between)
    if [[ $cmdline == *"$STATE/$1/"* || $cmdline == *"$HERE/local_cluster.sh _node $1" ]]; then
        echo "$pid"
    fi
}

nodes_up() { cat "$STATE/nodes" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------------------------- up
cmd_up() {
    local n=${1:-}
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > MAX_NODES)); then
        die "usage: up N, with N from 1 to $MAX_NODES (got '$n')"
    fi
    ((EUID == 0)) || die "up needs root (it makes namespaces, mounts and network devices)"
    local tool
    for tool in ip unshare nsenter mount mountpoint md5sum python3; do
        command -v "$tool" >/dev/null || die "up needs '$tool', which is not on PATH"
    done
    # everything a node is made of, tried once in a throw-away process
    unshare --net --uts --ipc --mount --pid --fork true 2>/dev/null ||
        die "cannot make namespaces here (unshare --net --uts --ipc --mount --pid failed)"
    need_sshd
    [[ -c /dev/fuse ]] || die "no /dev/fuse: the storage node's sshfs mounts need FUSE"
    [[ $REPO =~ ^[A-Za-z0-9_./-]+$ ]] ||
        die "the repository path '$REPO' has characters other than letters, digits and _./- (sshd and Parsl configs cannot quote them)"
    [[ -f /etc/ssh/ssh_config ]] || die "no /etc/ssh/ssh_config to cover in the nodes"
    # mkdir is the lock: of two ups at once, one goes on
    if [[ $(ip netns list) == *"$TAG-"* ]] || ! mkdir -m 0700 "$STATE" 2>/dev/null; then
        die "a cluster is up already (or left from a failed up): run 'bash $HERE/local_cluster.sh down' first"
    fi

    # from here on, a failure or a signal takes down whatever was made
    trap 'up_failed' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    echo "$n" >"$STATE/nodes"
    # `ip netns add` creates /run/netns and makes it a mount of itself: note how it was,
    # before the first one, so that down can put it back
    if mountpoint -q /run/netns 2>/dev/null; then echo mount
    elif [[ -d /run/netns ]]; then echo dir
    else echo absent
    fi >"$STATE/run_netns"

    make_files "$n"
    hsta_config
    make_network "$n"
    start_nodes "$n"
    wait_for_ssh "$n"
    start_agent
    mount_pfs "$n"

    trap - EXIT INT TERM HUP
    local hostfile=$STATE/hostfile
    echo "export PBS_NODEFILE=$(quote "$hostfile")"
    # Dragon's own clean-up after a failed start (dragon-cleanup, over paramiko, which reads
    # no ssh configuration) reaches the nodes with the key in this agent
    echo "export SSH_AUTH_SOCK=$(quote "$STATE/agent.sock")"
    echo "export PARSL_IFACE=$(quote "$IFACE")"
    # HSTA, Dragon's default transport agent, over its TCP back end (hsta_config); `-t tcp`
    # instead gives Dragon's Python TCP agents (docs/local_cluster.md)
    echo "export PC_DRAGON_ARGS=$(quote "-t hsta --wlm ssh --hostfile $hostfile --network-prefix ^$IFACE\$")"
    echo "export PC_CLUSTER_NODES=$(quote "$n")"
    echo "export PC_CLUSTER_STATE=$(quote "$STATE")"
    # the shared data directory on the storage node: --data_dir for files that cross the network
    echo "export PC_CLUSTER_PFS=$(quote "$PFS")"
    # records made on these nodes say that they share this one machine's cores and memory
    echo "export PC_CLUSTER_HOST=$(quote "$(hostname)")"
    say "$n node(s) up: run commands with 'bash $HERE/local_cluster.sh run K CMD...'"
}

up_failed() {
    local status=$? started
    trap - EXIT INT TERM HUP
    say "up failed; taking down what was made"
    # what this script started in the background: nodes (their unshare) and ssh checks
    started=$(jobs -p)
    # shellcheck disable=SC2086  # one pid per word
    [[ -z $started ]] || kill -KILL $started 2>/dev/null || true
    cmd_down 2>/dev/null || true
    exit "$((status ? status : 1))"
}

# Debian's openssh-server and sshfs are installed when missing (install_packages.sh: the one place)
need_sshd() {
    bash "$HERE/install_packages.sh" cluster || die "no sshd or sshfs, and 'apt-get install openssh-server sshfs' failed"
}

# the cluster address of node $1 (a name)
address() { if [[ $1 == storage ]]; then echo "$STORAGE_ADDR"; else echo "$SUBNET.${1#node}"; fi; }

# the names of the nodes of an n-node cluster, then the storage node
all_nodes() { local k; for ((k = 1; k <= $1; k++)); do echo "node$k"; done; echo storage; }

# keys, the host list and the configuration files that the nodes bind over their own
make_files() {
    local n=$1 name dir addr
    ssh-keygen -q -t ed25519 -N '' -C "pcc-client" -f "$STATE/id_ed25519"
    # only from the cluster's network, and only for this cluster's key
    echo "from=\"$SUBNET.*\" $(cat "$STATE/id_ed25519.pub")" >"$STATE/authorized_keys"
    mkdir -m 0700 "$STATE/empty"            # covers ~/.ssh in the nodes
    : >"$STATE/empty_rc"                    # covers the shell's start-up files there
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$STATE/hosts"
    : >"$STATE/hostfile"
    : >"$STATE/known_hosts"
    mkdir -m 0700 "$PFS"                    # the storage node's disk
    for name in $(all_nodes "$n"); do
        dir=$STATE/$name addr=$(address "$name")
        mkdir -m 0700 "$dir"
        ssh-keygen -q -t ed25519 -N '' -C "pcc-$name" -f "$dir/ssh_host_ed25519_key"
        printf '%s\t%s\n' "$addr" "$name" >>"$STATE/hosts"
        [[ $name == storage ]] || echo "$name" >>"$STATE/hostfile"
        echo "$name,$addr $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" >>"$STATE/known_hosts"
        # Dragon tells hosts apart by boot_id: each node has its own
        cat /proc/sys/kernel/random/uuid >"$dir/boot_id"
        cat >"$dir/sshd_config" <<EOF
# sshd of $name (made by local_cluster.sh): key-only root login, on the cluster network only
ListenAddress $addr
HostKey $dir/ssh_host_ed25519_key
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the state directory may sit below group-writable directories (e.g. a clone in /tmp)
StrictModes no
PidFile none
PrintMotd no
UseDNS no
X11Forwarding no
MaxStartups 100
# the project's settings (PC_*) travel with a command, as PBS and Slurm pass them on: Dragon's
# ssh launch passes on only PATH, PYTHONPATH and a few of its own
AcceptEnv PC_*
EOF
        # the storage node serves files (sshfs speaks SFTP), in sshd's own process
        [[ $name != storage ]] || echo "Subsystem sftp internal-sftp" >>"$dir/sshd_config"
    done
    cat >"$STATE/ssh_config" <<EOF
# ssh client configuration inside the nodes (made by local_cluster.sh): this cluster's key
# and host keys only, never a question
Host *
    IdentityFile $STATE/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    BatchMode yes
    LogLevel ERROR
    # not the default post-quantum key exchange: 0.28 s instead of 0.4 s a connection here
    KexAlgorithms curve25519-sha256
    SendEnv PC_*
EOF
}

# the switch (a bridge in a namespace of its own) and one veth per node plugged into it
make_network() {
    local n=$1 name ns port addr
    ip netns add "$SWITCH"
    ip -n "$SWITCH" link add pcc-br type bridge
    ip -n "$SWITCH" link set pcc-br up
    for name in $(all_nodes "$n"); do
        ns=$(node_ns "$name") port=pcc-port${name#node} addr=$(address "$name")
        ip netns add "$ns"
        # both ends are made in the switch's namespace, then one moves into the node:
        # nothing ever appears in the machine's own network namespace
        ip -n "$SWITCH" link add "$port" type veth peer name "$IFACE" netns "$ns"
        ip -n "$SWITCH" link set "$port" master pcc-br up
        ip -n "$ns" link set lo up
        if [[ -d /proc/sys/net/ipv6 ]]; then   # IPv4 only: no IPv6 link-local address
            ip -n "$ns" link set "$IFACE" addrgenmode none
        fi
        ip -n "$ns" addr add "$addr/24" dev "$IFACE"
        ip -n "$ns" link set "$IFACE" up
        ip -n "$ns" route add "$DRAGON_PROBE/32" dev lo src "$addr"
    done
}

start_nodes() {
    local n=$1 name deadline
    local -A starters=()
    # the nodes start in the repository: `_node` needs its cwd there (see private_tmpfs)
    cd "$REPO"
    for name in $(all_nodes "$n"); do
        # setsid: no terminal; --kill-child: the node dies if this unshare is killed
        setsid nsenter --net="/run/netns/$(node_ns "$name")" \
            unshare --uts --ipc --mount --pid --fork --kill-child \
            bash "$HERE/local_cluster.sh" _node "$name" \
            </dev/null >>"$STATE/$name/log" 2>&1 &
        starters[$name]=$!
    done
    # each node writes its pid file once set up, just before it starts sshd
    deadline=$((SECONDS + 20))
    for name in $(all_nodes "$n"); do
        until [[ -s $STATE/$name/pid ]]; do
            if ((SECONDS > deadline)) || ! kill -0 "${starters[$name]}" 2>/dev/null; then
                die "$name did not start: $(tail -n 5 "$STATE/$name/log" 2>/dev/null)"
            fi
            sleep 0.02
        done
    done
}

# wait for the background jobs PID...; fails if any of them failed
wait_all() {
    local pid failed=0
    for pid in "$@"; do
        wait "$pid" || failed=1
    done
    return "$failed"
}

# a real ssh from node1 to every node, until each answers (all at once: one takes ~0.3 s)
wait_for_ssh() {
    local n=$1 name pid1 checks=()
    pid1=$(node_pid node1)
    for name in $(all_nodes "$n"); do
        ssh_until_up "$pid1" "$name" &
        checks+=("$!")
    done
    wait_all "${checks[@]}" || die "not every node answers ssh"
}

# an ssh-agent with the cluster's key, for clients that read no ssh configuration (paramiko,
# in Dragon's clean-up); started in node1, it goes when the node does
start_agent() {
    nsenter --target "$(node_pid node1)" --mount --uts --ipc --net --pid \
        ssh-agent -a "$STATE/agent.sock" >/dev/null || die "ssh-agent did not start"
    SSH_AUTH_SOCK=$STATE/agent.sock ssh-add -q "$STATE/id_ed25519" 2>/dev/null ||
        die "ssh-add of the cluster's key failed"
}

ssh_until_up() {
    local pid1=$1 name=$2 deadline=$((SECONDS + 20)) error
    until error=$(nsenter --target "$pid1" --mount --uts --ipc --net --pid \
                  ssh -o ConnectTimeout=5 "$name" true 2>&1); do
        if [[ -z $(node_pid "$name") ]]; then
            say "$name stopped: $(tail -n 5 "$STATE/$name/log" 2>/dev/null)"
            return 1
        fi
        if ((SECONDS > deadline)); then
            say "ssh node1 -> $name failed: $error"
            return 1
        fi
        sleep 0.02
    done
}

# every node mounts the storage node's $PFS over its own $PFS (all at once). sshfs runs in
# the node (its namespaces, its ssh configuration), as a daemon under the node's PID 1
mount_pfs() {
    local n=$1 k mounts=()
    for ((k = 1; k <= n; k++)); do
        nsenter --target "$(node_pid "node$k")" --mount --uts --ipc --net --pid \
            sshfs "storage:$PFS" "$PFS" -o "$SSHFS_OPTIONS" 2>>"$STATE/node$k/log" &
        mounts+=("$!")
    done
    wait_all "${mounts[@]}" || die "a node could not mount the storage node's $PFS with sshfs (see $STATE/node*/log)"
}

# --------------------------------------------------------------- inside a node (PID 1)
# `up` starts this in the node's fresh namespaces (the network one already configured);
# it sets up the node's own mounts, then becomes the node's sshd
node_main() {
    local name=$1 dir=$STATE/$1 pid _ home
    # /proc is still the machine's here, so this is our pid as seen from outside
    read -r pid _ </proc/self/stat
    # nothing mounted below may leak to the machine (unshare's default, made explicit)
    mount --make-rprivate /
    mount -t proc proc /proc                # the processes of this node only
    mount --bind "$dir/boot_id" /proc/sys/kernel/random/boot_id
    mount -t sysfs sysfs /sys               # /sys/class/net: this node's interfaces
    private_tmpfs /tmp 1777
    private_tmpfs /dev/shm 1777
    private_tmpfs /run 0755
    mkdir -m 0755 /run/sshd                 # sshd's privilege separation directory
    mount --bind "$STATE/hosts" /etc/hosts
    mount --bind "$STATE/ssh_config" /etc/ssh/ssh_config
    # ssh reads ~/.ssh of the passwd entry (not $HOME): the user's keys and config stay out
    home=$(getent passwd "$(id -u)" | cut -d: -f6)
    if [[ -d $home/.ssh ]]; then
        mount --bind "$STATE/empty" "$home/.ssh"
    fi
    # and the user's shell start-up files: bash runs ~/.bashrc for every command sent over
    # ssh, and what a workstation keeps there (pyenv's rehash waits up to 60 s on a lock
    # that a killed login left behind) would stall every launch over ssh between the nodes
    local rc
    for rc in .bashrc .bash_profile .profile; do
        if [[ -f $home/$rc ]]; then mount --bind "$STATE/empty_rc" "$home/$rc"; fi
    done
    # sshd without PAM refuses an account locked with "!" in /etc/shadow (common for root):
    # the node gets a copy, in its own /run, in which only key login is possible
    if grep -q '^root:!' /etc/shadow; then
        sed -E 's/^root:[^:]*:/root:*:/' /etc/shadow >/run/shadow
        chmod 0640 /run/shadow
        mount --bind /run/shadow /etc/shadow
    fi
    # after private_tmpfs: a repository under /tmp is visible again only from here on
    local config
    config=$(cat "$STATE/hsta_config_dir" 2>/dev/null) || config=
    if [[ -n $config && -d $config ]]; then
        mount --bind "$STATE/hsta-config" "$config"
    fi
    # below the storage node's sshfs mount (mount_pfs), an empty read-only file system: if
    # sshfs ends (it does, and unmounts, when the storage node goes), the path fails
    # ("Read-only file system") instead of leading, unnoticed, to the machine's disk
    if [[ $name != storage ]]; then
        mount -t tmpfs -o ro,size=4k,mode=0755 storage-unreachable "$PFS"
    fi
    echo "$name" >/proc/sys/kernel/hostname
    echo "$pid" >"$dir/pid"                 # `up` waits for this file
    # the absolute path: sshd re-executes itself for every connection
    exec "$(command -v sshd)" -D -e -f "$dir/sshd_config"
}

# a fresh tmpfs on $1 (mode $2). If the repository is below $1 (a clone in /tmp), it would
# be hidden: bind it back at its path. "." is the original, reached through our cwd;
# --no-canonicalize keeps mount from turning "." into the (now hidden) path.
private_tmpfs() {
    mount -t tmpfs -o "mode=$2,nosuid,nodev" tmpfs "$1"
    case $REPO/ in
        "$1"/*) mkdir -p "$REPO" && mount --no-canonicalize --bind . "$REPO" ;;
    esac
}

# --------------------------------------------------------------------------------- run
cmd_run() {
    local k=${1:-} pid here
    if ! [[ $k =~ ^[0-9]+$ ]] || (($# < 2)); then die "usage: run K CMD [ARG...]"; fi
    shift
    ((k >= 1 && k <= $(nodes_up))) || die "no node$k: the cluster has $(nodes_up) node(s) up"
    pid=$(node_pid "node$k")
    [[ -n $pid ]] || die "node$k is not running (see $STATE/node$k/log)"
    # in a node, /tmp, /dev/shm and /run are other directories than here
    here=$(pwd -P)
    case $here/ in
        "$REPO"/*) ;;
        /tmp/* | /dev/shm/* | /run/* | /proc/* | /sys/*)
            die "$here is not the same directory in the nodes: work in the repository (shared by all nodes) or below" ;;
    esac
    # Not `nsenter`: for the command to be in the node's PID namespace it must be a child of
    # the process that joined it, and nsenter's parent neither waits out a Ctrl-C nor passes
    # on signals. node_exec.py joins, runs the command as its child, passes signals on and
    # exits as the command did.
    exec python3 -I -S "$HERE/node_exec.py" "$pid" "$here" "$@"
}

# ------------------------------------------------------------------------------ status
cmd_status() {
    local n name pid
    n=$(nodes_up)
    ((n > 0)) || { echo "no cluster up"; return 0; }
    for name in $(all_nodes "$n"); do
        pid=$(node_pid "$name")
        if [[ -n $pid ]]; then
            echo "$name $(address "$name") up: sshd pid $pid, $(ip netns pids "$(node_ns "$name")" | wc -l) process(es)"
        else
            echo "$name $(address "$name") down"
        fi
    done
}

# -------------------------------------------------------------------------------- down
cmd_down() {
    ((EUID == 0)) || die "down needs root"
    local ns k pid pids deadline found=0
    # every namespace of this cluster, also those of a half-finished up
    for ns in $(ip netns list | awk -v tag="$TAG-" 'index($1, tag) == 1 {print $1}'); do
        found=1
        # SIGKILL to a node's PID 1 ends its whole PID namespace; anything else still in
        # the network namespace (a `run` waiting, a node still starting) is killed by pid
        if [[ $ns != "$SWITCH" ]]; then
            pid=$(node_pid "${ns#"$TAG-"}")
            [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true
        fi
        deadline=$((SECONDS + 10))
        while pids=$(ip netns pids "$ns") && [[ -n $pids ]]; do
            # shellcheck disable=SC2086  # one pid per word
            kill -KILL $pids 2>/dev/null || true
            ((SECONDS <= deadline)) || die "processes in $ns do not die: $pids"
            sleep 0.02
        done
        ip netns delete "$ns"
    done
    restore_run_netns
    # this cluster's use of Dragon's configuration folder (hsta_config) ends; the folder goes
    # if a cluster made it and no cluster still up (another clone's) binds it
    local folder mark
    folder=$(cat "$STATE/hsta_config_dir" 2>/dev/null) || folder=
    if [[ -n $folder && -d $folder ]]; then
        rm -f "$folder/$USE_MARK$TAG"
        for mark in "$folder/$USE_MARK"*; do
            if [[ -f $mark && ! -d $(cat "$mark" 2>/dev/null) ]]; then rm -f "$mark"; fi
        done
        if [[ $(ls -A "$folder" 2>/dev/null) == "$MADE_MARK" ]]; then
            rm -f "$folder/$MADE_MARK"
            rmdir "$folder" 2>/dev/null || true
        fi
    fi
    if [[ -e $STATE ]]; then found=1; fi
    rm -rf "$STATE"
    if ((found)); then say "cluster down"; else say "no cluster was up"; fi
}

# put /run/netns back as it was before up, if no one else's namespaces are in it
restore_run_netns() {
    local before
    before=$(cat "$STATE/run_netns" 2>/dev/null) || return 0
    [[ $before != mount && -d /run/netns ]] || return 0
    [[ -z $(ls -A /run/netns) ]] || return 0
    if mountpoint -q /run/netns; then umount /run/netns; fi
    if [[ $before == absent ]]; then rmdir /run/netns; fi
}

# -------------------------------------------------------------------------------- main
case ${1:-} in
    up) shift; cmd_up "$@" ;;
    run) shift; cmd_run "$@" ;;
    status) cmd_status ;;
    down) cmd_down ;;
    _node) node_main "$2" ;;
    *) die "usage: $0 up N | run K CMD [ARG...] | status | down" ;;
esac
