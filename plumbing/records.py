"""The run's result record (one JSON line per run), its summary on the terminal, and the
one description of what each transport's IO times cover."""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from typing import Iterable, Sequence

import numpy as np

import common
from plumbing.hosts import shared_machine

GB = 1e9                        # every "GB" printed is 10^9 bytes

_BY_VALUE = {
    "sim_io": "per simulation, time.time() from the end of its compute in the worker to the "
              "result's arrival in the head (done-callback): pickling in the worker, worker -> "
              "manager -> interchange -> head over ZeroMQ, unpickling in the head, and waiting "
              "behind other results in the head's single result thread",
    "train_io": "per trainer, time.time() from submitting the app in the head to the first line "
                "of its body: pickling all simulations' data in the head (one task at a time: "
                "Parsl launches tasks from one thread), head -> interchange -> manager -> worker "
                "over ZeroMQ, and unpickling in the worker",
    "clock": "the two ends of each interval are read on different processes; across nodes "
             "the interval also contains the difference between the nodes' clocks",
}
_STORES = {"redis": "a redis-server on the head node",
           "file": "one file per array in the run's directory in --data_dir",
           "zmq": "the in-memory zmq server on the simulation's node"}
# what each transport's IO times cover: written into every record, read by report.py
IO_INCLUDES = {
    "parsl+futures": _BY_VALUE,
    "parsl+filesystem": {
        "sim_io": "np.save of the simulation's one .npy file (done once the bytes are in the "
                  "OS or Lustre client cache)",
        "train_io": "reading every simulation's file: the .npy header, then the data into "
                    "one reused array"},
    "dragon+ddict": {
        "sim_io": "the put of the simulation's one value into the DDict manager on its node",
        "train_io": "the get of every value from whichever node holds it (the DDict is "
                    "frozen first)"},
    "dragon+ddict-broadcast": {
        "sim_io": "the broadcast put (bput) of the simulation's one value into every node's "
                  "DDict manager, until every manager has it",
        "train_io": "the get of every value from the trainer's own node's manager (the DDict "
                    "is frozen first)"},
    **{f"parsl+proxystore-{name}": dict(
        _BY_VALUE,
        sim_io="per simulation, time.time() from the end of its compute in the worker to the "
               "proxy's arrival in the head (done-callback): ProxyStore serializing the array "
               f"and putting it into {where}, then Parsl carrying the small result (a proxy "
               "instead of the array) to the head; proxystore.sim_* splits the store's part",
        train_io="per trainer, time.time() from submitting the app in the head to the first "
                 "line of its body: Parsl carrying the small arguments (proxies) to the worker, "
                 f"then the wrapper getting every array from {where} and deserializing it; "
                 "proxystore.train_* splits the store's part")
       for name, where in _STORES.items()},
}


# the transports whose data goes through files in --data_dir: their records say on what
DATA_IN_FILES = {"parsl+filesystem", "parsl+proxystore-file"}


def filesystem_of(path: str) -> dict:
    """The file system that holds `path`, as this process's node has it mounted: its type
    (e.g. ext4, lustre, fuse.sshfs), its source (for a network file system, the server and
    its path) and the mount point (the one in /proc/self/mountinfo deepest above `path`)."""
    path = os.path.realpath(path)
    found = {"type": "unknown", "source": "unknown", "mount_point": "/"}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS
            fields, _, tail = line.partition(" - ")
            mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)),   # \040: a space
                                 fields.split()[4])
            inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(found["mount_point"]):
                fs_type, source = tail.split()[:2]
                found = {"type": fs_type, "source": source, "mount_point": mount_point}
    return found


