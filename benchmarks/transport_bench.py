"""Transport benchmark: what each workflow's data movement achieves next to this machine's limits.

For every data size it runs the REAL workflow scripts (5 futures, 6 file system, 8 DDict) with
--epochs 0 --compute_time 0, reads their JSON records, and puts their write (producer) and read
(per consumer) throughput next to limits measured in this process, in the same run, on the same
per-simulation arrays just before the transport that is compared with them:

  memcpy      np.copyto into warm memory, one process, as many distinct bytes as moved
              (up to 1 GB)                                       (compared with the DDict read)
  np.save     np.save of each simulation's freshly computed array, by as many processes at
              once as the workflow has writers; np.load of the files by one process, through
              the page cache                                     (compared with the file system)
  pickle      pickle.dumps / loads, protocol 5, of the same arrays (context for the futures)
  lists       the earlier public version's way through the futures: each simulation returns
              Python lists `inputs`, `outputs` of 2D float64 arrays, a trainer receives them all,
              through the same parsl_config executors (compared with the futures workflow)

    python benchmarks/transport_bench.py                 # 0.1, 0.5, 2 GB (about 10 minutes here)
    python benchmarks/transport_bench.py --quick         # small sizes, a few minutes
    python benchmarks/transport_bench.py --sizes 0.1,1 --transports fs,ddict --output x.json

GB = 1e9 bytes. Every number printed was measured in this run. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import math
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

GB = common.GB
SCRIPTS = {"fs": "6_parsl_fs_producer_consumer.py",
           "futures": "5_parsl_fut_producer_consumer.py",
           "ddict": "8_dragon_producer_consumer.py"}
LIMIT_OF = {"fs": "npsave", "futures": "pickle", "ddict": "memcpy"}   # measured before each


# --------------------------------------------------------------------------- limits (in-process)
def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GB


def measure_limits(kind: str, num_sims: int, grid_size: int, data_dir: str) -> dict:
    """Time `num_sims` simulations' worth of bytes through the raw operation."""
    os.sync()       # start from no dirty pages, as the workflow runs do (see run_workflow)
    pairs = common.simulate(0, 50.0, grid_size, compute_time=0).pairs
    total = pairs.nbytes * num_sims
    if kind == "memcpy":
        # as many distinct bytes as the transport moves (up to 1 GB): one array copied over
        # and over would stay in the CPU caches and measure them, not the memory
        count = max(1, min(num_sims, int(GB // pairs.nbytes)))
        src = np.empty((count, *pairs.shape))
        src[:] = pairs
        dst = np.empty_like(src)
        np.copyto(dst, src)                         # warm: the pages exist before the clock runs
        start = time.perf_counter()
        for i in range(num_sims):
            np.copyto(dst[i % count], src[i % count])
        return {"memcpy_gbps": _rate(total, time.perf_counter() - start)}
    if kind == "pickle":
        dumps_s = loads_s = 0.0
        for _ in range(num_sims):
            start = time.perf_counter()
            blob = pickle.dumps(pairs, protocol=5)
            dumps_s += time.perf_counter() - start
            start = time.perf_counter()
            back = pickle.loads(blob)
            loads_s += time.perf_counter() - start
            del blob, back
        return {"pickle_dumps_gbps": _rate(total, dumps_s), "pickle_loads_gbps": _rate(total, loads_s)}
    if kind == "npsave":
        # as the file-system workflow writes: each simulation's own freshly computed array,
        # by as many processes at once as it has simulation workers; then one reader
        folder = tempfile.mkdtemp(prefix="bench-npsave-", dir=data_dir)
        writers = min(num_sims, os.cpu_count() or 1)
        try:
            with multiprocessing.get_context("spawn").Pool(writers) as pool:
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
        return {"npsave_gbps": _rate(total, save_s), "npload_gbps": _rate(total, load_s)}
    raise ValueError(kind)


def _simulate_and_save(index: int, grid_size: int, folder: str) -> float:
    """A process of the np.save limit: simulate (not timed), then time np.save alone."""
    sim = common.simulate(index, 50.0, grid_size, compute_time=0)
    start = time.perf_counter()
    np.save(os.path.join(folder, f"sim_{index:06d}.npy"), sim.pairs)
    return time.perf_counter() - start


def _queue_sender(queue, nbytes: int, count: int) -> None:
    """Child of futures_stages(): sends `count` messages of `nbytes`, stamped when sent."""
    blob = np.random.rand(nbytes // 8).tobytes()
    for _ in range(count):
        queue.put((time.time(), blob))
        time.sleep(0.2)                             # one message in flight at a time


def futures_stages(grid_size: int, count: int = 3) -> dict:
    """The stages one simulation's result goes through in Parsl's HighThroughputExecutor,
    each timed alone on the same bytes (medians of `count`): dill serialization in the worker
    and the head, the result package pickled in the worker and unpickled in the interchange
    and in the head, a multiprocessing.Queue from worker to manager, and two ZeroMQ TCP
    loopback hops (manager to interchange, interchange to head)."""
    import multiprocessing
    import statistics
    import zmq
    from parsl.serialize import deserialize, serialize
    sim = common.simulate(0, 50.0, grid_size, compute_time=0)
    nbytes = sim.pairs.nbytes

    def median_s(fn) -> float:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    blob = serialize(sim)
    package = pickle.dumps({"type": "result", "task_id": 0, "result": blob})
    stages = {"dill_serialize": median_s(lambda: serialize(sim)),
              "dill_deserialize": median_s(lambda: deserialize(blob)),
              "package_pickle": median_s(lambda: pickle.dumps({"result": blob})),
              "package_unpickle": median_s(lambda: pickle.loads(package))}
    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sender.connect(f"tcp://127.0.0.1:{port}")
    stages["zmq_tcp_hop"] = median_s(lambda: (sender.send(package), receiver.recv()))
    sender.close(linger=0)
    receiver.close(linger=0)
    context.term()
    spawn = multiprocessing.get_context("spawn")    # what Parsl's worker pool uses
    queue = spawn.Queue()
    child = spawn.Process(target=_queue_sender, args=(queue, len(package), count))
    child.start()
    latencies = []
    for _ in range(count):
        sent_at, _ = queue.get(timeout=120)
        latencies.append(time.time() - sent_at)
    child.join()
    stages["mp_queue"] = statistics.median(latencies)
    one_result_s = (stages["dill_serialize"] + stages["package_pickle"] + stages["mp_queue"]
                    + 2 * stages["zmq_tcp_hop"] + 2 * stages["package_unpickle"]
                    + stages["dill_deserialize"])
    rates = {f"{name}_gbps": _rate(nbytes, seconds) for name, seconds in stages.items()}
    return {**rates, "result_path_sum_gbps": _rate(nbytes, one_result_s)}


# --------------------------------------------------------------------------- workflow runs
def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the Dragon launcher runs in a session of its own)."""
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


def run_child(argv: list[str], timeout: float, first_output_s: float = 120) -> tuple[int, str, float]:
    """Run a child, collecting its output. A child silent for `first_output_s` from the start
    is taken as hung at launch (seen here: a Dragon launcher waiting forever for its local
    services) and stopped, as is one that runs past `timeout`; both raise TimeoutError."""
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


def _run_with_retry(argv: list[str], timeout: float, what: str) -> tuple[str, float]:
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


def timeout_for(num_sims: int, args) -> float:
    return args.timeout + 300 * common.data_bytes(num_sims, args.grid_size) / GB


def run_workflow(transport: str, num_sims: int, args, scratch: str) -> dict:
    """One real workflow run; returns its record plus the wall time of the whole process."""
    results = os.path.join(scratch, f"{transport}-{num_sims}.jsonl")
    argv = [sys.executable, os.path.join(ROOT, SCRIPTS[transport]), "--num_sims", str(num_sims),
            "--grid_size", str(args.grid_size), "--num_trainers", str(args.trainers),
            "--epochs", "0", "--compute_time", "0", "--data_dir", scratch,
            "--results_file", results]
    # Writes to a disk-backed file system run at memory speed until a few hundred MB are
    # dirty, then at the disk's pace (~0.45 GB/s here): every measurement starts with none
    os.sync()
    _, wall = _run_with_retry(argv, timeout_for(num_sims, args), SCRIPTS[transport])
    with open(results) as f:
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
    """Run in a child process: the same executors and warm-up as parsl_config.start, timed by
    step, then the lists version of the data movement, timed like 5 times its own."""
    import parsl
    from parsl.app.app import python_app
    import parsl_config
    run_dir = tempfile.mkdtemp(prefix="bench-lists-")
    sim_workers = min(num_sims, os.cpu_count() or 1)
    config = parsl_config.make_config(run_dir, sim_workers, trainers, 0)
    steps = {}
    start = time.perf_counter()
    dfk = parsl.load(config)
    try:
        steps["parsl_load_s"] = time.perf_counter() - start
        workers = {parsl_config.SIMULATORS: sim_workers, parsl_config.TRAINERS: trainers}
        for label, expected in workers.items():
            executor = dfk.executors[label]
            while sum(m["worker_count"] for m in executor.connected_managers()) < expected:
                time.sleep(0.05)
        steps["workers_connect_s"] = time.perf_counter() - start - steps["parsl_load_s"]
        for label, expected in workers.items():   # what parsl_config.start's warm-up does
            warm_up = python_app(parsl_config._warm_up_worker, executors=[label])
            seen: set[int] = set()
            while len(seen) < expected:
                seen.update(f.result() for f in [warm_up(0.3) for _ in range(expected)])
        steps["warm_up_s"] = (time.perf_counter() - start - steps["parsl_load_s"]
                              - steps["workers_connect_s"])
        steps["startup_s"] = time.perf_counter() - start

        simulation = python_app(lists_simulation, executors=[parsl_config.SIMULATORS])
        trainer = python_app(lists_trainer, executors=[parsl_config.TRAINERS])
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
        dfk.cleanup()
        shutil.rmtree(run_dir, ignore_errors=True)
    train_io = [seconds for seconds, _ in reports]
    assert all(nbytes == produced for _, nbytes in reports), "a trainer got less than produced"
    return {"bytes_produced": produced, "bytes_read_per_trainer": produced,
            "sim_io_mean_s": float(np.mean(sim_io)), "sim_io_max_s": max(sim_io),
            "sim_io_gbps": _rate(produced, sum(sim_io)),
            "train_io_mean_s": float(np.mean(train_io)), "train_io_max_s": max(train_io),
            "train_io_gbps": _rate(produced, float(np.mean(train_io))), **steps}


def run_lists_baseline(num_sims: int, args, scratch: str) -> dict:
    out_file = os.path.join(scratch, f"lists-{num_sims}.json")
    argv = [sys.executable, os.path.abspath(__file__), "--lists-baseline", out_file,
            "--num_sims", str(num_sims), "--grid_size", str(args.grid_size),
            "--trainers", str(args.trainers)]
    _, wall = _run_with_retry(argv, timeout_for(num_sims, args), "lists baseline")
    with open(out_file) as f:
        record = json.load(f)
    record["process_wall_s"] = wall
    return record


# --------------------------------------------------------------------------- report
def machine() -> dict:
    return {"hostname": socket.gethostname(), "cores": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "load_average_at_start": os.getloadavg(), "versions": common.versions()}


def io_per_gb(record: dict) -> tuple[float, float]:
    """(write seconds per GB summed over simulations, read seconds per GB per consumer)."""
    return (record["sim_io_mean_s"] * record["num_sims"] / (record["bytes_produced"] / GB),
            record["train_io_mean_s"] / (record["bytes_read_per_trainer"] / GB))


def evaluate(result: dict) -> list[dict]:
    """Each target of the issue, computed from this run's figures."""
    checks = []

    def check(name, value, target, ok):
        checks.append({"target": name, "value": value, "goal": target, "met": bool(ok)})

    for size in result["sizes"]:
        key = str(size["num_sims"])
        lim, runs = result["limits"].get(key, {}), result["runs"]
        gb = size["bytes"] / GB
        if key in runs.get("ddict", {}):
            r = runs["ddict"][key]["train_io_gbps"] / lim["memcpy_gbps"]
            check(f"DDict read per consumer / memcpy, {gb:.3f} GB", r, ">= 0.25", r >= 0.25)
        if key in runs.get("fs", {}):
            w = runs["fs"][key]["sim_io_gbps"] / lim["npsave_gbps"]
            r = runs["fs"][key]["train_io_gbps"] / lim["npload_gbps"]
            check(f"file system write / np.save, {gb:.3f} GB", w, ">= 0.9", w >= 0.9)
            check(f"file system read / np.load, {gb:.3f} GB", r, ">= 0.9", r >= 0.9)
        if key in runs.get("futures", {}) and key in result.get("lists", {}):
            base, fut = result["lists"][key], runs["futures"][key]
            w = fut["sim_io_gbps"] / base["sim_io_gbps"]
            r = fut["train_io_gbps"] / base["train_io_gbps"]
            check(f"futures results / lists, {gb:.3f} GB", w, ">= 2", w >= 2)
            check(f"futures trainer arguments / lists, {gb:.3f} GB", r, ">= 2", r >= 2)
    for transport, by_size in result["runs"].items():
        if len(by_size) < 2:
            continue
        per_gb = [io_per_gb(record) for record in by_size.values()]
        for i, what in enumerate(("write", "read")):
            values = [p[i] for p in per_gb]
            spread = max(values) / min(values) if min(values) > 0 else float("inf")
            check(f"{transport} {what} IO s/GB, largest / smallest over sizes", spread,
                  "<= 1.5", spread <= 1.5)
    return checks


def _get(records: dict, key: str, name: str, divide_by: float | None = None):
    """records[key][name] (divided), or None where that run failed or was not made."""
    value = records.get(key, {}).get(name)
    if value is None or divide_by == 0:
        return None
    return value / divide_by if divide_by is not None else value


def table(result: dict) -> str:
    rows = []
    fmt = "{:<34}" + "{:>12}" * len(result["sizes"])
    rows.append("Limits: mean of a measurement just before and one just after the transport "
                "held to them.")
    rows.append(fmt.format("GB/s (GB = 1e9 bytes)",
                           *[f"{s['bytes'] / GB:.3f} GB" for s in result["sizes"]]))
    keys = [str(s["num_sims"]) for s in result["sizes"]]

    def row(label, values, spec="{:.3f}"):
        rows.append(fmt.format(label, *[spec.format(v) if v is not None else "-" for v in values]))

    lim, runs, lists = result["limits"], result["runs"], result.get("lists", {})
    for label, name in (("memcpy (warm, 1 process)", "memcpy_gbps"),
                        ("np.save", "npsave_gbps"), ("np.load", "npload_gbps"),
                        ("pickle.dumps (protocol 5)", "pickle_dumps_gbps"),
                        ("pickle.loads (protocol 5)", "pickle_loads_gbps")):
        row(label, [_get(lim, k, name) for k in keys])
    ratio = "{:.2f}"

    def over(records, name, limits, limit):    # a transport's figure / the limit it is held to
        return [_get(records, k, name, _get(limits, k, limit)) for k in keys]

    for transport, rec in runs.items():
        row(f"{transport} write", [_get(rec, k, "sim_io_gbps") for k in keys])
        row(f"{transport} read per consumer", [_get(rec, k, "train_io_gbps") for k in keys])
        if transport == "ddict":
            row("  read / memcpy", over(rec, "train_io_gbps", lim, "memcpy_gbps"), ratio)
        if transport == "fs":
            row("  write / np.save", over(rec, "sim_io_gbps", lim, "npsave_gbps"), ratio)
            row("  read / np.load", over(rec, "train_io_gbps", lim, "npload_gbps"), ratio)
        if transport == "futures":
            for label, name in (("  stage: dill serialize", "dill_serialize_gbps"),
                                ("  stage: dill deserialize", "dill_deserialize_gbps"),
                                ("  stage: mp.Queue worker->manager", "mp_queue_gbps"),
                                ("  stage: ZeroMQ TCP hop (x2)", "zmq_tcp_hop_gbps"),
                                ("  stage: package (un)pickle", "package_unpickle_gbps"),
                                ("  sum of a result's stages", "result_path_sum_gbps")):
                row(label, [_get(lim, k, name) for k in keys])
        if transport == "futures" and lists:
            row("lists write (baseline)", [_get(lists, k, "sim_io_gbps") for k in keys])
            row("lists read (baseline)", [_get(lists, k, "train_io_gbps") for k in keys])
            row("  futures write / lists", over(rec, "sim_io_gbps", lists, "sim_io_gbps"), ratio)
            row("  futures read / lists", over(rec, "train_io_gbps", lists, "train_io_gbps"), ratio)
    rows.append("")
    rows.append(fmt.format("IO seconds per GB (write; read)", *[""] * len(keys)))
    for transport, rec in runs.items():
        per_gb = [io_per_gb(rec[k]) if k in rec else (None, None) for k in keys]
        row(transport, [p[0] for p in per_gb], ratio)
        row("", [p[1] for p in per_gb], ratio)
    rows.append("")
    rows.append(fmt.format("start-up s (not in any IO time)", *[""] * len(keys)))
    for transport, rec in runs.items():
        row(transport, [_get(rec, k, "startup_s") for k in keys], "{:.1f}")
        if transport == "ddict":
            row("  of which runtime start", [_get(rec, k, "runtime_startup_s") for k in keys],
                "{:.1f}")
            row("  of which DDict creation", [_get(rec, k, "ddict_create_s") for k in keys],
                "{:.1f}")
    if lists:
        row("lists (Parsl): parsl.load", [_get(lists, k, "parsl_load_s") for k in keys], "{:.1f}")
        row("  workers connected", [_get(lists, k, "workers_connect_s") for k in keys], "{:.1f}")
        row("  warm-up (imports)", [_get(lists, k, "warm_up_s") for k in keys], "{:.1f}")
    rows.append("")
    rows.append(fmt.format("load average at each run's start", *[""] * len(keys)))
    for transport, rec in runs.items():
        row(transport, [_get(rec, k, "load_average_before") for k in keys], "{:.1f}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="0.1,0.5,2",
                        help="data sizes in GB (1e9 bytes), comma-separated; each is rounded up "
                             "to whole simulations")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (0.05,0.1,0.2 GB on a 256 grid): a check in minutes")
    parser.add_argument("--grid_size", type=int, default=512)
    parser.add_argument("--trainers", type=int, default=1, help="consumers per workflow run")
    parser.add_argument("--transports", default="fs,ddict,futures")
    parser.add_argument("--no_lists", action="store_true", help="skip the lists baseline")
    parser.add_argument("--data_dir", default=tempfile.gettempdir(),
                        help="where the file system runs and np.save write (and clean up)")
    parser.add_argument("--output", default=os.path.join(
        ROOT, "results", f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds a workflow run may take, plus 300 per GB of data")
    parser.add_argument("--lists-baseline", dest="lists_baseline", help=argparse.SUPPRESS)
    parser.add_argument("--num_sims", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.grid_size = "0.05,0.1,0.2", 256
    return args


def _stop(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)   # reaches run_child: children stop too


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    if args.lists_baseline:                     # child mode, see run_lists_baseline
        print(f"lists baseline: {args.num_sims} simulations of {args.grid_size}^2", flush=True)
        with open(args.lists_baseline, "w") as f:
            json.dump(lists_baseline(args.num_sims, args.grid_size, args.trainers), f)
        return 0
    per_sim = common.data_bytes(1, args.grid_size)
    sims = sorted({max(1, math.ceil(float(s) * GB / per_sim)) for s in args.sizes.split(",")})
    transports = [t for t in args.transports.split(",") if t]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
              "settings": {"grid_size": args.grid_size, "trainers": args.trainers,
                           "transports": transports, "data_dir": os.path.abspath(args.data_dir),
                           "epochs": 0, "compute_time": 0},
              "sizes": [{"num_sims": n, "bytes": n * per_sim} for n in sims],
              "limits": {}, "limits_before_after": {}, "runs": {t: {} for t in transports},
              "lists": {}, "errors": []}
    m = result["machine"]
    sizes = ", ".join(f"{s['bytes'] / GB:.3f} GB" for s in result["sizes"])
    print(f"Machine: {m['hostname']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, "
          f"load average {m['load_average_at_start'][0]:.1f}; {args.trainers} trainer(s); "
          f"sizes {sizes}", flush=True)
    scratch = tempfile.mkdtemp(prefix="bench-", dir=args.data_dir)
    started = time.perf_counter()
    try:
        for n in sims:
            key, limits = str(n), result["limits"].setdefault(str(n), {})
            around = result["limits_before_after"].setdefault(key, {})
            for transport in transports:
                # the limit this transport is compared with, measured just before and just
                # after it: the machine is shared, so the ratio uses the mean of the two
                kind = LIMIT_OF[transport]
                before = measure_limits(kind, n, args.grid_size, scratch)
                if transport == "futures":
                    limits.update(futures_stages(args.grid_size))
                load = os.getloadavg()[0]
                try:
                    record = run_workflow(transport, n, args, scratch)
                except RuntimeError as error:
                    result["errors"].append(f"{transport}, {n} simulations: {error}")
                    print(f"  {transport} FAILED: {str(error)[-2000:]}", flush=True)
                    limits.update(before)
                    continue
                record["load_average_before"] = load
                after = measure_limits(kind, n, args.grid_size, scratch)
                for name in before:
                    around[name] = [before[name], after[name]]
                    limits[name] = (before[name] + after[name]) / 2
                result["runs"][transport][key] = record
                print(f"  {n * per_sim / GB:.3f} GB {transport:8s} write {record['sim_io_gbps']:.3f}"
                      f" read {record['train_io_gbps']:.3f} GB/s, start-up "
                      f"{record['startup_s']:.1f} s, whole run {record['process_wall_s']:.1f} s",
                      flush=True)
                if transport == "futures" and not args.no_lists:
                    try:
                        base = result["lists"][key] = run_lists_baseline(n, args, scratch)
                    except RuntimeError as error:
                        result["errors"].append(f"lists, {n} simulations: {error}")
                        print(f"  lists FAILED: {str(error)[-2000:]}", flush=True)
                        continue
                    print(f"  {n * per_sim / GB:.3f} GB lists    write {base['sim_io_gbps']:.3f} "
                          f"read {base['train_io_gbps']:.3f} GB/s", flush=True)
            for kind in set(LIMIT_OF.values()) - {LIMIT_OF[t] for t in transports}:
                limits.update(measure_limits(kind, n, args.grid_size, scratch))   # table is whole
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["total_s"] = time.perf_counter() - started
    result["targets"] = evaluate(result)
    print()
    print(f"{m['hostname']}: {m['cores']} cores, {m['memory_bytes'] / 2**30:.1f} GiB, "
          f"{result['date']}, grid {args.grid_size}, {args.trainers} trainer(s), "
          f"epochs 0, compute_time 0")
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
