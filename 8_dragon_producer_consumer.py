"""Producer-consumer workflow with DragonHPC, data shared through a Distributed Dictionary.

The simulations run as Dragon processes spread over every node. Each one puts its pairs
into a DDict manager on its own node as ONE contiguous value keyed by the simulation
index. The trainers run as Dragon processes too, one per GPU (pinned by a placement
policy) or on CPU when there are none, and each gets every simulation's value from
whichever node holds it. Only small reports travel through the head process.

    dragon 8_dragon_producer_consumer.py --num_sims 32 --grid_size 512
    python 8_dragon_producer_consumer.py --num_sims 32 --grid_size 512   (starts Dragon itself)

On Polaris the DDict moves data between nodes by RDMA only after
`dragon-config add --ofi-runtime-lib=<libfabric lib dir>`; otherwise it falls back to TCP.
"""
import contextlib
import os
import queue
import shutil
import socket
import sys
import time
from collections import Counter

try:
    import dragon  # noqa: F401  (registers Dragon's "dragon" start method with multiprocessing)
except ImportError:
    print(f"{os.path.basename(sys.argv[0])}: error: DragonHPC is not installed in this Python "
          "(source 0_activate_env.sh, or pip install dragonhpc)", file=sys.stderr)
    sys.exit(2)
import multiprocessing as mp
import numpy as np
from dragon.data import DDict
from dragon.data.ddict import DDictFullError
from dragon.infrastructure.policy import Policy
from dragon.native.machine import Node, System
from dragon.native.process import ProcessTemplate
from dragon.native.process_group import ProcessGroup
from dragon.native.queue import Queue

import common
import dragon_workarounds

TRANSPORT = "dragon+ddict"
MANAGERS_PER_NODE = 1       # the DDict's shards: one per node, in that node's memory
DDICT_TIMEOUT_S = 120       # every DDict operation gives up after this (None could hang)
FULL_AT = 0.9               # a manager refuses puts once its pool is 90% used (Dragon's default)
HEADROOM = 1.3              # above that, for allocator fragmentation and bookkeeping
VALUE_OVERHEAD = 4096       # bytes per value for its key and header, generously
MIN_PER_MANAGER = 64 * 2**20    # a manager keeps its own tables in its pool too
STARTUP_TIMEOUT_S = 600     # every process imports torch and attaches to the DDict
DDICT_BYTES_ENV = "PC_DDICT_BYTES"  # a fixed DDict size in bytes instead of one sized from the data


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

    PIECE = 4 * 2**20   # reads 4x faster than 32 + 8 MiB pieces here (benchmarks/, README)

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


def manager_of(sim: common.SimReport) -> int:
    return int(sim.location.split()[-1])        # written as "DDict manager <id>"


# --------------------------------------------------------------------------- the processes
def simulator(worker, num_workers, num_nodes, num_sims, grid_size, compute_time, d, go, outbox):
    """A simulation process: runs simulations worker, worker + num_workers, ... and puts
    each one's pairs into a DDict manager on its own node, so puts stay node-local."""
    index = None
    try:
        stores = [d.manager(m).pickler(value_pickler=RawPairs()) for m in d.local_managers]
        periods = common.wave_periods(num_sims)
        outbox.put(("ready", "simulator", socket.gethostname()))
        go.get()                                    # start-up ends when everyone is ready
        for index in range(worker, num_sims, num_workers):
            common.maybe_inject_failure("simulation", index)
            sim = common.simulate(index, periods[index], grid_size, compute_time)
            _, slot = placement(index, num_nodes)
            start = time.perf_counter()
            stores[slot][index] = sim.pairs         # the only IO: one value per simulation
            io_s = time.perf_counter() - start
            manager = d.local_managers[slot]
            outbox.put(("simulation", sim.report(io_s, location=f"DDict manager {manager}")))
    except Exception as error:
        what = f"simulation {index}" if index is not None else f"simulator process {worker}"
        why = f"{type(error).__name__}: {' '.join(str(error).split())}"    # one line
        if isinstance(error, DDictFullError):
            why = "no room left in the DDict: " + why
        outbox.put(("failed", f"{what} failed: {why}"))
    finally:
        d.detach()


def trainer(rank, kernel_size, num_trainers, grid_size, cpu_threads, epochs, d, inbox,
            outbox):
    """A training process: gets every simulation's value from the DDict (timed as IO),
    checks it, then trains. Its policy decided its GPU (CUDA_VISIBLE_DEVICES)."""
    try:
        device = common.pick_device()
        num_managers = len(d.stats)
        loader = RawPairs(reuse=True)               # data.add() copies each value at once
        readers = [d.manager(m).pickler(value_pickler=loader) for m in range(num_managers)]
        for reader in readers:
            _ = -1 in reader                        # connect to every manager now, not while timed
        outbox.put(("ready", "trainer", f"{socket.gethostname()} {device}"))
        manifest = inbox.get()
        common.maybe_inject_failure("trainer", rank)
        data = common.TrainingData(manifest, grid_size)
        io_s = 0.0
        for sim in common.reading_order(manifest, rank, num_trainers):
            start = time.perf_counter()
            pairs = readers[manager_of(sim)][sim.index]
            io_s += time.perf_counter() - start
            data.add(sim.index, pairs)
        del pairs
        report = common.train(data, rank, kernel_size, io_s, cpu_threads, epochs)
        outbox.put(("trained", report))
    except Exception as error:
        outbox.put(("failed", f"trainer {rank} failed: {type(error).__name__}: {error}"))
    finally:
        d.detach()


