"""A two-minute tour of DragonHPC's Distributed Dictionary (DDict): a key-value store whose
shards, the "managers", keep their data in the memory of the nodes of a Dragon runtime. Any
Dragon process on any node puts and gets values by key, as with a Python dict. This script
makes a DDict with one manager per node, puts a string and a numpy array from a process on
the first node, gets them in a process on the last node, lists the keys and destroys it.
Run it with `python 7_dragon_ddict.py` (it starts the runtime) or `dragon 7_dragon_ddict.py`.
"""
import socket

import numpy as np

from plumbing import dragon_launch


def writer(d):
    """Any picklable value works; here a string and a numpy array."""
    d["greeting"] = f"hello from the writer on {socket.gethostname()}"
    d["wave"] = np.sin(np.linspace(0.0, 2 * np.pi, 1_000_000))       # 8 MB of float64
    d.detach()                  # clients detach; only the creator destroys


def reader(d):
    greeting, wave = d["greeting"], d["wave"]
    print(f"  reader on {socket.gethostname()} got {greeting!r} and a {wave.dtype} array "
          f"of shape {wave.shape} (max {wave.max():.3f})", flush=True)
    d["reader_note"] = {"host": socket.gethostname(), "nbytes": wave.nbytes}
    d.detach()


def main():
    from dragon.data import DDict                   # Dragon's API, inside its runtime
    from dragon.infrastructure.policy import Policy
    from dragon.native.machine import Node, System
    from dragon.native.process import Process

    nodes = [Node(h) for h in System().nodes]
    print(f"Dragon runtime on {len(nodes)} node(s): {', '.join(n.hostname for n in nodes)}")
    # 64 MiB per manager; timeout= bounds every operation (a put that finds no room would
    # wait forever): 120 s is far longer than any operation here takes, even on a busy node
    d = DDict(managers_per_node=1, n_nodes=len(nodes), total_mem=len(nodes) * 2**26, timeout=120)
    try:
        for m in d.stats:
            print(f"  manager {m.manager_id} on {m.hostname}: {m.total_bytes / 2**20:.0f} MiB")
        for target, node in ((writer, nodes[0]), (reader, nodes[-1])):    # put, then get
            where = Policy(placement=Policy.Placement.HOST_NAME, host_name=node.hostname)
            process = Process(target=target, args=(d,), policy=where)
            process.start()
            process.join(timeout=120)
            if process.returncode != 0:
                raise RuntimeError(f"{target.__name__} on {node.hostname}: {process.returncode=}")
        note = d["reader_note"]                     # the head is a client too
        print(f"keys: {sorted(d.keys())}, len(d) = {len(d)}; the reader on {note['host']} "
              f"received {note['nbytes']:,} bytes of the array")
    finally:
        d.destroy()                                 # frees every manager's memory, on every node
    print("DDict destroyed")


if __name__ == "__main__":
    dragon_launch.run(main)     # under `python`, starts Dragon's runtime first; errors in one line
