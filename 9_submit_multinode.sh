#!/bin/bash -l
#PBS -N producer-consumer
#PBS -A ALCFAITP
#PBS -q debug
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -j oe
#SBATCH --ignore-pbs
#SBATCH --job-name=producer-consumer
#SBATCH --nodes=2
#SBATCH --exclusive
#SBATCH --time=01:00:00
#SBATCH --output=producer-consumer-%j.out
#
# The main job: every transport (file system, DDict, futures) at two or more data sizes,
# then the homework table and the plots. It is a PBS batch script for ALCF Polaris, a Slurm
# batch script (Perlmutter and most other centres) and a plain bash script anywhere else.
# qsub ignores the #SBATCH lines; sbatch would read the #PBS ones too, but --ignore-pbs.
#
#   On a laptop / workstation / CI (no batch system):  bash 9_submit_multinode.sh
#   On Polaris, from the repository root:              qsub 9_submit_multinode.sh
#   Under Slurm, from the repository root:             sbatch -A <account> 9_submit_multinode.sh
#
# Every #PBS and #SBATCH line above is a default: qsub and sbatch options override them,
#   qsub -A MyProject -q debug-scaling -l select=4 -l walltime=00:30:00 9_submit_multinode.sh
#   sbatch -A m1234 -C gpu -q regular -N 4 --gpus-per-node=4 -t 00:30:00 9_submit_multinode.sh
# Outside lecture time use the debug (1-2 nodes) or debug-scaling queue. On Slurm machines
# see docs/slurm.md (--exclusive: whole nodes, as PBS gives them).
#
# Settings, from the environment (locally: NUM_SIMS=8 bash 9_...; on PBS: qsub -v NUM_SIMS=8,...;
# sbatch passes the environment it is started in: NUM_SIMS=8 sbatch 9_...):
#   TRANSPORTS    which workflows, in this order    "filesystem ddict futures proxystore-file",
#                 and proxystore-redis where redis-server is installed
#                 (filesystem = 6_parsl_fs, ddict = 8_dragon, ddict-broadcast = 8_dragon
#                 --broadcast, futures = 5_parsl_fut,
#                 proxystore-CONNECTOR = 5_parsl_fut --proxystore CONNECTOR: file, redis, zmq)
#   NODES         node counts to run every transport on, e.g. "1 2" (default: all the nodes of
#                 the batch job, 1 here). In a batch job they are the first N nodes of it. Here,
#                 counts above 1 run on the local cluster of cluster/local_cluster.sh (root
#                 only): this job brings it up and takes it down, unless one is up already
#                 (PC_CLUSTER_STATE set); then every run, 1-node ones too, runs in its node1.
#   NUM_SIMS      simulations per run (total)       16 here; 32 per node in a batch job
#   GRID_SIZES    one run per grid size N (N x N)   "64 128 4x512" here; "256 512 1024" in a batch job
#                 (SxN: S simulations instead of NUM_SIMS at that size; 512^2 keeps its 42 MB
#                 values but 4 of them train in a quarter of the time on CPUs)
#   COMPUTE_TIME  emulated seconds per sim step     0 here; 0.5 (the spec's) in a batch job
#   KERNEL_SIZES  e.g. 3,5 (default: the scripts')  NUM_TRAINERS  (default: one per GPU, 2 on CPU)
#   EPOCHS        training epochs per trainer        1 (0: move and check the data only)
#   DATA_DIR      where the file-system runs write (in a batch job: give the parallel file
#                 system, e.g. /eagle/<project>/<user> or $SCRATCH); default RESULTS_DIR/data,
#                 and on the local cluster its storage node ($PC_CLUSTER_PFS/<job id>)
#   RESULTS_DIR   this job's outputs                results/<job id or date-time>
#   WARMUP        1: first a tiny unreported run per engine (Parsl, Dragon); 0: none
#   RUN_TIMEOUT   seconds one run may take          600 here; 1800 in a batch job
#   DRAGON_LAUNCH how to start 8_...: python | dragon   python
#                 (dragon: `dragon $PC_DRAGON_ARGS -N <nodes>`, as `python 8_...` starts it)
#   EXTRA_ARGS    more flags for every workflow run, e.g. "--keep_data"
#   DRY_RUN       1: print the settings and the commands, run nothing
# GRID_SIZES and TRANSPORTS take spaces or commas; with qsub -v quote spaces, e.g.
#   qsub -v NUM_SIMS=64,GRID_SIZES="512 1024",TRANSPORTS=ddict 9_submit_multinode.sh
#
# Outputs (printed at the end): RESULTS_DIR/records.jsonl (one JSON record per run),
# table.md (the homework table), io_vs_size.png, time_breakdown.png, logs/ (each run's output).
# The exit status is 0 when every run succeeded.
set -euo pipefail

