"""Run by test_dragon_workflows.py: values of every size class through a real DDict, written
by ddict_io.Writer and read back by ddict_io.Reader in another Dragon process;
and, in the same runtime, the Queue waits that dragon_site/sitecustomize.py changes: a get
that times out, and a get that sleeps until the head puts an item of many pieces.

    python tests/ddict_roundtrip.py      (starts the Dragon runtime itself)

Prints one line `ROUNDTRIP <json>` with what the reader saw.
"""
import json
import os
import queue
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from plumbing import ddict_io, dragon_fixes, dragon_launch  # noqa: E402
import numpy as np  # noqa: E402

PIECE = ddict_io.RawPairs.PIECE
SHAPES = [                      # float64 elements: the size classes of RawPairs.dump
    (1,),                       # one element
    (3, 5),                     # 120 bytes: not a power of two
    (PIECE // 8,),              # exactly one piece
    (PIECE // 8 + 1,),          # one piece and 8 bytes
    (5 * PIECE // 16 + 3,),     # 2.5 pieces and 24 bytes
    (10, 2, 48, 48),            # a simulation's pairs
]


def values():
    rng = np.random.default_rng(7)
    return [rng.standard_normal(shape) for shape in SHAPES]


def big_item() -> bytes:
    """Several MB: an unbuffered Queue sends it in many pieces."""
    return bytes(range(256)) * (3 * 2**20 // 256 + 7)


def waits(inbox, out) -> dict:
    """This process's Queue.get: patched, an empty get's timeout kept, an item intact."""
    seen = {"get_sleeps": dragon_fixes.queue_get_sleeps()}
    start = time.monotonic()
    try:
        inbox.get(timeout=0.3)
        seen["empty_raised"] = False
    except queue.Empty:
        seen["empty_raised"] = True
    seen["empty_after_s"] = time.monotonic() - start
    out.put("waiting")
    seen["item_intact"] = inbox.get() == big_item()     # put a while after this get starts
    return seen


def reader(d, manifest, inbox, out):
    queue_waits = waits(inbox, out)
    store = ddict_io.Reader(d)
    seen = []
    for sim, expected in zip(manifest, values()):
        got = store.get(sim)
        seen.append({"shape": list(got.shape), "dtype": str(got.dtype),
                     "equal": bool(np.array_equal(got, expected))})
        del got                 # the next get reuses the array
    out.put({"path": store.path, "seen": seen, "waits": queue_waits})
    d.detach()


def main() -> int:
    from dragon.data import DDict
    from dragon.native.process import Process
    from dragon.native.queue import Queue
    d = DDict(1, 1, 256 * 2**20, timeout=60)
    out, inbox = Queue(), Queue(buffered=False, num_streams=2)
    try:
        writer = ddict_io.Writer(d, 1)
        manifest = [common.SimReport(i, 0.0, 0, v.nbytes, 0.0, 0.0, "", 0, writer.put(i, v))
                    for i, v in enumerate(values())]
        d.freeze()
        process = Process(target=reader, args=(d, manifest, inbox, out))
        process.start()
        assert out.get(timeout=120) == "waiting"
        time.sleep(0.5)                     # the reader's get is waiting by now
        inbox.put(big_item())
        result = out.get(timeout=120)
        result["head_get_sleeps"] = dragon_fixes.queue_get_sleeps()
        process.join(timeout=60)
        print("ROUNDTRIP " + json.dumps(result), flush=True)
    finally:
        out.destroy()
        inbox.destroy()
        d.destroy()
    return 0


if __name__ == "__main__":
    dragon_launch.run(main)     # in the head of a Dragon runtime, started here