# --------------------------------------------------------------------------- the head
def on(hostname: str, gpu: int | None = None) -> Policy:
    """Place a process on one node (and give it one GPU)."""
    return Policy(placement=Policy.Placement.HOST_NAME, host_name=hostname,
                  gpu_affinity=[] if gpu is None else [gpu])


def trainer_policies(nodes: list, num_trainers: int) -> list[Policy]:
    """One trainer per GPU, spread over the nodes first; round-robin on CPUs without GPUs."""
    gpus = sorted(((gpu, n) for n, node in enumerate(nodes) for gpu in range(node.num_gpus)))
    if gpus:
        if num_trainers > len(gpus):
            raise common.TaskFailed(f"{num_trainers} trainers asked for, but one per GPU is "
                                    f"the rule and the runtime has {len(gpus)} GPUs")
        return [on(nodes[n].hostname, gpu) for gpu, n in gpus[:num_trainers]]
    return [on(nodes[rank % len(nodes)].hostname) for rank in range(num_trainers)]


def end(group: ProcessGroup, error) -> None:
    """Close the process group: after a clean run its processes return by themselves;
    after an error, signal whatever still runs."""
    try:
        if error is None:
            group.join(timeout=30)
    except TimeoutError:
        error = TimeoutError("processes still running")
    if error is not None:
        group.stop(patience=2)
    group.close()


