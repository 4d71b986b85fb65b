"""DragonHPC plumbing for the Dragon scripts (7 and 8), as parsl_config.py is for Parsl's.

What lives here, so that 8_dragon_producer_consumer.py shows only its transport:

- the launch: `python 8_...` restarts itself under `dragon` ($PC_DRAGON_ARGS carries a
  multi-node launch where Dragon cannot find the allocation itself), and the node count
  the runtime will have, for the checks made before it starts;
- the data layout: the DDict value pickler (RawPairs), its sizing and placement;
- the processes: placement policies (one trainer per GPU), a process group whose
  messages the head collects (a failure or a dead process ends the run), its stop;
- DragonHPC 0.15.0's busy loops fixed in every process of the runtime (dragon_site/) where
  that helps (PC_DRAGON_FIXES below), and a read of DDict values with one copy instead of
  two (private API, version-guarded).

Environment knobs (all optional):
  PC_DRAGON_ARGS   options for the `dragon` launcher when the script starts it, e.g.
                   "-t tcp --wlm ssh --hostfile nodes.txt" (cluster/local_cluster.sh sets it).
                   Not needed on Polaris (PBS + PALS) or under Slurm: Dragon finds those.
  PC_DDICT_BYTES   a fixed DDict size in bytes instead of one sized from the data
  PC_DDICT_READ    "public": read through Dragon's documented API only (see Reader)
  PC_DRAGON_FIXES  auto (default) | on | off: dragon_site/'s fixes of DragonHPC 0.15.0
                   (docs/dragon.md). "auto" decides once, where `dragon` is started: on
                   when the runtime's nodes talk through the TCP transport agents
                   (`-t tcp` in PC_DRAGON_ARGS, or no HSTA binary), or when it is one node
                   with at most FEW_CORES (8) cores; off otherwise, so off under HSTA (e.g.
                   Polaris) and on one big node. "on"/"off" force it. Anything else is
                   refused before the runtime starts. The record's ddict.dragon_fixes says
                   what ran.
"""
from __future__ import annotations

import contextlib
import io
import os
import queue
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata

try:
    import dragon  # noqa: F401  (registers Dragon's "dragon" start method with multiprocessing)
except ImportError:
    print(f"{os.path.basename(sys.argv[0])}: error: DragonHPC is not installed in this Python "
          "(source 0_activate_env.sh, or pip install dragonhpc)", file=sys.stderr)
    sys.exit(2)
import numpy as np
from dragon.data import DDict
from dragon.data.ddict import DDictFullError
from dragon.globalservices import process as gs_process
from dragon.infrastructure.policy import Policy
from dragon.native.machine import Node, System
from dragon.native.process import ProcessTemplate
from dragon.native.process_group import ProcessGroup
from dragon.native.queue import Queue

import common

LAUNCH_ARGS_ENV = "PC_DRAGON_ARGS"
DDICT_BYTES_ENV = "PC_DDICT_BYTES"
READ_PATH_ENV = "PC_DDICT_READ"      # "public": never the one-copy read path
LAUNCHED_AT_ENV = "PC_LAUNCHED_AT"   # time.time() when a script restarted itself under Dragon
CONTROL_ENV = "PC_DRAGON_CONTROL"   # a folder the launching process and the head share
HEAD_UP, INTERRUPT, STATUS = "head-up", "interrupt", "exit-status"    # files in it
NET_CONF_SALT_ENV = "DRAGON_NET_CONF_CACHE_SALT"

MANAGERS_PER_NODE = 1       # the DDict's shards: one per node, in that node's memory
DDICT_TIMEOUT_BASE_S = 60   # a DDict operation's time limit on an idle machine (None could hang)
FULL_AT = 0.9               # a manager refuses puts once its pool is 90% used (Dragon's default)
HEADROOM = 1.3              # above that, for allocator fragmentation and bookkeeping
VALUE_OVERHEAD = 4096       # bytes per value for its key and header, generously
MIN_PER_MANAGER = 64 * 2**20    # a manager keeps its own tables in its pool too
STARTUP_TIMEOUT_S = 600     # every process imports torch and attaches to the DDict
POLL_S = 1.0                # how often the head looks at its processes while it waits
HERE = os.path.dirname(os.path.abspath(__file__))
DRAGON_SITE = os.path.join(HERE, "dragon_site")     # see dragon_site/sitecustomize.py


# --------------------------------------------------------------------------- launching
def in_runtime() -> bool:
    """True in a process that a Dragon runtime started (`dragon script.py`): it has a
    Dragon process id (DRAGON_RT_UID, also set, is missing where the only network is
    loopback)."""
    return "DRAGON_MY_PUID" in os.environ


def launch_args() -> list[str]:
    """The `dragon` launcher's options from $PC_DRAGON_ARGS (none by default)."""
    return shlex.split(os.environ.get(LAUNCH_ARGS_ENV, ""))


