"""The science and the bookkeeping shared by every workflow script.

The simulation, the CNN, the trainer, the integrity check, the command line and the
result record live here once. Nothing in this module imports Parsl or Dragon, so it can
be tested (and read) on its own; each numbered script adds only its transport's wiring.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import resource
import shutil
import socket
import sys
import tempfile
import time
import zlib
from importlib import metadata
from typing import Iterable, Sequence

import numpy as np

# torch is imported where a trainer needs it, not here: simulation workers and the head
# never load it (2.6 s of CPU and 0.2 GB of memory per process on the development machine)

STEPS = 10                      # time steps per simulation (the spec's loop)
PERIODS = (40.0, 80.0)          # range of the wave periods swept by the ensemble
DEFAULT_KERNEL_SIZES = (3, 5, 7, 9)
CPU_TRAINERS = 2                # default trainer count on a machine without GPUs
GB = 1e9                        # every "GB" printed is 10^9 bytes


# --------------------------------------------------------------------------- simulation
@dataclasses.dataclass
class SimData:
    """One simulation's training pairs, kept together: pairs[k, 0] = u(t_k), pairs[k, 1] = u(t_k+dt)."""
    index: int
    period: float
    pairs: np.ndarray           # (STEPS, 2, N, N) float64, contiguous
    checksum: int
    compute_s: float

    def report(self, io_s: float, location: str = "") -> "SimReport":
        return SimReport(index=self.index, period=self.period, checksum=self.checksum,
                         nbytes=self.pairs.nbytes, compute_s=self.compute_s, io_s=io_s,
                         host=socket.gethostname(), peak_rss_bytes=peak_rss_bytes(),
                         location=location)


@dataclasses.dataclass
class SimReport:
    """What a simulation task tells the head process (small: no arrays)."""
    index: int
    period: float
    checksum: int
    nbytes: int
    compute_s: float
    io_s: float                 # time to hand the data to the transport (write / put / transfer)
    host: str
    peak_rss_bytes: int
    location: str = ""          # where the data went (file path, DDict key, ...)


def wave_periods(num_sims: int) -> np.ndarray:
    """The parameter sweep: one wave period per simulation."""
    return np.linspace(*PERIODS, num=num_sims)


def pairs_checksum(index: int, pairs: np.ndarray) -> int:
    """CRC32 of the simulation index and every byte of its pairs (about 4 GB/s)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(pairs)).cast("B"),
                      zlib.crc32(index.to_bytes(8, "little")))


def simulate(index: int, period: float, grid_size: int, compute_time: float = 0.5) -> SimData:
    """Advance the 2D circular wave u = sin(2r - w t) / (r + 1) for STEPS steps.

    `compute_time` seconds of sleep per step stand in for a real solver's work.
    """
    start = time.perf_counter()
    axis = np.linspace(0.0, 1.0, num=grid_size) * 4 * np.pi - 2 * np.pi
    x, y = np.meshgrid(axis, axis)
    r = np.sqrt(x**2 + y**2)
    omega = 2 * np.pi / period
    pairs = np.empty((STEPS, 2, grid_size, grid_size))
    u = np.sin(2.0 * r) / (r + 1.0)
    for step in range(STEPS):
        if compute_time > 0:
            time.sleep(compute_time)
        pairs[step, 0] = u
        u = np.sin(2.0 * r - omega * (step + 1)) / (r + 1.0)
        pairs[step, 1] = u
    return SimData(index, float(period), pairs, pairs_checksum(index, pairs),
                   time.perf_counter() - start)


# --------------------------------------------------------------------------- integrity
class IntegrityError(RuntimeError):
    """The data a trainer received is not exactly what the simulations produced."""


class TrainingData:
    """Collects every simulation's pairs, checks them, and stores them once as float32.

    Each trainer holds ALL the data, so it is kept in one preallocated float32 array
    (half the float64 bytes that travelled) filled simulation by simulation.
    """

    def __init__(self, manifest: Sequence[SimReport], grid_size: int):
        indices = sorted(sim.index for sim in manifest)
        if len(set(indices)) != len(indices):
            raise IntegrityError("the manifest names a simulation twice")
        self.grid_size = grid_size
        self._slot = {index: slot for slot, index in enumerate(indices)}
        self._checksum = {sim.index: sim.checksum for sim in manifest}
        self._received: set[int] = set()
        self.pairs = np.empty((len(indices) * STEPS, 2, grid_size, grid_size), np.float32)
        self.bytes_received = 0
        self.check_s = 0.0      # checking and float32 conversion, kept out of IO time

    def add(self, index: int, pairs: np.ndarray) -> None:
        start = time.perf_counter()
        shape = (STEPS, 2, self.grid_size, self.grid_size)
        if index not in self._slot:
            raise IntegrityError(f"simulation {index} is not in this run's manifest")
        if index in self._received:
            raise IntegrityError(f"simulation {index} arrived twice")
        if pairs.shape != shape or pairs.dtype != np.float64:
            raise IntegrityError(f"simulation {index}: got {pairs.dtype}{list(pairs.shape)}, "
                                 f"expected float64{list(shape)}")
        if pairs_checksum(index, pairs) != self._checksum[index]:
            raise IntegrityError(f"simulation {index}: checksum differs from the producer's")
        if not np.array_equal(pairs[1:, 0], pairs[:-1, 1]):
            raise IntegrityError(f"simulation {index}: an output is not the next step of its input")
        slot = self._slot[index] * STEPS
        np.copyto(self.pairs[slot:slot + STEPS], pairs, casting="same_kind")
        self._received.add(index)
        self.bytes_received += pairs.nbytes
        self.check_s += time.perf_counter() - start

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and outputs as [S, 1, N, N] float32 views (no copy); raises if anything is missing."""
        import torch
        missing = sorted(set(self._slot) - self._received)
        if missing:
            raise IntegrityError(f"{len(missing)} simulation(s) never arrived, e.g. {missing[:5]}")
        data = torch.from_numpy(self.pairs)
        return data[:, 0:1], data[:, 1:2]


