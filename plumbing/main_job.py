"""The machinery of the main job, 9_submit_multinode.sh, which holds what a student changes
(the batch directives and the settings) and runs `python -m plumbing.main_job` with the
settings in its environment. Here: where the job runs (PBS, Slurm, the local cluster, this
machine), the settings checked before anything starts, the plan and an estimate of its
duration against the job's walltime, the local cluster brought up and taken down, the
warm-up, every run under a time-out with its output on the screen and in its log, Ctrl-C
and SIGTERM, removing what the job made (and nothing else), and the report at the end."""
from __future__ import annotations

import dataclasses
import math
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import common
from plumbing import cli, hosts

PROG = "9_submit_multinode.sh"

# The workflow each transport runs (the job adds the sizes, the nodes and the paths)
WORKFLOWS = {
    "filesystem": ["6_parsl_fs_producer_consumer.py"],
    "ddict": ["8_dragon_producer_consumer.py"],
    "ddict-broadcast": ["8_dragon_producer_consumer.py", "--broadcast"],
    "futures": ["5_parsl_fut_producer_consumer.py"],
    **{f"proxystore-{c}": ["5_parsl_fut_producer_consumer.py", "--proxystore", c]
       for c in ("file", "redis", "zmq")},
}
ALIASES = {"fs": "filesystem", "parsl+filesystem": "filesystem", "parsl+futures": "futures",
           "dragon": "ddict", "dragon+ddict": "ddict",
           "dragon+ddict-broadcast": "ddict-broadcast"}

# The defaults of the settings left blank: (in a batch job, on a machine without one).
# 9_submit_multinode.sh shows them in its comments as [batch | here] (a test checks it).
# A batch job sizes the data for GPU nodes and the spec's compute time; here CPU training
# dominates and these sizes keep the job within minutes. REPEATS: a laptop's numbers move
# from run to run, and two rounds show whether a difference survives a rerun, in about
# twice the time of one; a batch job at its sizes takes most of an hour in one round.
DEFAULTS = {
    "GRID_SIZES": ("256 512 1024", "64 128 4x512"),
    "COMPUTE_TIME": ("0.5", "0"),
    "REPEATS": ("1", "2"),
    "RUN_TIMEOUT": ("1800", "600"),
}
SIMS_PER_BATCH_NODE, SIMS_HERE = 32, 16         # NUM_SIMS's default, [32 per node | 16]
LOCAL_CLUSTER_NODES = 4                         # what cluster/local_cluster.sh can make
EAGLE = "/eagle"                                # Polaris's project file system (Lustre)


class Refused(Exception):
    """A setting or a plan that cannot work: one line, exit status 2, nothing started."""


def fail_unless(condition, message: str) -> None:
    if not condition:
        raise Refused(message)


# --------------------------------------------------------------------------- where it runs
@dataclasses.dataclass
class Where:
    batch: str          # "pbs", "slurm", or "" (no batch system)
    nodes: int          # the allocation's nodes (a local cluster's that is up; 1 here)
    job_id: str
    cluster: str        # "existing": a local cluster that is up; "own": one this job brings up


def where_it_runs() -> Where:
    """The batch system and its allocation. The local cluster's exports (eval "$(bash
    cluster/local_cluster.sh up N)") name its host list as PBS_NODEFILE: on this machine that
    is no allocation, and the runs go into its node1; inside one of its nodes it is one."""
    env, now = os.environ, time.strftime("%Y%m%d-%H%M%S")
    nodefile, state = env.get("PBS_NODEFILE", ""), env.get("PC_CLUSTER_STATE", "")
    cluster = ""
    if (state and nodefile == f"{state}/hostfile" and not env.get("SLURM_JOB_ID")
            and socket.gethostname() not in hosts.pbs_hosts()):
        fail_unless(os.access(nodefile, os.R_OK), f"PC_CLUSTER_STATE={state}: no local cluster "
                    "is up there (unset the variables of local_cluster.sh, or bring it up again)")
        cluster = "existing"
    # Slurm first: a job submitted from a node of the local cluster inherits its PBS_NODEFILE
    if hosts.in_slurm_job():
        count = env.get("SLURM_JOB_NUM_NODES") or len(hosts.slurm_hosts())
        return Where("slurm", int(count), env["SLURM_JOB_ID"], cluster)
    if not cluster and os.access(nodefile, os.R_OK):
        job_id = env.get("PBS_JOBID", "").split(".")[0] or now
        return Where("pbs", len(hosts.pbs_hosts()), job_id, cluster)
    return Where("", len(hosts.pbs_hosts()) if cluster else 1, now, cluster)


