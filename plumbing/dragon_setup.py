"""Dragon set-up for script 8: where each process runs (placement policies: one trainer
per GPU), what every process is given (Shared: the DDict and the queues), one process
group whose messages the head collects (a failure or a dead process ends the run), and
its stop, also after an error or Ctrl-C. Dragon's modules are imported where they are used,
inside the runtime: the `python` that starts it needs none (dragon_launch.run checks first
that DragonHPC is installed)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import queue
import signal
import socket
import time
import traceback
import types
from collections import Counter
from typing import TYPE_CHECKING

import common
from plumbing import ddict_io, dragon_fixes, dragon_launch, lifecycle
from plumbing.hosts import cores_per_node, gpus_per_node
from plumbing.records import GB

if TYPE_CHECKING:       # names for the annotations only
    from dragon.data import DDict
    from dragon.infrastructure.policy import Policy
    from dragon.native.machine import Node
    from dragon.native.queue import Queue

STARTUP_TIMEOUT_S = 600     # every process imports torch and attaches to the DDict
POLL_S = 1.0                # how often the head looks at its processes while it waits
STOP_PATIENCE_S = 60        # after an error, each process's time to end on SIGINT (Workflow._end)


def on(hostname: str, gpu: int | None = None) -> Policy:
    """Place a process on one node (and give it one GPU)."""
    from dragon.infrastructure.policy import Policy
    return Policy(placement=Policy.Placement.HOST_NAME, host_name=hostname,
                  gpu_affinity=[] if gpu is None else [gpu])


def trainer_policies(hosts: list[str], num_trainers: int, gpus: int) -> list[Policy]:
    """One trainer per GPU, spread over the nodes first (GPU 0 of every node, then GPU 1...);
    round-robin over the nodes where they have no GPUs. check_args refused more trainers
    than GPUs already; the count is hosts.gpus_per_node(), as Parsl's."""
    if gpus:
        if num_trainers > gpus * len(hosts):
            raise lifecycle.TaskFailed(f"{num_trainers} trainers asked for, but one per GPU is "
                                    f"the rule and the nodes have {gpus * len(hosts)}")
        return [on(hosts[rank % len(hosts)], rank // len(hosts)) for rank in range(num_trainers)]
    return [on(hosts[rank % len(hosts)]) for rank in range(num_trainers)]


class NodeQueues:
    """Messages from the head that several processes wait for: one Queue on each node, and
    each process waits on its own node's: while processes wait on a queue of another node,
    DragonHPC 0.15's HSTA agents spin on both nodes (docs/dragon.md)."""

    def __init__(self, nodes: list[Node]):
        from dragon.native.queue import Queue
        self._queues = {node.h_uid: Queue(policy=on(node.hostname)) for node in nodes}
        self._uid = {node.hostname: node.h_uid for node in nodes}

    def put(self, item, hosts: list[str]) -> None:
        """In the head: one `item` for each waiting process, `hosts` naming their nodes."""
        for host in hosts:
            self._queues[self._uid[host]].put(item)

    def get(self):
        """In a process: the next item for the processes of this node."""
        from dragon.utils import host_id
        return self._queues[host_id()].get()

    def destroy(self) -> None:
        for q in self._queues.values():
            q.destroy()


@dataclasses.dataclass
class Shared:
    """What every process of a run is given (picklable: Dragon hands it to each process)."""
    args: argparse.Namespace
    num_nodes: int
    num_simulators: int         # simulation processes, all nodes together
    pairs: DDict                # simulation index -> its pairs (ddict_io.Writer / Reader)
    reports: Queue              # process -> head: (kind, payload): ready, simulation, trained,
                                # failed
    start_signals: NodeQueues   # head -> simulators: one each, once every process is ready
    manifests: NodeQueues       # head -> trainers: the SimReports of every simulation to read
    exit_signals: NodeQueues    # head -> every process: it may exit now (none exits while
                                # others still read: that would slow their gets)


@contextlib.contextmanager
def reporting(shared: Shared, name: str):
    """In a worker process: any exception becomes one 'failed' message naming the task (with
    its traceback, which the head saves to a file), and the DDict is detached on the way
    out. The process is named after the task too, e.g. `pc: trainer 1` in ps and top."""
    task = types.SimpleNamespace(name=name)     # the caller renames it as it goes
    with contextlib.suppress(ImportError):
        import setproctitle
        setproctitle.setproctitle(f"pc: {name}")
    try:
        yield task
    except Exception as error:
        why = f"{type(error).__name__}: {' '.join(str(error).split())}"    # one line
        from dragon.data.ddict import DDictFullError
        if isinstance(error, DDictFullError):
            why = "no room left in the DDict: " + why
        shared.reports.put(("failed", f"{task.name} failed: {why}",
                            f"on {socket.gethostname()}:\n{traceback.format_exc()}"))
    finally:
        shared.pairs.detach()


class Workflow:
    """The runtime's nodes, the DDict, the queues (`shared`) and one process group for a run."""

    def __init__(self, args, run_dir: str, cleanup: contextlib.ExitStack):
        from dragon.data import DDict
        from dragon.native.machine import Node, System
        from dragon.native.process_group import ProcessGroup
        from dragon.native.queue import Queue
        # the head's node first, the others by name: the same placement every run (Dragon
        # lists the nodes in no fixed order), trainer 0 beside the head
        here = socket.gethostname()
        self.nodes = sorted((Node(h) for h in System().nodes),
                            key=lambda n: (n.hostname not in (here, "localhost"), n.hostname))
        self.hosts = [socket.gethostname() if n.hostname == "localhost" else n.hostname
                      for n in self.nodes]
        self.trainer_policies = trainer_policies([n.hostname for n in self.nodes],
                                                 args.num_trainers, gpus_per_node())
        cpus = cores_per_node(min(n.num_cpus for n in self.nodes), len(self.nodes))
        self.sims_per_node = min(-(-args.num_sims // len(self.nodes)), cpus)
        self.num_sim_workers = self.sims_per_node * len(self.nodes)
        trainers_on = Counter(p.host_name for p in self.trainer_policies)
        # CPU trainers sharing a node share its cores; GPU trainers need no CPU threads
        self.cpu_threads = [0 if p.gpu_affinity else max(1, cpus // trainers_on[p.host_name])
                            for p in self.trainer_policies]
        # where each waiting process runs, for the head's messages to it
        self.sim_hosts = [self.nodes[worker % len(self.nodes)].hostname
                          for worker in range(self.num_sim_workers)]
        self.trainer_hosts = [p.host_name for p in self.trainer_policies]
        queues = [Queue(), NodeQueues(self.nodes), NodeQueues(self.nodes), NodeQueues(self.nodes)]
        for q in queues:
            cleanup.callback(q.destroy)
        start = time.perf_counter()
        self.ddict_bytes = int(os.environ.get(ddict_io.DDICT_BYTES_ENV) or ddict_io.ddict_size(
            args.num_sims, args.grid_size, len(self.nodes), args.broadcast)[0])
        self.ddict_timeout_s = ddict_io.ddict_timeout_s(
            self.nodes, self.sims_per_node + max(trainers_on.values()) + ddict_io.MANAGERS_PER_NODE)
        with _deadline(self.ddict_timeout_s, "the DDict's orchestrator never answered"):
            if dragon_launch.injected("ddict"):                 # for the tests
                raise dragon_launch.DragonStalled(f"failure injected through "
                                                  f"{common.FAIL_ENV}: the DDict's creation")
            ddict = DDict(ddict_io.MANAGERS_PER_NODE, len(self.nodes), self.ddict_bytes,
                          timeout=self.ddict_timeout_s, persist_path=run_dir)  # not the cwd
        cleanup.callback(_destroy, ddict)
        self.ddict_create_s = time.perf_counter() - start
        self.shared = Shared(args, len(self.nodes), self.num_sim_workers, ddict, *queues)
        self.group = ProcessGroup(restart=False, ignore_error_on_exit=True)
        self._cleanup = cleanup

    def __str__(self) -> str:
        managers = self.shared.pairs.stats
        return (f"DDict of {sum(m.total_bytes for m in managers) / GB:.3f} GB on "
                f"{len(managers)} manager(s) ({', '.join(m.hostname for m in managers)}) "
                f"in {self.ddict_create_s:.2f} s")

    def describe_ddict(self, broadcast: bool) -> dict:
        """The DDict's facts for the run's record."""
        managers = self.shared.pairs.stats
        hosts = [m.hostname for m in managers]
        return {**dragon_launch.transport_agent(hosts),
                "managers": len(managers), "managers_per_node": ddict_io.MANAGERS_PER_NODE,
                "manager_hosts": hosts, "requested_bytes": self.ddict_bytes,
                "pool_bytes": sum(m.total_bytes for m in managers),
                "used_bytes": sum(m.total_used_bytes for m in managers),
                "keys": sum(m.num_keys for m in managers),
                "keys_per_manager": [m.num_keys for m in managers],
                "timeout_s": self.ddict_timeout_s,
                "dragon_fixes": dragon_fixes.fixes_record(),
                "read_path": ddict_io.read_path(),
                "broadcast": broadcast,
                "layout": ddict_io.layout(broadcast)}

    def add(self, target, *args, policy: Policy) -> None:
        from dragon.native.process import ProcessTemplate
        self.group.add_process(1, ProcessTemplate(target, args=args, policy=policy))

    def sim_worker_policy(self, worker: int) -> Policy:
        return on(self.sim_hosts[worker])

    def start(self) -> None:
        dragon_launch.work_begins()     # from here on, a failure never restarts the runtime
        self.group.init()
        self._cleanup.push(lambda kind, error, tb: self._end(error))    # sees the error, if any
        self.group.start()
        self._puids = self.group.puids

    def _died(self) -> list[int]:
        """Exit codes of the group's processes that ended badly. Asked of Global Services:
        the group's own exit_status does not see a process killed from outside (0.15)."""
        from dragon.globalservices import process as gs_process
        exited, _ = gs_process.multi_join(self._puids, timeout=0, join_all=False)
        return [code for _, code in exited or [] if code != 0]

    def _end(self, error) -> None:
        """After a clean run the processes return by themselves; after an error, signal
        whatever still runs: SIGINT, then (STOP_PATIENCE_S later) SIGTERM and SIGKILL. A
        Dragon process killed in the middle of a Dragon call leaves the node's shared locks
        (its memory pool's, a channel's) held for ever, and every process of the node that
        needs them then spins: the runtime never shuts down (DragonHPC 0.15,
        docs/dev/dragon-upstream/killed_lock_holder.py). SIGINT ends a Python process
        between two calls; it gets time for that even on a busy node."""
        try:
            if error is None:
                self.group.join(timeout=30)
        except TimeoutError:
            error = TimeoutError("processes still running")
        if error is not None:
            self.group.stop(patience=STOP_PATIENCE_S)
        self.group.close()

    def collect(self, kind: str, count: int, timeout: float | None = None,
                progress: str | None = None) -> list:
        """The next `count` messages of `kind`; a failure report, a dead process or
        Ctrl-C ends the run. `progress` names what is counted in the progress lines."""
        deadline = None if timeout is None else time.monotonic() + timeout
        counter = lifecycle.Progress(progress, count) if progress else None
        found = []
        while len(found) < count:
            lifecycle.raise_if_interrupted()           # Ctrl-C lands here, between requests
            try:
                message = self.shared.reports.get(timeout=POLL_S)
            except queue.Empty:
                crashed = self._died()
                if crashed:
                    raise lifecycle.TaskFailed(f"a Dragon process died with exit status "
                                            f"{crashed[0]} without reporting why")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(found)} of {count} {kind} messages in "
                                       f"{timeout} s")
                continue
            finally:
                if counter:
                    counter.update(len(found))
            if message[0] == "failed":
                raise lifecycle.TaskFailed(*message[1:])
            if message[0] != kind:
                raise RuntimeError(f"expected a {kind!r} message, got {message[0]!r}")
            found.append(message[1:] if len(message) > 2 else message[1])
        return found


def _destroy(ddict: DDict) -> None:
    """ddict.destroy(), which waits without a limit for the DDict's orchestrator process to
    answer (DragonHPC 0.15): where that process has ended, an error instead of a run that
    never ends (its managers end with it; the runtime's end frees their memory)."""
    if dragon_fixes.ddict_orchestrator_ended(ddict):
        raise RuntimeError("the DDict's orchestrator process has ended: the DDict cannot be "
                           "destroyed (a failure of DragonHPC)")
    ddict.destroy()


@contextlib.contextmanager
def _deadline(seconds: float, what: str):
    """dragon_launch.DragonStalled (a TimeoutError) after `seconds` in the block (main thread
    only). DragonHPC 0.15's DDict constructor waits without a limit for its orchestrator
    process to answer; where that process never answers, the run must fail with a line (and
    be started again, dragon_launch.run), not hang."""
    def expire(signum, frame):
        raise dragon_launch.DragonStalled(f"{what} within {seconds:.0f} s")
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