def reading_order(manifest: Sequence[SimReport], rank: int, num_trainers: int) -> list[SimReport]:
    """Every trainer reads everything, each starting at a different place (less contention)."""
    ordered = sorted(manifest, key=lambda sim: sim.index)
    shift = (rank * len(ordered)) // max(num_trainers, 1)
    return ordered[shift:] + ordered[:shift]


# --------------------------------------------------------------------------- model and trainer
def _define_simple_cnn():
    import torch
    from torch import nn

    class SimpleCNN(nn.Module):
        """Autoregressive CNN: u(t) on an N x N grid -> u(t + dt) on the same grid."""

        def __init__(self, kernel_size: int = 3):
            super().__init__()
            # encoder extracts spatial features, decoder maps them back to one channel
            self.conv1 = nn.Conv2d(1, 8, kernel_size=kernel_size, padding="same")
            self.conv2 = nn.Conv2d(8, 16, kernel_size=kernel_size, padding="same")
            self.conv3 = nn.Conv2d(16, 8, kernel_size=kernel_size, padding="same")
            self.conv4 = nn.Conv2d(8, 1, kernel_size=kernel_size, padding="same")
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            return self.conv4(x)    # linear last layer: the field takes any real value

    SimpleCNN.__qualname__ = "SimpleCNN"
    return SimpleCNN


def __getattr__(name: str):
    """common.SimpleCNN, the model, is defined on first use (it needs torch; see the imports)."""
    if name == "SimpleCNN":
        globals()[name] = _define_simple_cnn()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class TrainReport:
    """What a trainer task tells the head process."""
    rank: int
    kernel_size: int
    device: str
    host: str
    bytes_read: int
    samples: int                # pairs received, checked, and trained on in every epoch
    io_s: float                 # receiving / reading all the data, nothing else
    check_s: float              # integrity check and float32 conversion
    train_s: float              # one epoch
    loss: float | None          # None when no epoch ran
    peak_rss_bytes: int
    gpu: str = ""               # CUDA_VISIBLE_DEVICES as the trainer saw it
    gpu_uuid: str = ""          # the GPU it trained on, as CUDA names it ("" on the CPU)
    gpu_name: str = ""
    host_gpus: int = 0          # gpus_per_node() on the trainer's host

    def gpu_facts(self) -> dict:
        """For the record: where this trainer ran and the GPU it saw."""
        return {"rank": self.rank, "host": self.host, "device": self.device,
                "visible": self.gpu, "uuid": self.gpu_uuid, "name": self.gpu_name,
                "host_gpus": self.host_gpus}