class Phases:
    """Wall-clock seconds of the workflow's phases, measured in the head process."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> float:
        """Close phase `name` (it began where the previous one ended)."""
        now = time.perf_counter()
        self.seconds[name] = now - self._start
        self._start = now
        return self.seconds[name]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


def _gbps(nbytes: float, seconds: float) -> float | None:
    return nbytes / seconds / GB if seconds > 0 else None


def version(package: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(),
            **{package: version(package) for package in ("numpy", "torch", "parsl", "dragonhpc")}}


def gpu_facts(t: common.TrainReport) -> dict:
    """Where a trainer ran and the GPU it saw."""
    return {"rank": t.rank, "host": t.host, "device": t.device, "visible": t.gpu,
            "uuid": t.gpu_uuid, "name": t.gpu_name}


def device_problem(trainers: Sequence[common.TrainReport], gpus_per_node: int) -> str | None:
    """What is wrong with where the trainers ran, or None: a trainer on the CPU where the
    nodes have GPUs (`gpus_per_node`, the allocation's count that the head planned with, not
    what a trainer sees after its own CUDA_VISIBLE_DEVICES), or two trainers of one host on
    the same GPU (one trainer per GPU)."""
    on_gpu: dict[tuple[str, str], int] = {}
    for t in sorted(trainers, key=lambda t: t.rank):
        if t.device.startswith("cpu") and gpus_per_node:
            return (f"trainer {t.rank} trained on the CPU of {t.host}, whose node has "
                    f"{gpus_per_node} GPU(s) (CUDA_VISIBLE_DEVICES={t.gpu!r}; does this torch "
                    "see the GPUs?)")
        if t.device.startswith("cuda"):
            gpu = (t.host, t.gpu_uuid or t.gpu)
            if gpu in on_gpu:
                return (f"trainers {on_gpu[gpu]} and {t.rank} shared one GPU of {t.host} "
                        f"({gpu[1] or 'the same visible device'}): one trainer per GPU")
            on_gpu[gpu] = t.rank
    return None


def integrity_ok(args: argparse.Namespace, sims: Sequence[common.SimReport],
                 trainers: Sequence[common.TrainReport]) -> bool:
    """Every simulation reported, every trainer reported, and each trainer received every
    byte and trained on every sample (TrainingData checked the bytes themselves)."""
    produced = sum(sim.nbytes for sim in sims)
    return (len(sims) == args.num_sims and len(trainers) == args.num_trainers
            and produced == common.data_bytes(args.num_sims, args.grid_size)
            and all(t.bytes_read == produced and t.samples == len(sims) * common.STEPS
                    for t in trainers))


def _trainer_facts(trainers: Sequence[common.TrainReport], gpus_per_node: int) -> dict:
    problem = device_problem(trainers, gpus_per_node)
    return {
        "num_trainers": len(trainers),
        "kernel_sizes": [t.kernel_size for t in trainers],
        "devices": [t.device + (f" (CUDA_VISIBLE_DEVICES={t.gpu})" if t.gpu else "")
                    for t in trainers],
        "gpus_per_node": gpus_per_node,
        "trainer_gpus": [gpu_facts(t) for t in trainers],
        "trainer_cpu_threads": [t.cpu_threads for t in trainers],
        "devices_ok": problem is None,
        "devices_problem": problem,
        "trainer_hosts": [t.host for t in trainers],
    }


def _timing_facts(sims: Sequence[common.SimReport], trainers: Sequence[common.TrainReport],
                  phases: Phases) -> dict:
    produced = sum(sim.nbytes for sim in sims)
    read = trainers[0].bytes_read if trainers else 0
    sim_io = [sim.io_s for sim in sims]
    train_io = [trainer.io_s for trainer in trainers]
    return {
        "bytes_produced": produced,
        "bytes_read_per_trainer": read,
        "startup_s": phases.seconds.get("startup", 0.0),
        "sim_run_s": phases.seconds.get("simulation", 0.0),
        "sim_compute_mean_s": _mean(sim.compute_s for sim in sims),
        "sim_io_mean_s": _mean(sim_io),
        "sim_io_max_s": max(sim_io, default=0.0),
        "sim_io_gbps": _gbps(produced, sum(sim_io)),
        "train_run_s": phases.seconds.get("training", 0.0),
        "train_io_mean_s": _mean(train_io),
        "train_io_max_s": max(train_io, default=0.0),
        "train_io_gbps": _gbps(read, _mean(train_io)),
        "train_io_aggregate_gbps": _gbps(read * len(trainers), max(train_io, default=0)),
        "train_check_mean_s": _mean(t.check_s for t in trainers),
        "train_warmup_mean_s": _mean(t.warmup_s for t in trainers),
        "train_epoch_mean_s": _mean(t.train_s for t in trainers),
        "epoch_losses": [t.losses for t in trainers],
        "final_losses": [t.losses[-1] if t.losses else None for t in trainers],
        "shutdown_s": phases.seconds.get("shutdown", 0.0),
        "peak_rss_main_bytes": common.peak_rss_bytes(),
        "peak_rss_task_max_bytes": max([s.peak_rss_bytes for s in sims]
                                       + [t.peak_rss_bytes for t in trainers], default=0),
    }


def make_record(args: argparse.Namespace, transport: str, sims: Sequence[common.SimReport],
                trainers: Sequence[common.TrainReport], phases: Phases, hosts: Sequence[str],
                **extra) -> dict:
    """The run's result record: what ran, how much moved, how long each part took."""
    sims = sorted(sims, key=lambda sim: sim.index)
    trainers = sorted(trainers, key=lambda trainer: trainer.rank)
    return {
        "transport": transport,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_nodes": len(hosts),
        "hosts": list(hosts),
        "nodes_share_machine": shared_machine(),      # None: real nodes
        "num_sims": args.num_sims,
        "grid_size": args.grid_size,
        "steps_per_sim": common.STEPS,
        "compute_time_s": args.compute_time,
        "epochs": args.epochs,
        **_trainer_facts(trainers, args.gpus_per_node),
        "sim_hosts": sorted({sim.host for sim in sims}),
        "versions": versions(),
        **_timing_facts(sims, trainers, phases),
        "integrity_ok": integrity_ok(args, sims, trainers),
        # where the files were (None: this transport keeps no data in files)
        "data_filesystem": filesystem_of(args.data_dir) if transport in DATA_IN_FILES else None,
        "io_includes": IO_INCLUDES.get(transport, {}),
        **extra,
    }