def collect(outbox, kind: str, count: int, group: ProcessGroup, timeout=None) -> list:
    """The next `count` messages of `kind`; a failure report or a dead process ends the run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    found = []
    while len(found) < count:
        common.raise_if_interrupted()               # Ctrl-C lands here, between requests
        try:
            message = outbox.get(timeout=1.0)
        except queue.Empty:
            crashed = [code for _, code in group.exit_status if code != 0]
            if crashed:
                raise common.TaskFailed(f"a Dragon process died with exit status {crashed[0]} "
                                        "without reporting why")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"only {len(found)} of {count} {kind} messages in {timeout} s")
            continue
        if message[0] == "failed":
            raise common.TaskFailed(message[1])
        if message[0] != kind:
            raise RuntimeError(f"expected a {kind!r} message, got {message[0]!r}")
        found.append(message[1:] if len(message) > 2 else message[1])
    return found


def check(parser, argv):
    """Refuse, in one line and before the runtime starts, what this node cannot hold."""
    args = parser.parse_args(argv)
    num_nodes = len(common.node_hosts())
    args = common.check_args(parser, args, num_nodes=num_nodes)
    gpus = common.gpus_per_node() * num_nodes
    if gpus and args.num_trainers > gpus:
        parser.error(f"argument --num_trainers: one trainer per GPU, and there are {gpus} GPUs")
    _, on_busiest_node = ddict_size(args.num_sims, args.grid_size, num_nodes)
    fixed = os.environ.get(DDICT_BYTES_ENV)
    if fixed is not None and not (fixed.isdigit() and int(fixed) >= MIN_PER_MANAGER):
        parser.error(f"{DDICT_BYTES_ENV}={fixed!r}: give the DDict's size in bytes, at least "
                     f"{MIN_PER_MANAGER}")
    trainers_here = -(-args.num_trainers // num_nodes)
    trainers_hold = trainers_here * (0.5 * common.data_bytes(args.num_sims, args.grid_size)
                                     + common.data_bytes(1, args.grid_size))
    available, shm_free = common.available_memory_bytes(), shutil.disk_usage("/dev/shm").free
    if available and on_busiest_node + trainers_hold > 0.9 * available:
        parser.error(f"arguments --num_sims/--grid_size: the DDict needs {on_busiest_node / common.GB:.1f}"
                     f" GB and the trainers {trainers_hold / common.GB:.1f} GB on a node, but it has "
                     f"{available / common.GB:.1f} GB available")
    if on_busiest_node > shm_free:
        parser.error(f"arguments --num_sims/--grid_size: the DDict needs {on_busiest_node / common.GB:.1f}"
                     f" GB of /dev/shm on a node, but only {shm_free / common.GB:.1f} GB are free")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = common.make_parser(__doc__.splitlines()[0])
    args = check(parser, argv)
    common.run_under_dragon(__file__, argv)      # returns inside the Dragon runtime
    runtime_s = common.dragon_runtime_startup_s()   # None when started with `dragon`
    common.defer_interrupts()                   # never in the middle of a Dragon call
    mp.set_start_method("dragon")
    phases = common.Phases()
    # Dragon processes inherit this environment: let them import common.py as we do
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))

    nodes = [Node(h) for h in System().nodes]
    hosts = [socket.gethostname() if n.hostname == "localhost" else n.hostname for n in nodes]
    policies = trainer_policies(nodes, args.num_trainers)
    sims_per_node = min(-(-args.num_sims // len(nodes)), min(n.num_cpus for n in nodes))
    num_workers = sims_per_node * len(nodes)
    total_mem = int(os.environ.get(DDICT_BYTES_ENV) or
                    ddict_size(args.num_sims, args.grid_size, len(nodes))[0])
    with contextlib.ExitStack() as cleanup:     # undone in reverse order, also on error
        run_dir = cleanup.enter_context(common.run_directory(args.data_dir, "ddict",
                                                             args.keep_data))
        go, inbox, outbox = Queue(), Queue(), Queue()
        for q in (go, inbox, outbox):
            cleanup.callback(q.destroy)

        start = time.perf_counter()
        calm = dragon_workarounds.calm_ddict_orchestrator()    # see dragon_workarounds.py
        d = DDict(MANAGERS_PER_NODE, len(nodes), total_mem, timeout=DDICT_TIMEOUT_S,
                  persist_path=run_dir)          # its small metadata file, not in the cwd
        cleanup.callback(d.destroy)
        ddict_create_s = time.perf_counter() - start
        managers = d.stats
        common.log(f"{TRANSPORT}: DDict of {sum(m.total_bytes for m in managers) / common.GB:.3f} "
                   f"GB on {len(managers)} manager(s) ({', '.join(m.hostname for m in managers)}) "
                   f"in {ddict_create_s:.2f} s")

        # one process group: simulators first (worker w on node w % nodes), then trainers
        group = ProcessGroup(restart=False, ignore_error_on_exit=True)
        for worker in range(num_workers):
            group.add_process(1, ProcessTemplate(
                simulator, args=(worker, num_workers, len(nodes), args.num_sims, args.grid_size,
                                 args.compute_time, d, go, outbox),
                policy=on(nodes[worker % len(nodes)].hostname)))
        trainers_on = Counter(policy.host_name for policy in policies)
        for rank, policy in enumerate(policies):
            cpu_threads = 0 if policy.gpu_affinity else max(
                1, min(n.num_cpus for n in nodes) // trainers_on[policy.host_name])
            group.add_process(1, ProcessTemplate(
                trainer, args=(rank, common.kernel_size_for(rank, args.kernel_sizes),
                               args.num_trainers, args.grid_size, cpu_threads, args.epochs,
                               d, inbox, outbox),
                policy=policy))
        group.init()
        cleanup.push(lambda kind, error, tb: end(group, error))   # sees the error, if any
        group.start()
        collect(outbox, "ready", num_workers + args.num_trainers, group, timeout=STARTUP_TIMEOUT_S)
        startup = phases.lap("startup")
        common.log(f"{num_workers} simulation processes on {len(nodes)} node(s) and "
                   f"{args.num_trainers} trainers ready after {startup:.2f} s"
                   + (f" (+ {runtime_s:.2f} s to start the runtime)" if runtime_s else ""))

        for _ in range(num_workers):
            go.put(True)
        sims = collect(outbox, "simulation", args.num_sims, group)
        common.log(f"{len(sims)} simulations done in {phases.lap('simulation'):.2f} s")

        start = time.perf_counter()
        d.freeze()                                  # read-only from here: copy-free gets
        freeze_s = time.perf_counter() - start
        for _ in range(args.num_trainers):
            inbox.put(sims)
        trainers = collect(outbox, "trained", args.num_trainers, group)
        common.log(f"{len(trainers)} trainers done in {phases.lap('training'):.2f} s")
        managers = d.stats
    phases.lap("shutdown")
    if runtime_s:
        phases.seconds["startup"] += runtime_s      # the runtime's start-up is start-up too
    record = common.make_record(
        args, TRANSPORT, sims, trainers, phases, hosts=hosts,
        runtime_startup_s=runtime_s, ddict_create_s=ddict_create_s, ddict_freeze_s=freeze_s,
        ddict={"managers": len(managers), "managers_per_node": MANAGERS_PER_NODE,
               "manager_hosts": [m.hostname for m in managers],
               "requested_bytes": total_mem,
               "pool_bytes": sum(m.total_bytes for m in managers),
               "used_bytes": sum(m.total_used_bytes for m in managers),
               "keys": sum(m.num_keys for m in managers), "timeout_s": DDICT_TIMEOUT_S,
               "orchestrator_busy_loop_fixed": calm,
               "layout": "one value per simulation, key = index, raw float64 bytes in "
                         "power-of-two pieces, written to a manager on the simulation's node, "
                         "frozen before the trainers read"},
        simulation_processes=num_workers, kept_run_dir=run_dir if args.keep_data else None)
    return common.finish(record, args.results_file)


if __name__ == "__main__":
    common.run_workflow(main)