def pick_device() -> torch.device:
    """CUDA when the process sees a GPU (the launcher pins one per trainer), else CPU."""
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_epoch(inputs: torch.Tensor, outputs: torch.Tensor, kernel_size: int,
                device: torch.device | None = None, seed: int = 0) -> tuple[float, int, float]:
    """One epoch of Adam (lr 1e-3) on the MSE, batches of 4, shuffled. Returns (loss, samples, seconds)."""
    import torch
    start = time.perf_counter()
    device = device or pick_device()
    torch.manual_seed(seed)
    model = __getattr__("SimpleCNN")(kernel_size=kernel_size).to(device)
    loss_fn = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, outputs),
                                         batch_size=4, shuffle=True)
    model.train()
    loss = torch.zeros(())
    samples = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        samples += len(x)
    final_loss = float(loss.item())     # .item() also waits for the GPU before the clock stops
    return final_loss, samples, time.perf_counter() - start


def train(data: TrainingData, rank: int, kernel_size: int, io_s: float,
          cpu_threads: int = 0, epochs: int = 1) -> TrainReport:
    """Check that everything arrived, train (one epoch by default), and report.

    epochs=0 stops after the data arrived and passed the check: a transfer-only measurement.
    """
    import torch
    device = pick_device()
    if device.type == "cpu" and cpu_threads > 0:
        torch.set_num_threads(cpu_threads)   # trainers sharing a CPU must not oversubscribe it
    inputs, outputs = data.tensors()
    loss, train_s = None, 0.0
    for epoch in range(epochs):
        loss, samples, seconds = train_epoch(inputs, outputs, kernel_size, device,
                                             seed=rank * 1000 + epoch)
        train_s += seconds
        if samples != len(inputs):
            raise IntegrityError(f"trainer {rank} trained on {samples} of {len(inputs)} samples")
    uuid = name = ""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        uuid, name = str(getattr(properties, "uuid", "")), properties.name
    return TrainReport(rank=rank, kernel_size=kernel_size, device=str(device),
                       host=socket.gethostname(), bytes_read=data.bytes_received,
                       samples=len(inputs), io_s=io_s, check_s=data.check_s, train_s=train_s,
                       loss=loss, peak_rss_bytes=peak_rss_bytes(),
                       gpu=os.environ.get("CUDA_VISIBLE_DEVICES", ""), gpu_uuid=uuid,
                       gpu_name=name, host_gpus=gpus_per_node())


def device_problem(trainers: Sequence[TrainReport]) -> str | None:
    """What is wrong with where the trainers ran, or None: a trainer on the CPU of a host
    that has GPUs, or two trainers of one host on the same GPU (one trainer per GPU)."""
    on_gpu: dict[tuple[str, str], int] = {}
    for t in sorted(trainers, key=lambda t: t.rank):
        if t.device.startswith("cpu") and t.host_gpus:
            return (f"trainer {t.rank} trained on the CPU of {t.host}, which has {t.host_gpus} "
                    f"GPU(s) (CUDA_VISIBLE_DEVICES={t.gpu!r}; does this torch see the GPUs?)")
        if t.device.startswith("cuda"):
            gpu = (t.host, t.gpu_uuid or t.gpu)
            if gpu in on_gpu:
                return (f"trainers {on_gpu[gpu]} and {t.rank} shared one GPU of {t.host} "
                        f"({gpu[1] or 'the same visible device'}): one trainer per GPU")
            on_gpu[gpu] = t.rank
    return None


def kernel_size_for(rank: int, kernel_sizes: Sequence[int]) -> int:
    """Trainer `rank` uses the kernel sizes in turn, so the workload does not grow with node count."""
    return kernel_sizes[rank % len(kernel_sizes)]


# --------------------------------------------------------------------------- machine facts
def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, or 0 where there is none (then no check is made)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pbs_hosts() -> list[str]:
    """The unique hosts of the PBS allocation, in order; [] outside a PBS job."""
    nodefile = os.environ.get("PBS_NODEFILE")
    if not nodefile or not os.path.exists(nodefile):
        return []
    with open(nodefile) as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))


