"""Starting Dragon for scripts 7 and 8 with one call, run(main): `python 8_...` restarts
itself under Dragon's launcher and waits for it; the head process inside the runtime is
linked back to it (Ctrl-C in, exit status out, on any node); a runtime that fails before
any work began is started once more, visibly; the checks that need the runtime's node count
are made before it starts. Importing this module does nothing else.

PC_DRAGON_ARGS   options for the `dragon` launcher when the script starts it, e.g.
                 "-t tcp --wlm ssh --hostfile nodes.txt" (cluster/local_cluster.sh sets it).
                 Not needed on Polaris (PBS + PALS) or under Slurm: Dragon finds those.
PC_DRAGON_FIXES  see dragon_fixes.py.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import faulthandler
import importlib.util
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import common
from plumbing import cli, ddict_io, dragon_fixes, lifecycle
from plumbing import hosts as allocation
from plumbing.records import GB

LAUNCH_ARGS_ENV = "PC_DRAGON_ARGS"
LAUNCHED_AT_ENV = "PC_LAUNCHED_AT"   # time.time() when a script restarted itself under Dragon
CONTROL_ENV = "PC_DRAGON_CONTROL"   # a folder the launching process and the head share
RETRIED_ENV = "PC_DRAGON_RETRIED"   # why the first start failed, in the second one
# files in the control folder: the head is up and takes interrupts through INTERRUPT; its exit
# status; its first task started; it failed in Dragon's start-up (the reason, one line)
HEAD_UP, INTERRUPT, STATUS, WORK_BEGAN, START_FAILED = (
    "head-up", "interrupt", "exit-status", "work-began", "start-failed")
NET_CONF_SALT_ENV = "DRAGON_NET_CONF_CACHE_SALT"
SHM = "/dev/shm"                     # where Dragon's pools (and the DDict's) live on a node
ALLOCATION_ENV = ("PBS_JOBID", "PBS_NODEFILE", "SLURM_JOB_ID")
# a runtime shuts down within seconds of its head's end; $PC_DRAGON_SHUTDOWN_PATIENCE_S gives
# it more (many nodes) or less (the test of a runtime that never ends)
SHUTDOWN_PATIENCE_ENV = "PC_DRAGON_SHUTDOWN_PATIENCE_S"
SHUTDOWN_PATIENCE_S = 60


class CannotLaunch(ValueError):
    """Dragon's launcher could not start on the nodes of this job (launch_plan)."""


class DragonStalled(TimeoutError):
    """A Dragon call that did not return within its deadline (dragon_setup's DDict creation)."""


@dataclasses.dataclass
class Launch:
    """What the head knows of its runtime's start, for its output and its record."""
    runtime_startup_s: float | None     # None where `dragon` was started by hand
    first_failure: str | None = None    # why the first start failed, where it was retried

    def record(self) -> dict:
        return {"runtime_startup_s": self.runtime_startup_s,
                "runtime_starts": 1 if self.first_failure is None else 2,
                "runtime_first_failure": self.first_failure}


def run(main, parser=None) -> None:
    """The one call of a Dragon script: main() runs in the head process of a Dragon runtime,
    started by this call when the script was started with `python`.

    With `parser` (8): the arguments are checked before the runtime starts and again in the
    head, and main(args, launch) is called; the head takes Ctrl-C between Dragon calls only
    (lifecycle.defer_interrupts). Without (7): main() is called, and Ctrl-C goes to Dragon's
    launcher, which stops the runtime. Every error ends the script with one line
    (lifecycle.run_workflow)."""
    script = main.__code__.co_filename

    def started():
        launch = start(script, parser, sys.argv[1:])
        if parser is None:
            work_begins()       # 7 says nothing of its tasks: all of main() counts as work
            return _in_head(main) or 0
        return _in_head(main, *launch)
    lifecycle.run_workflow(started)


