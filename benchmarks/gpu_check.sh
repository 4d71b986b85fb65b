#!/usr/bin/env bash
# The GPU check: one command, from the repository root, on a GPU machine that has Python and
# a CUDA PyTorch but neither Parsl nor Dragon, and no network:
#
#     bash benchmarks/gpu_check.sh [OUTDIR]      # OUTDIR: default $OUT, else results/gpu-check-<time>
#
# It needs the wheels of benchmarks/gpu_wheels.sh in gpu-wheels/ (made where PyPI is reached,
# carried along with the tree). Then it
#  1. makes a virtual environment on top of python3 that sees python3's own packages (its CUDA
#     torch, numpy) and installs parsl, dragonhpc and proxystore into it from those wheels alone
#     (pip --no-index);
#  2. runs 6_parsl_fs, 8_dragon and 5_parsl_fut with their trainers, one per GPU (the scripts'
#     default --num_trainers), and fails unless each run exits 0 and its record says
#     integrity_ok, and every trainer trained on a CUDA device, a different one for each
#     trainer of a host (trainer_gpus in the record; devices where a record lacks it);
#  3. runs the transport benchmark's fs and DDict rows at 1, 2 and 4 readers. Its readers only
#     move and check the data (--epochs 0), and the rule "one trainer per GPU" would refuse 2
#     and 4 of them on a 1-GPU machine, so they run with CUDA hidden: a CPU-side measurement of
#     the machine's cores, memory and file system;
#  4. measures what the trainer's warm-up and pinned batches are worth on the GPU
#     (benchmarks/gpu_warmup.py: the first epoch with and without the warm-up, a batch's copy
#     from pageable and from pinned memory);
#  5. prints a summary: the GPUs as nvidia-smi lists them, torch, and each run's IO figures.
#
# OUTDIR gets (8 files at most): summary.txt, check.log (everything printed), records.jsonl
# (the runs' records), env.txt (GPUs, torch, packages), bench.txt and bench.json (the benchmark),
# warmup.json (step 4).
# Exit status: 0 only when every step passed.
#
# Settings, from the environment:
#   GPU_CHECK_PYTHON=python3        the Python whose CUDA torch the trainers use
#   GPU_CHECK_WHEELS=gpu-wheels     the folder of benchmarks/gpu_wheels.sh
#   GPU_CHECK_VENV=.venv-gpu-check  the environment (reused when it matches and is this
#                                   user's own, writable by nobody else; else refused)
#   GPU_CHECK_SCRIPTS="6 8 5"       the runs, in order (5-file: 5_... --proxystore file)
#   GPU_CHECK_SIMS=16 GPU_CHECK_GRID=256 GPU_CHECK_EPOCHS=1   their size
#   GPU_CHECK_BENCH_RUNS=16x256,16x512 GPU_CHECK_BENCH_READERS=1,2,4   (GPU_CHECK_BENCH=0: none)
#   GPU_CHECK_RUN_TIMEOUT=150       seconds one workflow run may take
#   GPU_CHECK_BUDGET=500            seconds the whole check may take: later steps get what is
#                                   left, and the summary is printed in time
#   GPU_CHECK_ALLOW_CPU=1           trainers on the CPU pass (to test this script without a GPU)
set -uo pipefail

started=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1
out=${1:-${OUT:-$root/results/gpu-check-$(date +%Y%m%d-%H%M%S)}}
PY=${GPU_CHECK_PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-$root/gpu-wheels}
venv=${GPU_CHECK_VENV:-$root/.venv-gpu-check}
scripts=${GPU_CHECK_SCRIPTS:-6 8 5}
sims=${GPU_CHECK_SIMS:-16}
grid=${GPU_CHECK_GRID:-256}
epochs=${GPU_CHECK_EPOCHS:-1}
bench=${GPU_CHECK_BENCH:-1}
bench_runs=${GPU_CHECK_BENCH_RUNS:-16x256,16x512}
bench_readers=${GPU_CHECK_BENCH_READERS:-1,2,4}
run_timeout=${GPU_CHECK_RUN_TIMEOUT:-150}
budget=${GPU_CHECK_BUDGET:-500}
allow_cpu=${GPU_CHECK_ALLOW_CPU:-0}

mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
rm -f "$out"/{summary.txt,check.log,records.jsonl,env.txt,bench.txt,bench.json,warmup.json}
exec > >(tee -a "$out/check.log") 2>&1
tee_pid=$!
scratch=$(mktemp -d "${TMPDIR:-/tmp}/pc-gpu-check.XXXXXX") || exit 1
# at the end: check.log complete before the outputs are collected
trap 'rm -rf "$scratch"; exec >&- 2>&-; wait "$tee_pid"' EXIT

failures=()
fail() { failures+=("$*"); echo "FAILED: $*"; }
say() { echo "[$(date +%T) +$((SECONDS - started))s] $*"; }
left() { echo $((budget - (SECONDS - started))); }
summary=()
note() { summary+=("$*"); }
write_summary() {
    {
        echo
        echo "===== GPU check summary ($(date +%FT%T%z), $((SECONDS - started)) s, $(hostname)," \
             "$(nproc) cores)"
        [[ $allow_cpu == 1 ]] && echo "GPU_CHECK_ALLOW_CPU=1: trainers on the CPU were accepted"
        printf '%s\n' "${summary[@]}"
        if ((${#failures[@]})); then
            echo "RESULT: FAILED (${#failures[@]})"
            printf '  %s\n' "${failures[@]}"
        else
            echo "RESULT: PASSED"
        fi
        echo "outputs: $out"
    } | tee "$out/summary.txt"
}
die() { fail "$*"; write_summary; exit 1; }
# Every process of one run carries PC_GPU_CHECK_RUN=<tag> in its environment. Whatever of a
# run is still alive when it has ended (Dragon's launcher and runtime run in process groups of
# their own, and a killed run cannot stop them) is found by that tag and killed.
reap() {
    local tag=$1 pid round found killed=()
    for round in 1 2 3 4 5 6 7 8 9 10; do       # until none is left: a process may still fork
        found=()
        for pid in /proc/[0-9]*; do
            pid=${pid#/proc/}
            if { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null |
                    grep -qx "PC_GPU_CHECK_RUN=$tag"; then
                found+=("$pid")
            fi
        done
        ((${#found[@]})) || break
        ((round == 1)) && echo "still running after $tag ended:" &&
            ps -o pid=,args= -p "$(IFS=,; echo "${found[*]}")" 2>/dev/null | cut -c1-160
        kill -KILL "${found[@]}" 2>/dev/null
        killed+=("${found[@]}")
        sleep 0.5
    done
    ((${#killed[@]} == 0)) || fail "$tag: ${#killed[@]} process(es) left running after it ended" \
                                   "(killed; listed in check.log)"
    return 0
}

# ------------------------------------------------------------------ the machine
gpus="no nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi --query-gpu=index,name,driver_version,memory.total,uuid \
                      --format=csv,noheader 2>&1)
fi
{
    echo "== nvidia-smi"
    echo "$gpus"
    echo "== host: $(hostname), $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 " GiB" }')" \
         "memory, /dev/shm $(df -h --output=size /dev/shm 2>/dev/null | tail -1 | tr -d ' ')," \
         "$(uname -r), $(ldd --version 2>&1 | head -1)"
} > "$out/env.txt"
cat "$out/env.txt"
while IFS= read -r line; do note "nvidia-smi: $line"; done <<< "$gpus"

# ------------------------------------------------------------------ 1. the environment
# an environment is sourced and run: only one that this user owns and nobody else can change
if [[ -e $venv ]] && [[ ! -O $venv || -n $(find "$venv" -maxdepth 2 -perm /022 ! -type l -print -quit) ]]; then
    die "$venv is not this user's own, or others can write in it: remove it or set GPU_CHECK_VENV"
fi
if ! base_version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); then
    die "no Python at $PY (set GPU_CHECK_PYTHON)"
fi
if [[ ! -f $wheels/pins.txt ]]; then
    die "no wheels in $wheels: run bash benchmarks/gpu_wheels.sh where PyPI is reached," \
        "and carry gpu-wheels/ along (or set GPU_CHECK_WHEELS)"
fi
wheel_version=$(cat "$wheels/python-version.txt")
if [[ $wheel_version != "$base_version" ]]; then
    die "the wheels in $wheels are for Python $wheel_version, $PY is $base_version:" \
        "GPU_WHEELS_PYTHON=$base_version bash benchmarks/gpu_wheels.sh"
fi
mapfile -t pins < "$wheels/pins.txt"
# The environment sees python3's own packages: --system-site-packages where python3 is a
# system Python; where it is itself a virtual environment (the H200 machine's python3 is
# /opt/torch/.venv/bin/python3) that option would show the system Python's packages, not its
# own, so a .pth file adds python3's package folders (after the environment's own).
stamp="$("$PY" -c 'import sys; print(sys.executable)') ${pins[*]}"
if [[ ! -x $venv/bin/python || "$(cat "$venv/.gpu-check" 2>/dev/null)" != "$stamp" ]]; then
    say "making $venv on $PY (Python $base_version) and installing ${pins[*]} offline"
    rm -rf "$venv"
    is_venv=$("$PY" -c 'import sys; print(int(sys.prefix != sys.base_prefix))')
    options=(--without-pip)        # pip comes from the wheel: python3 may lack ensurepip
    [[ $is_venv == 0 ]] && options+=(--system-site-packages)
    "$PY" -m venv "${options[@]}" "$venv" || die "$PY -m venv failed"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PY" - > "$site/_pc_gpu_check_base.pth" <<'EOF'
import os, sys
seen = []
for path in sys.path:
    if os.path.basename(path) in ("site-packages", "dist-packages") and os.path.isdir(path) \
            and path not in seen:
        seen.append(path)
        print(f"import site; site.addsitedir({path!r})")
EOF
    pip_wheel=$(ls "$wheels"/pip-*.whl)
    # no index, no pip.conf, no find-links but ours: only the carried wheels can be installed
    offline=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
             PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1)
    if ! "${offline[@]}" "$venv/bin/python" "$pip_wheel/pip" install --quiet --no-index \
            "$pip_wheel" ||
       ! "${offline[@]}" "$venv/bin/python" -m pip install --no-index --only-binary=:all: \
            --find-links "$wheels" "${pins[@]}"; then
        rm -rf "$venv"
        die "the offline install of ${pins[*]} from $wheels failed"
    fi
    echo "$stamp" > "$venv/.gpu-check"
else
    say "reusing $venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
facts=$(python - <<'EOF'
from importlib import metadata
import torch
line = f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
if torch.cuda.is_available():
    line += f"{torch.cuda.device_count()} GPU(s): " + ", ".join(
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
else:
    line += "no GPU visible to torch"
import dragon, parsl, proxystore  # noqa: F401 (installed and importable)
print(line + "; " + ", ".join(f"{p} {metadata.version(p)}" for p in
                              ("numpy", "parsl", "dragonhpc", "proxystore")))
EOF
) || die "torch, parsl, dragon or proxystore does not import in $venv"
say "$facts"
note "python $(python -c 'import platform; print(platform.python_version())'): $facts"
{ echo "== $facts"; echo "== pip list"; python -m pip list 2>&1; } >> "$out/env.txt"

# ------------------------------------------------------------------ 2. the workflows
records=$out/records.jsonl
declare -A transport_of=([6]=parsl+filesystem [8]=dragon+ddict [5]=parsl+futures
                         [5-file]=parsl+proxystore-file)
expected=()
for run in $scripts; do
    case $run in
        6) command=(python 6_parsl_fs_producer_consumer.py) ;;
        8) command=(python 8_dragon_producer_consumer.py) ;;
        5) command=(python 5_parsl_fut_producer_consumer.py) ;;
        5-file) command=(python 5_parsl_fut_producer_consumer.py --proxystore file) ;;
        *) fail "GPU_CHECK_SCRIPTS: unknown run $run (6, 8, 5 or 5-file)"; continue ;;
    esac
    timeout=$(( $(left) - 60 < run_timeout ? $(left) - 60 : run_timeout ))
    if (( timeout < 30 )); then
        fail "${transport_of[$run]}: not run, the budget ($budget s) is spent"
        continue
    fi
    expected+=("${transport_of[$run]}")
    echo
    say "${command[*]} --num_sims $sims --grid_size $grid --compute_time 0 --epochs $epochs" \
        "(time-out $timeout s)"
    # SIGINT at the time-out: the scripts clean up (Dragon's launcher tears down on SIGTERM)
    tag="${transport_of[$run]}-$$"
    PC_GPU_CHECK_RUN=$tag timeout --signal=INT --kill-after=30 "$timeout" "${command[@]}" \
        --num_sims "$sims" --grid_size "$grid" --compute_time 0 --epochs "$epochs" \
        --data_dir "$scratch" --results_file "$records" < /dev/null
    status=$?
    (( status == 0 )) || fail "${transport_of[$run]}: exit status $status"
    sleep 2         # a run that ended well has let its runtime go by now
    reap "$tag"
done

# every record: integrity, and where each trainer trained
echo
verdict=$(python - "$records" "$allow_cpu" "${expected[@]}" <<'EOF'
import collections, json, os, sys
path, allow_cpu, expected = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
records = []
if os.path.exists(path):
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
GB = 1e9
counts = collections.Counter(r["transport"] for r in records)
for transport in expected:
    if counts[transport] != 1:
        print(f"FAIL {transport}: {counts[transport]} record(s), expected 1")
for r in records:
    t = r["transport"]
    problems = []
    if not r.get("integrity_ok"):
        problems.append("integrity_ok is false")
    if r.get("devices_ok") is False:
        problems.append(f"devices: {r.get('devices_problem')}")
    if r.get("trainer_gpus"):
        trainers = [(g.get("rank"), g.get("host", "?"), g.get("device", ""),
                     g.get("uuid") or g.get("visible") or g.get("device", ""),
                     g.get("name", "")) for g in r["trainer_gpus"]]
    else:   # an older record: "cuda (CUDA_VISIBLE_DEVICES=N)" per trainer
        hosts = r.get("trainer_hosts") or ["?"] * len(r["devices"])
        trainers = [(rank, host, device, device, "")
                    for rank, (host, device) in enumerate(zip(hosts, r["devices"]))]
    if len(trainers) != r["num_trainers"]:
        problems.append(f"{len(trainers)} trainer entries for {r['num_trainers']} trainers")
    used = {}
    for rank, host, device, gpu, _ in trainers:
        if not device.startswith("cuda"):
            if not allow_cpu:
                problems.append(f"trainer {rank} trained on {device or 'an unknown device'}, not CUDA")
            continue
        if (host, gpu) in used:
            problems.append(f"trainers {used[host, gpu]} and {rank} shared GPU {gpu} of {host}")
        used[host, gpu] = rank
    where = "; ".join(" ".join(part for part in (f"rank {rank}", device, name,
                                                  f"[{gpu}]" if gpu != device else "",
                                                  f"on {host}") if part)
                      for rank, host, device, gpu, name in trainers)
    def io(s, gbps):
        return f"{s:.3f} s" + (f" ({gbps:.2f} GB/s)" if gbps else "")
    print(f"{'FAIL' if problems else 'OK  '} {t}: {r['num_sims']}x{r['grid_size']} "
          f"({r['bytes_produced'] / GB:.3f} GB), {r['num_trainers']} trainer(s), "
          f"start-up {r['startup_s']:.1f} s, sim run {r['sim_run_s']:.2f} s / IO mean "
          f"{io(r['sim_io_mean_s'], r['sim_io_gbps'])}, train run {r['train_run_s']:.2f} s / IO "
          f"mean {io(r['train_io_mean_s'], r['train_io_gbps'])}, epoch "
          f"{r['train_epoch_mean_s']:.2f} s; trainers: {where}")
    for problem in problems:
        print(f"     {t}: {problem}")
EOF
) || fail "the record check did not run"
echo "$verdict"
while IFS= read -r line; do
    [[ -n $line ]] && note "$line"
    [[ $line == FAIL* ]] && fail "record check: ${line#FAIL }"
done <<< "$verdict"

# ------------------------------------------------------------------ 3. the benchmark
if [[ $bench != 0 ]]; then
    timeout=$(( $(left) - 75 ))
    if (( timeout < 60 )); then
        fail "transport benchmark: not run, the budget ($budget s) is spent"
    else
        echo
        say "benchmarks/transport_bench.py --runs $bench_runs --readers $bench_readers" \
            "--transports fs,ddict (CUDA hidden, time-out $timeout s)"
        # SIGTERM: the benchmark stops its runs and their processes
        CUDA_VISIBLE_DEVICES="" PC_GPUS_PER_NODE=0 PC_GPU_CHECK_RUN="bench-$$" \
            timeout --kill-after=45 "$timeout" python benchmarks/transport_bench.py \
            --runs "$bench_runs" --readers "$bench_readers" --transports fs,ddict \
            --data_dir "$scratch" --output "$out/bench.json" < /dev/null 2>&1 | tee "$out/bench.txt"
        status=${PIPESTATUS[0]}
        (( status == 0 )) || fail "transport benchmark: exit status $status"
        # what failed in it, one line each (the JSON keeps the whole messages)
        if [[ -f $out/bench.json ]]; then
            while IFS= read -r line; do
                fail "transport benchmark: $line"
            done < <(python -c 'import json, sys
for error in json.load(open(sys.argv[1])).get("errors", []):
    print(" ".join(error.split())[:200])' "$out/bench.json")
        fi
        sleep 2
        reap "bench-$$"
        # its IO figures: the per-run lines, then the table's transport and DDict rows
        while IFS= read -r line; do
            note "bench: $line"
        done < <(grep -E '^ +[0-9]+x[0-9]+ r[0-9]+ +(fs|ddict|floor) |^\(GB|^data moved|^(limits|write per|DDict gets|ratios|start-up)|^  (memcpy|np\.|fs |ddict )|^  (floor|script 8)|^  (DDict read|fs read)|^(MET|MISS) ' \
                 "$out/bench.txt")
    fi
fi

# ------------------------------------------------------------------ 4. warm-up and pinned copies
if (( $(left) > 90 )); then
    echo
    say "benchmarks/gpu_warmup.py --grid_size $grid"
    if timeout $(( $(left) - 60 )) python benchmarks/gpu_warmup.py --grid_size "$grid" \
            --output "$out/warmup.json" < /dev/null > "$scratch/warmup.txt" 2>&1; then
        while IFS= read -r line; do say "$line"; note "warm-up: $line"; done < "$scratch/warmup.txt"
    else
        cat "$scratch/warmup.txt"
        fail "benchmarks/gpu_warmup.py failed"
    fi
else
    fail "warm-up measurement: not run, the budget ($budget s) is spent"
fi

# ------------------------------------------------------------------ 5. the summary
write_summary
exit $((${#failures[@]} ? 1 : 0))