# ------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Settings:
    transports: list[str]
    num_sims: int
    grid_sizes: list[str]               # N or SxN: S simulations instead of num_sims
    node_counts: list[int | None]       # None: the scripts' default (all the nodes, here 1)
    repeats: int
    compute_time: str
    run_timeout: float
    results_dir: str
    data_dir: str                       # "" until the data directory is decided
    warmup: bool
    dry_run: bool
    dragon_launch: str
    script_flags: list[str]             # KERNEL_SIZES, NUM_TRAINERS, EPOCHS, EXTRA_ARGS
    epochs: int                         # EPOCHS, or the scripts' default

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(simulations, grid size) of each of GRID_SIZES."""
        return [(int(size.split("x")[0]) if "x" in size else self.num_sims,
                 int(size.split("x")[-1])) for size in self.grid_sizes]

    @property
    def most_nodes(self) -> int | None:
        return max((n for n in self.node_counts if n), default=None)


def setting(name: str, where: Where) -> str:
    """A setting from the environment; blank: its default in a batch job or here."""
    value = os.environ.get(name, "").strip()
    if value or name not in DEFAULTS:
        return value
    return DEFAULTS[name][0 if where.batch else 1]


def words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def number(name: str, text: str, low: float, kind=float):
    try:
        value = kind(text)
    except ValueError:
        value = None
    fail_unless(value is not None and value >= low and math.isfinite(value),
                f"{name} takes a {'whole ' if kind is int else ''}number of at least {low}, "
                f"got '{text}'")
    return value


def checked(name: str, text: str, low: float) -> str:
    """`text`, as given, once it is a number of at least `low`."""
    number(name, text, low)
    return text


def read_sizes(where: Where) -> tuple[int, list[str]]:
    """NUM_SIMS, and GRID_SIZES: N (NUM_SIMS simulations of N x N) or SxN (S of N x N)."""
    sims = os.environ.get("NUM_SIMS", "").strip() or str(
        SIMS_PER_BATCH_NODE * where.nodes if where.batch else SIMS_HERE)
    sizes = words(setting("GRID_SIZES", where))
    fail_unless(sizes, "GRID_SIZES has no size in it")
    for text in [sims, *sizes]:
        parts = text.split("x")
        fail_unless(len(parts) <= 2 and all(p.isdigit() and int(p) > 0 for p in parts),
                    "NUM_SIMS takes a positive integer and GRID_SIZES N or SIMSxN (positive "
                    f"integers), got '{text}'")
    return int(sims), sizes


def read_transports() -> list[str]:
    default = "filesystem ddict futures proxystore-file"
    if shutil.which("redis-server"):
        default += " proxystore-redis"
    transports = [ALIASES.get(t, t) for t in words(os.environ.get("TRANSPORTS", "")
                                                   or default)]
    for transport in transports:
        fail_unless(transport in WORKFLOWS and os.path.exists(WORKFLOWS[transport][0]),
                    f"unknown transport '{transport}' or its script is missing (use "
                    f"{', '.join(WORKFLOWS)})")
    return transports


def read_node_counts(where: Where) -> list[int | None]:
    """NODES, each within the allocation (or what the local cluster can have). Unset: on an
    allocation of N > 1 nodes, 1 and N (the homework compares them); else the scripts'
    default. Counts above 1 without an allocation make this job bring up a local cluster."""
    counts = words(os.environ.get("NODES", ""))
    for count in counts:
        fail_unless(count.isdigit() and int(count) > 0,
                    f"NODES takes positive integers, got '{count}'")
    if not counts:
        return [1, where.nodes] if where.nodes > 1 else [None]
    most = max(map(int, counts))
    if where.batch or where.cluster:
        fail_unless(most <= where.nodes, f"NODES asks for {most} nodes, but the "
                    f"{where.batch + ' job' if where.batch else 'local cluster'} has {where.nodes}")
    elif most > 1:
        local = "without a batch job the local cluster (cluster/local_cluster.sh)"
        fail_unless(most <= LOCAL_CLUSTER_NODES, f"NODES asks for {most} nodes; {local} has "
                    f"{LOCAL_CLUSTER_NODES} at most")
        fail_unless(os.geteuid() == 0, f"NODES asks for {most} nodes: {local} needs root")
        made = subprocess.run(["unshare", "--net", "--uts", "--ipc", "--mount", "--pid",
                               "--fork", "true"], capture_output=True).returncode == 0
        fail_unless(made, f"NODES asks for {most} nodes: {local} needs Linux namespaces, "
                    "which cannot be made here")
        where.cluster, where.nodes = "own", most
    return [int(count) for count in counts]


def read_settings(where: Where, started_in: str) -> Settings:
    """Every setting, checked: a bad one stops the job in one line before anything starts."""
    transports, (num_sims, grid_sizes) = read_transports(), read_sizes(where)
    node_counts = read_node_counts(where)
    flags = []
    for name, flag, low in (("KERNEL_SIZES", "--kernel_sizes", None),
                            ("NUM_TRAINERS", "--num_trainers", 1), ("EPOCHS", "--epochs", 0)):
        value = os.environ.get(name, "").strip()
        if value:
            flags += [flag, value if low is None else str(number(name, value, low, int))]
    choices = {"WARMUP": ("0", "1"), "DRY_RUN": ("0", "1"), "DRAGON_LAUNCH": ("python", "dragon")}
    for name, allowed in choices.items():
        value = os.environ.get(name, "")
        fail_unless(value in allowed, f"{name} takes {' or '.join(allowed)}, got '{value}'")
    results = os.environ.get("RESULTS_DIR", "").strip() or f"results/{where.job_id}"
    data = os.environ.get("DATA_DIR", "").strip()
    return Settings(
        transports, num_sims, grid_sizes, node_counts,
        repeats=number("REPEATS", setting("REPEATS", where), 1, int),
        compute_time=checked("COMPUTE_TIME", setting("COMPUTE_TIME", where), 0),
        run_timeout=number("RUN_TIMEOUT", setting("RUN_TIMEOUT", where), 1),
        results_dir=os.path.join(started_in, results),
        data_dir=os.path.join(started_in, data) if data else "",
        warmup=os.environ["WARMUP"] == "1", dry_run=os.environ["DRY_RUN"] == "1",
        dragon_launch=os.environ["DRAGON_LAUNCH"],
        script_flags=flags + shlex.split(os.environ.get("EXTRA_ARGS", "")),
        epochs=int(os.environ.get("EPOCHS", "").strip()
                   or cli.make_parser("").get_default("epochs")))


# ---------------------------------------------------------------------- the batch system
def clock_s(text: str) -> float | None:
    """Seconds in [days-]hh:mm:ss, mm:ss or ss (PBS's walltime, Slurm's %L); None for
    anything else (Slurm's UNLIMITED, NOT_SET)."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not (days.isdigit() or not days) or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    seconds = sum(int(p) * 60 ** k for k, p in enumerate(reversed(parts)))
    return seconds + 86400 * int(days or 0)


def pbs_attributes(text: str) -> dict[str, str]:
    """The one-line attributes of `qstat -f JOB` (attribute lines are indented by four
    spaces; their wrapped continuations by more)."""
    found = {}
    for line in text.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and " = " in line:
            name, _, value = line.strip().partition(" = ")
            found[name] = value
    return found


def pbs_time_left_s(attributes: dict[str, str], now: float) -> float | None:
    """The job's walltime less the time since it started (stime, in the server's local
    time, which the compute nodes share); None where qstat did not say."""
    walltime = clock_s(attributes.get("Resource_List.walltime", ""))
    if walltime is None:
        return None
    try:
        started = time.mktime(time.strptime(attributes["stime"], "%a %b %d %H:%M:%S %Y"))
    except (KeyError, ValueError):
        used = clock_s(attributes.get("resources_used.walltime", "0"))
        return walltime - (used or 0)
    return walltime - (now - started)


def command_output(argv: list[str]) -> str:
    """What a command printed, or "" where it is missing or fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def pbs_job() -> dict[str, str]:
    return pbs_attributes(command_output(["qstat", "-f", os.environ.get("PBS_JOBID", "")]))


def time_left_s(where: Where) -> float | None:
    """Seconds until the batch system ends the job, where it says; None elsewhere."""
    if where.batch == "slurm":
        end = os.environ.get("SLURM_JOB_END_TIME", "")
        if end.isdigit():
            return int(end) - time.time()
        return clock_s(command_output(["squeue", "-h", "-j", where.job_id, "-o", "%L"]) or "x")
    if where.batch == "pbs":
        return pbs_time_left_s(pbs_job(), time.time())
    return None


def filesystem_type(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return command_output(["findmnt", "-n", "-o", "FSTYPE", "--target", path]).strip() or "unknown"


def data_dir_and_note(settings: Settings, where: Where) -> tuple[str, str]:
    """Where the runs that write files write them (each run in a directory of its own
    under it, made and removed by the job), and what the plan says about it.

    DATA_DIR where given. On the local cluster, its storage node (served to every node over
    the cluster's network, as Lustre is). In a PBS job on Polaris (where /eagle is), the
    project's directory on /eagle: /eagle/<the job's project, -A>/$USER/producer-consumer,
    and where the project has none, a refusal: the home file system is not what the
    homework measures. In other batch jobs, the results directory, with a note that says
    so. Here (a laptop), the results directory."""
    if settings.data_dir:
        return settings.data_dir, ""
    if where.cluster:
        return (os.environ.get("PC_CLUSTER_PFS") or "$PC_CLUSTER_PFS",
                "the local cluster's storage node, shared by its nodes over its network")
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    if where.batch == "pbs" and os.path.isdir(EAGLE):
        project = os.environ.get("PBS_ACCOUNT") or pbs_job().get("Account_Name", "")
        place = os.path.join(EAGLE, project)
        fail_unless(project and os.path.isdir(place), "DATA_DIR is not set and the job's "
                    f"project ({project or 'none given'}) has no directory in {EAGLE}: give "
                    f"one, e.g. qsub -v DATA_DIR={EAGLE}/<project>/{user} (or -A <project>)")
        return (os.path.join(place, user, "producer-consumer"),
                f"on {EAGLE} (Lustre), from the job's project {project} (-A); DATA_DIR sets another")
    default = os.path.join(settings.results_dir, "data")
    if where.batch:
        return default, (f"DATA_DIR is not set: the files go under the results directory, on "
                         f"{filesystem_type(default)} (where the clone is, often the home file "
                         "system), so the file-system rows measure that file system, not the "
                         "parallel one; set DATA_DIR to measure that, e.g. DATA_DIR=$SCRATCH/pc")
    return default, ""


# ---------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Run:
    transport: str
    sims: int
    grid: int
    nodes: int | None           # None: the scripts' default (all the allocation's nodes)
    repeat: int                 # 1 .. repeats
    repeats: int

    @property
    def name(self) -> str:
        """Its log's and its data directory's name."""
        return (f"{self.transport}-{self.sims}x{self.grid}" + (f"-{self.nodes}n" if self.nodes
                else "") + (f"-r{self.repeat}" if self.repeats > 1 else ""))

    @property
    def label(self) -> str:
        nodes = f" on {self.nodes} node(s)" if self.nodes else ""
        repeat = f", round {self.repeat} of {self.repeats}" if self.repeats > 1 else ""
        return f"{self.transport}{nodes} at {self.sims} x {self.grid}^2{repeat}"

    @property
    def engine(self) -> str:
        return "dragon" if self.transport.startswith("ddict") else "parsl"


def plan(settings: Settings) -> list[Run]:
    """Every transport at every size and node count, REPEATS rounds: round r of every run
    before round r+1, and within a round the transports in turn, so that the slow drifts
    of a shared machine touch every transport alike."""
    return [Run(transport, sims, grid, nodes, repeat, settings.repeats)
            for repeat in range(1, settings.repeats + 1)
            for sims, grid in settings.sizes
            for nodes in settings.node_counts
            for transport in settings.transports]


def warmups(settings: Settings) -> list[Run]:
    """One tiny run per engine (the first run of an engine pays for cold caches: imports,
    the Dragon runtime's first start), on the most nodes asked for, so every node is warm."""
    runs = {}
    for transport in settings.transports:
        run = Run(transport, 2, 64, settings.most_nodes, 1, 1)
        runs.setdefault(run.engine, run)
    return list(runs.values()) if settings.warmup else []


# The estimate of a plan's duration: a simple model, so that a plan that cannot fit the
# job's walltime is refused before it starts and the student sees where the time goes.
# Round figures, on the long side of what runs take; an estimate, not a measurement.
START_S = {"parsl": 10.0, "dragon": 16.0}
#   a run's fixed cost: Python and its imports, the engine's start (Parsl's managers and
#   warm workers; Dragon's runtime), the shut-down
NODE_START_S = {"parsl": 3.0, "dragon": 6.0}    # and for each node beyond the first
GPU_START_S = 5.0
#   on GPUs, the trainers' CUDA start (context, cuDNN, the kernels' first load)
HEAD_GBPS = 0.2
#   futures: the head receives every byte from the simulations and sends it, pickled, to
#   each trainer in turn over ZeroMQ
STORE_GBPS = 1.0
#   every other transport: the simulations write every byte once and each trainer reads
#   all of it from the files, the DDict or ProxyStore's store; a node's trainers share it
TRAIN_S_PER_POINT = {"cpu": 2e-6, "gpu": 1e-7}
#   training: seconds per grid point of one sample in one epoch, for a trainer on its GPU
#   or on its share of the node's cores (trainers train at the same time)
REPORT_S = 20.0                                 # report.py: the table and the plots


@dataclasses.dataclass
class Machine:
    """What the estimate needs to know of the nodes."""
    nodes: int                  # the allocation's, for runs on "all" of them
    cores: int                  # per node
    gpus: int                   # per node
    trainers: int | None        # NUM_TRAINERS (None: one per GPU, else cli.CPU_TRAINERS)


def estimate_s(run: Run, machine: Machine, compute_time: float, epochs: int) -> float:
    """The model above, for one run."""
    nodes = run.nodes or machine.nodes
    trainers = machine.trainers or machine.gpus * nodes or cli.CPU_TRAINERS
    per_node = math.ceil(trainers / nodes)
    start = (START_S[run.engine] + NODE_START_S[run.engine] * (nodes - 1)
             + (GPU_START_S if machine.gpus else 0))
    sim_workers = nodes * min(math.ceil(run.sims / nodes), machine.cores)
    compute = compute_time * common.STEPS * math.ceil(run.sims / sim_workers)
    data_gb = common.data_bytes(run.sims, run.grid) / 1e9
    if run.transport == "futures":
        move = data_gb * (1 + trainers) / HEAD_GBPS
    else:
        move = data_gb * (1 + per_node) / STORE_GBPS
    device = "gpu" if machine.gpus else "cpu"
    crowding = 1 if machine.gpus else max(1, per_node / machine.cores)
    train = (epochs * run.sims * common.STEPS * run.grid ** 2 * TRAIN_S_PER_POINT[device]
             * crowding)
    return start + compute + move + train


def machine_for(where: Where) -> Machine:
    """The nodes as the estimate sees them: this node's cores and GPUs stand for every node
    (the nodes of an allocation are alike); the local cluster's nodes share this machine."""
    try:
        gpus = hosts.gpus_per_node()
    except ValueError as error:
        raise Refused(str(error)) from None
    cores = os.cpu_count() or 1
    if where.cluster:
        cores = max(1, cores // where.nodes)
    trainers = os.environ.get("NUM_TRAINERS", "").strip()
    return Machine(where.nodes, cores, gpus, int(trainers) if trainers.isdigit() else None)


# ------------------------------------------------------------------------------- the runs
def command(run: Run, settings: Settings, data_dir: str, results_file: str,
            cluster: bool) -> list[str]:
    """The workflow command of one run. DRAGON_LAUNCH=dragon starts script 8 as `python
    8_...` would: the launcher's options, -N for part of the allocation, and dragon_site
    on PYTHONPATH where PC_DRAGON_FIXES's rule puts it. On the local cluster every run
    starts in node1, as it would on a batch job's first node."""
    script = WORKFLOWS[run.transport]
    if run.engine == "dragon" and settings.dragon_launch == "dragon":
        pythonpath = command_output([sys.executable, "-c", "import sys; from plumbing import "
                                     "dragon_launch as d; print(d.launch_fixes_env(int(sys.argv[1])"
                                     " or None)['PYTHONPATH'])", str(run.nodes or 0)]).strip()
        argv = ["env", f"PYTHONPATH={pythonpath}", "dragon",
                *shlex.split(os.environ.get("PC_DRAGON_ARGS", "")),
                *(["-N", str(run.nodes)] if run.nodes else []), *script]
    else:
        argv = ["python", *script]
    if run.nodes:
        argv += ["--num_nodes", str(run.nodes)]
    argv += ["--num_sims", str(run.sims), "--grid_size", str(run.grid),
             "--compute_time", settings.compute_time, "--data_dir", data_dir,
             "--results_file", results_file, *settings.script_flags]
    return ["bash", "cluster/local_cluster.sh", "run", "1", *argv] if cluster else argv


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the job stops (after the run in progress has cleaned up)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


KILL_AFTER_S = 60       # a run that does not end within this after its SIGINT is killed
LINGER_S = 10           # how long the processes a run started may outlive it (its engine's
                        # servers ending, or one left behind, holding the output open)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still there (a run's own group: its pid)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def now() -> str:
    return time.strftime("%H:%M:%S")


class Job:
    """The job's runs in turn, each in a process group of its own, under a time-out, its
    output on the screen and in its log; what the job made goes on every way out."""

    def __init__(self, settings: Settings, where: Where, data_dir: str):
        self.settings, self.where, self.data_dir = settings, where, data_dir
        self.child: subprocess.Popen | None = None     # what a signal is passed on to
        self.interrupted = 0
        self.closing = False
        self.made: list[str] = []                      # directories made, outermost first
        self.cluster_up = False

    def on_signal(self, signum: int, frame) -> None:
        """Ctrl-C at a terminal reaches the job alone (each run has a process group of its
        own): the job hands the run ONE SIGINT, so that its clean-up runs once and is not
        cut short by a second signal (SIGINT, not SIGTERM: `dragon` tears its runtime down
        on SIGTERM before the script can clean up). PBS and Slurm send SIGTERM to every
        process of a job themselves: there the job passes nothing on. Between runs the job
        stops at once, cleaning up."""
        self.interrupted = self.interrupted or signum
        if self.child is not None:
            if not (signum == signal.SIGTERM and self.where.batch):
                self.child.send_signal(signal.SIGINT)
        elif not self.closing:
            raise Interrupted(signum)

    def execute(self, argv: list[str], log_path: str, echo: bool) -> int:
        """Run argv, its output to the screen (where `echo`) and to the end of log_path;
        its exit status, or 124 where RUN_TIMEOUT passed first (137 where it was killed
        too): the run gets SIGINT at the time-out and SIGKILL KILL_AFTER_S later."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, process_group=0)
            self.child = process
            try:
                timed_out, killed = self._follow(process, log, echo)
            finally:
                self.child = None
                process.stdout.close()
        if timed_out:
            return 137 if killed else 124
        return process.returncode if process.returncode >= 0 else 128 - process.returncode

    def _follow(self, process: subprocess.Popen, log, echo: bool) -> tuple[bool, bool]:
        """Copy the run's output until it and what it started have ended (LINGER_S at most
        after it); signal it at its time-out."""
        fd, deadline = process.stdout.fileno(), time.monotonic() + self.settings.run_timeout
        kill_at = ended_at = None
        killed = eof = False
        while True:
            moment = time.monotonic()
            if process.poll() is None:
                if kill_at is None and moment > deadline:
                    process.send_signal(signal.SIGINT)
                    kill_at = moment + KILL_AFTER_S
                elif kill_at is not None and moment > kill_at and not killed:
                    process.kill()
                    killed = True
            else:
                ended_at = ended_at or moment
                if (eof and not group_alive(process.pid)) or moment > ended_at + LINGER_S:
                    break
            if eof:
                time.sleep(0.1)
            elif select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 1 << 16)
                eof = not chunk
                log.write(chunk)
                log.flush()
                if echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
        process.wait()
        return kill_at is not None, killed

    def run(self, run: Run, results_file: str, log_path: str, echo: bool = True) -> int:
        """One run in a data directory of its own, made here and named for the job and the
        run; after a time-out (the run's head could not clean up) it is removed with what
        is in it, otherwise only where it is empty (--keep_data leaves it)."""
        from plumbing.lifecycle import remove_tree
        run_dir = os.path.join(self.data_dir, f"pc-{self.where.job_id}-{run.name}")
        argv = command(run, self.settings, run_dir, results_file, bool(self.where.cluster))
        line = f"[{now()}] {' '.join(argv)}\n"
        if echo:
            print("\n" + line, end="", flush=True)
        with open(log_path, "w") as log:
            log.write(line)
        try:
            os.mkdir(run_dir)
        except OSError as error:
            print(f"cannot make the run's data directory: {error}", flush=True)
            return 1
        status = self.execute(argv, log_path, echo)
        if status in (124, 137):
            print(f"removing {run_dir}, left by the run that timed out", flush=True)
            remove_tree(run_dir)
        else:
            try:
                os.rmdir(run_dir)
            except OSError:
                pass
        return status

    def warm_up(self, runs: list[Run]) -> None:
        logs = os.path.join(self.settings.results_dir, "logs")
        for run in runs:
            print(f"[{now()}] warm-up of {run.engine} (a tiny {run.transport} run, not reported)",
                  flush=True)
            log = os.path.join(logs, f"warmup-{run.engine}.log")
            if self.run(run, os.path.join(logs, "warmup.jsonl"), log, echo=False):
                print(f"warning: the {run.engine} warm-up failed, see {log}", flush=True)
            if self.interrupted:
                print(f"interrupted during the {run.engine} warm-up", file=sys.stderr)
                raise Interrupted(signal.SIGINT)

    def measure(self, runs: list[Run], records: str) -> list[str]:
        """The runs of the plan; the labels of those that failed."""
        failed = []
        for run in runs:
            log = os.path.join(self.settings.results_dir, "logs", f"{run.name}.log")
            status = self.run(run, records, log)
            if self.interrupted:
                # Ctrl-C or SIGTERM (qdel, scancel, walltime): the run has cleaned up; stop
                print(f"interrupted during {run.label}; records so far in {records}",
                      file=sys.stderr)
                raise Interrupted(signal.SIGINT)
            if status in (124, 137):
                failed.append(run.label)
                print(f"run FAILED: {run.label} took over RUN_TIMEOUT="
                      f"{self.settings.run_timeout:g} s (see {log})", flush=True)
            elif status:
                failed.append(run.label)
                print(f"run FAILED: {run.label} (see {log})", flush=True)
        return failed

    def bring_up_cluster(self) -> None:
        """The local cluster for NODES above 1 without a batch job; its exports (the host
        list as PBS_NODEFILE, PC_DRAGON_ARGS, PC_CLUSTER_PFS...) go to every run."""
        nodes = self.where.nodes
        print(f"[{now()}] bringing up the local cluster: bash cluster/local_cluster.sh up {nodes}",
              flush=True)
        self.cluster_up = True          # taken down on the way out, even half made
        up = subprocess.Popen(["bash", "cluster/local_cluster.sh", "up", str(nodes)],
                              stdout=subprocess.PIPE, text=True, process_group=0)
        self.child = up
        try:
            exports = up.communicate()[0]
        finally:
            self.child = None
        if self.interrupted:
            raise Interrupted(self.interrupted)
        fail_unless(up.returncode == 0, "the local cluster did not come up")
        for line in exports.splitlines():
            words = shlex.split(line)           # export NAME='value'
            if len(words) == 2 and words[0] == "export":
                name, _, value = words[1].partition("=")
                os.environ[name] = value
        if self.data_dir == "$PC_CLUSTER_PFS":
            self.data_dir = os.environ["PC_CLUSTER_PFS"]

    def make_data_dir(self) -> None:
        """DATA_DIR, and the directories above it that are missing: this job made those,
        and removes them at the end where they are empty; the others are not its own."""
        missing, path = [], self.data_dir
        while not os.path.isdir(path):
            missing.insert(0, path)
            path = os.path.dirname(path)
        for path in missing:
            try:
                os.mkdir(path)
            except OSError as error:
                raise Refused(f"DATA_DIR: cannot make {path}: {error.strerror}") from None
            self.made.append(path)

    def close(self) -> None:
        """On every way out: the empty directories this job made, and its local cluster."""
        self.closing = True
        for path in reversed(self.made):
            try:
                os.rmdir(path)
            except OSError:
                break
        if self.cluster_up:
            down = subprocess.run(["bash", "cluster/local_cluster.sh", "down"],
                                  capture_output=True, text=True)
            if down.returncode:
                print("warning: 'bash cluster/local_cluster.sh down' failed; run it by hand",
                      file=sys.stderr)


# --------------------------------------------------------------------------- what it says
def load_average() -> str:
    """The machine may be shared: its load, next to the numbers, says how far to trust them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe(settings: Settings, where: Where, data_dir: str, note: str) -> list[str]:
    """The job's settings, as job.txt keeps them."""
    lines = [f"job          {where.job_id} on {socket.gethostname()} ({where.nodes} node(s), "
             f"{os.cpu_count()} cores here), {time.strftime('%F %T %z')}"]
    counts = " ".join(str(n) for n in settings.node_counts if n)
    if where.cluster:
        lines.append(f"nodes        {counts or where.nodes}: the local cluster's "
                     "(cluster/local_cluster.sh), which share this machine")
    elif counts:
        lines.append(f"nodes        {counts}, the first of the allocation")
    lines += [
        f"transports   {' '.join(settings.transports)}",
        f"runs         {settings.num_sims} simulations (or SIMSx) x grid "
        f"{' '.join(settings.grid_sizes)}, compute time {settings.compute_time} s/step",
        f"repeats      {settings.repeats} (round r of every run before round r+1)",
        f"trainers     {os.environ.get('NUM_TRAINERS') or 'default'} (kernel sizes "
        f"{os.environ.get('KERNEL_SIZES') or 'default'}, epochs {settings.epochs})",
        f"data dir     {data_dir}" + (f"\n             ({note})" if note else ""),
        f"results dir  {settings.results_dir}",
        f"python       {shutil.which('python') or sys.executable}",
        # -dirty: the working tree had changes that commit does not hold
        f"commit       {command_output(['git', 'describe', '--always', '--dirty', '--abbrev=7']).strip() or 'unknown'}",
        f"load average {load_average()} (1, 5, 15 min) at the start"]
    return lines


def describe_plan(settings: Settings, where: Where, runs: list[Run],
                  warm: list[Run]) -> tuple[list[str], float]:
    """The plan in a few lines, with its estimated duration (the model above)."""
    machine = machine_for(where)
    compute_time = float(settings.compute_time)

    def total(some: list[Run]) -> float:
        return sum(estimate_s(run, machine, compute_time, settings.epochs) for run in some)

    counts = [n for n in settings.node_counts if n] or [where.nodes]
    lines = [f"plan         {len(runs)} runs: {len(settings.grid_sizes)} size(s) x "
             f"{len(counts)} node count(s) ({' '.join(map(str, counts))}) x "
             f"{len(settings.transports)} transport(s) x {settings.repeats} round(s)"
             + (f", after {len(warm)} warm-up run(s)" if warm else "")]
    per_size = [f"{sims} x {grid}^2: {total([r for r in runs if (r.sims, r.grid) == (sims, grid)]):.0f} s"
                for sims, grid in settings.sizes]
    seconds = total(runs) + total(warm) + REPORT_S
    lines.append(f"estimate     about {minutes(seconds)} in all (an estimate, from the simple "
                 f"model in plumbing/main_job.py; {', '.join(per_size)})")
    return lines, seconds


def check_walltime(where: Where, seconds: float) -> str:
    """One line on the time the batch system gives the job; refuses a plan that cannot fit."""
    left = time_left_s(where)
    if left is None:
        return ("walltime     " + (f"not known ({where.batch} did not say): not checked"
                                   if where.batch else "none (no batch system)"))
    fail_unless(seconds <= left, f"the plan takes about {minutes(seconds)} (an estimate), "
                f"but the job has {minutes(left)} left: run fewer sizes, node counts, "
                "transports or REPEATS, or ask for a longer walltime")
    return f"walltime     {minutes(left)} left, enough for the estimate"


def check_shared(where: Where, *paths: str) -> None:
    """The local cluster's nodes have /tmp, /dev/shm and /run of their own: the runs must
    write where every node sees it."""
    if not where.cluster:
        return
    here = os.path.realpath(".") + "/"
    for path in paths:
        real = os.path.realpath(path) + "/"
        fail_unless(not real.startswith(("/tmp/", "/dev/shm/", "/run/")) or real.startswith(here),
                    f"{path} is not shared with the local cluster's nodes (each has its own "
                    "/tmp, /dev/shm and /run): set RESULTS_DIR and DATA_DIR elsewhere")


def report(settings: Settings, records: str) -> bool:
    """The homework table and the plots, from the records of this job's runs."""
    print()
    if not os.path.exists(records) or not os.path.getsize(records):
        print("no run produced a record")
        return True
    return subprocess.run(["python", "report.py", records, "--markdown",
                           os.path.join(settings.results_dir, "table.md"),
                           "--plots", settings.results_dir]).returncode == 0


def outputs(settings: Settings, records: str) -> None:
    print(f"Outputs in {settings.results_dir}/:")
    if os.path.exists(records) and os.path.getsize(records):
        plots = sorted(name for name in os.listdir(settings.results_dir) if name.endswith(".png"))
        print("  records.jsonl  one JSON record per run (the raw numbers)\n"
              "  table.md       the homework table, and IO max / GB/s / host / date\n"
              f"  {' '.join(plots)}   the plots")
    print("  logs/          each run's output; job.txt: this job's settings")


def start(settings: Settings, where: Where) -> tuple[Job, list[Run], list[Run], float]:
    """Everything decided and said before anything starts: the plan, its estimate against
    the walltime, and the job (a dry run prints the commands and makes nothing)."""
    data_dir, note = data_dir_and_note(settings, where)
    check_shared(where, settings.results_dir, data_dir)
    runs, warm = plan(settings), warmups(settings)
    lines = describe(settings, where, data_dir, note)
    plan_lines, seconds = describe_plan(settings, where, runs, warm)
    print("\n".join(lines + plan_lines), flush=True)
    lines += plan_lines + [check_walltime(where, seconds)]
    print(lines[-1], flush=True)
    if not settings.dry_run:
        os.makedirs(os.path.join(settings.results_dir, "logs"), exist_ok=True)
        with open(os.path.join(settings.results_dir, "job.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return Job(settings, where, data_dir), runs, warm, seconds


def dry_run(job: Job, runs: list[Run]) -> None:
    if job.where.cluster == "own":
        print(f"would bring up the local cluster: bash cluster/local_cluster.sh up {job.where.nodes}")
    records = os.path.join(job.settings.results_dir, "records.jsonl")
    for run in runs:
        data_dir = os.path.join(job.data_dir, f"pc-{job.where.job_id}-{run.name}")
        argv = command(run, job.settings, data_dir, records, bool(job.where.cluster))
        print(f"\nwould run: {' '.join(argv)}")


def main() -> int:
    """The job; its exit status: 0 when every run succeeded, 1 when one failed, 2 for a
    setting or a plan refused, 128 + the signal for Ctrl-C (130) or SIGTERM."""
    began, job = time.monotonic(), None
    started_in = os.environ.get("STARTED_IN") or os.getcwd()
    try:
        where = where_it_runs()
        settings = read_settings(where, started_in)
        job, runs, warm, estimate = start(settings, where)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, job.on_signal)
        if settings.dry_run:
            dry_run(job, runs)
            return 0
        if where.cluster == "own":
            job.bring_up_cluster()
        job.make_data_dir()
        records = os.path.join(settings.results_dir, "records.jsonl")
        job.warm_up(warm)
        failed = job.measure(runs, records)
        reported = report(settings, records)
        job.close()
        took = (f"\nMain job finished in {time.monotonic() - began:.0f} s (the estimate was "
                f"{estimate:.0f} s); load average {load_average()} (1, 5, 15 min) at the end")
        print(took)
        with open(os.path.join(settings.results_dir, "job.txt"), "a") as f:
            f.write(took.lstrip() + "\n")
        outputs(settings, records)
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed or not reported else 0
    except Refused as refusal:
        print(f"{PROG}: {refusal}", file=sys.stderr)
        return 2
    except Interrupted as interruption:
        return 128 + interruption.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        if job is not None and not job.closing:
            job.close()


if __name__ == "__main__":
    sys.exit(main())