def start(script: str, parser, argv: list[str]):
    """Outside a runtime: check, start the runtime and exit with its status (never returns).
    In the head: link it to the launching process, check the arguments again, set up the
    head; return (args, Launch), or Launch alone without a parser."""
    if importlib.util.find_spec("dragon") is None:
        print(f"{os.path.basename(script)}: error: DragonHPC is not installed in this Python "
              "(source 0_activate_env.sh, or pip install dragonhpc)", file=sys.stderr)
        sys.exit(2)
    if not in_runtime():
        args = check_args(parser, argv) if parser else _check_launch(script)
        sys.exit(relaunch_under_dragon(script, argv, args))
    control = _control_folder()
    if control:                 # a head refused by check_args reports its status too
        lifecycle.control_files(os.path.join(control, INTERRUPT), os.path.join(control, STATUS))
        if injected("runtime"):
            _signal_launcher(control, signal.SIGSEGV)
            time.sleep(120)             # stopped with the rest of the runtime
        if injected("shutdown"):
            atexit.register(_signal_launcher, control, signal.SIGSTOP)
    args = check_args(parser, argv) if parser else None
    if parser:
        lifecycle.defer_interrupts()
        if control:
            _touch(control, HEAD_UP)
    init_head()
    launched = os.environ.get(LAUNCHED_AT_ENV)
    launch = Launch(time.time() - float(launched) if launched else None,
                    os.environ.get(RETRIED_ENV) or None)
    return (args, launch) if parser else launch


def _check_launch(script: str) -> None:
    """For a script without check_args (7): a launch that cannot work ends it in one line."""
    try:
        launch_plan()
        shutdown_patience_s()
    except ValueError as error:
        print(f"{os.path.basename(script)}: error: {error}", file=sys.stderr)
        sys.exit(2)


def injected(kind: str) -> bool:
    """For the tests: whether $PC_INJECT_FAILURE makes this start of the runtime fail at
    `kind` ("runtime": Dragon's launcher crashes; "ddict": the DDict's creation stalls;
    "shutdown": the runtime never shuts down after the head ends): `kind`:0 in the first
    start only, `kind`:all in every start."""
    value = os.environ.get(common.FAIL_ENV)
    return value == f"{kind}:all" or value == f"{kind}:0" and not os.environ.get(RETRIED_ENV)


def _signal_launcher(control: str, signum: int) -> None:
    """In the head: send Dragon's launcher `signum` (SIGSEGV: as its own crashes end it;
    SIGSTOP: it never ends). A SIGSTOP is sent until the launcher shows it stopped, before
    the head goes on to its exit: one sent just as the head exits does not always stop it."""
    for pid in runtime_processes(control):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:3] == [b"-m", b"dragon"]:
                    os.kill(pid, signum)
                    for _ in range(50 if signum == signal.SIGSTOP else 0):
                        time.sleep(0.1)
                        if lifecycle.process_state(pid) == "T":
                            break
                        os.kill(pid, signum)


def runtime_processes(control: str) -> list[int]:
    """Pids of this node's processes of the runtime started with the control folder `control`
    (they all inherit it in their environment from Dragon's launcher)."""
    needle = f"{CONTROL_ENV}={control}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
    return found


def in_runtime() -> bool:
    """True in a process that a Dragon runtime started (`dragon script.py`): it has a
    Dragon process id (DRAGON_RT_UID, also set, is missing where the only network is
    loopback)."""
    return "DRAGON_MY_PUID" in os.environ


def _control_folder() -> str | None:
    """Inside a runtime that relaunch_under_dragon() started: the folder it shares with the
    launching process (worker processes inherit the variable but never use it)."""
    control = os.environ.get(CONTROL_ENV)
    return control if in_runtime() and control and os.path.isdir(control) else None


def _touch(folder: str, name: str, text: str = "") -> None:
    with contextlib.suppress(OSError), open(os.path.join(folder, name), "w") as f:
        f.write(text)


_work_began = False


def work_begins() -> None:
    """In the head, as it starts its first task: from here on no failure starts the runtime
    again (dragon_setup.Workflow.start says it for 8)."""
    global _work_began
    _work_began = True
    control = _control_folder()
    if control:
        _touch(control, WORK_BEGAN)


def _in_head(main, *args):
    """main(*args); where it fails inside Dragon before any work began (a DDict that could not
    be created, say), the launching process is told so, and starts the runtime again."""
    try:
        return main(*args)
    except Exception as error:
        control = _control_folder()
        if control and not _work_began and _failed_in_dragon(error):
            why = f"{type(error).__name__}: {' '.join(str(error).split())}"
            _touch(control, START_FAILED, why[:300])
        raise