def in_slurm_job() -> bool:
    """True inside a Slurm allocation (sbatch, salloc, or srun outside either)."""
    return bool(os.environ.get("SLURM_JOB_ID")
                and (os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")))


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list ("nid[001-003,007],login1") as host names, in order.

    What `scontrol show hostnames` does, for when scontrol cannot be run.
    """
    names, depth, start = [], 0, 0
    for i, char in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names += _expand_host(hostlist[start:i].strip())
            start = i + 1
    return [name for name in names if name]


def _expand_host(pattern: str) -> list[str]:
    """One entry of a host list: its first [ranges] expanded, the rest recursively."""
    import re
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)$", pattern)
    if not match:
        return [pattern]
    prefix, ranges, rest = match.groups()
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)                    # nid[001-003]: the numbers keep their zeros
        for number in range(int(low), int(high or low) + 1):
            names += [f"{prefix}{number:0{width}d}{tail}" for tail in _expand_host(rest)]
    return names


def slurm_hosts() -> list[str]:
    """The hosts of the Slurm allocation, in order; [] outside a Slurm job."""
    if not in_slurm_job():
        return []
    import subprocess
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ["SLURM_NODELIST"]
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", nodelist],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.split():
                return list(dict.fromkeys(out.stdout.split()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return list(dict.fromkeys(expand_hostlist(nodelist)))


def node_hosts() -> list[str]:
    """Hosts this run may use: the Slurm or PBS allocation's, or just this machine.

    Slurm first: a job submitted from the local cluster (cluster/local_cluster.sh) also
    inherits the cluster's PBS_NODEFILE, and the allocation is what it was given.
    """
    return slurm_hosts() or pbs_hosts() or [socket.gethostname()]


GPUS_ENV = "PC_GPUS_PER_NODE"   # the GPU count to use instead of asking the machine


def gpus_per_node() -> int:
    """How many GPUs a node has for trainers: THE answer both engines and every check use
    (the nodes of a run are alike, so the node that asks speaks for all).

    $PC_GPUS_PER_NODE, where set (a machine whose driver and torch disagree; the tests);
    else 0 where this node has no GPU device file (NVIDIA, AMD, WSL2's /dev/dxg), without
    loading torch; else what torch sees, CUDA_VISIBLE_DEVICES applied. A node with GPU
    device files whose torch sees none (a CPU build, or one that does not match the driver)
    is an error, not a silent CPU run.
    """
    import glob
    given = os.environ.get(GPUS_ENV, "").strip()
    if given:
        if not given.isdigit():
            raise ValueError(f"{GPUS_ENV}={given!r}: give a number of GPUs (0 or more)")
        return int(given)
    files = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/kfd") + glob.glob("/dev/dxg")
    if not files:
        return 0
    import torch
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not seen and os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        raise ValueError(f"this node has GPUs ({', '.join(sorted(files)[:4])}) but torch "
                         f"{torch.__version__} sees none (a CPU build, or one that does not "
                         f"match the driver): fix torch, or set {GPUS_ENV}=0 to train on the CPU")
    return seen


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("numpy", "torch", "parsl", "dragonhpc"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# --------------------------------------------------------------------------- command line
class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def kernel_list(text: str) -> tuple[int, ...]:
    sizes = tuple(positive_int(part) for part in text.split(","))
    if any(size % 2 == 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"kernel sizes must be odd, got {text}")
    return sizes


def make_parser(description: str) -> OneLineParser:
    """The command line every workflow script shares."""
    parser = OneLineParser(description=description,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num_sims", type=positive_int, default=32,
                        help="total number of simulations (each produces 10 input/output pairs)")
    parser.add_argument("--grid_size", type=positive_int, default=512,
                        help="grid points per side of the N x N simulation grid")
    parser.add_argument("--num_trainers", type=positive_int, default=None,
                        help="number of CNN trainers, each reading ALL the data "
                             f"(default: one per GPU; {CPU_TRAINERS} on a machine without GPUs)")
    parser.add_argument("--kernel_sizes", type=kernel_list, default=DEFAULT_KERNEL_SIZES,
                        metavar="K1,K2,...",
                        help="convolution kernel sizes, given to the trainers in turn")
    parser.add_argument("--compute_time", type=non_negative_float, default=0.5,
                        help="emulated compute seconds per simulation step (0 = none)")
    parser.add_argument("--epochs", type=non_negative_int, default=1,
                        help="training epochs per trainer (0 = move and check the data only, "
                             "as the benchmark does)")
    parser.add_argument("--num_nodes", type=positive_int, default=None,
                        help="nodes to use: the first N of the allocation (default: all of them)")
    parser.add_argument("--data_dir", default=".",
                        help="existing directory under which the run's own data directory is made")
    parser.add_argument("--keep_data", action="store_true",
                        help="keep the run's data directory (and engine logs) instead of removing it")
    parser.add_argument("--results_file", default=os.path.join("results", "results.jsonl"),
                        help="JSON-lines file the run's result record is appended to")
    return parser


def _can_write_in(directory: str) -> bool:
    """Try it: permission bits say nothing for root, read-only mounts or Lustre ACLs."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _can_append_to(path: str) -> bool:
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isfile(path):
            return False
        try:
            with open(path, "a"):
                return True
        except OSError:
            return False
    parent = os.path.dirname(path)
    while not os.path.exists(parent):       # missing folders are made when the record is written
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and _can_write_in(parent)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
               available_nodes: int | None = None,
               copies_per_trainer: float = 0.5) -> argparse.Namespace:
    """Refuse what cannot work, in one line, before any executor, runtime or file exists.

    `available_nodes`: the allocation's nodes (default: node_hosts()); --num_nodes picks the
    first of them. `copies_per_trainer`: bytes each trainer holds per byte produced (0.5 =
    the float32 copy).
    """
    available_nodes = available_nodes or len(node_hosts())
    if args.num_nodes is None:
        args.num_nodes = available_nodes
    elif args.num_nodes > available_nodes:
        parser.error(f"argument --num_nodes: {args.num_nodes} nodes asked for, but the "
                     f"allocation has {available_nodes}")
    num_nodes = args.num_nodes
    try:
        gpus = gpus_per_node()
    except ValueError as error:
        parser.error(str(error))
    if args.num_trainers is None:
        args.num_trainers = gpus * num_nodes or CPU_TRAINERS
    trainers_here = -(-args.num_trainers // num_nodes)
    if gpus and trainers_here > gpus:
        parser.error(f"argument --num_trainers: {args.num_trainers} trainers on {num_nodes} "
                     f"node(s) put {trainers_here} on a node, which has {gpus} GPU(s): one "
                     f"trainer per GPU (at most {gpus * num_nodes})")
    largest_kernel = max(args.kernel_sizes)
    if args.grid_size < largest_kernel:
        parser.error(f"argument --grid_size: {args.grid_size} is smaller than the largest "
                     f"kernel size {largest_kernel}")
    if not os.path.isdir(args.data_dir):
        parser.error(f"argument --data_dir: {args.data_dir!r} is not an existing directory")
    if not _can_write_in(args.data_dir):
        parser.error(f"argument --data_dir: cannot create files in {args.data_dir!r}")
    if not _can_append_to(args.results_file):
        parser.error(f"argument --results_file: cannot write {args.results_file!r}")
    _control["error_dir"] = os.path.dirname(os.path.abspath(args.results_file))
    produced = data_bytes(args.num_sims, args.grid_size)
    need = trainers_here * produced * copies_per_trainer
    available = available_memory_bytes()
    if available and need > 0.9 * available:
        parser.error(f"arguments --num_sims/--grid_size/--num_trainers: {trainers_here} trainer(s) "
                     f"per node would hold {need / GB:.1f} GB but the node has "
                     f"{available / GB:.1f} GB available")
    return args


def data_bytes(num_sims: int, grid_size: int) -> int:
    """Bytes produced: inputs and outputs, float64."""
    return num_sims * STEPS * 2 * grid_size * grid_size * 8


# --------------------------------------------------------------------------- timing and records
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


def make_record(args: argparse.Namespace, transport: str, sims: Sequence[SimReport],
                trainers: Sequence[TrainReport], phases: Phases, hosts: Sequence[str],
                **extra) -> dict:
    """The run's result record: what ran, how much moved, how long each part took."""
    sims = sorted(sims, key=lambda sim: sim.index)
    trainers = sorted(trainers, key=lambda trainer: trainer.rank)
    produced = sum(sim.nbytes for sim in sims)
    expected_samples = len(sims) * STEPS
    integrity_ok = (len(sims) == args.num_sims and len(trainers) == args.num_trainers
                    and produced == data_bytes(args.num_sims, args.grid_size)
                    and all(t.bytes_read == produced and t.samples == expected_samples
                            for t in trainers))
    sim_io = [sim.io_s for sim in sims]
    train_io = [trainer.io_s for trainer in trainers]
    devices_problem = device_problem(trainers)
    read_per_trainer = trainers[0].bytes_read if trainers else 0
    return {
        "transport": transport,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "num_nodes": len(hosts),
        "hosts": list(hosts),
        # the machine that the nodes of cluster/local_cluster.sh share (None: real nodes)
        "nodes_share_machine": os.environ.get("PC_CLUSTER_HOST"),
        "num_sims": args.num_sims,
        "grid_size": args.grid_size,
        "steps_per_sim": STEPS,
        "compute_time_s": args.compute_time,
        "epochs": args.epochs,
        "num_trainers": len(trainers),
        "kernel_sizes": [t.kernel_size for t in trainers],
        "devices": [t.device + (f" (CUDA_VISIBLE_DEVICES={t.gpu})" if t.gpu else "")
                    for t in trainers],
        "trainer_gpus": [t.gpu_facts() for t in trainers],
        "devices_ok": devices_problem is None,
        "devices_problem": devices_problem,
        "trainer_hosts": [t.host for t in trainers],
        "sim_hosts": sorted({sim.host for sim in sims}),
        "versions": versions(),
        "bytes_produced": produced,
        "bytes_read_per_trainer": read_per_trainer,
        "startup_s": phases.seconds.get("startup", 0.0),
        "sim_run_s": phases.seconds.get("simulation", 0.0),
        "sim_compute_mean_s": _mean(sim.compute_s for sim in sims),
        "sim_io_mean_s": _mean(sim_io),
        "sim_io_max_s": max(sim_io, default=0.0),
        "sim_io_gbps": _gbps(produced, sum(sim_io)),
        "train_run_s": phases.seconds.get("training", 0.0),
        "train_io_mean_s": _mean(train_io),
        "train_io_max_s": max(train_io, default=0.0),
        "train_io_gbps": _gbps(read_per_trainer, _mean(train_io)),
        "train_io_aggregate_gbps": _gbps(read_per_trainer * len(trainers), max(train_io, default=0)),
        "train_check_mean_s": _mean(t.check_s for t in trainers),
        "train_epoch_mean_s": _mean(t.train_s for t in trainers),
        "final_losses": [t.loss for t in trainers],
        "shutdown_s": phases.seconds.get("shutdown", 0.0),
        "peak_rss_main_bytes": peak_rss_bytes(),
        "peak_rss_task_max_bytes": max([s.peak_rss_bytes for s in sims]
                                       + [t.peak_rss_bytes for t in trainers], default=0),
        "integrity_ok": integrity_ok,
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
        f"Peak memory (RSS)       : head {r['peak_rss_main_bytes'] / GB:.2f} GB, "
        f"largest task {r['peak_rss_task_max_bytes'] / GB:.2f} GB",
        "Integrity               : " + (
            f"OK, every trainer got all {r['num_sims'] * STEPS} pairs of all {r['num_sims']} "
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


@contextlib.contextmanager
def run_directory(base: str, transport: str, keep: bool = False):
    """A fresh directory that belongs to this run alone, removed on the way out (after an
    error or Ctrl-C too) unless `keep`. Nothing outside it is ever deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = tempfile.mkdtemp(prefix=f"pc-{transport}-{stamp}-", dir=base)
    # torch makes a cache folder in /tmp at the first training step; the workers, on every
    # node, inherit this, so it lives and goes with the run, also where a worker was killed
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(path, "torch")
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stdout, flush=True)


# --------------------------------------------------------------------------- failures
# e.g. "simulation:3" or "trainer:1": that task raises; "head:0": the Dragon head's checks
# refuse the run inside the runtime (for tests)
FAIL_ENV = "PC_INJECT_FAILURE"


class TaskFailed(RuntimeError):
    """A simulation or trainer task raised; the message names it and says why."""


def maybe_inject_failure(kind: str, index: int) -> None:
    """Raise in task `kind` number `index` when $PC_INJECT_FAILURE names it."""
    if os.environ.get(FAIL_ENV) == f"{kind}:{index}":
        raise RuntimeError(f"failure injected through {FAIL_ENV}={kind}:{index}")


class Progress:
    """While a phase runs, a line such as `simulations 12/32 done` at most every `every` s."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self._last = time.monotonic()

    def update(self, done: int) -> None:
        if done < self.total and time.monotonic() - self._last >= self.every:
            log(f"{self.what} {done}/{self.total} done")
            self._last = time.monotonic()


def results_of(futures: Sequence, kind: str) -> list:
    """Wait for futures, saying how many are done as they go; on the first that fails,
    stop waiting and say which task it was."""
    from concurrent.futures import FIRST_EXCEPTION, wait
    progress = Progress(f"{kind}s", len(futures))
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=progress.every, return_when=FIRST_EXCEPTION)
        if any(future.exception() is not None for future in done):
            break
        progress.update(len(futures) - len(pending))
    for number, future in enumerate(futures):
        if future.done() and future.exception() is not None:
            error = future.exception()
            raise TaskFailed(f"{kind} {number} failed: {type(error).__name__}: {error}") from error
    return [future.result() for future in futures]


_signals: list[str] = []     # SIGINT/SIGTERM received by run_workflow's handler, in order
_deferred = False           # see defer_interrupts()
_control = {}               # see control_files()


def defer_interrupts() -> None:
    """From now on a first Ctrl-C or SIGTERM is only noted, and raised as KeyboardInterrupt
    by raise_if_interrupted(), where the caller knows it is safe.

    For a head process that talks to a runtime in request/reply exchanges (Dragon's): an
    exception in the middle of one leaves the reply to be read by the next request, and the
    clean-up then fails.
    """
    global _deferred
    _deferred = True


def control_files(interrupt: str, status: str) -> None:
    """For a head process that may run on another node than the command the user started:
    the file `interrupt` appearing counts as a Ctrl-C (a signal cannot reach another node;
    a file on a shared file system can), and run_workflow writes the exit status to
    `status` (for a launcher that does not pass it on)."""
    _control.update(interrupt=interrupt, status=status)


def raise_if_interrupted() -> None:
    if not _signals and os.path.exists(_control.get("interrupt", "")):
        _signals.append("SIGINT")           # from where the run was started
    if _signals:
        raise KeyboardInterrupt(_signals[0])


def _save_traceback(prog: str) -> str | None:
    """The exception being handled, with its traceback, in a file next to the results file
    (see check_args); its path, or None where none could be written."""
    import traceback
    folder = _control.get("error_dir") or "."
    path = os.path.join(folder, f"error-{os.path.splitext(prog)[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
                                f"-{os.getpid()}.txt")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            traceback.print_exc(file=f)
    except OSError:
        return None
    return os.path.abspath(path)


def run_workflow(main) -> None:
    """Run a script's main(): SIGTERM behaves like Ctrl-C, so both reach main's cleanup;
    a failed task or a failed check ends the run with one line on stderr.

    A second signal while the clean-up runs is ignored (it would leave files, workers or
    a DDict behind); a third one abandons the clean-up.
    """
    import signal
    prog = os.path.basename(sys.argv[0])
    signals = _signals

    def interrupt(signum, frame):
        signals.append(signal.Signals(signum).name)
        if len(signals) == 1 and _deferred:
            return                                  # raise_if_interrupted() raises it
        if len(signals) == 2:
            print(f"{prog}: cleaning up, please wait ({signals[-1]} once more to abandon it)",
                  file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt(signals[-1])

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        status = main()
    except SystemExit as leaving:          # argparse's one-line refusal, sys.exit(): as given
        code = leaving.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr, flush=True)
        status = code if isinstance(code, int) else int(code is not None)
    except KeyboardInterrupt as why:
        reason = why.args[0] if why.args else "SIGINT"
        done = "cleaned up" if len(signals) < 3 else "clean-up abandoned"
        print(f"{prog}: interrupted ({reason}); {done}", file=sys.stderr, flush=True)
        status = 130
    except (TaskFailed, IntegrityError, TimeoutError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        status = 1
    except Exception as error:              # anything else (a set-up that failed, a bug): one
        where = _save_traceback(prog)       # line too, and the traceback in a file
        print(f"{prog}: error: {type(error).__name__}: {' '.join(str(error).split())}"
              + (f" (traceback in {where})" if where else ""), file=sys.stderr, flush=True)
        status = 1
    if "status" in _control:
        with contextlib.suppress(OSError), open(_control["status"], "w") as f:
            f.write(str(status))
    if signals:                 # all cleaned up: a late signal must not kill the exit itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)
