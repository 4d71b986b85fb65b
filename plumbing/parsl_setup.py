"""Parsl set-up for the Parsl workflows (5 and 6), as Parsl's "structuring programs" advice
has it: the configuration is a function (make_config), the apps stay plain Python.

One DFK, two HighThroughputExecutors: "simulators" (CPU workers) and "trainers" (one
worker per GPU, or a few CPU workers on a laptop). make_config() looks at where it runs:

- outside a batch job, or in a one-node job: one manager per executor on this machine,
  talking to the interchange over loopback;
- in a PBS or Slurm job with several nodes: one manager per node and executor, started by
  mpiexec or srun (parsl_launchers.py), which connect back over the high-speed interface
  ($PARSL_IFACE; default bond0, the Slingshot bond of Polaris, or hsn0 in a Slurm job).

workflow() sizes the executors for a run, starts them and waits until every worker is
warm (connected, torch imported), so that no phase pays for start-up.

Environment knobs (all optional):
  PARSL_IFACE         network interface the managers reach the interchange through
  PARSL_MPI_FLAVOUR   pals | hydra | openmpi: skip the `mpiexec --version` detection
  PARSL_ENCRYPTED     1/0: CurveZMQ between nodes (default on across nodes, off on loopback)
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import socket
import sys
import tempfile
import time

import parsl
from parsl.addresses import address_by_interface
from parsl.app.app import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
from parsl.launchers import SingleNodeLauncher
from parsl.providers import LocalProvider

from plumbing import REPOSITORY
from plumbing import hosts as allocation
from plumbing.parsl_launchers import mpi_flavour, mpi_launcher, srun_launcher, wait_for_blocks

SIMULATORS = "simulators"
TRAINERS = "trainers"
DEFAULT_IFACE = "bond0"         # Polaris: the Slingshot bond that other compute nodes reach
SLURM_DEFAULT_IFACE = "hsn0"    # Perlmutter (and other Slurm HPE/Cray machines): Slingshot


def worker_init() -> str:
    """Shell lines run before the managers start: the environment this process runs in.

    They run once per block on the first node; mpiexec then carries the resulting
    environment to every node (PALS and Hydra pass it all, Open MPI gets -x below).
    """
    lines = []
    venv_activate = os.path.join(sys.prefix, "bin", "activate")
    if sys.prefix != sys.base_prefix and os.path.exists(venv_activate):
        lines.append(f"source {shlex.quote(venv_activate)}")
    else:
        # conda or system Python: Parsl starts process_worker_pool.py by name, from here
        lines.append(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH")
    # tasks import common.py (and the scripts' helpers) from the repository
    lines.append(f"export PYTHONPATH={shlex.quote(REPOSITORY)}${{PYTHONPATH:+:$PYTHONPATH}}")
    return "\n".join(lines)


def launch_cmd(scratch: str) -> str:
    """Parsl's command that starts a manager, with $TMPDIR in a folder of its own that goes
    when the manager does: its multiprocessing helpers make pymp-* folders in $TMPDIR, and a
    manager stopped by Parsl's SIGTERM does not remove them itself.
    """
    if not re.fullmatch(r"[\w./-]+", scratch):     # goes into shell and str.format unquoted
        return DEFAULT_LAUNCH_CMD
    return "\n".join([f"mkdir -p {scratch}",
                      f"trap 'rm -rf {scratch}' EXIT",
                      "trap 'exit 143' TERM INT",   # the manager dies of it, then EXIT runs
                      f"TMPDIR={scratch} {DEFAULT_LAUNCH_CMD}"])


def interchange_address(interface: str | None = None) -> str | None:
    """The address managers on other nodes connect to.

    The named interface ($PARSL_IFACE; default bond0, hsn0 in a Slurm job) when this node
    has it; else the address this host's name resolves to; else None, and Parsl's managers
    probe every address here.
    """
    interface = (interface or os.environ.get("PARSL_IFACE")
                 or (SLURM_DEFAULT_IFACE if allocation.in_slurm_job() else DEFAULT_IFACE))
    try:
        return address_by_interface(interface)
    except OSError:
        pass
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = None
    print(f"parsl_setup: no network interface {interface!r} on {socket.gethostname()}; "
          f"managers will connect to {address or 'any address of this host'} "
          "(set PARSL_IFACE to choose the interface)", file=sys.stderr, flush=True)
    return address


def _encrypted(multi_node: bool) -> bool:
    """CurveZMQ between the interchange and the managers: on by default across nodes (the
    interchange listens on a network others share), off on loopback, where it only slows
    large payloads; $PARSL_ENCRYPTED=1/0 decides otherwise."""
    setting = os.environ.get("PARSL_ENCRYPTED", "").strip()
    return setting not in ("0", "false", "no") if setting else multi_node


def make_config(run_dir: str, sim_workers: int, trainer_workers: int, gpus: int = 0, *,
                hosts: list[str] | None = None, interface: str | None = None,
                encrypted: bool | None = None) -> Config:
    """Parsl Config for wherever this runs.

    sim_workers: CPU workers for simulations, per node; trainer_workers: trainers per node
    (with gpus > 0, one worker per GPU, pinned through CUDA_VISIBLE_DEVICES).
    hosts: the nodes to use (default: the Slurm or PBS allocation's, else this machine).
    """
    hosts = allocation.node_hosts() if hosts is None else list(hosts)
    multi_node = len(hosts) > 1
    slurm = multi_node and allocation.in_slurm_job()
    address = interchange_address(interface) if multi_node else "127.0.0.1"
    mpi = mpi_launcher(mpi_flavour(), hosts) if multi_node and not slurm else None
    encrypted = _encrypted(multi_node) if encrypted is None else encrypted

    def executor(label: str, workers: int, accelerators: int = 0) -> HighThroughputExecutor:
        # one manager per node: srun in a Slurm job (the trainers' with the GPUs), else mpiexec
        launcher = (SingleNodeLauncher() if not multi_node
                    else srun_launcher(hosts, accelerators) if slurm else mpi)
        return HighThroughputExecutor(
            label=label,
            address=address,
            max_workers_per_node=workers,
            cores_per_worker=1e-6,          # the worker count, not the core count, decides
            available_accelerators=accelerators or (),
            prefetch_capacity=0,            # a task goes to a free worker, never queues behind one
            encrypted=encrypted,
            worker_logdir_root=os.path.join(run_dir, "workers"),
            launch_cmd=launch_cmd(os.path.join(tempfile.gettempdir(),
                                               f"{os.path.basename(run_dir)}-{label}")),
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                   nodes_per_block=max(len(hosts), 1), launcher=launcher,
                                   worker_init=worker_init()),
        )

    return Config(
        executors=[executor(SIMULATORS, sim_workers),
                   executor(TRAINERS, trainer_workers, accelerators=gpus)],
        run_dir=os.path.join(run_dir, "parsl"),
        strategy="none",                    # fixed blocks: no scaling in or out mid-run
        strategy_period=0.2,                # the blocks start at the first tick (default 5 s)
        initialize_logging=False,
    )


def _warm_up_worker(label: str, hold_s: float, then=None, *args):
    """Run in a worker: import what the tasks import (common and numpy; torch for trainers)
    so that no phase pays for it, name the process (`pc: trainers worker` in ps), and run
    `then(*args)` (ProxyStore connects to its store). Returns which worker this was."""
    import os
    import socket
    import time
    from parsl.utils import setproctitle
    import common
    if label == TRAINERS:
        common.pick_device()                # imports torch
    setproctitle(f"pc: {label} worker")
    if then is not None:
        then(*args)
    time.sleep(hold_s)                      # stay busy so the next warm-up task lands elsewhere
    return socket.gethostname(), os.getpid()    # pids repeat across nodes (PID namespaces)


def warm_up(workers: dict[str, int], deadline: float, then=None, *args) -> None:
    """Run _warm_up_worker once in every worker of every executor (label -> worker count),
    both executors at once, again only where a worker was missed, until `deadline`
    (time.monotonic())."""
    from plumbing.lifecycle import results_of
    task = {label: python_app(_warm_up_worker, executors=[label]) for label in workers}
    seen: dict[str, set] = {label: set() for label in workers}
    while any(len(seen[label]) < expected for label, expected in workers.items()):
        if time.monotonic() > deadline:
            missing = {label: expected - len(seen[label]) for label, expected in workers.items()}
            raise TimeoutError(f"Parsl workers not warm in time (missing per executor: {missing})")
        rounds = {label: [task[label](label, 0.3, then, *args) for _ in range(expected)]
                  for label, expected in workers.items() if len(seen[label]) < expected}
        for label, futures in rounds.items():
            seen[label].update(results_of(futures, f"{label} warm-up"))


def start(config: Config, workers: dict[str, int], timeout_s: float = 300.0) -> parsl.DataFlowKernel:
    """Load the config and return once every worker is connected and has imported torch.

    If the workers do not come up, the DFK is cleaned up (its interchanges would outlive
    this process otherwise) and the error raised.
    """
    dfk = parsl.load(config)
    try:
        deadline = time.monotonic() + timeout_s
        for label, expected in workers.items():
            executor = dfk.executors[label]
            while sum(m["worker_count"] for m in executor.connected_managers()) < expected:
                if executor.bad_state_is_set:   # e.g. mpiexec could not start the managers
                    raise ChildProcessError(f"Parsl executor {label!r} could not start its "
                                            f"workers: {executor.executor_exception}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Parsl executor {label!r}: {expected} workers did not "
                                       f"connect within {timeout_s:.0f} s")
                time.sleep(0.1)
        warm_up(workers, deadline)
    except BaseException:
        dfk.cleanup()
        raise
    return dfk


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a workflow's tasks are spread: per node, over `hosts`."""
    hosts: list[str]
    gpus: int                   # per node
    sim_workers: int            # per node
    trainer_workers: int        # per node
    cpu_threads: int            # torch threads per CPU trainer (0: trainers use GPUs)

    @property
    def workers(self) -> dict[str, int]:
        """Workers per executor, all nodes together."""
        return {SIMULATORS: self.sim_workers * len(self.hosts),
                TRAINERS: self.trainer_workers * len(self.hosts)}

    def __str__(self) -> str:
        return (f"Parsl up on {len(self.hosts)} node(s): {self.sim_workers} simulation and "
                f"{self.trainer_workers} trainer workers per node")

    @classmethod
    def plan(cls, hosts: list[str], num_sims: int, num_trainers: int, gpus: int,
             cpus: int) -> "Layout":
        """At most one simulation worker per core and per simulation on each node; trainers
        spread evenly over the nodes, one per GPU where there are GPUs (check_args refused
        more trainers on a node than it has GPUs: Parsl would start only one worker per GPU
        and start() would wait for the others in vain)."""
        trainer_workers = -(-num_trainers // len(hosts))
        if gpus and trainer_workers > gpus:
            raise ValueError(f"{trainer_workers} trainers per node, but {gpus} GPUs per node")
        return cls(list(hosts), gpus, sim_workers=min(-(-num_sims // len(hosts)), cpus),
                   trainer_workers=trainer_workers,
                   cpu_threads=0 if gpus else max(1, cpus // trainer_workers))


@contextlib.contextmanager
def workflow(run_dir: str, num_sims: int, num_trainers: int, num_nodes: int | None = None):
    """Start the two executors, sized for this run, warm; stop them on the way out.

    The first `num_nodes` nodes of the allocation (default: all); at most one simulation
    worker per core and per simulation on each node; trainers are spread evenly over the
    nodes, one per GPU where there are GPUs.
    """
    hosts = allocation.node_hosts()[:num_nodes]
    layout = Layout.plan(hosts, num_sims, num_trainers, allocation.gpus_per_node(),
                         allocation.cores_per_node(os.cpu_count() or 1, len(hosts)))
    config = make_config(run_dir, layout.sim_workers, layout.trainer_workers, layout.gpus,
                         hosts=hosts)
    try:
        with start(config, layout.workers):
            yield layout
    finally:
        if len(hosts) > 1 and allocation.in_slurm_job():
            wait_for_blocks(config)