def relaunch_under_dragon(script: str, argv: list[str], args=None) -> None:
    """Make `python script.py ARGS` behave like `dragon $PC_DRAGON_ARGS script.py ARGS`
    (with `-N` when check_args' `args` ask for fewer nodes than there are); return only
    inside a Dragon runtime.

    Outside one, start the launcher in a process group of its own and exit with its status.
    A first Ctrl-C or SIGTERM then reaches only the script's head process (see
    link_head_to_launcher), wherever it runs, so that it cleans up (processes, DDict) and the
    runtime shuts down normally; before the head is up, and the second time, it goes to
    the launcher, which tears the runtime down.
    """
    if in_runtime():
        return
    if os.environ.get(CONTROL_ENV):
        # started by the launcher this function started, yet outside a runtime (seen with
        # Dragon 0.15 on a machine whose only network is loopback): never relaunch again
        print(f"{os.path.basename(script)}: error: Dragon's launcher started this script "
              "without a Dragon runtime (DRAGON_MY_PUID unset); see its messages above",
              file=sys.stderr, flush=True)
        sys.exit(1)
    # on the file system the head shares with this node (Dragon starts it in this directory)
    control = tempfile.mkdtemp(prefix=".pc-dragon-", dir=os.getcwd())
    env = dict(os.environ, **{LAUNCHED_AT_ENV: repr(time.time()), CONTROL_ENV: control},
               **launch_fixes_env(args.num_nodes if args is not None else None, control))
    # Dragon 0.15 leaves its network-configuration cache in each node's /tmp after an ssh
    # launch, under a new random name each run: one fixed name keeps it to one file a node
    env.setdefault(NET_CONF_SALT_ENV, "pc")
    # a process group of its own, not a session: Dragon's local services call setpgid(0, 0),
    # which fails (EPERM) in a session leader, and the launcher then waits forever
    fewer = args is not None and args.num_nodes < args.available_nodes
    nodes = ["-N", str(args.num_nodes)] if fewer else []
    launcher = subprocess.Popen([sys.executable, "-m", "dragon", *launch_plan()[0], *nodes,
                                 os.path.abspath(script), *argv], env=env, process_group=0,
                                preexec_fn=_interrupt_when_parent_dies(os.getpid()))
    interrupts = []

    def forward(signum, frame):
        interrupts.append(signum)
        if len(interrupts) == 1 and os.path.exists(os.path.join(control, HEAD_UP)):
            open(os.path.join(control, INTERRUPT), "w").close()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(launcher.pid, signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        status = launcher.wait()
        try:                                        # written by the head (run_workflow)
            with open(os.path.join(control, STATUS)) as f:
                status = int(f.read())
        except (OSError, ValueError):
            # Dragon 0.15's multi-node launcher exits with 0 whatever the head did: a head
            # that never said how it ended has failed (killed, or stopped by an interrupt)
            if interrupts:
                status = 130
            elif status == 0:
                print(f"{os.path.basename(script)}: error: the head process ended inside the "
                      "Dragon runtime without reporting how (see the lines above)",
                      file=sys.stderr, flush=True)
                status = 1
    finally:
        shutil.rmtree(control, ignore_errors=True)
    sys.exit(status if status >= 0 else 128 - status)


def _interrupt_when_parent_dies(parent: int):
    """For the launcher's Popen: the launcher gets SIGINT (and tears its runtime down) when
    the process that started it dies, e.g. SIGKILLed by `timeout --kill-after`; it runs in
    a process group of its own, so nothing else would stop it (Linux's PR_SET_PDEATHSIG)."""
    def arrange():
        import ctypes
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)    # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:                  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGINT)
    return arrange


def link_head_to_launcher(interrupts: bool = True) -> None:
    """In the head: the exit status goes back to relaunch_under_dragon() through a file
    (Dragon 0.15's multi-node launcher always exits with 0; a head that fails before this,
    e.g. refused by check_args, has its status written all the same: _status_to_launcher).
    With `interrupts`, Ctrl-C or
    SIGTERM never lands in the middle of a Dragon call (see common.defer_interrupts), and
    one that relaunch_under_dragon() received where the script was started reaches this
    head too, on whichever node it runs, through a file; without, Ctrl-C goes to Dragon's
    launcher, which stops the runtime."""
    control = _status_to_launcher()
    if interrupts:
        common.defer_interrupts()
        if control:
            open(os.path.join(control, HEAD_UP), "w").close()


def _status_to_launcher() -> str | None:
    """Inside a runtime that relaunch_under_dragon() started: run_workflow writes the head's
    exit status, however it ends, into the folder both share (returned), and its interrupt
    file counts as Ctrl-C. Done when this module is imported, so that a head refused by
    check_args reports too. Worker processes import it as well, but never run run_workflow."""
    control = os.environ.get(CONTROL_ENV)
    if not (in_runtime() and control and os.path.isdir(control)):
        return None
    common.control_files(os.path.join(control, INTERRUPT), os.path.join(control, STATUS))
    return control