def _failed_in_dragon(error: BaseException) -> bool:
    """Whether `error` is Dragon's: a Dragon call past its deadline, or raised in Dragon's code."""
    if isinstance(error, DragonStalled):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    dragon = os.path.dirname(importlib.util.find_spec("dragon").origin)
    return bool(frames) and frames[-1].filename.startswith(dragon + os.sep)


def launch_args() -> list[str]:
    """The `dragon` launcher's options from $PC_DRAGON_ARGS (none by default)."""
    return shlex.split(os.environ.get(LAUNCH_ARGS_ENV, ""))


def relaunch_under_dragon(script: str, argv: list[str], args=None) -> int:
    """Run `dragon $PC_DRAGON_ARGS script.py ARGS` (with `-N` when check_args' `args` ask
    for fewer nodes than there are) and return its exit status; where it failed before any
    work began and not by an interrupt, say so in one line and run it once more.

    Outside a runtime only. Dragon's launcher runs in a process group of its own: a first
    Ctrl-C or SIGTERM then reaches only the script's head process (through a file, see
    _launch_once), wherever it runs, so that it cleans up (processes, DDict) and the runtime
    shuts down normally; before the head is up, and the second time, it goes to the
    launcher, which tears the runtime down."""
    if os.environ.get(CONTROL_ENV):
        # started by the launcher that this function started, yet outside a runtime: never
        # relaunch again
        print(f"{os.path.basename(script)}: error: Dragon's launcher started this script "
              "without a Dragon runtime (DRAGON_MY_PUID unset); see its messages above",
              file=sys.stderr, flush=True)
        return 1
    status, failure = _launch_once(script, argv, args)
    if failure is None:
        return status
    print(f"{os.path.basename(script)}: starting Dragon's runtime again, once: it failed "
          f"before any work began ({failure})", file=sys.stderr, flush=True)
    return _launch_once(script, argv, args, first_failure=failure)[0]


def _launch_once(script: str, argv: list[str], args, first_failure: str | None = None):
    """One start of Dragon's launcher, waited for: (exit status, why it failed where that
    was before any work began and may be retried, else None)."""
    # on the file system the head shares with this node (Dragon starts it in this directory)
    control = tempfile.mkdtemp(prefix=".pc-dragon-", dir=os.getcwd())
    env = _launcher_env(args, control, first_failure)
    fewer = args is not None and args.num_nodes < args.available_nodes
    nodes = first_nodes_args(args.num_nodes, control) if fewer else []
    pools_before = set(os.listdir(SHM))
    # a process group of its own, not a session: Dragon's local services call setpgid(0, 0),
    # which fails (EPERM) in a session leader, and the launcher then waits forever
    launcher = subprocess.Popen([sys.executable, "-m", "dragon", *launch_plan()[0], *nodes,
                                 os.path.abspath(script), *argv], env=env, process_group=0,
                                preexec_fn=lifecycle.signal_when_parent_dies(signal.SIGINT))
    interrupts = _forward_interrupts(launcher, control)
    try:
        status, stuck = _wait_for(launcher, control)
        crash = (launcher_crashed(signal.Signals(-status), pools_before, control)
                 if status < 0 and not stuck else None)
        if stuck:
            _stop_stuck_runtime(script, launcher, control, pools_before)
        written = _read(control, STATUS)            # the head's own status (run_workflow)
        began = os.path.exists(os.path.join(control, WORK_BEGAN))
        failure = crash or _read(control, START_FAILED)
    finally:
        shutil.rmtree(control, ignore_errors=True)
    if written is not None and written.strip().lstrip("-").isdigit():
        status = int(written)
    elif interrupts:
        status = 130
    elif crash:
        status = 128 - status
    else:
        # Dragon 0.15's multi-node launcher exits with 0 whatever the head did: a head that
        # never said how it ended has failed (killed, or never started: a runtime that
        # failed to start ends with Dragon's traceback)
        failure = (f"the head process never reported how it ended (Dragon's launcher exited "
                   f"with status {status}; Dragon's messages are above)")
        status = status or 1
    retry = failure is not None and not (interrupts or began or first_failure)
    if failure is not None and not retry and (crash or written is None):
        print(f"{os.path.basename(script)}: error: {failure}", file=sys.stderr, flush=True)
    return status, failure if retry else None


