"""The science every workflow script shares: the 2D wave simulation, the SimpleCNN and its
trainer, and the check that every trainer got every pair exactly once, intact.

Nothing here knows how the data travels (the numbered scripts wire that) or how a run is
launched and recorded (plumbing/): it needs numpy and torch alone. To change the simulation
or the model, edit this file.
"""
import dataclasses
import os
import resource
import socket
import time
import zlib
from typing import Sequence

import numpy as np
import torch
from torch import nn

STEPS = 10                      # time steps per simulation (the spec's loop)
PERIODS = (40.0, 80.0)          # range of the wave periods swept by the ensemble
DEFAULT_KERNEL_SIZES = (3, 5, 7, 9)
BATCH_SIZE = 4                  # the trainer: Adam on the MSE, shuffled batches of 4
LEARNING_RATE = 1e-3
FAIL_ENV = "PC_INJECT_FAILURE"  # the tests make a task fail on purpose: simulation:3, trainer:1


def maybe_inject_failure(kind: str, index: int) -> None:
    """Raise in task `kind` number `index` when $PC_INJECT_FAILURE names it."""
    if os.environ.get(FAIL_ENV) == f"{kind}:{index}":
        raise RuntimeError(f"failure injected through {FAIL_ENV}={kind}:{index}")


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
                         host=socket.gethostname(), peak_rss_bytes=peak_rss_bytes(), location=location)


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
    """Advance the 2D circular wave u = sin(2r - w t) / (r + 1) for STEPS steps;
    `compute_time` seconds of sleep per step stand in for a real solver's work."""
    maybe_inject_failure("simulation", index)
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


def data_bytes(num_sims: int, grid_size: int) -> int:
    """Bytes produced: inputs and outputs, float64."""
    return num_sims * STEPS * 2 * grid_size * grid_size * 8


class IntegrityError(RuntimeError):
    """The data a trainer received is not exactly what the simulations produced."""


class TrainingData:
    """Collects every simulation's pairs, checks them, and stores them once as float32: each
    trainer holds ALL the data, so it is kept in one preallocated float32 array (half the
    float64 bytes that travelled) filled simulation by simulation."""

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
        if missing := sorted(set(self._slot) - self._received):
            raise IntegrityError(f"{len(missing)} simulation(s) never arrived, e.g. {missing[:5]}")
        data = torch.from_numpy(self.pairs)
        return data[:, 0:1], data[:, 1:2]


def load_npy(path: str, into: np.ndarray | None = None) -> np.ndarray:
    """np.load of a .npy file, into `into` when it has the file's shape and dtype (a reader
    that reuses one array does not fault in fresh pages for every file)."""
    with open(path, "rb") as f:
        header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = header(f)
        if into is None or into.shape != shape or into.dtype != dtype:
            into = np.empty(shape, dtype)
        if fortran_order or f.readinto(memoryview(into).cast("B")) != into.nbytes:
            raise IntegrityError(f"{path}: not the array its header names")
    return into


def reading_order(manifest: Sequence[SimReport], rank: int, num_trainers: int) -> list[SimReport]:
    """Every trainer reads everything, each starting at a different place (less contention)."""
    ordered = sorted(manifest, key=lambda sim: sim.index)
    shift = (rank * len(ordered)) // max(num_trainers, 1)
    return ordered[shift:] + ordered[:shift]


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
        # linear last layer: the field takes any real value
        return self.conv4(x)


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
    warmup_s: float             # one untimed training step: device context, kernels, caches
    train_s: float              # mean seconds of one epoch
    losses: list[float]         # the mean loss of each epoch, in order ([] when none ran)
    peak_rss_bytes: int
    gpu: str = ""               # CUDA_VISIBLE_DEVICES as the trainer saw it
    gpu_uuid: str = ""          # the GPU it trained on, as CUDA names it ("" on the CPU)
    gpu_name: str = ""
    cpu_threads: int = 0        # torch's threads on the CPU (0: trained on a GPU)


