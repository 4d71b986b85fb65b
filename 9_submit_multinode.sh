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
# The main job: every transport at several data sizes, on 1 node and on all the job's nodes,
# then the homework table and the plots. One file for three places (qsub ignores the #SBATCH
# lines; sbatch, told --ignore-pbs, the #PBS ones). From the repository root:
#
#   bash 9_submit_multinode.sh                        a laptop, a workstation, CI (no batch system)
#   qsub -v DATA_DIR=/eagle/<project>/$USER 9_submit_multinode.sh      ALCF Polaris: docs/polaris.md
#   sbatch -A <account> 9_submit_multinode.sh         Slurm (Perlmutter...): docs/slurm.md
#
# qsub and sbatch options override the lines above: -A <project> -q debug-scaling -l select=4
# -l walltime=00:30:00; sbatch -N 4 -t 00:30:00. Polaris's queues: ALCFAITP (the lecture's),
# debug (1-2 nodes) and debug-scaling (up to 10) outside it.
#
# The settings below may be given in the environment: NUM_SIMS=8 bash 9_...; on PBS
# qsub -v NUM_SIMS=8,GRID_SIZES="512 1024" 9_...; sbatch passes the environment it is run in.
# Left blank, a setting takes the default in [brackets]: [in a batch job | without one].
set -euo pipefail

# What runs: for each round, each size, each node count, each transport in turn, one run of
#   filesystem        python 6_parsl_fs_producer_consumer.py
#   ddict             python 8_dragon_producer_consumer.py   (ddict-broadcast: --broadcast)
#   futures           python 5_parsl_fut_producer_consumer.py
#   proxystore-C      python 5_parsl_fut_producer_consumer.py --proxystore C (file, redis, zmq)
# with --num_sims, --grid_size, --num_nodes, --compute_time, --data_dir, --results_file and
# the flags below; then `python report.py` of the records.
export TRANSPORTS=${TRANSPORTS:-}      # [filesystem ddict futures proxystore-file, and
                                       #  proxystore-redis where redis-server is installed]
export GRID_SIZES=${GRID_SIZES:-}      # one run per grid size N (N x N points); SxN: S
                                       # simulations at that size   [256 512 1024 | 64 4x512]
export NUM_SIMS=${NUM_SIMS:-}          # simulations per run (all nodes together)  [32 per node | 16]
export NODES=${NODES:-}                # node counts to run every transport on, e.g. "1 2"
                                       # [1 and all of the job's | 1]. In a batch job its first
                                       # N nodes; without one, counts above 1 are the local
                                       # cluster's (cluster/local_cluster.sh, root only), which
                                       # the job brings up and takes down
export REPEATS=${REPEATS:-}            # rounds of all the runs, round r of every run before
                                       # round r+1; every run a record   [1 | 2]
                                       # (here two rounds show whether a difference survives a
                                       # rerun and stay within 10 minutes; in a batch job one
                                       # round of these sizes fills most of an hour)
export COMPUTE_TIME=${COMPUTE_TIME:-}  # emulated compute seconds per simulation step  [0.5 | 0]
export EPOCHS=${EPOCHS:-}              # training epochs per trainer; 0: move and check the data only
export NUM_TRAINERS=${NUM_TRAINERS:-}  # trainers per run (default: one per GPU; 2 without GPUs)
export KERNEL_SIZES=${KERNEL_SIZES:-}  # e.g. 3,5 (default: the scripts')
export DATA_DIR=${DATA_DIR:-}          # where the runs write files, each run in a directory of
                                       # its own that the job removes. Default: on Polaris
                                       # /eagle/<the job's -A project>/$USER/producer-consumer;
                                       # on the local cluster its storage node; elsewhere
                                       # RESULTS_DIR/data (in a batch job, with a note: that is
                                       # not the parallel file system)
export RESULTS_DIR=${RESULTS_DIR:-}    # this job's records, table, plots, logs  [results/<job id>]
export WARMUP=${WARMUP:-1}             # 1: first one tiny unreported run per engine (Parsl, Dragon)
export RUN_TIMEOUT=${RUN_TIMEOUT:-}    # seconds one run may take  [1800 | 600]
export DRAGON_LAUNCH=${DRAGON_LAUNCH:-python}   # how script 8 starts: python | dragon
export EXTRA_ARGS=${EXTRA_ARGS:-}      # more flags for every run, e.g. --keep_data
export DRY_RUN=${DRY_RUN:-0}           # 1: print the plan and the commands, run nothing
# The job prints its plan with an estimate of how long it takes and, in a batch job, stops
# there in one line if that cannot fit the walltime. Its exit status is 0 when every run
# succeeded. Its machinery: plumbing/job_plan.py (the plan), plumbing/main_job.py (the runs).

# A batch job runs a copy of this file: the repository is where qsub or sbatch ran.
# Relative paths in the settings are relative to where the job started.
if [[ ${PBS_ENVIRONMENT:-} == PBS_BATCH ]]; then cd "$PBS_O_WORKDIR"; fi
export STARTED_IN=$PWD
if [[ -f $(dirname "${BASH_SOURCE[0]}")/common.py ]]; then cd "$(dirname "${BASH_SOURCE[0]}")"; fi
if [[ ! -f common.py || ! -f plumbing/main_job.py ]]; then
    echo "9_submit_multinode.sh: run it from the repository root (qsub or sbatch from there)" >&2
    exit 2
fi
# shellcheck source=0_activate_env.sh
source 0_activate_env.sh
exec python -m plumbing.main_job