def _wait_for(launcher: subprocess.Popen, control: str) -> tuple[int, bool]:
    """The launcher's exit status, and whether it was still running SHUTDOWN_PATIENCE_S after
    the head had written its own (then its runtime is stuck in its shut-down: Dragon's
    threads waiting for a lock of a killed process, say)."""
    ended, patience = None, shutdown_patience_s()
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return launcher.wait(timeout=1), False
        if ended is None and os.path.exists(os.path.join(control, STATUS)):
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > patience:
            return launcher.poll() or 0, True


def shutdown_patience_s() -> float:
    """How long a runtime may take to go down after its head ended (SHUTDOWN_PATIENCE_ENV)."""
    value = os.environ.get(SHUTDOWN_PATIENCE_ENV, "").strip() or str(SHUTDOWN_PATIENCE_S)
    with contextlib.suppress(ValueError):
        if float(value) > 0:
            return float(value)
    raise ValueError(f"{SHUTDOWN_PATIENCE_ENV}={value!r}: give a number of seconds above 0")


def _stop_stuck_runtime(script: str, launcher: subprocess.Popen, control: str,
                        pools_before: set) -> None:
    """Stop a runtime whose head has ended but which does not shut down: SIGINT to the
    launcher (Dragon's own tear-down), then SIGKILL to what is left of it on this node, and
    its pools; one line says so."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(launcher.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        launcher.wait(timeout=min(30.0, shutdown_patience_s()))
    with contextlib.suppress(ProcessLookupError):
        launcher.kill()
    launcher.wait()
    print(f"{os.path.basename(script)}: warning: Dragon's runtime did not shut down within "
          f"{shutdown_patience_s():g} s after the head ended; "
          f"{clear_remains(pools_before, control)}", file=sys.stderr, flush=True)


def _launcher_env(args, control: str, first_failure: str | None) -> dict:
    """The environment of Dragon's launcher, which every process of the runtime inherits."""
    env = dict(os.environ, **{LAUNCHED_AT_ENV: repr(time.time()), CONTROL_ENV: control},
               **launch_fixes_env(args.num_nodes if args is not None else None, control),
               **cleanup_hosts_env(control))
    if first_failure:
        env[RETRIED_ENV] = first_failure
    env["PYTHONFAULTHANDLER"] = "1"     # a crashing process prints its Python stack
    # Dragon leaves its network-configuration cache in each node's /tmp after an ssh launch,
    # under a new random name each run: one fixed name keeps it to one file a node
    env.setdefault(NET_CONF_SALT_ENV, "pc")
    return env


def _forward_interrupts(launcher: subprocess.Popen, control: str) -> list:
    """SIGINT and SIGTERM of this process, from now on: the first one to the head (a file
    in `control`) once it is up, else, and the second time, to Dragon's launcher. Returns
    the list of those received so far."""
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
    return interrupts


def _read(folder: str, name: str) -> str | None:
    try:
        with open(os.path.join(folder, name)) as f:
            return f.read()
    except OSError:
        return None


def launcher_crashed(killed_by: signal.Signals, pools_before: set,
                     control: str | None = None) -> str:
    """Dragon's launcher died of a signal (taking the head's buffered output with it, and
    leaving its runtime's processes and pools): clear what is left of it on this node
    (clear_remains). Returns the one line that says so."""
    return (f"Dragon's launcher died of {killed_by.name} (a crash of DragonHPC itself; the "
            f"head's output may be lost with it); {clear_remains(pools_before, control)}")


