"""Parsl configuration for the two Parsl workflows (5 and 6), in the spirit of Parsl's
"modularizing" example: one factory that returns a Config, plus the warm-up both use.

One DFK, two HighThroughputExecutors: "simulators" (CPU workers) and "trainers" (one
worker per GPU, or a few CPU workers on a laptop). make_config() looks at where it runs:

- outside a batch job, or in a one-node PBS job: one manager per executor on this
  machine, talking to the interchange over loopback;
- in a PBS job with several nodes ($PBS_NODEFILE): one manager per node and executor,
  started by `mpiexec` (Cray PALS on Polaris, MPICH/Hydra or Open MPI elsewhere), which
  connect back over the high-speed interface ($PARSL_IFACE, default bond0);
- in a Slurm job with several nodes ($SLURM_JOB_ID, $SLURM_JOB_NODELIST): the same, started
  by `srun` (one task per node, as a step that overlaps the others), over $PARSL_IFACE
  (default hsn0, the Slingshot interface of Perlmutter-like machines).

Nothing here reads the environment at import time.

Environment knobs (all optional):
  PARSL_IFACE         network interface the managers reach the interchange through
                      (bond0; hsn0 in a Slurm job)
  PARSL_MPI_FLAVOUR   pals | hydra | openmpi: skip the `mpiexec --version` detection
  PARSL_ENCRYPTED     1/0: CurveZMQ between nodes (default on across nodes, off on loopback)
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import parsl
from parsl.addresses import address_by_interface
from parsl.app.app import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider

import common

SIMULATORS = "simulators"
TRAINERS = "trainers"
HERE = os.path.dirname(os.path.abspath(__file__))
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
    lines.append(f"export PYTHONPATH={shlex.quote(HERE)}${{PYTHONPATH:+:$PYTHONPATH}}")
    return "\n".join(lines)


def launch_cmd(scratch: str) -> str:
    """Parsl's command that starts a manager, with $TMPDIR in a folder of its own.

    A manager's multiprocessing helpers make pymp-* folders in $TMPDIR, and Parsl stops the
    managers with SIGTERM, so they were never removed (4 per run). The folder, on each
    node's own temporary disk, goes when the manager does.
    """
    if not re.fullmatch(r"[\w./-]+", scratch):     # goes into shell and str.format unquoted
        return DEFAULT_LAUNCH_CMD
    return "\n".join([f"mkdir -p {scratch}",
                      f"trap 'rm -rf {scratch}' EXIT",
                      "trap 'exit 143' TERM INT",   # the manager dies of it, then EXIT runs
                      f"TMPDIR={scratch} {DEFAULT_LAUNCH_CMD}"])


def mpi_flavour(mpiexec: str = "mpiexec") -> str:
    """Which mpiexec is first on PATH: 'pals' (Cray PALS), 'hydra' (MPICH, Intel) or 'openmpi'."""
    forced = os.environ.get("PARSL_MPI_FLAVOUR", "").strip().lower()
    if forced:
        if forced not in ("pals", "hydra", "openmpi"):
            raise ValueError(f"PARSL_MPI_FLAVOUR={forced!r}: use pals, hydra or openmpi")
        return forced
    path = shutil.which(mpiexec)
    if path is None:
        raise FileNotFoundError("a multi-node run needs `mpiexec` on PATH (on Polaris the Cray "
                                "PALS one, /opt/cray/pals/.../bin; elsewhere MPICH or Open MPI)")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).lower()
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    real_path = os.path.realpath(path).lower()
    if "/pals/" in real_path or "pals" in text:
        return "pals"
    if "open mpi" in text or "openrte" in text or "open-mpi" in text:
        return "openmpi"
    if "hydra" in text or "mpich" in text or "intel(r) mpi" in text:
        return "hydra"
    raise RuntimeError(f"cannot tell which MPI {path} belongs to from `mpiexec --version`; "
                       "set PARSL_MPI_FLAVOUR=pals|hydra|openmpi")


class _MpiExecLauncher(MpiExecLauncher):
    """Parsl's MpiExecLauncher, started on exactly the run's hosts, in the run's order, with
    its host list kept next to the submit scripts."""

    def __init__(self, hosts: list[str], **options):
        super().__init__(**options)
        self.hosts = list(hosts)

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int,
                 script_dir: str = "") -> str:
        script = super().__call__(command, tasks_per_node, nodes_per_block, script_dir)
        # Parsl writes the deduplicated $PBS_NODEFILE into the current directory, which
        # litters wherever the user ran the script; the run directory is the place for it
        script = script.replace('HOSTFILE="$JOBNAME.nodes"',
                                'HOSTFILE="${SCRIPT_DIR:-.}/$JOBNAME.nodes"')
        # and it takes `sort -u $PBS_NODEFILE`: with --num_nodes N, mpiexec -n N would start
        # the managers on the first N hosts in sorted order, not on the N the run uses
        hosts = " ".join(shlex.quote(host) for host in self.hosts)
        written = f"printf '%s\\n' {hosts} > $HOSTFILE"
        lines, out, skip = script.splitlines(), [], 0
        for line in lines:
            if skip:
                skip -= 1
                continue
            if line.startswith('if [ -z "$PBS_NODEFILE" ]; then'):
                out.append(written)
                skip = 4                    # the rest of Parsl's if/else/fi
                continue
            out.append(line)
        if written not in out:
            raise RuntimeError("parsl_config: Parsl's MpiExecLauncher script changed; "
                               "cannot give it the run's host list")
        return "\n".join(out) + "\n"


def mpi_launcher(flavour: str, hosts: list[str]) -> MpiExecLauncher:
    """One manager per node of `hosts`. Parsl writes `mpiexec <bind_cmd> none <overrides>
    -n <nodes> --hostfile <hosts> sh cmd.sh`; the overrides put one rank per node and leave
    the cores to the manager, which places its own workers."""
    if flavour == "pals":
        # ALCF's Polaris recipe: one rank per node, spanning every hardware thread
        return _MpiExecLauncher(hosts, bind_cmd="--cpu-bind",
                                overrides=f"--depth={os.cpu_count() or 1} --ppn 1")
    if flavour == "hydra":
        return _MpiExecLauncher(hosts, bind_cmd="-bind-to", overrides="-ppn 1")
    if flavour == "openmpi":
        # --map-by node: ranks round-robin over the hosts, so -n <nodes> gives one per node.
        # Open MPI passes no environment unless told (-x), and refuses root without the flag.
        carry = ["PATH", "PYTHONPATH"] + [name for name in ("VIRTUAL_ENV", "LD_LIBRARY_PATH")
                                          if name in os.environ]
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return _MpiExecLauncher(hosts, bind_cmd="--bind-to", overrides=" ".join(
            ["--map-by", "node", "--oversubscribe"] + [f"-x {name}" for name in carry] + root))
    raise ValueError(f"unknown MPI flavour {flavour!r}")


class _SrunLauncher(SrunLauncher):
    """Parsl's SrunLauncher, with each block's manager script named after the block, and
    a stop that lets the managers clean up."""

    # Parsl stops a block with SIGTERM to its script's process group. srun answers SIGTERM
    # by killing its step at once (SIGKILL): the managers' temporary folders and
    # multiprocessing semaphores (/dev/shm/sem.mp-*) stayed on every node. So srun gets a
    # process group of its own, and the script passes the stop on as a SIGTERM to the
    # step's processes (scancel --signal), after which srun returns by itself.
    STOP = """set +e
