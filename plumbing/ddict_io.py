"""How script 8's data sits in Dragon's Distributed Dictionary: one value per simulation,
its raw float64 bytes (RawPairs), written on the simulation's own node (Writer) and read
into one reused array (Reader); the DDict's size and time limit. Dragon's modules are
imported where they are used, inside the runtime.

PC_DDICT_BYTES   a fixed DDict size in bytes instead of one sized from the data
PC_DDICT_READ    "public": read through Dragon's documented API only (see Reader)
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

import common
from plumbing import dragon_fixes

if TYPE_CHECKING:       # the name for the annotations only
    from dragon.data import DDict

DDICT_BYTES_ENV = "PC_DDICT_BYTES"
READ_PATH_ENV = "PC_DDICT_READ"      # "public": never the one-copy read path
REPLY_WAIT_ENV = "PC_DDICT_REPLY_WAIT"  # "idle": the one-copy get sleeps until the reply is there
MANAGERS_PER_NODE = 1       # the DDict's shards: one per node, in that node's memory
DDICT_TIMEOUT_BASE_S = 60   # a DDict operation's time limit on an idle machine (None could hang)
FULL_AT = 0.9               # a manager refuses puts once its pool is 90% used (Dragon's default)
HEADROOM = 1.3              # above that, for allocator fragmentation and bookkeeping
VALUE_OVERHEAD = 4096       # bytes per value for its key and header, generously
MIN_PER_MANAGER = 64 * 2**20    # a manager keeps its own tables in its pool too


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
        for start, end in self.pieces(len(data)):
            file.write(data[start:end])

    @classmethod
    def pieces(cls, nbytes: int):
        """(start, end) of each piece of a value of `nbytes`: powers of two, at most PIECE."""
        start = 0
        while start < nbytes:
            end = start + min(1 << ((nbytes - start).bit_length() - 1), cls.PIECE)
            yield start, end
            start = end

    def array_for(self, header: bytes) -> np.ndarray:
        """The array a value fills, from its header (the 2-byte length and the header as
        dump() wrote them, and maybe more): the reused one where it fits."""
        size = int.from_bytes(header[:2], "little")
        dtype, *shape = header[2:2 + size].decode().split()
        shape = tuple(int(n) for n in shape)
        array = self.array
        if array is None or array.shape != shape or array.dtype != np.dtype(dtype):
            array = np.empty(shape, dtype)
            if self.reuse:
                self.array = array
        return array

    def load(self, file) -> np.ndarray:
        size = file.read(2)
        array = self.array_for(size + file.read(int.from_bytes(size, "little")))
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


def ddict_size(num_sims: int, grid_size: int, num_nodes: int,
               broadcast: bool = False) -> tuple[int, int]:
    """(bytes to ask the DDict for, bytes the busiest node will actually fill); with
    `broadcast`, every manager holds every value (Writer)."""
    value = common.data_bytes(1, grid_size) + VALUE_OVERHEAD
    per_manager = num_sims if broadcast else max(
        Counter(placement(i, num_nodes) for i in range(num_sims)).values())
    pool = max(int(per_manager * value * HEADROOM / FULL_AT), MIN_PER_MANAGER)
    total = pool * MANAGERS_PER_NODE * num_nodes
    return total, per_manager * value * MANAGERS_PER_NODE


def busiest_node_bytes(args) -> int:
    """What the DDict's managers on the busiest node will hold for these arguments (a
    parser without script 8's --broadcast: one copy of each value)."""
    return ddict_size(args.num_sims, args.grid_size, args.num_nodes,
                      getattr(args, "broadcast", False))[1]


def node_memory(args) -> dict[str, float]:
    """For cli.check_args: what a node holds besides its trainers' float32 copies: its DDict
    manager's values, and each trainer's one reused read buffer."""
    return {"the DDict": busiest_node_bytes(args),
            "read buffers": args.trainers_per_node * common.data_bytes(1, args.grid_size)}


def ddict_timeout_s(nodes: list, processes_per_node: int) -> int:
    """How long a DDict operation may take before it fails: the base limit, stretched by
    how many runnable processes (the load now plus the ones this run adds) share each core.
    A loaded or small node is slow, not broken: 2 cores at load 50 need minutes, not 60 s."""
    cpus = min(node.num_cpus for node in nodes)
    busy_per_core = (os.getloadavg()[0] + processes_per_node) / cpus
    return round(DDICT_TIMEOUT_BASE_S * max(1.0, busy_per_core))


EVERYWHERE = "every DDict manager"