def clear_remains(pools_before: set, control: str | None) -> str:
    """Stop what is left on this node of a runtime whose launcher has ended (the processes
    started with the control folder `control`), then remove Dragon's pools in this node's
    /dev/shm that appeared since the launch and that no process maps any more (another
    run's pools are mapped, so they stay). Returns what was done, in words."""
    from dragon.infrastructure.facts import DEFAULT_POOL_NAME_BASE
    remains = runtime_processes(control) if control else []
    for pid in remains:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(lifecycle.process_state(pid) not in (None, "Z") for pid in remains) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    # Dragon's memory library names a pool's two files "D" + the pool's name + "M" or "D";
    # the runtime's and the DDict's pool names start with DEFAULT_POOL_NAME_BASE
    new = {name for name in set(os.listdir(SHM)) - pools_before
           if name.startswith("D" + DEFAULT_POOL_NAME_BASE)}
    removed = []
    for name in sorted(new - _mapped_in(SHM)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM, name))
            removed.append(name)
    return (f"stopped {len(remains)} process(es) of its runtime and removed {len(removed)} "
            f"file(s) of its pools from {SHM}")


def _mapped_in(directory: str) -> set:
    """Names of the files in `directory` that some process of this node maps."""
    mapped = set()
    prefix = directory.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(maxsplit=5)[5:]
                    if path and path[0].startswith(prefix):
                        mapped.add(path[0][len(prefix):].split(" (deleted)")[0])
    return mapped


def launch_options() -> dict:
    """$PC_DRAGON_ARGS as the `dragon` launcher's own option parser reads them; ValueError
    with its complaint where it refuses them."""
    from dragon.launcher import launchargs
    with contextlib.redirect_stderr(io.StringIO()) as complaint:     # argparse prints usage
        try:
            return launchargs.get_args([*launch_args(), "script.py"])
        except SystemExit:
            raise ValueError(complaint.getvalue().strip().splitlines()[-1]) from None


def cleanup_hosts_env(folder: str) -> dict:
    """For an ssh launch (`--wlm ssh` with a host file or list): $DRAGON_RUN_NODEFILE, the
    one place where Dragon's clean-up after a failed start (`dragon-cleanup`, run by the
    launcher) finds the nodes; without it, where Slurm is installed, that clean-up finds
    Slurm without an allocation, gives up, and the runtime stays up on every node. Only
    for ssh launches: the variable also makes Dragon's launcher prefer its host list to a
    Slurm or PBS allocation. A host list is written into `folder`."""
    options = ssh_launch_options()
    if options.get("hostfile"):
        return {"DRAGON_RUN_NODEFILE": os.path.abspath(options["hostfile"])}
    if options.get("hostlist"):
        return {"DRAGON_RUN_NODEFILE": write_host_file(folder, "hosts", options["hostlist"])}
    return {}


def write_host_file(folder: str, name: str, hosts: list[str]) -> str:
    """A host file (one host a line) named `name` in `folder`; its path."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("\n".join(hosts) + "\n")
    return path


def ssh_launch_options() -> dict:
    """The launcher's options if it starts the runtime over ssh (`--wlm ssh`); else {}."""
    try:
        options = launch_options()
    except ValueError:
        return {}
    return options if str(options.get("wlm")) == "ssh" else {}


def listed_hosts(options: dict) -> list[str]:
    """The hosts the launcher's options name (--hostlist, or --hostfile's lines); [] if none."""
    if options.get("hostlist"):
        return list(options["hostlist"])
    if options.get("hostfile"):
        with open(options["hostfile"]) as f:
            return [line.strip() for line in f if line.strip()]
    return []


def first_nodes_args(count: int, folder: str) -> list[str]:
    """Launcher options, after $PC_DRAGON_ARGS, that start the runtime on `count` nodes: for
    an ssh launch the first `count` of its hosts (a host file of them, written into
    `folder`), so that a 1-node run is on the node it was started on: Dragon keeps an ssh
    launch's hosts in a set, and `-N` takes any `count` of them. Elsewhere `-N count`."""
    options = ssh_launch_options()
    hosts = listed_hosts(options)
    if not hosts:
        return ["-N", str(count)]
    first = list(dict.fromkeys(hosts))[:count]
    if options.get("hostlist"):             # the same option again: the last one counts
        return ["--hostlist", ",".join(first)]
    return ["--hostfile", write_host_file(folder, "first-hosts", first)]


def in_allocation() -> str | None:
    """The variable that shows this is a PBS or Slurm job, or None outside one."""
    return next((name for name in ALLOCATION_ENV if os.environ.get(name)), None)


