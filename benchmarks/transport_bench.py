"""Transport benchmark: what each workflow's data movement achieves next to this machine's limits.

For every run size (simulations x grid) and reader count it runs the REAL workflow scripts
(6 file system, 8 DDict, 5 futures, 5 with ProxyStore) with --epochs 0 --compute_time 0,
reads their JSON records, and puts their write (producer) and read (per consumer) figures
next to what this machine does in the same run:

  memcpy      np.copyto into warm memory, one process, as many distinct bytes as moved
              (up to 1 GB)                           (the DDict and in-memory stores)
  np.save     np.save of each simulation's freshly computed array, by as many processes at
              once as the workflow has writers; np.load of the files by one process, through
              the page cache                         (the file system)
  stream      one reader streaming a 256 MB file from --data_dir's storage, not from this
              node's page cache (written, synced, dropped with posix_fadvise): on the local
              cluster's storage node (--data_dir $PC_CLUSTER_PFS), what sshfs over the bridge
              gives; on a disk, the disk          (the file system's own limit)
  pickle      pickle.dumps / loads, protocol 5, of the same arrays (context for the futures)
  DDict floor benchmarks/ddict_floor.py: the same values in the same frozen DDict, read by
              as many bare reader processes with the trainers' own reader, nothing else
              running: script 8's gets are held to it
  lists       the earlier public version's way through the futures: each simulation returns
              Python lists of 2D arrays, a trainer receives them all, through the same
              plumbing/parsl_setup executors (--lists; compared with the futures workflow)

    python benchmarks/transport_bench.py                      # the default runs (~30 min here)
    python benchmarks/transport_bench.py --quick              # 16 x 64 and 16 x 256, one reader
    python benchmarks/transport_bench.py --runs 16x256,12x512 --readers 1,2 --transports fs,ddict
    # the files on the local cluster's storage node, the runs on its nodes (docs/local_cluster.md)
    bash cluster/local_cluster.sh run 1 python benchmarks/transport_bench.py \
        --data_dir "$PC_CLUSTER_PFS" --transports fs,ps-file --readers 2 --runs 16x128,4x512

GB = 1e9 bytes. Every number printed was measured in this run. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from plumbing import records  # noqa: E402

GB = records.GB
FUTURES = "5_parsl_fut_producer_consumer.py"
WORKFLOWS = {                       # name: (script, extra flags)
    "fs": ("6_parsl_fs_producer_consumer.py", []),
    "ddict": ("8_dragon_producer_consumer.py", []),
    "futures": (FUTURES, []),
    "ps-redis": (FUTURES, ["--proxystore", "redis"]),
    "ps-file": (FUTURES, ["--proxystore", "file"]),
    "ps-zmq": (FUTURES, ["--proxystore", "zmq"]),
}
# 0.010-0.168 GB (the main job's range; values of 0.66-10.5 MB), then 42 MB values at
# 0.671 and 2.013 GB
DEFAULT_RUNS = "16x64,16x128,16x256,16x512,48x512"
SLOW = {"futures": 0.2}     # GB: pass-by-value beyond this takes minutes; --all_sizes runs it


# --------------------------------------------------------------------------- limits (in-process)
def _rate(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / GB


def measure_limits(num_sims: int, grid_size: int, data_dir: str, writers: int) -> dict:
    """memcpy, np.save / np.load and pickle over `num_sims` simulations' worth of bytes."""
    os.sync()       # start from no dirty pages, as the workflow runs do (see run_workflow)
    pairs = common.simulate(0, 50.0, grid_size, compute_time=0).pairs
    total = pairs.nbytes * num_sims
    # memcpy: as many distinct bytes as the transport moves (up to 1 GB); one array copied
    # over and over would stay in the CPU caches and measure them, not the memory
    count = max(1, min(num_sims, int(GB // pairs.nbytes)))
    src = np.empty((count, *pairs.shape))
    src[:] = pairs
    dst = np.empty_like(src)
    np.copyto(dst, src)                             # warm: the pages exist before the clock runs
    start = time.perf_counter()
    for i in range(num_sims):
        np.copyto(dst[i % count], src[i % count])
    limits = {"memcpy_gbps": _rate(total, time.perf_counter() - start)}
    del src, dst
    dumps_s = loads_s = 0.0
    for _ in range(num_sims):
        start = time.perf_counter()
        blob = pickle.dumps(pairs, protocol=5)
        dumps_s += time.perf_counter() - start
        start = time.perf_counter()
        back = pickle.loads(blob)
        loads_s += time.perf_counter() - start
        del blob, back
    limits.update(pickle_dumps_gbps=_rate(total, dumps_s), pickle_loads_gbps=_rate(total, loads_s))
    # np.save as the file-system workflow writes: each simulation's own freshly computed
    # array, by as many processes at once as it has simulation workers; then one reader
    folder = tempfile.mkdtemp(prefix="bench-npsave-", dir=data_dir)
    try:
        with multiprocessing.get_context("spawn").Pool(min(num_sims, writers)) as pool:
            save_s = sum(pool.starmap(_simulate_and_save, [(i, grid_size, folder)
                                                           for i in range(num_sims)]))
        load_s = 0.0
        for i in range(num_sims):
            start = time.perf_counter()
            back = np.load(os.path.join(folder, f"sim_{i:06d}.npy"))
            load_s += time.perf_counter() - start
        del back
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    limits.update(npsave_gbps=_rate(total, save_s), npload_gbps=_rate(total, load_s),
                  stream_read_gbps=stream_read(data_dir))
    return limits


def stream_read(data_dir: str, nbytes: int = 256 * 2**20, chunk: int = 8 * 2**20) -> float:
    """GB/s of one reader streaming an `nbytes` file in `chunk` reads from the storage behind
    `data_dir`: written, synced, and dropped from this node's page cache first."""
    block = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8).tobytes()
    fd, path = tempfile.mkstemp(prefix="bench-stream-", dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            for _ in range(nbytes // chunk):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())            # dirty pages cannot be dropped
        buffer = bytearray(chunk)
        with open(path, "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            while f.readinto(buffer):
                pass
            return _rate(nbytes, time.perf_counter() - start)
    finally:
        os.unlink(path)


def _simulate_and_save(index: int, grid_size: int, folder: str) -> float:
    """A process of the np.save limit: simulate (not timed), then time np.save alone."""
    sim = common.simulate(index, 50.0, grid_size, compute_time=0)
    start = time.perf_counter()
    np.save(os.path.join(folder, f"sim_{index:06d}.npy"), sim.pairs)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- child processes
def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the Dragon launcher runs in a group of its own)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_child(child: subprocess.Popen) -> None:
    """SIGTERM first (the scripts then clean up); what is left after 60 s gets SIGKILL."""
    family = _descendants(child.pid)
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    for pid in [child.pid] + family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.wait()


def run_child(argv: list[str], timeout: float, first_output_s: float = 180) -> tuple[int, str, float]:
    """Run a child, collecting its output. A child silent for `first_output_s` from the start
    is taken as hung at launch and stopped, as is one that runs past `timeout`; both raise
    TimeoutError."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, text=True, process_group=0)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in child.stdout],
                              daemon=True)
    reader.start()
    try:
        while child.poll() is None:
            waited = time.perf_counter() - start
            if waited > timeout or (not lines and waited > first_output_s):
                raise TimeoutError(f"{os.path.basename(argv[1])}: "
                                   + (f"no output in {first_output_s:.0f} s" if not lines
                                      else f"still running after {timeout:.0f} s")
                                   + "".join(lines)[-2000:])
            time.sleep(0.2)
    except BaseException:
        _stop_child(child)
        raise
    reader.join(timeout=10)
    return child.returncode, "".join(lines), time.perf_counter() - start


def run_twice(argv: list[str], timeout: float, what: str) -> tuple[str, float]:
    """A failed or hung run is tried once more (the machine is shared); the second failure counts."""
    for attempt in (1, 2):
        try:
            code, out, wall = run_child(argv, timeout)
        except TimeoutError as error:
            code, out, wall = None, str(error), None
        if code == 0:
            return out, wall
        print(f"  {what}: attempt {attempt} failed (exit {code}): {out[-400:]}", flush=True)
    raise RuntimeError(f"{what} failed twice:\n{out[-3000:]}")


def run_workflow(name: str, num_sims: int, grid: int, readers: int, args, scratch: str) -> dict:
    """One real workflow run; returns its record plus the wall time of the whole process."""
    script, extra = WORKFLOWS[name]
    results = os.path.join(scratch, f"{name}-{num_sims}x{grid}-r{readers}.jsonl")
    argv = [sys.executable, os.path.join(ROOT, script), *extra, "--num_sims", str(num_sims),
            "--grid_size", str(grid), "--num_trainers", str(readers), "--epochs", "0",
            "--compute_time", "0", "--data_dir", scratch, "--results_file", results]
    # Writes to a disk-backed file system run at memory speed until a few hundred MB are
    # dirty, then at the disk's pace (~0.45 GB/s here): every measurement starts with none
    os.sync()
    _, wall = run_twice(argv, args.timeout + 300 * common.data_bytes(num_sims, grid) / GB, name)
    with open(results) as f:
        record = json.loads(f.readlines()[-1])
    record["process_wall_s"] = wall
    return record


def run_floor(num_sims: int, grid: int, readers: int, args, scratch: str) -> dict:
    """benchmarks/ddict_floor.py at the same size and reader count."""
    out_file = os.path.join(scratch, f"floor-{num_sims}x{grid}-r{readers}.jsonl")
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "ddict_floor.py"),
            "--num_sims", str(num_sims), "--grid_size", str(grid), "--readers", str(readers),
            "--rounds", "1", "--json", out_file]
    _, wall = run_twice(argv, args.timeout, "DDict floor")
    with open(out_file) as f:
        record = json.loads(f.readlines()[-1])
    record["process_wall_s"] = wall
    return record


# --------------------------------------------------------------------------- the lists baseline
def lists_simulation(index, period, grid_size):
    """The earlier public version's return value: lists of 2D arrays, inputs and outputs apart."""
    import time
    import common
    sim = common.simulate(index, period, grid_size, 0.0)
    inputs = [sim.pairs[k, 0].copy() for k in range(common.STEPS)]
    outputs = [sim.pairs[k, 1].copy() for k in range(common.STEPS)]
    return inputs, outputs, time.time()            # the transfer starts as soon as we return


def lists_trainer(rank, in_fields, out_fields, submitted_at):
    """Receives every simulation's lists as arguments; reports when they had arrived."""
    import time
    arrived_at = time.time()
    return arrived_at - submitted_at, sum(a.nbytes for a in in_fields + out_fields)


def lists_baseline(num_sims: int, grid_size: int, trainers: int) -> dict:
    """Run in a child process: the same executors and warm-up as the futures workflow, then
    the lists version of the data movement, timed like 5 times its own."""
    from parsl.app.app import python_app
    from plumbing import parsl_setup
    run_dir = tempfile.mkdtemp(prefix="bench-lists-")
    try:
        with parsl_setup.workflow(run_dir, num_sims, trainers):
            simulation = python_app(lists_simulation, executors=[parsl_setup.SIMULATORS])
            trainer = python_app(lists_trainer, executors=[parsl_setup.TRAINERS])
            arrived = {}
            futures = []
            for i, period in enumerate(common.wave_periods(num_sims)):
                future = simulation(i, period, grid_size)
                future.add_done_callback(lambda _, i=i: arrived.setdefault(i, time.time()))
                futures.append(future)
            results = [f.result() for f in futures]
            sim_io = [arrived[i] - sent for i, (_, _, sent) in enumerate(results)]
            inputs = [a for ins, _, _ in results for a in ins]
            outputs = [a for _, outs, _ in results for a in outs]
            produced = sum(a.nbytes for a in inputs) + sum(a.nbytes for a in outputs)
            del results
            reports = [f.result() for f in [trainer(rank, inputs, outputs, submitted_at=time.time())
                                            for rank in range(trainers)]]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    train_io = [seconds for seconds, _ in reports]
    assert all(nbytes == produced for _, nbytes in reports), "a trainer got less than produced"
    return {"bytes_produced": produced, "num_sims": num_sims,
            "sim_io_gbps": _rate(produced, sum(sim_io)),
            "train_io_mean_s": float(np.mean(train_io)),
            "train_io_gbps": _rate(produced, float(np.mean(train_io)))}


def run_lists(num_sims: int, grid: int, readers: int, args, scratch: str) -> dict:
    out_file = os.path.join(scratch, f"lists-{num_sims}x{grid}-r{readers}.json")
    argv = [sys.executable, os.path.abspath(__file__), "--lists-baseline", out_file,
            "--runs", f"{num_sims}x{grid}", "--readers", str(readers)]
    run_twice(argv, args.timeout + 300 * common.data_bytes(num_sims, grid) / GB, "lists baseline")
    with open(out_file) as f:
        return json.load(f)


# --------------------------------------------------------------------------- figures
def per_get_s(record: dict) -> float:
    """Mean seconds a trainer spent per value it got (one value per simulation)."""
    return record["train_io_mean_s"] / record["num_sims"]


def value_bytes(key: str) -> int:
    return common.data_bytes(1, int(key.split("x")[1].split()[0]))


def evaluate(result: dict) -> list[dict]:
    """Each target, computed from this run's figures."""
    checks = []

    def check(name, value, goal, ok):
        checks.append({"target": name, "value": value, "goal": goal, "met": bool(ok)})

    for key, cell in result["cells"].items():
        runs, lim, floor = cell["runs"], cell.get("limits", {}), cell.get("floor")
        big = value_bytes(key) >= 10e6
        if "ddict" in runs and floor:
            ratio = per_get_s(runs["ddict"]) / floor["get_mean_s"]
            check(f"script 8's get / the floor's, {key}", ratio, "<= 1.3", ratio <= 1.3)
        if "ddict" in runs and value_bytes(key) <= 1e6:
            ms = per_get_s(runs["ddict"]) * 1e3
            check(f"small get (<= 1 MB) in ms, {key}", ms, "<= 2 (aim)", ms <= 2)
        if "ddict" in runs and big and lim:
            ratio = runs["ddict"]["train_io_gbps"] / lim["memcpy_gbps"]
            check(f"DDict read per trainer / memcpy, {key}", ratio, ">= 0.25 (aim 0.5)",
                  ratio >= 0.25)
        if "fs" in runs and lim.get("stream_read_gbps") and big:
            ratio = runs["fs"]["train_io_gbps"] / lim["stream_read_gbps"]
            check(f"file system read / its storage's stream, {key}", ratio, ">= 0.5",
                  ratio >= 0.5)
        if "ddict" in runs and "fs" in runs and big:
            ratio = runs["fs"]["train_io_gbps"] / runs["ddict"]["train_io_gbps"]
            check(f"file system read / DDict read, {key}", ratio, "<= 3", ratio <= 3)
        gb = cell["bytes"] / GB
        for name in ("ps-redis", "ps-file", "ps-zmq"):
            if name in runs and "futures" in runs and gb >= 0.1:
                ratio = runs[name]["train_io_gbps"] / runs["futures"]["train_io_gbps"]
                check(f"{name} read / futures read, {key}", ratio, ">= 10", ratio >= 10)
            if name in runs and "fs" in runs and gb >= 0.1:
                ratio = runs["fs"]["train_io_gbps"] / runs[name]["train_io_gbps"]
                check(f"file system read / {name} read, {key}", ratio, "<= 2", ratio <= 2)
    return checks


def table(result: dict) -> str:
    """Every figure of a run, one column per cell, section by section (limits, transports,
    DDict gets, ratios, start-up). Long because it is a flat list of rows, one line each."""
    keys = list(result["cells"])
    fmt = "{:<32}" + "{:>12}" * len(keys)
    rows = [fmt.format("(GB = 1e9 bytes)", *keys),
            fmt.format("data moved, GB", *[f"{result['cells'][k]['bytes'] / GB:.3f}" for k in keys]),
            fmt.format("one value, MB", *[f"{value_bytes(k) / 1e6:.2f}" for k in keys])]

    def row(label, values, spec="{:.3f}"):
        rows.append(fmt.format(label, *[spec.format(v) if v is not None else "-" for v in values]))

    def get(key, *path):
        value = result["cells"][key]
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value

    def ratio(a, b):
        return a / b if a is not None and b else None

    rows.append("limits, GB/s")
    for label, name in (("  memcpy (warm, 1 process)", "memcpy_gbps"), ("  np.save", "npsave_gbps"),
                        ("  np.load", "npload_gbps"),
                        ("  stream (1 reader, not cached)", "stream_read_gbps"),
                        ("  pickle.dumps", "pickle_dumps_gbps"),
                        ("  pickle.loads", "pickle_loads_gbps")):
        row(label, [get(k, "limits", name) for k in keys])
    rows.append("write per simulation / read per trainer, GB/s")
    for name in WORKFLOWS:
        if any(name in result["cells"][k]["runs"] for k in keys):
            row(f"  {name} write", [get(k, "runs", name, "sim_io_gbps") for k in keys])
            row(f"  {name} read", [get(k, "runs", name, "train_io_gbps") for k in keys])
    if any("lists" in result["cells"][k] for k in keys):
        row("  lists write (baseline)", [get(k, "lists", "sim_io_gbps") for k in keys])
        row("  lists read (baseline)", [get(k, "lists", "train_io_gbps") for k in keys])
    rows.append("DDict gets, ms per value")
    row("  floor (bare readers)", [1e3 * get(k, "floor", "get_mean_s") if get(k, "floor") else None
                                   for k in keys], "{:.2f}")
    row("  script 8", [1e3 * per_get_s(get(k, "runs", "ddict")) if get(k, "runs", "ddict") else None
                       for k in keys], "{:.2f}")
    row("  script 8 / floor", [ratio(get(k, "runs", "ddict", "train_io_mean_s"),
                                     get(k, "floor", "get_mean_s") * get(k, "floor", "num_sims")
                                     if get(k, "floor") else None) for k in keys], "{:.2f}")
    row("  floor read, GB/s per reader", [get(k, "floor", "read_gbps_per_reader") for k in keys])
    rows.append("ratios")
    row("  DDict read / memcpy", [ratio(get(k, "runs", "ddict", "train_io_gbps"),
                                        get(k, "limits", "memcpy_gbps")) for k in keys], "{:.2f}")
    row("  fs read / DDict read", [ratio(get(k, "runs", "fs", "train_io_gbps"),
                                         get(k, "runs", "ddict", "train_io_gbps")) for k in keys], "{:.2f}")
    row("  fs read / np.load", [ratio(get(k, "runs", "fs", "train_io_gbps"),
                                      get(k, "limits", "npload_gbps")) for k in keys], "{:.2f}")
    row("  fs read / stream", [ratio(get(k, "runs", "fs", "train_io_gbps"),
                                     get(k, "limits", "stream_read_gbps")) for k in keys], "{:.2f}")
    for name in ("ps-redis", "ps-file", "ps-zmq"):
        if any(name in result["cells"][k]["runs"] for k in keys):
            row(f"  {name} read / futures read", [ratio(get(k, "runs", name, "train_io_gbps"),
                                                        get(k, "runs", "futures", "train_io_gbps"))
                                                  for k in keys], "{:.1f}")
            row(f"  fs read / {name} read", [ratio(get(k, "runs", "fs", "train_io_gbps"),
                                                   get(k, "runs", name, "train_io_gbps"))
                                             for k in keys], "{:.1f}")
    rows.append("start-up, s (not in any IO time)")
    for name in WORKFLOWS:
        if any(name in result["cells"][k]["runs"] for k in keys):
            row(f"  {name}", [get(k, "runs", name, "startup_s") for k in keys], "{:.1f}")
    row("load average at the size's start", [get(k, "load_average") for k in keys], "{:.1f}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main
def parse_runs(text: str) -> list[tuple[int, int]]:
    runs = []
    for part in text.split(","):
        sims, _, grid = part.strip().partition("x")
        runs.append((int(sims), int(grid)))
    return runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help="run sizes as SIMULATIONSxGRID, comma-separated")
    parser.add_argument("--readers", default="1,2", help="trainers (readers) per run, comma-separated")
    parser.add_argument("--transports", default=",".join(WORKFLOWS),
                        help=f"from {', '.join(WORKFLOWS)}")
    parser.add_argument("--all_sizes", action="store_true",
                        help="also run the futures beyond 0.2 GB (minutes per run)")
    parser.add_argument("--lists", action="store_true",
                        help="also run the lists baseline next to the futures")
    parser.add_argument("--quick", action="store_true",
                        help="16x64 and 16x256, one reader, fs, ddict and futures: a check in minutes")
    parser.add_argument("--data_dir", default=tempfile.gettempdir(),
                        help="where the file system runs and np.save write (and clean up)")
    parser.add_argument("--output", default=os.path.join(
        ROOT, "results", f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds a workflow run may take, plus 300 per GB of data")
    parser.add_argument("--lists-baseline", dest="lists_baseline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.readers, args.transports = "16x64,16x256", "1", "fs,ddict,futures"
    unknown = set(args.transports.split(",")) - set(WORKFLOWS)
    if unknown:
        parser.error(f"unknown transport(s): {', '.join(sorted(unknown))}")
    return args


def _stop(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)   # reaches run_child: children stop too


def measure_size(sims: int, grid: int, readers: list[int], transports: list[str], args,
                 scratch: str, result: dict) -> None:
    """Every transport at one size, for each reader count (one cell each), between two
    measurements of the machine's limits (the machine is shared: before and after)."""
    writers = min(sims, os.cpu_count() or 1)
    before = measure_limits(sims, grid, scratch, writers)
    cells = []
    for r in readers:
        key = f"{sims}x{grid} r{r}"
        cell = result["cells"][key] = {"num_sims": sims, "grid_size": grid, "readers": r,
                                       "bytes": common.data_bytes(sims, grid), "runs": {},
                                       "load_average": os.getloadavg()[0]}
        cells.append(cell)
        for name in transports:
            measure_cell(cell, key, name, args, scratch, result["errors"])
    after = measure_limits(sims, grid, scratch, writers)
    for cell in cells:
        cell["limits_before_after"] = {k: [before[k], after[k]] for k in before}
        cell["limits"] = {k: (before[k] + after[k]) / 2 for k in before}


def measure_cell(cell: dict, key: str, name: str, args, scratch: str, errors: list) -> None:
    """One transport's run in one cell, and beside script 8 the DDict floor, beside the
    futures the lists baseline; a failure is noted in `errors` and the benchmark goes on."""
    sims, grid, r = cell["num_sims"], cell["grid_size"], cell["readers"]
    if cell["bytes"] / GB > SLOW.get(name, float("inf")) and not args.all_sizes:
        return
    try:
        record = run_workflow(name, sims, grid, r, args, scratch)
    except RuntimeError as error:
        errors.append(f"{name}, {key}: {error}")
        print(f"  {name} {key} FAILED: {str(error)[-1500:]}", flush=True)
        return
    cell["runs"][name] = record
    print(f"  {key:>12} {name:8s} write {record['sim_io_gbps']:.3f} read "
          f"{record['train_io_gbps']:.3f} GB/s, start-up {record['startup_s']:.1f} s,"
          f" whole run {record['process_wall_s']:.1f} s", flush=True)
    try:
        if name == "ddict":
            cell["floor"] = run_floor(sims, grid, r, args, scratch)
            print(f"  {key:>12} floor    get {cell['floor']['get_mean_s'] * 1e3:.2f} ms"
                  f" against script 8's {per_get_s(record) * 1e3:.2f} ms", flush=True)
        if name == "futures" and args.lists:
            cell["lists"] = run_lists(sims, grid, r, args, scratch)
    except RuntimeError as error:
        errors.append(f"{'floor' if name == 'ddict' else 'lists'}, {key}: {error}")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.lists_baseline:                     # child mode, see run_lists
        (sims, grid), = parse_runs(args.runs)
        with open(args.lists_baseline, "w") as f:
            json.dump(lists_baseline(sims, grid, int(args.readers)), f)
        return 0
    transports = args.transports.split(",")
    readers = [int(r) for r in args.readers.split(",")]
    storage = records.filesystem_of(args.data_dir)
    machine = {"hostname": socket.gethostname(), "cores": os.cpu_count(), "data_filesystem": storage,
               "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
               "load_average_at_start": os.getloadavg(), "versions": records.versions()}
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
              "settings": vars(args), "cells": {}, "errors": []}
    print(f"Machine: {machine['hostname']}, {machine['cores']} cores, "
          f"{machine['memory_bytes'] / 2**30:.1f} GiB, load average "
          f"{machine['load_average_at_start'][0]:.1f}; runs {args.runs}, readers {args.readers}; "
          f"--data_dir on {storage['type']} {storage['source']}", flush=True)
    scratch = tempfile.mkdtemp(prefix="bench-", dir=args.data_dir)
    started = time.perf_counter()
    try:
        for sims, grid in parse_runs(args.runs):
            measure_size(sims, grid, readers, transports, args, scratch, result)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["total_s"] = time.perf_counter() - started
    result["targets"] = evaluate(result)
    print()
    print(f"{machine['hostname']}: {machine['cores']} cores, {result['date']}, epochs 0, "
          f"compute_time 0; columns: simulations x grid, readers")
    print(table(result))
    print()
    for c in result["targets"]:
        print(f"{'MET ' if c['met'] else 'MISS'} {c['target']}: {c['value']:.2f} (goal {c['goal']})")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nFigures written to {args.output} ({result['total_s'] / 60:.1f} min)")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
