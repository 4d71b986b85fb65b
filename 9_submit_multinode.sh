#!/bin/bash -l
#PBS -N producer-consumer
#PBS -A ALCFAITP
#PBS -q debug
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -j oe
#
# The main job: every transport (file system, DDict, futures) at two or more data sizes,
# then the homework table and the plots. It is a PBS batch script for ALCF Polaris and a
# plain bash script anywhere else.
#
#   On a laptop / workstation / CI (no PBS):   bash 9_submit_multinode.sh
#   On Polaris, from the repository root:      qsub 9_submit_multinode.sh
#
# Every #PBS line above is a default: qsub options override them without editing the file,
#   qsub -A MyProject -q debug-scaling -l select=4 -l walltime=00:30:00 9_submit_multinode.sh
# Outside lecture time use the debug (1-2 nodes) or debug-scaling queue.
#
# Settings, from the environment (locally: NUM_SIMS=8 bash 9_...; on PBS: qsub -v NUM_SIMS=8,...):
#   TRANSPORTS    which workflows, in this order    "filesystem ddict futures"
#                 (filesystem = 6_parsl_fs, ddict = 8_dragon, futures = 5_parsl_fut)
#   NUM_SIMS      simulations per run (total)       16 here; 32 per node under PBS
#   GRID_SIZES    one run per grid size N (N x N)   "64 128 256" here; "256 512 1024" under PBS
#   COMPUTE_TIME  emulated seconds per sim step     0 here; 0.5 (the spec's) under PBS
#   KERNEL_SIZES  e.g. 3,5 (default: the scripts')  NUM_TRAINERS  (default: one per GPU, 2 on CPU)
#   EPOCHS        training epochs per trainer        1 (0: move and check the data only)
#   DATA_DIR      where the file-system runs write (under PBS: give the parallel file system,
#                 e.g. /eagle/<project>/<user>); default RESULTS_DIR/data
#   RESULTS_DIR   this job's outputs                results/<PBS job id or date-time>
#   WARMUP        1: first a tiny unreported run per engine (Parsl, Dragon); 0: none
#   RUN_TIMEOUT   seconds one run may take          600 here; 1800 under PBS
#   DRAGON_LAUNCH how to start 8_...: python | dragon   python here; dragon under PBS
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

# A batch job starts in the home directory with a spooled copy of this file: go back to
# where qsub was run (the repository root). Anywhere else, run from this file's directory.
if [[ ${PBS_ENVIRONMENT:-} == PBS_BATCH ]]; then
    here=$PBS_O_WORKDIR
    cd "$PBS_O_WORKDIR"
else
    cd "$(dirname "${BASH_SOURCE[0]}")"
fi
if [[ ! -f common.py || ! -f report.py ]]; then
    echo "9_submit_multinode.sh: run it from the repository root (qsub from there)" >&2
    exit 2
fi

# Inside a PBS allocation the workflows use every node of $PBS_NODEFILE; size the job for it
if [[ -n ${PBS_NODEFILE:-} && -r ${PBS_NODEFILE:-} ]]; then
    on_pbs=1
    num_nodes=$(sort -u "$PBS_NODEFILE" | wc -l)
    job_id=${PBS_JOBID%%.*}
else
    on_pbs=0
    num_nodes=1
    job_id=$(date +%Y%m%d-%H%M%S)
fi

if (( on_pbs )); then
    NUM_SIMS=${NUM_SIMS:-$((32 * num_nodes))}
    GRID_SIZES=${GRID_SIZES:-"256 512 1024"}
    COMPUTE_TIME=${COMPUTE_TIME:-0.5}
    RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
    DRAGON_LAUNCH=${DRAGON_LAUNCH:-dragon}
else
    # CPU training dominates here: these sizes keep the whole job to a few minutes
    NUM_SIMS=${NUM_SIMS:-16}
    GRID_SIZES=${GRID_SIZES:-"64 128 256"}
    COMPUTE_TIME=${COMPUTE_TIME:-0}
    RUN_TIMEOUT=${RUN_TIMEOUT:-600}
    DRAGON_LAUNCH=${DRAGON_LAUNCH:-python}
fi
TRANSPORTS=${TRANSPORTS:-"filesystem ddict futures"}
KERNEL_SIZES=${KERNEL_SIZES:-}
NUM_TRAINERS=${NUM_TRAINERS:-}
EPOCHS=${EPOCHS:-}
DRY_RUN=${DRY_RUN:-0}
WARMUP=${WARMUP:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}
RESULTS_DIR=$(absolute "${RESULTS_DIR:-results/$job_id}")
DATA_DIR=$(absolute "${DATA_DIR:-$RESULTS_DIR/data}")
read -ra grid_sizes <<< "${GRID_SIZES//,/ }"
read -ra transports <<< "${TRANSPORTS//,/ }"
read -ra extra_args <<< "$EXTRA_ARGS"

# The workflow command for a transport name, in the array `command`
workflow_command() {
    case $1 in
        futures|parsl+futures) command=(python 5_parsl_fut_producer_consumer.py) ;;
        filesystem|fs|parsl+filesystem) command=(python 6_parsl_fs_producer_consumer.py) ;;
        ddict|dragon|dragon+ddict) command=("$DRAGON_LAUNCH" 8_dragon_producer_consumer.py) ;;
        *) return 1 ;;
    esac
    [[ -f ${command[1]} ]]
}
for transport in "${transports[@]}"; do
    if ! workflow_command "$transport"; then
        echo "9_submit_multinode.sh: unknown transport '$transport' or its script is missing" \
             "(use filesystem, ddict, futures)" >&2
        exit 2
    fi