def launch_plan() -> tuple[list[str], int]:
    """The options to start the `dragon` launcher with, and how many nodes its runtime will
    have (inside a runtime: how many it has).

    The launcher's own option parsing and workload manager detection decide, as they will
    when it starts: a host list, a Slurm or PBS allocation, or this node alone. This node
    alone only outside any allocation: inside a job that Dragon cannot use (PBS without
    PALS' mpiexec, two batch systems at once) ValueError, not a quiet run on one node.
    """
    options_given = launch_args()
    if in_runtime():
        from dragon.native.machine import System
        return options_given, len(System().nodes)
    from dragon.launcher.util import detect_wlm
    options = launch_options()
    if options.get("single_node_override"):
        return options_given, 1
    hosts = listed_hosts(options)
    if not hosts:
        # Dragon logs why it passes over a batch system (to stderr): kept for the message
        with contextlib.redirect_stderr(io.StringIO()) as said:
            try:
                wlm = detect_wlm(str(options.get("wlm") or "") or None)
            except RuntimeError as error:
                if in_allocation():
                    raise CannotLaunch(_unusable_allocation(str(error))) from None
                # a workload manager's commands are here (srun on a login node, say), but
                # this is not one of its jobs: Dragon refuses to guess, so "this node alone"
                return [*options_given, "--single-node-override"], 1
        name = getattr(wlm, "name", None)
        if name is None and in_allocation():
            raise CannotLaunch(_unusable_allocation(said.getvalue() or "no batch system found"))
        if name == "slurm":
            # Dragon starts its Slurm back ends on every node of the allocation (-N: on that many)
            hosts = allocation.slurm_hosts()
        elif name == "pbs+pals":
            hosts = allocation.pbs_hosts()
    count = len(dict.fromkeys(hosts)) or 1
    return options_given, min(count, options.get("node_count") or count)


def _unusable_allocation(why: str) -> str:
    reason = " ".join(why.split()).split(". ")[0].rstrip(".")
    return (f"this is a batch job (${in_allocation()} is set), but Dragon cannot start on its "
            f"nodes: {reason}. On PBS Dragon needs PALS' mpiexec (.../pals/...) on PATH; "
            f"name the workload manager with {LAUNCH_ARGS_ENV}='--wlm pbs+pals' (or slurm), "
            f"or '-s' for this node alone")


def runtime_transport() -> str:
    """The transport agent between the nodes of the runtime `dragon` will start with
    $PC_DRAGON_ARGS (inside a runtime: the one it has): "tcp" or "hsta", as Dragon's
    launcher decides it (HSTA by default, TCP when asked or without the HSTA binary)."""
    from dragon.infrastructure import facts
    if in_runtime() and os.environ.get(facts.env_name("TRANSPORT_AGENT")):
        return os.environ[facts.env_name("TRANSPORT_AGENT")]
    try:
        chosen = launch_options().get("transport")
    except ValueError:
        chosen = None
    if chosen is None or chosen is facts.TransportAgentOptions.DRAGON_CONFIG:
        return "hsta" if facts.HSTA_BINARY.is_file() else "tcp"
    return str(chosen)


def transport_agent(hosts: list[str]) -> dict:
    """Which agent moved values between this runtime's nodes, as it was launched ("hsta" or
    "tcp"; None on one node, where there is none) and, for HSTA, its fabric back end as
    Dragon's configuration on this node names it ("tcp" on the local cluster; None: HSTA
    probes libfabric)."""
    from dragon.transport.util import get_fabric_backend
    agent = runtime_transport() if len(set(hosts)) > 1 else None
    return {"transport_agent": agent,
            "hsta_backend": get_fabric_backend()[0] if agent == "hsta" else None}


