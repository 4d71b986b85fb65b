"""Starting the Dragon scripts (7 and 8): `python 8_...` restarts itself under `dragon`,
the head inside the runtime is linked back to it (Ctrl-C in, exit status out, on any
node), and the checks that need the runtime's node count are made before it starts.

PC_DRAGON_ARGS   options for the `dragon` launcher when the script starts it, e.g.
                 "-t tcp --wlm ssh --hostfile nodes.txt" (cluster/local_cluster.sh sets it).
                 Not needed on Polaris (PBS + PALS) or under Slurm: Dragon finds those.
PC_DRAGON_FIXES  see dragon_fixes.py.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import dragon  # noqa: F401  (registers Dragon's "dragon" start method with multiprocessing)
except ImportError:
    print(f"{os.path.basename(sys.argv[0])}: error: DragonHPC is not installed in this Python "
          "(source 0_activate_env.sh, or pip install dragonhpc)", file=sys.stderr)
    sys.exit(2)
from dragon.native.machine import Node, System

import common
from plumbing import cli, ddict_io, dragon_fixes, lifecycle
from plumbing import hosts as allocation
from plumbing.records import GB

LAUNCH_ARGS_ENV = "PC_DRAGON_ARGS"
LAUNCHED_AT_ENV = "PC_LAUNCHED_AT"   # time.time() when a script restarted itself under Dragon
CONTROL_ENV = "PC_DRAGON_CONTROL"   # a folder the launching process and the head share
HEAD_UP, INTERRUPT, STATUS = "head-up", "interrupt", "exit-status"    # files in it
NET_CONF_SALT_ENV = "DRAGON_NET_CONF_CACHE_SALT"
SHM = "/dev/shm"                     # where Dragon's pools (and the DDict's) live on a node


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
               **launch_fixes_env(args.num_nodes if args is not None else None, control),
               **cleanup_hosts_env(control))
    # Dragon 0.15 leaves its network-configuration cache in each node's /tmp after an ssh
    # launch, under a new random name each run: one fixed name keeps it to one file a node
    env.setdefault(NET_CONF_SALT_ENV, "pc")
    # a process group of its own, not a session: Dragon's local services call setpgid(0, 0),
    # which fails (EPERM) in a session leader, and the launcher then waits forever
    fewer = args is not None and args.num_nodes < args.available_nodes
    nodes = first_nodes_args(args.num_nodes, control) if fewer else []
    pools_before = set(os.listdir(SHM))
    launcher = subprocess.Popen([sys.executable, "-m", "dragon", *launch_plan()[0], *nodes,
                                 os.path.abspath(script), *argv], env=env, process_group=0,
                                preexec_fn=lifecycle.signal_when_parent_dies(signal.SIGINT))
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
        if status < 0:
            launcher_crashed(script, signal.Signals(-status), pools_before)
        try:                                        # written by the head (run_workflow)
            with open(os.path.join(control, STATUS)) as f:
                status = int(f.read())
        except (OSError, ValueError):
            # Dragon 0.15's multi-node launcher exits with 0 whatever the head did: a head
            # that never said how it ended has failed (killed, stopped by an interrupt, or
            # never started: a runtime that failed to start ends with Dragon's traceback)
            if interrupts:
                status = 130
            elif status >= 0:
                print(f"{os.path.basename(script)}: error: the head process never reported "
                      f"how it ended (Dragon's launcher exited with status {status}; Dragon's "
                      "messages are above)", file=sys.stderr, flush=True)
                status = status or 1
    finally:
        shutil.rmtree(control, ignore_errors=True)
    sys.exit(status if status >= 0 else 128 - status)


def launcher_crashed(script: str, killed_by: signal.Signals, pools_before: set) -> None:
    """Dragon's launcher died of a signal (Dragon 0.15's crashed with SIGSEGV, rarely, under
    load, taking the head's buffered output with it, and left its runtime's pools): say so in
    one line, and remove Dragon's pools in this node's /dev/shm that appeared since the launch
    and that no process maps any more (another run's pools are mapped, so they stay)."""
    from dragon.infrastructure.facts import DEFAULT_POOL_NAME_BASE
    # Dragon's memory library names a pool's two files "D" + the pool's name + "M" or "D";
    # the runtime's and the DDict's pool names start with DEFAULT_POOL_NAME_BASE
    new = {name for name in set(os.listdir(SHM)) - pools_before
           if name.startswith("D" + DEFAULT_POOL_NAME_BASE)}
    removed = []
    for name in sorted(new - _mapped_in(SHM)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM, name))
            removed.append(name)
    print(f"{os.path.basename(script)}: error: Dragon's launcher died of {killed_by.name} "
          f"(a crash of DragonHPC itself; the head's output may be lost with it); removed "
          f"{len(removed)} file(s) of its pools from {SHM}", file=sys.stderr, flush=True)


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