class Writer:
    """Puts simulations' pairs into this node's DDict managers (puts stay node-local), or,
    with `broadcast`, into every manager (Dragon's bput: the managers pass the value on
    in a tree), so that every reader finds every value on its own node."""

    def __init__(self, d: DDict, num_nodes: int, broadcast: bool = False):
        self._num_nodes = num_nodes
        self._managers = d.local_managers
        self._stores = [d.manager(m).pickler(value_pickler=RawPairs()) for m in self._managers]
        self._everywhere = d.pickler(value_pickler=RawPairs()) if broadcast else None

    def put(self, index: int, pairs: np.ndarray) -> str:
        """Store one simulation's pairs under its index; returns where they went."""
        if self._everywhere is not None:
            self._everywhere.bput(index, pairs)
            return EVERYWHERE
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

    stages=True (benchmarks/ddict_floor.py): the one-copy get notes, per get, the seconds to
    send the request, to get the manager's reply, to receive the value, and the CPU seconds
    the calling thread spent on all of it (`stages`, a list of those four).
    """

    def __init__(self, d: DDict, stages: bool = False):
        self.stages = [] if stages else None
        self._loader = RawPairs(reuse=True)        # TrainingData.add() copies each value at once
        self._stores = [d.manager(m).pickler(value_pickler=self._loader)
                        for m in range(len(d.stats))]
        for store in self._stores:
            _ = -1 in store                        # connect to every manager now, not while timed
        self.path = read_path()
        self._one_copy = self.path == "one-copy"
        self._idle = os.environ.get(REPLY_WAIT_ENV) == "idle"
        self._nearest = d.local_managers[0] if d.local_managers else 0

    def get(self, sim: common.SimReport) -> np.ndarray:
        # where Writer.put said it went; a broadcast value from this node's manager
        where = self._nearest if sim.location == EVERYWHERE else int(sim.location.split()[-1])
        store = self._stores[where]
        if self._one_copy:
            return _get_into(store, sim.index, self._loader, self.stages, self._idle)
        return store[sim.index]


def read_path() -> str:
    """Which way Reader gets values here: "one-copy", or "public" (forced or the fallback)."""
    forced = os.environ.get(READ_PATH_ENV, "") == "public"
    return "public" if forced or not one_copy_supported() else "one-copy"


def layout(broadcast: bool) -> str:
    """How the values sit in the DDict, in words, for the record."""
    where = ("every manager (bput), read from the trainer's own node's" if broadcast
             else "a manager on the simulation's node")
    return ("one value per simulation, key = index, raw float64 bytes in power-of-two "
            f"pieces, written to {where}, frozen before the trainers read")


# The one-copy read (Reader): Dragon's get, as DDict.__getitem__ does it in 0.15, except
# that the value's pieces are received into the caller's array (FLIRecvH.recv_bytes_into)
# instead of being handed to the pickler as new bytes objects. Private attributes of the
# DDict client: only on the versions it was checked on, else the public get runs.
def one_copy_supported() -> bool:
    if not dragon_fixes.dragon_version_patched():
        return False
    from dragon import fli
    from dragon.data import DDict
    return hasattr(fli.FLIRecvH, "recv_bytes_into") and all(
        hasattr(DDict, name) for name in ("_choose_manager_pickle_key", "_tag_inc", "_send",
                                          "_check_manager_connection"))


def _get_into(store: DDict, key, loader: RawPairs, stages: list | None = None,
              idle: bool = False) -> np.ndarray:
    from dragon.data.ddict.ddict import DDictError, DDictKeyError
    from dragon.dtypes import DragonError
    from dragon.infrastructure import messages as dmsg
    started, cpu = time.perf_counter(), time.thread_time()
    manager, pickled_key = store._choose_manager_pickle_key(key)
    request = dmsg.DDGet(store._tag_inc(), store._client_id, chkptID=store._chkpt_id,
                         key=pickled_key)
    store._check_manager_connection(manager)
    store._send([(request, None)], store._managers[manager], buffered=True)
    sent = time.perf_counter()
    timeout = store._timeout
    if idle:                                        # sleep until the reply is there
        from dragon.channels import IDLE_WAIT
        store._return_channel.poll(timeout=timeout, wait_mode=IDLE_WAIT)
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
        answered = time.perf_counter()
        array = loader.array_for(head)
        data = memoryview(array).cast("B")
        for start, end in RawPairs.pieces(len(data)):     # the pieces RawPairs.dump wrote
            recvh.recv_bytes_into(data[start:end], free_mem=free, timeout=timeout)
    if stages is not None:
        stages.append((sent - started, answered - sent, time.perf_counter() - answered,
                       time.thread_time() - cpu))
    return array