def fixes_for_launch(nodes: int | None = None) -> tuple[bool, str]:
    """The rule, decided once where `dragon` is started (relaunch_under_dragon, or the main
    job's DRAGON_LAUNCH=dragon line): its launch options, `nodes` (None: as launch_plan()
    counts them) and this node's cores. ValueError for a bad $PC_DRAGON_FIXES."""
    setting = dragon_fixes.fixes_setting()
    if setting != "auto":
        return dragon_fixes.fixes_rule(setting, None, 0, 0)
    return dragon_fixes.fixes_rule(setting, runtime_transport(), nodes or launch_plan()[1],
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
    return {"PYTHONPATH": dragon_fixes.runtime_pythonpath(on),
            dragon_fixes.FIXES_RULE_ENV: f"{'on' if on else 'off'}: {rule}"}


def init_head() -> None:
    """In the head process, inside the runtime: Dragon's start method for multiprocessing,
    faulthandler (in the processes it starts too), dragon_site's fixes here too where they
    are on (a head started by `dragon` itself misses them), and the PYTHONPATH, with or
    without dragon_site/, that the processes it starts inherit.

    Whether they are on: as relaunch_under_dragon() decided before the runtime started
    ($PC_DRAGON_FIXES_RULE); else (`dragon SCRIPT` typed by hand) on if dragon_site/ was on
    PYTHONPATH (then the whole runtime has them), else by the same rule, applied here with
    the runtime's own transport, nodes and cores: then only this head and the processes it
    starts get them, Dragon's own processes do not."""
    import multiprocessing as mp
    from dragon.native.machine import Node, System
    mp.set_start_method("dragon")
    faulthandler.enable()                   # a crash prints this process's Python stack
    os.environ["PYTHONFAULTHANDLER"] = "1"  # and the processes it starts inherit it
    setting = dragon_fixes.fixes_setting()
    decided = os.environ.get(dragon_fixes.FIXES_RULE_ENV, "")
    site_on_path = dragon_fixes.site_on_pythonpath()
    if decided.startswith(("on: ", "off: ")):
        on, rule = decided.startswith("on: "), decided.split(": ", 1)[1]
    elif site_on_path and setting != "off":
        on, rule = True, "dragon_site/ was on PYTHONPATH when `dragon` started"
    else:
        nodes = [Node(h) for h in System().nodes]
        on, rule = dragon_fixes.fixes_rule(setting, runtime_transport(), len(nodes),
                                           min(n.num_cpus for n in nodes))
        if on:
            rule += " (the head and its processes only: `dragon` started without dragon_site/)"
    dragon_fixes.apply_in_head(setting, on, rule, site_on_path)


def check_args(parser, argv: list[str]):
    """cli.check_args with the node count the runtime will have, and what a node holds
    besides the trainers (the DDict), in /dev/shm too; refused in one line before the
    runtime starts."""
    if in_runtime() and os.environ.get(common.FAIL_ENV) == "head:0":    # for the tests
        parser.error(f"failure injected through {common.FAIL_ENV}=head:0, inside the runtime")
    return cli.check_args(parser, argv, available_nodes=_runtime_nodes,
                          more_memory=ddict_io.node_memory, more_checks=_more_checks)


def _runtime_nodes() -> int:
    try:
        return launch_plan()[1]
    except CannotLaunch:
        raise
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{LAUNCH_ARGS_ENV}={os.environ.get(LAUNCH_ARGS_ENV, '')!r}: cannot "
                         f"tell which nodes Dragon would use ({error})") from None


def _more_checks(parser, args) -> None:
    if in_runtime() and args.num_nodes != args.available_nodes:
        parser.error(f"argument --num_nodes: this Dragon runtime has {args.available_nodes} "
                     f"node(s); start it with `dragon -N {args.num_nodes}` instead")
    try:
        shutdown_patience_s()
    except ValueError as error:
        parser.error(str(error))
    fixed = os.environ.get(ddict_io.DDICT_BYTES_ENV)
    if fixed is not None and not (fixed.isdigit() and int(fixed) >= ddict_io.MIN_PER_MANAGER):
        parser.error(f"{ddict_io.DDICT_BYTES_ENV}={fixed!r}: give the DDict's size in bytes, "
                     f"at least {ddict_io.MIN_PER_MANAGER}")
    on_busiest_node = ddict_io.busiest_node_bytes(args)
    shm_free = shutil.disk_usage(SHM).free
    if on_busiest_node > shm_free:
        parser.error(f"arguments --num_sims/--grid_size: the DDict needs "
                     f"{on_busiest_node / GB:.1f} GB of {SHM} on a node, but only "
                     f"{shm_free / GB:.1f} GB are free")
    try:
        dragon_fixes.fixes_setting()
    except ValueError as error:
        parser.error(str(error))
