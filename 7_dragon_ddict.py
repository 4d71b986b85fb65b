"""A two-minute introduction to DragonHPC's Distributed Dictionary (DDict).

A DDict is a key-value store whose shards, the "managers", keep their data in the memory
of the nodes of a Dragon runtime. Any Dragon process on any node can put and get values
by key, as with a Python dict; between nodes, large values travel by RDMA. This script
starts a DDict with one manager on every node, writes a string and a numpy array from one
process, reads them in another (on the last node), lists the keys and destroys it.

    dragon 7_dragon_ddict.py
    python 7_dragon_ddict.py        (starts the Dragon runtime itself)
"""
import socket
import sys

import numpy as np

from plumbing import dragon_launch  # exits with one line where DragonHPC is not installed
from plumbing import ddict_io, dragon_setup, lifecycle
from dragon.data import DDict
from dragon.native.machine import Node, System
from dragon.native.process import Process

MIB = 2**20
PER_NODE = 64 * MIB             # plenty for this demo; a real DDict is sized from its data


def writer(d: DDict) -> None:
    """Put two values: any picklable object works, here a string and a numpy array."""
    d["greeting"] = f"hello from the writer on {socket.gethostname()}"
    d["wave"] = np.sin(np.linspace(0.0, 2 * np.pi, 1_000_000))       # 8 MB of float64
    d.detach()                  # clients detach; only the creator destroys


def reader(d: DDict) -> None:
    """Get both values back, in another process, and leave a note for the head."""
    greeting, wave = d["greeting"], d["wave"]
    print(f"  reader on {socket.gethostname()} got {greeting!r} and a {wave.dtype} array "
          f"of shape {wave.shape} (max {wave.max():.3f})", flush=True)
    d["reader_note"] = {"host": socket.gethostname(), "nbytes": wave.nbytes}
    d.detach()


def run(target, d: DDict, hostname: str) -> None:
    """Start one Dragon process on `hostname`, wait for it, fail loudly if it failed."""
    process = Process(target=target, args=(d,), policy=dragon_setup.on(hostname))
    process.start()
    process.join(timeout=120)
    if process.returncode != 0:
        raise lifecycle.TaskFailed(f"{target.__name__} on {hostname} exited with {process.returncode}")


def main() -> int:
    dragon_launch.init_head()       # Dragon's start method for multiprocessing, and a fix
    nodes = [Node(h) for h in System().nodes]
    hosts = [node.hostname for node in nodes]
    print(f"Dragon runtime on {len(nodes)} node(s): " + ", ".join(
        f"{node.hostname} ({node.num_cpus} CPUs, {node.num_gpus} GPUs, "
        f"{node.physical_mem / 2**30:.0f} GiB)" for node in nodes))

    # one manager per node; total_mem is split evenly over the managers. timeout= bounds
    # every operation (None would let a put into a full pool wait forever); a busy
    # machine gets longer
    d = DDict(managers_per_node=1, n_nodes=len(nodes), total_mem=PER_NODE * len(nodes),
              timeout=ddict_io.ddict_timeout_s(nodes, processes_per_node=2))
    try:
        for manager in d.stats:
            print(f"  manager {manager.manager_id} on {manager.hostname}: "
                  f"{manager.total_bytes / MIB:.0f} MiB of memory")

        run(writer, d, hosts[0])            # put on the first node ...
        run(reader, d, hosts[-1])           # ... get on the last one (the same when single-node)

        note = d["reader_note"]             # the head is a client too
        print(f"keys: {sorted(d.keys())}, len(d) = {len(d)}")
        print(f"the reader on {note['host']} received {note['nbytes']:,} bytes of the array")
        for manager in d.stats:
            print(f"  manager {manager.manager_id}: {manager.num_keys} key(s), "
                  f"{manager.total_used_bytes / MIB:.1f} MiB used")
    finally:
        d.destroy()                         # frees every manager's memory on every node
    print("DDict destroyed")
    return 0


if __name__ == "__main__":
    dragon_launch.relaunch_under_dragon(__file__, sys.argv[1:])  # returns inside the runtime
    dragon_launch.link_head_to_launcher(interrupts=False)  # the exit status, from any node
    lifecycle.run_workflow(main)   # errors in one line; Ctrl-C still destroys the DDict