_status_to_launcher()


def runtime_pythonpath(fixes: bool = True) -> str:
    """PYTHONPATH for the runtime's processes: dragon_site/ first when `fixes` (its
    sitecustomize fixes Dragon 0.15.0 in every process, Dragon's own agents included) and
    nowhere when not, then this repository, for common.py and this module."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.abspath(p) != DRAGON_SITE]
    return os.pathsep.join(dict.fromkeys([*([DRAGON_SITE] if fixes else []), HERE, *rest]))


def init_head() -> None:
    """In the head process, inside the runtime: Dragon's start method for multiprocessing,
    dragon_site's fixes here too where they are on (a head started by `dragon` itself missed
    them), and the PYTHONPATH, with or without dragon_site/, that the processes it starts
    inherit.

    Whether they are on: as relaunch_under_dragon() decided before the runtime started
    ($PC_DRAGON_FIXES_RULE); else (`dragon SCRIPT` typed by hand) on if dragon_site/ was on
    PYTHONPATH (then the whole runtime has them), else by the same rule, applied here with
    the runtime's own transport, nodes and cores: then only this head and the processes it
    starts get them, Dragon's own processes do not."""
    import multiprocessing as mp
    global _FIXES
    mp.set_start_method("dragon")
    setting = fixes_setting()
    decided = os.environ.get(FIXES_RULE_ENV, "")
    # started with dragon_site on PYTHONPATH, the launcher passed it to the whole runtime
    site_on_path = DRAGON_SITE in map(os.path.abspath, filter(
        None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    if decided.startswith(("on: ", "off: ")):
        on, rule = decided.startswith("on: "), decided.split(": ", 1)[1]
    elif site_on_path and setting != "off":
        on, rule = True, "dragon_site/ was on PYTHONPATH when `dragon` started"
    else:
        nodes = [Node(h) for h in System().nodes]
        on, rule = fixes_rule(setting, runtime_transport(), len(nodes),
                              min(n.num_cpus for n in nodes))
        if on:
            rule += " (the head and its processes only: `dragon` started without dragon_site/)"
    _FIXES = {"setting": setting, "rule": rule,
              "agents": on and site_on_path and dragon_version_patched()}
    os.environ["PYTHONPATH"] = runtime_pythonpath(on)
    if on:
        _SITE["install"]()


_FIXES = {"setting": None, "rule": "init_head() was not called", "agents": False}


def queue_poll_fixed() -> bool:
    """Whether this process runs with dragon_site's fix of Queue.poll (it waits)."""
    return bool(getattr(Queue.poll, "patched_by", None))


def queue_get_sleeps() -> bool:
    """Whether this process's Queue.get sleeps while it waits (dragon_site), not spins."""
    return bool(getattr(Queue.get, "patched_by", None))


def runtime_fixed() -> bool:
    """Whether Dragon's own processes (transport agents, services) have dragon_site's fixes
    too: yes when the rule put dragon_site/ on the launcher's PYTHONPATH (`python SCRIPT`,
    or `dragon` with dragon_site on PYTHONPATH); plain `dragon SCRIPT` fixes at most the
    head and the processes it starts."""
    return _FIXES["agents"]


def fixes_record() -> dict:
    """Which of dragon_site's fixes ran, and why: the record's ddict.dragon_fixes."""
    return {"setting": _FIXES["setting"], "rule": _FIXES["rule"],
            "queue_poll_waits": queue_poll_fixed(), "queue_get_sleeps": queue_get_sleeps(),
            "agents_fixed": runtime_fixed()}


def ddict_timeout_s(nodes: list, processes_per_node: int) -> int:
    """How long a DDict operation may take before it fails: the base limit, stretched by
    how many runnable processes (the load now plus the ones this run adds) share each core.
    A loaded or small node is slow, not broken: 2 cores at load 50 need minutes, not 60 s."""
    cpus = min(node.num_cpus for node in nodes)
    busy_per_core = (os.getloadavg()[0] + processes_per_node) / cpus
    return round(DDICT_TIMEOUT_BASE_S * max(1.0, busy_per_core))


def runtime_startup_s() -> float | None:
    """Seconds since relaunch_under_dragon() started the runtime; None when started by `dragon`."""
    launched = os.environ.get(LAUNCHED_AT_ENV)
    return time.time() - float(launched) if launched else None


def launch_plan() -> tuple[list[str], int]:
    """The options to start the `dragon` launcher with, and how many nodes its runtime will
    have (inside a runtime: how many it has).

    The launcher's own option parsing and workload manager detection decide, as they will
    when it starts: a host list, a Slurm or PBS allocation, or this node alone.
    """
    options_given = launch_args()
    if in_runtime():
        return options_given, len(System().nodes)
    from dragon.launcher import launchargs
    from dragon.launcher.util import detect_wlm
    with contextlib.redirect_stderr(io.StringIO()) as complaint:     # argparse prints usage
        try:
            options = launchargs.get_args([*options_given, "script.py"])
        except SystemExit:
            raise ValueError(complaint.getvalue().strip().splitlines()[-1]) from None
    if options.get("single_node_override"):
        return options_given, 1
    hosts = options.get("hostlist") or []
    if options.get("hostfile"):
        with open(options["hostfile"]) as f:
            hosts = [line.strip() for line in f if line.strip()]
    if not hosts:
        try:
            wlm = detect_wlm(str(options.get("wlm") or "") or None)
        except RuntimeError:
            # a workload manager's commands are here (srun on a login node, say), but this
            # is not one of its jobs: Dragon refuses to guess, so say "this node alone"
            return [*options_given, "--single-node-override"], 1
        name = getattr(wlm, "name", None)
        if name == "slurm":
            # Dragon starts its Slurm back ends on every node of the allocation (-N: on that many)
            hosts = common.slurm_hosts()
        elif name == "pbs+pals":
            hosts = common.pbs_hosts()
    count = len(dict.fromkeys(hosts)) or 1
    return options_given, min(count, options.get("node_count") or count)


def check_args(parser, argv: list[str]):
    """Refuse, in one line and before the runtime starts, what the nodes cannot hold."""
    args = parser.parse_args(argv)
    if in_runtime() and os.environ.get(common.FAIL_ENV) == "head:0":    # for the tests
        parser.error(f"failure injected through {common.FAIL_ENV}=head:0, inside the runtime")
    try:
        args.available_nodes = launch_plan()[1]
    except (OSError, RuntimeError, ValueError) as error:
        parser.error(f"{LAUNCH_ARGS_ENV}={os.environ.get(LAUNCH_ARGS_ENV, '')!r}: cannot tell "
                     f"which nodes Dragon would use ({error})")
    args = common.check_args(parser, args, available_nodes=args.available_nodes)
    if in_runtime() and args.num_nodes != args.available_nodes:
        parser.error(f"argument --num_nodes: this Dragon runtime has {args.available_nodes} "
                     f"node(s); start it with `dragon -N {args.num_nodes}` instead")
    num_nodes = args.num_nodes
    _, on_busiest_node = ddict_size(args.num_sims, args.grid_size, num_nodes)
    fixed = os.environ.get(DDICT_BYTES_ENV)
    if fixed is not None and not (fixed.isdigit() and int(fixed) >= MIN_PER_MANAGER):
        parser.error(f"{DDICT_BYTES_ENV}={fixed!r}: give the DDict's size in bytes, at least "
                     f"{MIN_PER_MANAGER}")
    trainers_here = -(-args.num_trainers // num_nodes)
    trainers_hold = trainers_here * (0.5 * common.data_bytes(args.num_sims, args.grid_size)
                                     + common.data_bytes(1, args.grid_size))
    available, shm_free = common.available_memory_bytes(), shutil.disk_usage("/dev/shm").free
    gb = common.GB
    if available and on_busiest_node + trainers_hold > 0.9 * available:
        parser.error(f"arguments --num_sims/--grid_size: the DDict needs {on_busiest_node / gb:.1f}"
                     f" GB and the trainers {trainers_hold / gb:.1f} GB on a node, but it has "
                     f"{available / gb:.1f} GB available")
    if on_busiest_node > shm_free:
        parser.error(f"arguments --num_sims/--grid_size: the DDict needs {on_busiest_node / gb:.1f}"
                     f" GB of /dev/shm on a node, but only {shm_free / gb:.1f} GB are free")
    try:
        fixes_setting()
    except ValueError as error:
        parser.error(str(error))
    return args


# --------------------------------------------------------------------------- data layout
class RawPairs:
    """DDict value pickler: a short header, then the array's bytes as they are in memory.

    The default pickler (cloudpickle) copies the array into a pickle and back out again.
    Here the bytes go out in power-of-two pieces, because a manager stores each write in
    its own power-of-two block: one 40 MiB write would take a 64 MiB block, while 4 MiB
    pieces take exactly 40 MiB, and a full DDict then fails at once instead of waiting
    for a block that never comes. At most PIECE bytes each, because a reader gets every
    piece as a new bytes object: small ones reuse the same heap memory and are still in
    the cache when copied into the array; a 32 MiB one is fresh pages every time.

    reuse=True (the trainers): load() refills one array instead of faulting in a new one
    per value, so the caller must be done with a value before it gets the next.
    """

    PIECE = 4 * 2**20   # ~1% of a 512^2 simulation's 42 MB value: few pieces, all cache-warm

    def __init__(self, reuse: bool = False):
        self.reuse = reuse
        self.array = None

    def dump(self, array: np.ndarray, file) -> None:
        header = f"{array.dtype.str} {' '.join(map(str, array.shape))}".encode()
        file.write(len(header).to_bytes(2, "little") + header)
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        start = 0
        while start < len(data):
            left = len(data) - start
            piece = min(1 << (left.bit_length() - 1), self.PIECE)   # a power of two
            file.write(data[start:start + piece])
            start += piece

    def load(self, file) -> np.ndarray:
        dtype, *shape = file.read(int.from_bytes(file.read(2), "little")).decode().split()
        shape = tuple(int(n) for n in shape)
        array = self.array
        if array is None or array.shape != shape or array.dtype != np.dtype(dtype):
            array = np.empty(shape, dtype)
            if self.reuse:
                self.array = array
        data = memoryview(array).cast("B")
        start = 0
        while start < len(data):
            piece = file.read(len(data) - start)
            if not piece:
                raise EOFError(f"value ended after {start} of {len(data)} bytes")
            data[start:start + len(piece)] = piece
            start += len(piece)
        return array


def placement(index: int, num_nodes: int) -> tuple[int, int]:
    """(node, manager on that node) of simulation `index`: round-robin over both."""
    return index % num_nodes, (index // num_nodes) % MANAGERS_PER_NODE


def ddict_size(num_sims: int, grid_size: int, num_nodes: int) -> tuple[int, int]:
    """(bytes to ask the DDict for, bytes the busiest node will actually fill)."""
    value = common.data_bytes(1, grid_size) + VALUE_OVERHEAD
    per_manager = max(Counter(placement(i, num_nodes) for i in range(num_sims)).values())
    pool = max(int(per_manager * value * HEADROOM / FULL_AT), MIN_PER_MANAGER)
    total = pool * MANAGERS_PER_NODE * num_nodes
    return total, per_manager * value * MANAGERS_PER_NODE


class Writer:
    """Puts simulations' pairs into this node's DDict managers (puts stay node-local)."""

    def __init__(self, d: DDict, num_nodes: int):
        self._num_nodes = num_nodes
        self._managers = d.local_managers
        self._stores = [d.manager(m).pickler(value_pickler=RawPairs()) for m in self._managers]

    def put(self, index: int, pairs: np.ndarray) -> str:
        """Store one simulation's pairs under its index; returns where they went."""
        _, slot = placement(index, self._num_nodes)
        self._stores[slot][index] = pairs
        return f"DDict manager {self._managers[slot]}"


class Reader:
    """Gets simulations' pairs from whichever manager holds them, into one reused array.

    Two ways, the same bytes: "public" is Dragon's documented get with the RawPairs
    pickler, which receives every piece as a new bytes object and copies it into the
    array (two copies); "one-copy" receives each piece straight into the array (one copy),
    through Dragon 0.15 internals (see the end of this module). PC_DDICT_READ=public
    forces the first; `path` says which one runs.
    """

    def __init__(self, d: DDict):
        self._loader = RawPairs(reuse=True)        # TrainingData.add() copies each value at once
        self._stores = [d.manager(m).pickler(value_pickler=self._loader)
                        for m in range(len(d.stats))]
        for store in self._stores:
            _ = -1 in store                        # connect to every manager now, not while timed
        self.path = read_path()
        self._one_copy = self.path == "one-copy"

    def get(self, sim: common.SimReport) -> np.ndarray:
        store = self._stores[int(sim.location.split()[-1])]    # written by Writer.put
        if self._one_copy:
            return _get_into(store, sim.index, self._loader)
        return store[sim.index]


def read_path() -> str:
    """Which way Reader gets values here: "one-copy", or "public" (forced or the fallback)."""
    forced = os.environ.get(READ_PATH_ENV, "") == "public"
    return "public" if forced or not one_copy_supported() else "one-copy"


def describe(d: DDict, requested: int, timeout_s: int) -> dict:
    """The DDict's facts for the run's record."""
    managers = d.stats
    return {"managers": len(managers), "managers_per_node": MANAGERS_PER_NODE,
            "manager_hosts": [m.hostname for m in managers], "requested_bytes": requested,
            "pool_bytes": sum(m.total_bytes for m in managers),
            "used_bytes": sum(m.total_used_bytes for m in managers),
            "keys": sum(m.num_keys for m in managers),
            "keys_per_manager": [m.num_keys for m in managers], "timeout_s": timeout_s,
            "dragon_fixes": fixes_record(),
            "read_path": read_path(),
            "layout": "one value per simulation, key = index, raw float64 bytes in "
                      "power-of-two pieces, written to a manager on the simulation's node, "
                      "frozen before the trainers read"}


# --------------------------------------------------------------------------- processes
def on(hostname: str, gpu: int | None = None) -> Policy:
    """Place a process on one node (and give it one GPU)."""
    return Policy(placement=Policy.Placement.HOST_NAME, host_name=hostname,
                  gpu_affinity=[] if gpu is None else [gpu])


def trainer_policies(hosts: list[str], num_trainers: int, gpus_per_node: int) -> list[Policy]:
    """One trainer per GPU, spread over the nodes first (GPU 0 of every node, then GPU 1...);
    round-robin over the nodes where they have no GPUs. check_args refused more trainers
    than GPUs already; the count is common.gpus_per_node(), as Parsl's."""
    if gpus_per_node:
        if num_trainers > gpus_per_node * len(hosts):
            raise common.TaskFailed(f"{num_trainers} trainers asked for, but one per GPU is "
                                    f"the rule and the nodes have {gpus_per_node * len(hosts)}")
        return [on(hosts[rank % len(hosts)], rank // len(hosts)) for rank in range(num_trainers)]
    return [on(hosts[rank % len(hosts)]) for rank in range(num_trainers)]


@contextlib.contextmanager
def reporting(outbox: Queue, d: DDict, task: list):
    """In a worker process: any exception becomes one 'failed' message naming task[0]
    (the caller updates it as it goes), and the DDict is detached on the way out. The
    process is named after task[0] too, e.g. `pc: trainer 1` in ps and top."""
    with contextlib.suppress(ImportError):
        import setproctitle
        setproctitle.setproctitle(f"pc: {task[0]}")
    try:
        yield
    except Exception as error:
        why = f"{type(error).__name__}: {' '.join(str(error).split())}"    # one line
        if isinstance(error, DDictFullError):
            why = "no room left in the DDict: " + why
        outbox.put(("failed", f"{task[0]} failed: {why}"))
    finally:
        d.detach()


class Workflow:
    """The runtime's nodes, the DDict, the queues and one process group for a run.

    Processes report to the head through `outbox` as tuples (kind, payload); the head
    answers through `go` (start simulating), `inbox` (the trainers' manifest) and `done`
    (every process may exit: none exits while others still read).
    """

    def __init__(self, args, run_dir: str, cleanup: contextlib.ExitStack):
        self.nodes = [Node(h) for h in System().nodes]
        self.hosts = [socket.gethostname() if n.hostname == "localhost" else n.hostname
                      for n in self.nodes]
        self.trainer_policies = trainer_policies([n.hostname for n in self.nodes],
                                                 args.num_trainers, common.gpus_per_node())
        cpus = min(n.num_cpus for n in self.nodes)
        self.sims_per_node = min(-(-args.num_sims // len(self.nodes)), cpus)
        self.num_sim_workers = self.sims_per_node * len(self.nodes)
        trainers_on = Counter(p.host_name for p in self.trainer_policies)
        # CPU trainers sharing a node share its cores; GPU trainers need no CPU threads
        self.cpu_threads = [0 if p.gpu_affinity else max(1, cpus // trainers_on[p.host_name])
                            for p in self.trainer_policies]
        self.go, self.inbox, self.outbox, self.done = Queue(), Queue(), Queue(), Queue()
        for q in (self.go, self.inbox, self.outbox, self.done):
            cleanup.callback(q.destroy)
        start = time.perf_counter()
        self.ddict_bytes = int(os.environ.get(DDICT_BYTES_ENV) or
                               ddict_size(args.num_sims, args.grid_size, len(self.nodes))[0])
        self.ddict_timeout_s = ddict_timeout_s(
            self.nodes, self.sims_per_node + max(trainers_on.values()) + MANAGERS_PER_NODE)
        with _deadline(self.ddict_timeout_s, "the DDict's orchestrator never answered"):
            self.ddict = DDict(MANAGERS_PER_NODE, len(self.nodes), self.ddict_bytes,
                               timeout=self.ddict_timeout_s, persist_path=run_dir)  # not the cwd
        cleanup.callback(self.ddict.destroy)
        self.ddict_create_s = time.perf_counter() - start
        self.group = ProcessGroup(restart=False, ignore_error_on_exit=True)
        self._cleanup = cleanup

    def __str__(self) -> str:
        managers = self.ddict.stats
        return (f"DDict of {sum(m.total_bytes for m in managers) / common.GB:.3f} GB on "
                f"{len(managers)} manager(s) ({', '.join(m.hostname for m in managers)}) "
                f"in {self.ddict_create_s:.2f} s")

    def add(self, target, *args, policy: Policy) -> None:
        self.group.add_process(1, ProcessTemplate(target, args=args, policy=policy))

    def sim_worker_policy(self, worker: int) -> Policy:
        return on(self.nodes[worker % len(self.nodes)].hostname)

    def start(self) -> None:
        self.group.init()
        self._cleanup.push(lambda kind, error, tb: self._end(error))    # sees the error, if any
        self.group.start()
        self._puids = self.group.puids

    def _died(self) -> list[int]:
        """Exit codes of the group's processes that ended badly. Asked of Global Services:
        the group's own exit_status does not see a process killed from outside (0.15)."""
        exited, _ = gs_process.multi_join(self._puids, timeout=0, join_all=False)
        return [code for _, code in exited or [] if code != 0]

    def _end(self, error) -> None:
        """After a clean run the processes return by themselves; after an error, signal
        whatever still runs."""
        try:
            if error is None:
                self.group.join(timeout=30)
        except TimeoutError:
            error = TimeoutError("processes still running")
        if error is not None:
            self.group.stop(patience=2)
        self.group.close()

    def collect(self, kind: str, count: int, timeout: float | None = None,
                progress: str | None = None) -> list:
        """The next `count` messages of `kind`; a failure report, a dead process or
        Ctrl-C ends the run. `progress` names what is counted in the progress lines."""
        deadline = None if timeout is None else time.monotonic() + timeout
        counter = common.Progress(progress, count) if progress else None
        found = []
        while len(found) < count:
            common.raise_if_interrupted()           # Ctrl-C lands here, between requests
            try:
                message = self.outbox.get(timeout=POLL_S)
            except queue.Empty:
                crashed = self._died()
                if crashed:
                    raise common.TaskFailed(f"a Dragon process died with exit status "
                                            f"{crashed[0]} without reporting why")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(found)} of {count} {kind} messages in "
                                       f"{timeout} s")
                continue
            finally:
                if counter:
                    counter.update(len(found))
            if message[0] == "failed":
                raise common.TaskFailed(message[1])
            if message[0] != kind:
                raise RuntimeError(f"expected a {kind!r} message, got {message[0]!r}")
            found.append(message[1:] if len(message) > 2 else message[1])
        return found


@contextlib.contextmanager
def _deadline(seconds: float, what: str):
    """TimeoutError after `seconds` in the block (main thread only). DragonHPC 0.15's DDict
    constructor waits without a limit for its orchestrator process to answer; where that
    process never starts (seen now and then on the 2-core test machine), the run must fail
    with a line, not hang."""
    def expire(signum, frame):
        raise TimeoutError(f"{what} within {seconds:.0f} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def workflow(args, run_dir: str):
    """Nodes, DDict, queues and process group; on the way out (also after an error or
    Ctrl-C) the processes are stopped, then the DDict and the queues destroyed."""
    with contextlib.ExitStack() as cleanup:     # undone in reverse order
        yield Workflow(args, run_dir, cleanup)


# --------------------------------------------------------------------------- DragonHPC 0.15
# dragon_site/sitecustomize.py's constants, read from the file itself: one copy of each
_SITE = runpy.run_path(os.path.join(DRAGON_SITE, "sitecustomize.py"), run_name="dragon_site")
PATCHED_VERSIONS = _SITE["PATCHED_VERSIONS"]    # exact versions the fixes were measured on
FIXES_ENV = _SITE["SWITCH_ENV"]                 # PC_DRAGON_FIXES: auto | on | off
FIXES_SETTINGS = ("auto", "on", "off")
FIXES_RULE_ENV = "PC_DRAGON_FIXES_RULE"         # "on: why" / "off: why", launcher to head
FEW_CORES = 8       # a node of at most this many cores gets the fixes (docs/dragon.md)


def dragon_version_patched() -> bool:
    """Whether this DragonHPC is exactly a version dragon_site's fixes were measured on."""
    return metadata.version("dragonhpc") in PATCHED_VERSIONS


def fixes_setting() -> str:
    """$PC_DRAGON_FIXES: "auto" (also when unset or empty), "on" or "off"; ValueError else."""
    value = os.environ.get(FIXES_ENV, "").strip().lower() or "auto"
    if value not in FIXES_SETTINGS:
        raise ValueError(f"{FIXES_ENV}={os.environ[FIXES_ENV]!r}: give auto, on or off")
    return value


def fixes_rule(setting: str, transport: str | None, nodes: int, cores: int) -> tuple[bool, str]:
    """Whether a runtime gets dragon_site's fixes, and why: `transport` between its nodes
    ("tcp" or "hsta"), its node count, and the cores of one node.

    The fixes stop Dragon 0.15.0's spinning (TCP agents 40-70% of a core each, idle; a
    DDict's orchestrator a whole core) but make every Queue wait that has idled past ~30 ms
    see its message up to 20 ms late, in Dragon's own control plane too. So: on with the
    TCP agents; off under HSTA (it has no such agent, and its Python wrapper's queues are
    patched too); on one node, on when the spinning is a large share of its cores."""
    if setting != "auto":
        return setting == "on", f"{FIXES_ENV}={setting}"
    if nodes > 1 and transport == "tcp":
        return True, f"auto: {nodes} nodes over the TCP transport agents, which spin without them"
    if nodes > 1:
        return False, (f"auto: {nodes} nodes over {transport}: no TCP agents to calm, and "
                       f"Dragon's control plane keeps its own waits")
    if cores <= FEW_CORES:
        return True, (f"auto: one node of {cores} cores (at most {FEW_CORES}): Dragon's "
                      f"spinning would take a large share of them")
    return False, (f"auto: one node of {cores} cores (more than {FEW_CORES}): Dragon's "
                   f"spinning costs little there")


def runtime_transport() -> str:
    """The transport agent between the nodes of the runtime `dragon` will start with
    $PC_DRAGON_ARGS (inside a runtime: the one it has): "tcp" or "hsta", as Dragon's
    launcher decides it (HSTA by default, TCP when asked or without the HSTA binary)."""
    from dragon.infrastructure import facts
    if in_runtime() and os.environ.get(facts.env_name("TRANSPORT_AGENT")):
        return os.environ[facts.env_name("TRANSPORT_AGENT")]
    from dragon.launcher import launchargs
    with contextlib.redirect_stderr(io.StringIO()):          # argparse prints usage
        try:
            chosen = launchargs.get_args([*launch_args(), "script.py"]).get("transport")
        except SystemExit:
            chosen = None
    if chosen is None or chosen is facts.TransportAgentOptions.DRAGON_CONFIG:
        return "hsta" if facts.HSTA_BINARY.is_file() else "tcp"
    return str(chosen)


def fixes_for_launch(nodes: int | None = None) -> tuple[bool, str]:
    """The rule, decided once where `dragon` is started (relaunch_under_dragon, or the main
    job's DRAGON_LAUNCH=dragon line): its launch options, `nodes` (None: as launch_plan()
    counts them) and this node's cores. ValueError for a bad $PC_DRAGON_FIXES."""
    setting = fixes_setting()
    if setting != "auto":
        return fixes_rule(setting, None, 0, 0)
    return fixes_rule(setting, runtime_transport(), nodes or launch_plan()[1],
                      len(os.sched_getaffinity(0)))


def launch_fixes_env(nodes: int | None = None, made: str | None = None) -> dict:
    """The launcher's PYTHONPATH (with dragon_site/ or without) and $PC_DRAGON_FIXES_RULE,
    the decision, for the head's record. A bad $PC_DRAGON_FIXES ends the script here, in
    one line, after removing the (empty) folder `made` (check_args refuses it earlier)."""
    try:
        on, rule = fixes_for_launch(nodes)
    except ValueError as error:
        if made:
            shutil.rmtree(made, ignore_errors=True)
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        sys.exit(2)
    return {"PYTHONPATH": runtime_pythonpath(on),
            FIXES_RULE_ENV: f"{'on' if on else 'off'}: {rule}"}


# The one-copy read (Reader): Dragon's get, as DDict.__getitem__ does it in 0.15, except
# that the value's pieces are received into the caller's array (FLIRecvH.recv_bytes_into)
# instead of being handed to the pickler as new bytes objects. Private attributes of the
# DDict client: only on the versions it was checked on, else the public get runs.
def one_copy_supported() -> bool:
    if not dragon_version_patched():
        return False
    from dragon import fli
    return hasattr(fli.FLIRecvH, "recv_bytes_into") and all(
        hasattr(DDict, name) for name in ("_choose_manager_pickle_key", "_tag_inc", "_send",
                                          "_check_manager_connection"))


def _get_into(store: DDict, key, loader: RawPairs) -> np.ndarray:
    from dragon.data.ddict.ddict import DDictError, DDictKeyError
    from dragon.dtypes import DragonError
    from dragon.infrastructure import messages as dmsg
    manager, pickled_key = store._choose_manager_pickle_key(key)
    request = dmsg.DDGet(store._tag_inc(), store._client_id, chkptID=store._chkpt_id,
                         key=pickled_key)
    store._check_manager_connection(manager)
    store._send([(request, None)], store._managers[manager], buffered=True)
    timeout = store._timeout
    with store._return_connector.recvh(use_main_as_stream_channel=True,
                                       timeout=timeout) as recvh:
        while True:                                 # as Dragon does: skip stale replies
            reply = dmsg.parse(recvh.recv_bytes(timeout=timeout)[0])
            if reply.ref == request.tag:
                break
        if reply.err == DragonError.KEY_NOT_FOUND:
            raise DDictKeyError(reply.err, "The key was not found", key)
        if reply.err != DragonError.SUCCESS:
            raise DDictError(reply.err, reply.errInfo)
        # a frozen manager on this node lends its own memory: it must not be freed here
        free = reply.freeMem or manager not in store._local_managers
        head = recvh.recv_bytes(free_mem=free, timeout=timeout)[0]
        dtype, *shape = head[2:2 + int.from_bytes(head[:2], "little")].decode().split()
        shape = tuple(int(n) for n in shape)
        array = loader.array
        if array is None or array.shape != shape or array.dtype != np.dtype(dtype):
            array = loader.array = np.empty(shape, dtype)
        data = memoryview(array).cast("B")
        start = 0
        while start < len(data):                    # the pieces RawPairs.dump wrote
            left = len(data) - start
            piece = min(1 << (left.bit_length() - 1), RawPairs.PIECE)
            recvh.recv_bytes_into(data[start:start + piece], free_mem=free, timeout=timeout)
            start += piece
    return array