def link_head_to_launcher(interrupts: bool = True) -> None:
    """In the head: the exit status goes back to relaunch_under_dragon() through a file
    (Dragon 0.15's multi-node launcher always exits with 0; a head that fails before this,
    e.g. refused by check_args, has its status written all the same: _status_to_launcher).
    With `interrupts`, Ctrl-C or
    SIGTERM never lands in the middle of a Dragon call (see lifecycle.defer_interrupts), and
    one that relaunch_under_dragon() received where the script was started reaches this
    head too, on whichever node it runs, through a file; without, Ctrl-C goes to Dragon's
    launcher, which stops the runtime."""
    control = _status_to_launcher()
    if interrupts:
        lifecycle.defer_interrupts()
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
    lifecycle.control_files(os.path.join(control, INTERRUPT), os.path.join(control, STATUS))
    return control


_status_to_launcher()


def runtime_startup_s() -> float | None:
    """Seconds since relaunch_under_dragon() started the runtime; None when started by `dragon`."""
    launched = os.environ.get(LAUNCHED_AT_ENV)
    return time.time() - float(launched) if launched else None


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
    launcher) finds the nodes. Without it, on a machine where Slurm is installed, that
    clean-up gave up ("detected the WLM slurm but no allocation") and the runtime stayed up
    on every node. Only for ssh launches: the variable also makes Dragon's launcher prefer
    its host list to a Slurm or PBS allocation. A host list is written into `folder`."""
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
    `folder`), so that a 1-node run is on the node it was started on. Dragon 0.15 keeps an
    ssh launch's hosts in a set and `-N` takes any `count` of them (a 1-node run started
    on node1 of the local cluster ran on node2). Elsewhere `-N count`."""
    options = ssh_launch_options()
    hosts = listed_hosts(options)
    if not hosts:
        return ["-N", str(count)]
    first = list(dict.fromkeys(hosts))[:count]
    if options.get("hostlist"):             # the same option again: the last one counts
        return ["--hostlist", ",".join(first)]
    return ["--hostfile", write_host_file(folder, "first-hosts", first)]


def launch_plan() -> tuple[list[str], int]:
    """The options to start the `dragon` launcher with, and how many nodes its runtime will
    have (inside a runtime: how many it has).

    The launcher's own option parsing and workload manager detection decide, as they will
    when it starts: a host list, a Slurm or PBS allocation, or this node alone.
    """
    options_given = launch_args()
    if in_runtime():
        return options_given, len(System().nodes)
    from dragon.launcher.util import detect_wlm
    options = launch_options()
    if options.get("single_node_override"):
        return options_given, 1
    hosts = listed_hosts(options)
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
            hosts = allocation.slurm_hosts()
        elif name == "pbs+pals":
            hosts = allocation.pbs_hosts()
    count = len(dict.fromkeys(hosts)) or 1
    return options_given, min(count, options.get("node_count") or count)


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
    dragon_site's fixes here too where they are on (a head started by `dragon` itself missed
    them), and the PYTHONPATH, with or without dragon_site/, that the processes it starts
    inherit.

    Whether they are on: as relaunch_under_dragon() decided before the runtime started
    ($PC_DRAGON_FIXES_RULE); else (`dragon SCRIPT` typed by hand) on if dragon_site/ was on
    PYTHONPATH (then the whole runtime has them), else by the same rule, applied here with
    the runtime's own transport, nodes and cores: then only this head and the processes it
    starts get them, Dragon's own processes do not."""
    import multiprocessing as mp
    mp.set_start_method("dragon")
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
    except (OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{LAUNCH_ARGS_ENV}={os.environ.get(LAUNCH_ARGS_ENV, '')!r}: cannot "
                         f"tell which nodes Dragon would use ({error})") from None


def _more_checks(parser, args) -> None:
    if in_runtime() and args.num_nodes != args.available_nodes:
        parser.error(f"argument --num_nodes: this Dragon runtime has {args.available_nodes} "
                     f"node(s); start it with `dragon -N {args.num_nodes}` instead")
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