def pick_device() -> torch.device:
    """CUDA when the process sees a GPU (the launcher pins one per trainer), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """One model and its Adam optimizer, trained epoch after epoch (each continues the last)."""

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor, kernel_size: int,
                 device: torch.device, seed: int = 0):
        self.device, self.kernel_size = device, kernel_size
        torch.manual_seed(seed)
        self.model = SimpleCNN(kernel_size).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.loader = self.make_loader(inputs, outputs, device, seed)

    @staticmethod
    def make_loader(inputs: torch.Tensor, outputs: torch.Tensor, device: torch.device,
                    seed: int) -> torch.utils.data.DataLoader:
        """Shuffled batches, the same order for the same seed. Batches for a GPU are pinned: a
        non_blocking copy overlaps with the work only from pinned memory (one batch at a time)."""
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(inputs, outputs), batch_size=BATCH_SIZE, shuffle=True,
            generator=torch.Generator().manual_seed(seed), pin_memory=device.type == "cuda")

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> torch.Tensor:
        """One optimizer step on the MSE of one batch; returns the batch's loss (on the device)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    def warm_up(self) -> float:
        """One step on a throwaway model with a batch of the real shape, so that the timed
        epochs do not pay for what happens once per process and shape (the CUDA context,
        cuDNN's choice of algorithms, lazy kernels; on the CPU the first allocations)."""
        start = time.perf_counter()
        x, y = next(iter(self.loader))
        model = SimpleCNN(self.kernel_size).to(self.device)
        self.step(model, torch.optim.Adam(model.parameters()), x, y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def epoch(self) -> tuple[float, int, float]:
        """One pass over the data. Returns (mean loss over its samples, samples, seconds)."""
        start = time.perf_counter()
        self.model.train()
        total, samples = torch.zeros((), device=self.device), 0
        for x, y in self.loader:
            total += self.step(self.model, self.optimizer, x, y).detach() * len(x)
            samples += len(x)
        mean_loss = float(total.item()) / max(samples, 1)   # .item() also waits for the GPU
        return mean_loss, samples, time.perf_counter() - start


def train(data: TrainingData, rank: int, kernel_size: int, io_s: float,
          cpu_threads: int = 0, epochs: int = 1) -> TrainReport:
    """Check that everything arrived, train one model for `epochs` epochs, and report
    (epochs=0 stops once the data arrived and passed the check: a transfer-only measurement)."""
    maybe_inject_failure("trainer", rank)
    device = pick_device()
    if device.type == "cpu" and cpu_threads > 0:
        torch.set_num_threads(cpu_threads)   # trainers sharing a CPU must not oversubscribe it
    inputs, outputs = data.tensors()
    losses, seconds, warmup_s = [], [], 0.0
    if epochs:
        trainer = Trainer(inputs, outputs, kernel_size, device, seed=rank)
        warmup_s = trainer.warm_up()
        for _ in range(epochs):
            loss, samples, epoch_s = trainer.epoch()
            if samples != len(inputs):
                raise IntegrityError(f"trainer {rank} trained on {samples} of {len(inputs)} samples")
            losses.append(loss)
            seconds.append(epoch_s)
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    return TrainReport(rank=rank, kernel_size=kernel_size, device=str(device),
                       host=socket.gethostname(), bytes_read=data.bytes_received,
                       samples=len(inputs), io_s=io_s, check_s=data.check_s, warmup_s=warmup_s,
                       train_s=sum(seconds) / len(seconds) if seconds else 0.0, losses=losses,
                       peak_rss_bytes=peak_rss_bytes(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                       gpu_uuid=str(getattr(gpu, "uuid", "")), gpu_name=getattr(gpu, "name", ""),
                       cpu_threads=torch.get_num_threads() if device.type == "cpu" else 0)


def kernel_size_for(rank: int, kernel_sizes: Sequence[int]) -> int:
    """Trainer `rank` uses the kernel sizes in turn, so the workload does not grow with node count."""
    return kernel_sizes[rank % len(kernel_sizes)]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