job_start=$SECONDS
here=$(pwd)

# The machine may be shared: its load, next to the numbers, says how far to trust them
load_average() { [[ -r /proc/loadavg ]] && cut -d' ' -f1-3 /proc/loadavg || echo unknown; }

# A relative RESULTS_DIR / DATA_DIR means relative to where the job was started
absolute() { [[ $1 == /* ]] && echo "$1" || echo "$here/$1"; }

fail() { echo "9_submit_multinode.sh: $*" >&2; exit 2; }

# A batch job runs a spooled copy of this file (PBS: from the home directory): go back to
# where qsub or sbatch was run (the repository root). Anywhere else, run from this file's
# directory.
if [[ ${PBS_ENVIRONMENT:-} == PBS_BATCH ]]; then
    here=$PBS_O_WORKDIR
    cd "$PBS_O_WORKDIR"
elif [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_SUBMIT_DIR:-} &&
        ! -f $(dirname "${BASH_SOURCE[0]}")/common.py ]]; then
    here=$SLURM_SUBMIT_DIR
    cd "$SLURM_SUBMIT_DIR"
else
    cd "$(dirname "${BASH_SOURCE[0]}")"
fi
if [[ ! -f common.py || ! -f report.py ]]; then
    echo "9_submit_multinode.sh: run it from the repository root (qsub or sbatch from there)" >&2
    exit 2
fi

# The local cluster's exports (eval "$(bash cluster/local_cluster.sh up N)") name its host
# list as PBS_NODEFILE. On this machine that is no allocation: the runs go into its node1.
# Inside one of its nodes (local_cluster.sh run 1 bash 9_...) it is one, as before.
cluster=""                   # "existing" or "own" (this job's): the runs go into node1
if [[ -n ${PC_CLUSTER_STATE:-} && ${PBS_NODEFILE:-} == "$PC_CLUSTER_STATE/hostfile" &&
      -z ${SLURM_JOB_ID:-} ]] && ! grep -qx "$(hostname)" "$PBS_NODEFILE" 2>/dev/null; then
    [[ -r $PBS_NODEFILE ]] || fail "PC_CLUSTER_STATE=$PC_CLUSTER_STATE: no local cluster is up" \
        "there (unset the variables of local_cluster.sh, or bring it up again)"
    cluster=existing
fi

# Inside an allocation the workflows use all its nodes (or the first NODES); size the job for it.
# Slurm first: a job submitted from a node of the local cluster inherits its PBS_NODEFILE.
if [[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_JOB_NODELIST:-} ]]; then
    batch=slurm
    num_nodes=${SLURM_JOB_NUM_NODES:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | wc -l)}
    job_id=$SLURM_JOB_ID
elif [[ -z $cluster && -n ${PBS_NODEFILE:-} && -r ${PBS_NODEFILE:-} ]]; then
    batch=pbs
    num_nodes=$(sort -u "$PBS_NODEFILE" | wc -l)
    job_id=${PBS_JOBID:-$(date +%Y%m%d-%H%M%S)}
    job_id=${job_id%%.*}
else
    batch=""
    num_nodes=1
    [[ $cluster == existing ]] && num_nodes=$(sort -u "$PBS_NODEFILE" | wc -l)
    job_id=$(date +%Y%m%d-%H%M%S)
fi
on_pbs=$([[ $batch == pbs ]] && echo 1 || echo 0)

# NODES: node counts, each within the allocation (or the local cluster's 4 nodes at most)
NODES=${NODES:-}
read -ra node_counts <<< "${NODES//,/ }"
most_nodes=0
for count in "${node_counts[@]}"; do
    [[ $count =~ ^[1-9][0-9]*$ ]] || fail "NODES takes positive integers, got '$count'"
    (( count > most_nodes )) && most_nodes=$count
done
if [[ -n $batch || $cluster == existing ]]; then
    (( most_nodes <= num_nodes )) || fail "NODES asks for $most_nodes nodes, but the" \
        "$([[ -n $batch ]] && echo "$batch job" || echo "local cluster") has $num_nodes"
elif (( most_nodes > 1 )); then
    # no allocation: the nodes are namespaces of this machine (cluster/local_cluster.sh)
    (( most_nodes <= 4 )) || fail "NODES asks for $most_nodes nodes; without a batch job the" \
        "local cluster (cluster/local_cluster.sh) has 4 at most"
    (( EUID == 0 )) || fail "NODES asks for $most_nodes nodes: without a batch job that needs" \
        "the local cluster (cluster/local_cluster.sh), which needs root"
    unshare --net --uts --ipc --mount --pid --fork true 2>/dev/null || fail "NODES asks for" \
        "$most_nodes nodes: the local cluster needs Linux namespaces, which cannot be made here"
    cluster=own
fi

if [[ -n $batch ]]; then
    NUM_SIMS=${NUM_SIMS:-$((32 * num_nodes))}
    GRID_SIZES=${GRID_SIZES:-"256 512 1024"}
    COMPUTE_TIME=${COMPUTE_TIME:-0.5}
    RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
else
    # CPU training dominates here: these sizes keep the whole job to a few minutes
    NUM_SIMS=${NUM_SIMS:-16}
    GRID_SIZES=${GRID_SIZES:-"64 128 4x512"}
    COMPUTE_TIME=${COMPUTE_TIME:-0}
    RUN_TIMEOUT=${RUN_TIMEOUT:-600}
fi
DRAGON_LAUNCH=${DRAGON_LAUNCH:-python}
default_transports="filesystem ddict futures proxystore-file"
command -v redis-server > /dev/null && default_transports+=" proxystore-redis"
TRANSPORTS=${TRANSPORTS:-$default_transports}
KERNEL_SIZES=${KERNEL_SIZES:-}
NUM_TRAINERS=${NUM_TRAINERS:-}
EPOCHS=${EPOCHS:-}
DRY_RUN=${DRY_RUN:-0}
WARMUP=${WARMUP:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}
RESULTS_DIR=$(absolute "${RESULTS_DIR:-results/$job_id}")
data_dir_given=${DATA_DIR:-}
DATA_DIR=$(absolute "${DATA_DIR:-$RESULTS_DIR/data}")
read -ra grid_sizes <<< "${GRID_SIZES//,/ }"
read -ra transports <<< "${TRANSPORTS//,/ }"
read -ra extra_args <<< "$EXTRA_ARGS"
read -ra dragon_args <<< "${PC_DRAGON_ARGS:-}"
if [[ -n $cluster ]]; then
    # the nodes have /tmp, /dev/shm and /run of their own: the runs write where all see it
    for dir in "$RESULTS_DIR" "$DATA_DIR"; do
        case $(realpath -m "$dir")/ in
            /tmp/* | /dev/shm/* | /run/*)
                [[ $(realpath -m "$dir")/ == "$(pwd -P)"/* ]] ||
                    fail "$dir is not shared with the local cluster's nodes (each has its own" \
                         "/tmp, /dev/shm and /run): set RESULTS_DIR and DATA_DIR elsewhere" ;;
        esac
    done
fi

# The workflow command for a transport name and a node count ("" = the scripts' default, all),
# in the array `command`; `script` is the workflow script
workflow_command() {
    local nodes=${2:-}
    case $1 in
        futures|parsl+futures) script=5_parsl_fut_producer_consumer.py; command=(python "$script") ;;
        proxystore-file|proxystore-redis|proxystore-zmq) script=5_parsl_fut_producer_consumer.py
            command=(python "$script" --proxystore "${1#proxystore-}") ;;
        filesystem|fs|parsl+filesystem) script=6_parsl_fs_producer_consumer.py; command=(python "$script") ;;
        ddict|dragon|dragon+ddict|ddict-broadcast|dragon+ddict-broadcast)
            script=8_dragon_producer_consumer.py
            if [[ $DRAGON_LAUNCH == dragon ]]; then
                # what `python 8_...` would start: the launcher's options, -N for part of
                # the allocation (check_args refuses a runtime with more nodes than asked),
                # and dragon_site on PYTHONPATH where PC_DRAGON_FIXES's rule puts it
                command=(env "PYTHONPATH=$(python -c 'import sys; from plumbing import dragon_launch as d; print(d.launch_fixes_env(int(sys.argv[1] or 0) or None)["PYTHONPATH"])' "$nodes")"
                         dragon "${dragon_args[@]}" ${nodes:+-N "$nodes"} "$script")
            else
                command=("$DRAGON_LAUNCH" "$script")
            fi
            [[ $1 != *broadcast ]] || command+=(--broadcast) ;;
        *) return 1 ;;
    esac
    [[ -n $nodes ]] && command+=(--num_nodes "$nodes")
    # on the local cluster every run starts in node1, as it would on a batch job's first node
    [[ -n $cluster ]] && command=(bash cluster/local_cluster.sh run 1 "${command[@]}")
    [[ -f $script ]]
}
for transport in "${transports[@]}"; do
    if ! workflow_command "$transport"; then
        echo "9_submit_multinode.sh: unknown transport '$transport' or its script is missing" \
             "(use filesystem, ddict, ddict-broadcast, futures, proxystore-file, proxystore-redis, proxystore-zmq)" >&2
        exit 2
    fi
done
if (( ${#grid_sizes[@]} == 0 )); then
    echo "9_submit_multinode.sh: GRID_SIZES has no size in it" >&2
    exit 2
fi
for number in "$NUM_SIMS" "${grid_sizes[@]}"; do
    if [[ ! $number =~ ^([1-9][0-9]*x)?[1-9][0-9]*$ ]]; then
        echo "9_submit_multinode.sh: NUM_SIMS takes a positive integer and GRID_SIZES N or" \
             "SIMSxN (positive integers), got '$number'" >&2
        exit 2
    fi
done

# The local cluster this job brings up goes down on every way out (an error, Ctrl-C, kill)
cluster_down() {
    bash cluster/local_cluster.sh down 2>/dev/null ||
        echo "warning: 'bash cluster/local_cluster.sh down' failed; run it by hand" >&2
}
# between runs too, Ctrl-C and SIGTERM must end the job through the EXIT trap
idle_traps() {
    if [[ $cluster == own ]]; then trap 'exit 130' INT; trap 'exit 143' TERM
    else trap - INT TERM; fi
}
if [[ $cluster == own ]]; then
    if [[ $DRY_RUN == 1 ]]; then
        echo "would bring up the local cluster: bash cluster/local_cluster.sh up $most_nodes"
    else
        trap cluster_down EXIT
        idle_traps
        exports=$(bash cluster/local_cluster.sh up "$most_nodes") || fail "the local cluster did not come up"
        eval "$exports"
    fi
    num_nodes=$most_nodes
fi
# On the local cluster the files go to its storage node (cluster/local_cluster.sh serves
# PC_CLUSTER_PFS to every node over the cluster's network, as Lustre is served), unless
# DATA_DIR says otherwise
if [[ -n $cluster && -z $data_dir_given ]]; then
    if [[ -n ${PC_CLUSTER_PFS:-} ]]; then DATA_DIR=$PC_CLUSTER_PFS/$job_id
    elif [[ $DRY_RUN == 1 ]]; then DATA_DIR="\$PC_CLUSTER_PFS/$job_id"; fi
fi

records=$RESULTS_DIR/records.jsonl
if [[ $DRY_RUN == 1 ]]; then
    info_file=/dev/null                       # a dry run creates nothing
else
    mkdir -p "$RESULTS_DIR/logs" "$DATA_DIR"
    info_file=$RESULTS_DIR/job.txt
    # shellcheck source=0_activate_env.sh
    source 0_activate_env.sh
fi

{
    echo "job          $job_id on $(hostname) ($num_nodes node(s), $(nproc) cores here), $(date '+%F %T %z')"
    if [[ -n $cluster ]]; then
        echo "nodes        ${NODES:-$num_nodes}: the local cluster's (cluster/local_cluster.sh), which share this machine"
    elif [[ -n ${NODES:-} ]]; then
        echo "nodes        $NODES, the first of the allocation"
    fi
    echo "transports   ${transports[*]}"
    echo "runs         $NUM_SIMS simulations (or SIMSx) x grid ${grid_sizes[*]}, compute time $COMPUTE_TIME s/step"
    echo "trainers     ${NUM_TRAINERS:-default} (kernel sizes ${KERNEL_SIZES:-default}, epochs ${EPOCHS:-1})"
    echo "data dir     $DATA_DIR"
    echo "results dir  $RESULTS_DIR"
    if [[ $DRY_RUN == 1 ]]; then echo "python       (a dry run does not activate the environment)"
    else echo "python       $(command -v python)"; fi
    # -dirty: the working tree had changes that commit does not hold
    echo "commit       $(git describe --always --dirty --abbrev=7 2>/dev/null || echo unknown)"
    echo "load average $(load_average) (1, 5, 15 min) at the start"
} | tee "$info_file"
if (( on_pbs )) && [[ $DATA_DIR == "$RESULTS_DIR/data" ]]; then
    echo "note: file-system runs write under the results directory; set DATA_DIR to measure" \
         "the parallel file system (e.g. qsub -v DATA_DIR=/eagle/<project>/<user> ...)"
elif [[ $batch == slurm && $DATA_DIR == "$RESULTS_DIR/data" ]]; then
    echo "note: file-system runs write under the results directory; set DATA_DIR to measure" \
         "the parallel file system (e.g. DATA_DIR=\$SCRATCH sbatch ...)"
fi

# run_workflow TRANSPORT GRID SIMS RECORDS LOG: one run; its output goes to the screen and LOG.
# The run gets a process group of its own (set -m), so Ctrl-C at the terminal reaches this
# script alone; the trap then hands the workflow ONE SIGINT, through `timeout`, so that its
# clean-up runs once and is not cut short by a second signal. (SIGINT, not SIGTERM: `dragon`
# tears its runtime down on SIGTERM before the script can clean up. PBS and Slurm send
# SIGTERM to every process of a job themselves, so there the trap does not add one.)
interrupted=0
run_workflow() {
    local transport=$1 grid=$2 sims=$3 results_file=$4 log=$5 nodes=${6:-}
    workflow_command "$transport" "$nodes"
    local args=(--num_sims "$sims" --grid_size "$grid" --compute_time "$COMPUTE_TIME"
                --data_dir "$DATA_DIR" --results_file "$results_file")
    [[ -n $KERNEL_SIZES ]] && args+=(--kernel_sizes "$KERNEL_SIZES")
    [[ -n $NUM_TRAINERS ]] && args+=(--num_trainers "$NUM_TRAINERS")
    [[ -n $EPOCHS ]] && args+=(--epochs "$EPOCHS")
    echo
    if [[ $DRY_RUN == 1 ]]; then
        echo "would run: ${command[*]} ${args[*]} ${extra_args[*]}"
        return 0
    fi
    echo "[$(date +%T)] ${command[*]} ${args[*]} ${extra_args[*]}" | tee "$log"
    local out tee_pid pid status=0 left_before
    left_before=$(run_dirs)
    exec {out}> >(tee -i -a "$log")
    tee_pid=$!
    # --foreground: only the workflow gets the signals, SIGINT at the time-out, SIGKILL 60 s later
    set -m
    timeout --foreground --signal=INT --kill-after=60 "$RUN_TIMEOUT" \
        "${command[@]}" "${args[@]}" "${extra_args[@]}" < /dev/null >&"$out" 2>&1 &
    pid=$!
    set +m
    trap 'interrupted=1; kill -INT "$pid" 2>/dev/null' INT
    if [[ -n $batch ]]; then
        trap 'interrupted=1' TERM
    else
        trap 'interrupted=1; kill -INT "$pid" 2>/dev/null' TERM
    fi
    wait "$pid" || status=$?
    while kill -0 "$pid" 2>/dev/null; do       # a signal cut the wait short: let it clean up
        status=0
        wait "$pid" || status=$?
    done
    idle_traps
    exec {out}>&-
    # tee ends when the last writer closes the pipe; a process the run left behind may never
    # do so, so give it a few seconds, not forever
    for _ in {1..50}; do
        kill -0 "$tee_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$tee_pid" 2>/dev/null || true
    if (( status == 124 || status == 137 )); then
        # killed at the time-out: its head could not remove its run directory (a Dragon
        # launcher left behind dies with the killed script: plumbing/dragon_launch.relaunch_under_dragon)
        local dir
        while read -r dir; do
            [[ -n $dir ]] || continue
            echo "removing $dir, left by the run that timed out"
            rm -rf -- "$dir"
        done < <(comm -13 <(echo "$left_before") <(run_dirs))
    fi
    return "$status"
}

# the runs' own directories (pc-<transport>-<time>-*) in DATA_DIR, one a line, sorted
run_dirs() {
    local dir
    for dir in "$DATA_DIR"/pc-*; do if [[ -d $dir ]]; then echo "$dir"; fi; done | sort
}

# Warm-up: the first run of an engine pays for cold caches (imports, the Dragon runtime's
# first start); one tiny run per engine (on the most nodes asked for, so that every node is
# warm), whose record goes to a file nobody reports
warmup_nodes=""
(( most_nodes )) && warmup_nodes=$most_nodes
if [[ $WARMUP == 1 && $DRY_RUN != 1 ]]; then
    warmed=" "
    for transport in "${transports[@]}"; do
        workflow_command "$transport"
        engine=parsl
        [[ $script == 8_* ]] && engine=dragon
        [[ $warmed == *" $engine "* ]] && continue
        warmed+="$engine "
        echo "[$(date +%T)] warm-up of $engine (a tiny $transport run, not reported)"
        run_workflow "$transport" 64 2 "$RESULTS_DIR/logs/warmup.jsonl" \
            "$RESULTS_DIR/logs/warmup-$engine.log" "$warmup_nodes" > /dev/null \
            || echo "warning: the $engine warm-up failed, see $RESULTS_DIR/logs/warmup-$engine.log"
        if (( interrupted )); then
            echo "interrupted during the $engine warm-up" >&2
            exit 130
        fi
    done
fi

# The measured runs: for each size every node count and transport in turn, so slow drifts
# of a shared machine touch all transports alike
(( ${#node_counts[@]} )) || node_counts=("")     # NODES unset: the scripts' default, all nodes
failed=()
for size in "${grid_sizes[@]}"; do
    grid=${size#*x} sims=$NUM_SIMS
    [[ $size == *x* ]] && sims=${size%x*}
    for nodes in "${node_counts[@]}"; do
        for transport in "${transports[@]}"; do
            run="$transport${nodes:+ on $nodes node(s)} at $sims x $grid^2"
            log=$RESULTS_DIR/logs/$transport-${sims}x$grid${nodes:+-${nodes}n}.log
            run_workflow "$transport" "$grid" "$sims" "$records" "$log" "$nodes" \
                && status=0 || status=$?
            if (( interrupted )); then
                # Ctrl-C or SIGTERM (qdel, scancel, walltime): the workflow has cleaned up; stop
                echo "interrupted during $run; records so far in $records" >&2
                exit 130
            elif (( status == 124 )); then
                failed+=("$run")
                echo "run FAILED: $run took over RUN_TIMEOUT=$RUN_TIMEOUT s (see $log)"
            elif (( status != 0 )); then
                failed+=("$run")
                echo "run FAILED: $run (see $log)"
            fi
        done
    done
done
[[ $DRY_RUN == 1 ]] && exit 0
rmdir "$DATA_DIR" 2>/dev/null || true       # empty unless runs kept their data

echo
if [[ -s $records ]]; then
    python report.py "$records" --markdown "$RESULTS_DIR/table.md" --plots "$RESULTS_DIR"
else
    echo "no run produced a record"
fi
echo
{
    echo "Main job finished in $((SECONDS - job_start)) s;" \
         "load average $(load_average) (1, 5, 15 min) at the end"
} | tee -a "$info_file"
echo "Outputs in $RESULTS_DIR/:"
if [[ -s $records ]]; then
    echo "  records.jsonl  one JSON record per run (the raw numbers)"
    echo "  table.md       the homework table, and IO max / GB/s / host / date"
    echo "  io_vs_size.png time_breakdown.png   the plots"
fi
echo "  logs/          each run's output; job.txt: this job's settings"
if (( ${#failed[@]} )); then
    echo "${#failed[@]} run(s) failed: ${failed[*]}" >&2
    exit 1
fi