done
if (( ${#grid_sizes[@]} == 0 )); then
    echo "9_submit_multinode.sh: GRID_SIZES has no size in it" >&2
    exit 2
fi
for number in "$NUM_SIMS" "${grid_sizes[@]}"; do
    if [[ ! $number =~ ^[1-9][0-9]*$ ]]; then
        echo "9_submit_multinode.sh: NUM_SIMS and GRID_SIZES take positive integers, got '$number'" >&2
        exit 2
    fi
done

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
    echo "transports   ${transports[*]}"
    echo "runs         $NUM_SIMS simulations x grid ${grid_sizes[*]}, compute time $COMPUTE_TIME s/step"
    echo "trainers     ${NUM_TRAINERS:-default} (kernel sizes ${KERNEL_SIZES:-default}, epochs ${EPOCHS:-1})"
    echo "data dir     $DATA_DIR"
    echo "results dir  $RESULTS_DIR"
    if [[ $DRY_RUN == 1 ]]; then echo "python       (a dry run does not activate the environment)"
    else echo "python       $(command -v python)"; fi
    echo "commit       $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "load average $(load_average) (1, 5, 15 min) at the start"
} | tee "$info_file"
if (( on_pbs )) && [[ $DATA_DIR == "$RESULTS_DIR/data" ]]; then
    echo "note: file-system runs write under the results directory; set DATA_DIR to measure" \
         "the parallel file system (e.g. qsub -v DATA_DIR=/eagle/<project>/<user> ...)"
fi

# run_workflow TRANSPORT GRID SIMS RECORDS LOG: one run; its output goes to the screen and LOG.
# The run gets a process group of its own (set -m), so Ctrl-C at the terminal reaches this
# script alone; the trap then hands the workflow ONE SIGINT, through `timeout`, so that its
# clean-up runs once and is not cut short by a second signal. (SIGINT, not SIGTERM: `dragon`
# tears its runtime down on SIGTERM before the script can clean up. PBS sends SIGTERM to
# every process of a job itself, so there the trap does not add one.)
interrupted=0
run_workflow() {
    local transport=$1 grid=$2 sims=$3 results_file=$4 log=$5
    workflow_command "$transport"
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
    local out tee_pid pid status=0
    exec {out}> >(tee -i -a "$log")
    tee_pid=$!
    # --foreground: only the workflow gets the signals, SIGINT at the time-out, SIGKILL 60 s later
    set -m
    timeout --foreground --signal=INT --kill-after=60 "$RUN_TIMEOUT" \
        "${command[@]}" "${args[@]}" "${extra_args[@]}" < /dev/null >&"$out" 2>&1 &
    pid=$!
    set +m
    trap 'interrupted=1; kill -INT "$pid" 2>/dev/null' INT
    if (( on_pbs )); then
        trap 'interrupted=1' TERM
    else
        trap 'interrupted=1; kill -INT "$pid" 2>/dev/null' TERM
    fi
    wait "$pid" || status=$?
    while kill -0 "$pid" 2>/dev/null; do       # a signal cut the wait short: let it clean up
        status=0
        wait "$pid" || status=$?
    done
    trap - INT TERM
    exec {out}>&-
    # tee ends when the last writer closes the pipe; a process the run left behind may never
    # do so, so give it a few seconds, not forever
    for _ in {1..50}; do
        kill -0 "$tee_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$tee_pid" 2>/dev/null || true
    return "$status"
}

# Warm-up: the first run of an engine pays for cold caches (imports, the Dragon runtime's
# first start); one tiny run per engine, whose record goes to a file nobody reports
if [[ $WARMUP == 1 && $DRY_RUN != 1 ]]; then
    warmed=" "
    for transport in "${transports[@]}"; do
        workflow_command "$transport"
        engine=parsl
        [[ ${command[1]} == 8_* ]] && engine=dragon
        [[ $warmed == *" $engine "* ]] && continue
        warmed+="$engine "
        echo "[$(date +%T)] warm-up of $engine (a tiny $transport run, not reported)"
        run_workflow "$transport" 64 2 "$RESULTS_DIR/logs/warmup.jsonl" \
            "$RESULTS_DIR/logs/warmup-$engine.log" > /dev/null \
            || echo "warning: the $engine warm-up failed, see $RESULTS_DIR/logs/warmup-$engine.log"
        if (( interrupted )); then
            echo "interrupted during the $engine warm-up" >&2
            exit 130
        fi
    done
fi

# The measured runs: for each size every transport in turn, so slow drifts of a shared
# machine touch all transports alike
failed=()
for grid in "${grid_sizes[@]}"; do
    for transport in "${transports[@]}"; do
        log=$RESULTS_DIR/logs/$transport-$grid.log
        run_workflow "$transport" "$grid" "$NUM_SIMS" "$records" "$log" && status=0 || status=$?
        if (( interrupted )); then
            # Ctrl-C or SIGTERM (qdel, walltime): the workflow has cleaned up; stop the job
            echo "interrupted during $transport at $NUM_SIMS x $grid^2; records so far in $records" >&2
            exit 130
        elif (( status == 124 )); then
            failed+=("$transport at $NUM_SIMS x $grid^2")
            echo "run FAILED: $transport at $NUM_SIMS x $grid^2 took over RUN_TIMEOUT=$RUN_TIMEOUT s (see $log)"
        elif (( status != 0 )); then
            failed+=("$transport at $NUM_SIMS x $grid^2")
            echo "run FAILED: $transport at $NUM_SIMS x $grid^2 (see $log)"
        fi
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