def append_record(record: dict, path: str) -> None:
    """Append one JSON line; the lock keeps concurrent runs' lines whole."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record) + "\n")


def _seconds(run: float, io_mean: float, io_max: float, gbps: float | None) -> str:
    rate = f", {gbps:.3f} GB/s" if gbps else ""
    return f"{run:8.2f} s / IO {io_mean:.3f} s mean, {io_max:.3f} s max{rate}"


def _epochs(r: dict) -> str:
    """E.g. "3 epoch(s) of 2.31 s mean, after a 0.05 s warm-up; loss 0.0123 -> 0.0042 (...)"."""
    if not r["epochs"]:
        return "none (--epochs 0: the data was moved and checked only)"
    first = np.mean([losses[0] for losses in r["epoch_losses"]])
    last = np.mean([losses[-1] for losses in r["epoch_losses"]])
    loss = f"{first:.4g}" + (f" -> {last:.4g}" if r["epochs"] > 1 else "")
    return (f"{r['epochs']} epoch(s) of {r['train_epoch_mean_s']:.2f} s mean, after a "
            f"{r['train_warmup_mean_s']:.2f} s warm-up; loss {loss} (mean over the trainers)")


def summary(record: dict) -> str:
    """A few lines that map onto the homework table's columns."""
    r = record
    lines = [
        f"=== {r['transport']}: {r['num_nodes']} node(s), {r['num_sims']} simulations of "
        f"{r['grid_size']}x{r['grid_size']}, {r['num_trainers']} trainer(s) "
        f"(kernels {','.join(map(str, r['kernel_sizes']))}) on {', '.join(sorted(set(r['devices'])))}"
        + ("" if r["epochs"] == 1 else f", {r['epochs']} epochs"),
        f"Training data size      : {r['bytes_produced'] / GB:.3f} GB "
        f"({r['bytes_produced']:,} bytes of float64 inputs + outputs)",
        f"Start-up (not a phase)  : {r['startup_s']:8.2f} s",
        "Simulation run / IO time: " + _seconds(r['sim_run_s'], r['sim_io_mean_s'],
                                                 r['sim_io_max_s'], r['sim_io_gbps']),
        "Training run / IO time  : " + _seconds(r['train_run_s'], r['train_io_mean_s'],
                                                 r['train_io_max_s'], r['train_io_gbps']),
        f"Training (not IO)       : {_epochs(r)}",
        f"Peak memory (RSS)       : head {r['peak_rss_main_bytes'] / GB:.2f} GB, "
        f"largest task {r['peak_rss_task_max_bytes'] / GB:.2f} GB",
        "Integrity               : " + (
            f"OK, every trainer got all {r['num_sims'] * common.STEPS} pairs of all {r['num_sims']} "
            "simulations exactly once, checksums and pairing verified" if r["integrity_ok"]
            else "FAILED: the byte or sample counts do not add up"),
    ]
    if not r.get("devices_ok", True):
        lines.append(f"Devices                 : FAILED: {r['devices_problem']}")
    return "\n".join(lines)


def finish(record: dict, results_file: str) -> int:
    """Print the summary, append the record, and give the exit status."""
    print(summary(record), flush=True)
    append_record(record, results_file)
    print(f"Record appended to {results_file}", flush=True)
    if not record["devices_ok"]:
        print(f"{os.path.basename(sys.argv[0])}: error: {record['devices_problem']}",
              file=sys.stderr, flush=True)
    return 0 if record["integrity_ok"] and record["devices_ok"] else 1
