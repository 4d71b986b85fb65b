"""What the main job (9_submit_multinode.sh) will do, decided before anything starts: where
it runs (PBS, Slurm, the local cluster, this machine), its settings checked (one line for a
bad one), where its data goes, its runs in order, the workflow command of each, and an
estimate of the plan's duration against the time the batch system leaves the job."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import shutil
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

# The defaults of the settings left blank, (in a batch job, on a machine without one):
# 9_submit_multinode.sh shows them, and why, in its comments as [batch | here] (a test
# checks that they agree). The constant defaults are the script's own.
DEFAULTS = {
    "GRID_SIZES": ("256 512 1024", "64 4x512"),
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
    run_timeout: int
    results_dir: str
    data_dir: str                       # DATA_DIR as given ("": data_dir_and_note decides)
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


def checked(name: str, text: str, kind) -> str:
    """`text`, as given, once `kind`, the scripts' own check of such a flag (cli), takes it."""
    try:
        kind(text)
    except argparse.ArgumentTypeError as error:
        raise Refused(f"{name}: {error}") from None
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
    for name, flag, kind in (("KERNEL_SIZES", "--kernel_sizes", cli.kernel_list),
                             ("NUM_TRAINERS", "--num_trainers", cli.positive_int),
                             ("EPOCHS", "--epochs", cli.non_negative_int)):
        value = os.environ.get(name, "").strip()
        if value:
            flags += [flag, checked(name, value, kind)]
    choices = {"WARMUP": ("0", "1"), "DRY_RUN": ("0", "1"), "DRAGON_LAUNCH": ("python", "dragon")}
    for name, allowed in choices.items():
        value = os.environ.get(name, "")
        fail_unless(value in allowed, f"{name} takes {' or '.join(allowed)}, got '{value}'")
    results = os.environ.get("RESULTS_DIR", "").strip() or f"results/{where.job_id}"
    data = os.environ.get("DATA_DIR", "").strip()
    return Settings(
        transports, num_sims, grid_sizes, node_counts,
        repeats=int(checked("REPEATS", setting("REPEATS", where), cli.positive_int)),
        compute_time=checked("COMPUTE_TIME", setting("COMPUTE_TIME", where),
                             cli.non_negative_float),
        run_timeout=int(checked("RUN_TIMEOUT", setting("RUN_TIMEOUT", where), cli.positive_int)),
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


def time_left_s(where: Where) -> tuple[float | None, str]:
    """Seconds until the batch system ends the job, where it says (None elsewhere), and
    how they were learnt."""
    if where.batch == "slurm":
        end = os.environ.get("SLURM_JOB_END_TIME", "")
        if end.isdigit():                   # Slurm 23.02 and later
            return int(end) - time.time(), "SLURM_JOB_END_TIME"
        left = command_output(["squeue", "-h", "-j", where.job_id, "-o", "%L"])
        return clock_s(left or "x"), "squeue %L"
    if where.batch == "pbs":
        return pbs_time_left_s(pbs_job(), time.time()), "qstat -f"
    return None, ""


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


# ------------------------------------------------------------------- what the plan says
def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


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
                 f"model in plumbing/job_plan.py; {', '.join(per_size)})")
    return lines, seconds


def check_walltime(where: Where, seconds: float) -> str:
    """One line on the time the batch system gives the job; refuses a plan that cannot fit."""
    left, source = time_left_s(where)
    if left is None:
        return ("walltime     " + (f"not known ({where.batch} did not say): not checked"
                                   if where.batch else "none (no batch system)"))
    fail_unless(seconds <= left, f"the plan takes about {minutes(seconds)} (an estimate), "
                f"but the job has {minutes(left)} left: run fewer sizes, node counts, "
                "transports or REPEATS, or ask for a longer walltime")
    return f"walltime     {minutes(left)} left ({source}), enough for the estimate"


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