stop_step() {
    local step
    step=$(squeue -h -s -j "$SLURM_JOB_ID" -o "%i %j" | awk -v name="$JOBNAME" '$2 == name {print $1}')
    [[ -n $step ]] && scancel --signal=TERM "$step"
}
set -m
SRUN &
srun_pid=$!
trap stop_step TERM INT
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
"""

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int,
                 script_dir: str = "") -> str:
        script = super().__call__(command, tasks_per_node, nodes_per_block, script_dir)
        # Parsl names it after the Slurm job (cmd_$SLURM_JOB_NAME.sh), the same name for both
        # executors, whose blocks start at the same moment: one could run the other's
        # command. $JOBNAME (set by LocalProvider) is the block's own name.
        script = script.replace("cmd_$SLURM_JOB_NAME.sh", "cmd_$JOBNAME.sh")
        lines = script.splitlines()
        [at] = [i for i, line in enumerate(lines) if line.startswith("srun ")]
        # the step named after the block, so that stop_step finds it
        srun = lines[at].replace("srun ", 'srun --job-name="$JOBNAME" ', 1)
        lines[at:at + 1] = self.STOP.replace("SRUN", srun).splitlines()
        return "\n".join(lines) + "\n"


def srun_launcher(hosts: list[str], gpus: int = 0) -> SrunLauncher:
    """One manager per node of `hosts` (a part of the allocation), started by srun.

    --overlap: the two executors' steps run at once, on the same nodes, beside the batch
    step; without it the second waits for the first to end. --cpus-per-task: all the
    node's CPUs, which a task-binding site (task/affinity, task/cgroup) would otherwise
    confine the manager and all its workers to one of.
    """
    overrides = [f"--nodes={len(hosts)}", "--ntasks-per-node=1", f"--nodelist={','.join(hosts)}",
                 "--overlap", "--cpus-per-task=${SLURM_CPUS_ON_NODE:-1}"]
    if gpus:
        overrides.append(f"--gpus-per-node={gpus}")
    return _SrunLauncher(overrides=" ".join(overrides))


def interchange_address(interface: str | None = None) -> str | None:
    """The address managers on other nodes connect to.

    The named interface ($PARSL_IFACE; default bond0, hsn0 in a Slurm job) when this node
    has it; else the address this host's name resolves to; else None, and Parsl's managers
    probe every address here.
    """
    interface = (interface or os.environ.get("PARSL_IFACE")
                 or (SLURM_DEFAULT_IFACE if common.in_slurm_job() else DEFAULT_IFACE))
    try:
        return address_by_interface(interface)
    except OSError:
        pass
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = None
    print(f"parsl_config: no network interface {interface!r} on {socket.gethostname()}; "
          f"managers will connect to {address or 'any address of this host'} "
          "(set PARSL_IFACE to choose the interface)", file=sys.stderr, flush=True)
    return address


def make_config(run_dir: str, sim_workers: int, trainer_workers: int, gpus: int = 0, *,
                hosts: list[str] | None = None, interface: str | None = None,
                encrypted: bool | None = None) -> Config:
    """Parsl Config for wherever this runs.

    sim_workers: CPU workers for simulations, per node; trainer_workers: trainers per node
    (with gpus > 0, one worker per GPU, pinned through CUDA_VISIBLE_DEVICES).
    hosts: the nodes to use (default: the Slurm or PBS allocation's, else this machine).
    """
    hosts = common.node_hosts() if hosts is None else list(hosts)
    multi_node = len(hosts) > 1
    slurm = multi_node and common.in_slurm_job()
    if multi_node:
        address = interchange_address(interface)
        mpi = None if slurm else mpi_launcher(mpi_flavour(), hosts)
    else:
        address, mpi = "127.0.0.1", None

    def launcher(accelerators: int):
        """One manager per node: srun in a Slurm job (the trainers' with the GPUs), else mpiexec."""
        if not multi_node:
            return SingleNodeLauncher()
        return srun_launcher(hosts, accelerators) if slurm else mpi
    if encrypted is None:
        setting = os.environ.get("PARSL_ENCRYPTED", "")
        # across nodes the interchange listens on a shared network: encrypt unless told not to;
        # on loopback CurveZMQ only slows large payloads (1.6-1.9x measured)
        encrypted = setting.strip() not in ("0", "false", "no") if setting else multi_node

    def executor(label: str, workers: int, accelerators: int = 0) -> HighThroughputExecutor:
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
                                   nodes_per_block=max(len(hosts), 1),
                                   launcher=launcher(accelerators),
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


def _warm_up_worker(hold_s: float, label: str = "parsl"):
    """Import what the tasks import (common and numpy; torch for trainers) so that no phase
    pays for it, and name the worker process (`pc: simulators worker` in ps and top)."""
    import os
    import socket
    import time
    from parsl.utils import setproctitle
    import common
    if label == TRAINERS:
        common.pick_device()                # imports torch
    setproctitle(f"pc: {label} worker")
    time.sleep(hold_s)                      # stay busy so the next warm-up task lands elsewhere
    return socket.gethostname(), os.getpid()    # pids repeat across nodes (PID namespaces)


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
            warm_up = python_app(_warm_up_worker, executors=[label])
            warm: set[tuple[str, int]] = set()
            while len(warm) < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Parsl executor {label!r}: only {len(warm)} of {expected} "
                                       f"workers warmed up within {timeout_s:.0f} s")
                futures = [warm_up(0.3, label) for _ in range(expected)]
                warm.update(f.result() for f in futures)
    except BaseException:
        dfk.cleanup()
        raise
    return dfk


def wait_for_blocks(config: Config, timeout_s: float = 60.0) -> None:
    """Return once every block's launch script (and so its srun) has ended, or after timeout_s.

    dfk.cleanup() only signals the blocks. In a Slurm job that is not enough: when the
    batch script ends, Slurm kills the job's steps at once, and managers that were still
    stopping left their temporary folders on every node. srun returns only when every
    manager has exited, and the launch script with it.
    """
    pids = [job["remote_pid"] for executor in config.executors
            for job in getattr(executor.provider, "resources", {}).values() if "remote_pid" in job]
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":    # ended, not yet reaped
                        break
            except OSError:                     # ended (or no /proc: nothing to wait for)
                break
            time.sleep(0.1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a workflow's tasks are spread: per node, over `hosts`."""
    hosts: list[str]
    gpus: int                   # per node
    sim_workers: int            # per node
    trainer_workers: int        # per node
    cpu_threads: int            # torch threads per CPU trainer (0: trainers use GPUs)

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
    layout = Layout.plan(common.node_hosts()[:num_nodes], num_sims, num_trainers,
                         common.gpus_per_node(), os.cpu_count() or 1)
    hosts = layout.hosts
    config = make_config(run_dir, layout.sim_workers, layout.trainer_workers, layout.gpus,
                         hosts=hosts)
    try:
        with start(config, {SIMULATORS: layout.sim_workers * len(hosts),
                            TRAINERS: layout.trainer_workers * len(hosts)}):
            yield layout
    finally:
        if len(hosts) > 1 and common.in_slurm_job():
            wait_for_blocks(config)
