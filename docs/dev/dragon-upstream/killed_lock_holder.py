"""DragonHPC 0.15.0: a process that ends while it holds one of the node's shared locks leaves
the lock held for ever, and every other process that needs it waits for ever (the runtime hangs).

Dragon's locks in shared memory (dragon_fifolite_lock: the heap of the node's default memory
pool, which every message send allocates from and every receive frees to; each channel's own
lock) are not released when the process holding them ends. ProcessGroup.stop(patience) sends
SIGINT, then SIGTERM and SIGKILL `patience` seconds apart, so a process still busy after
`patience` seconds (a loaded node) is killed wherever it is, also inside
dragon_memory_alloc_blocking() or a channel operation.

This script starts BUSY processes that send small messages through a channel of their own as
fast as they can, kills them with SIGKILL after a moment, and then starts one process that
only puts an item into a queue: ROUNDS times, or until something does not answer. On a 2-core
machine at load average 30 it hung in the first round, before any kill: one busy process had
ended while holding the pool's heap lock; the three others waited in dragon_fifolite_lock()
(dragon_heap_free), Local Services in the launcher too (dragon_channel_destroy of the dead
process's channel, from watch_death; dragon_heap_malloc_blocking for a message), so the head's
queue never got its item and no output reached the terminal. The same waits, with a killed
process, hung the clean-up of an interrupted workflow (Local Services in dragon_fifolite_lock
from Channel.destroy, and in dragon_bcast_trigger_some).

    dragon killed_lock_holder.py
"""
import multiprocessing as mp
import queue
import random
import time

from dragon.channels import Channel
from dragon.native.process import Process
from dragon.native.queue import Queue

ROUNDS, BUSY = 20, 4


def busy(ready):
    channel = Channel.make_process_local()
    send, recv = channel.sendh(), channel.recvh()
    send.open()
    recv.open()
    ready.put(True)
    while True:
        send.send_bytes(b"x" * 64)
        recv.recv_bytes()


def answer(out):
    out.put("here")


if __name__ == "__main__":
    mp.set_start_method("dragon")
    ready, out = Queue(), Queue()
    for round_ in range(ROUNDS):
        processes = [Process(target=busy, args=(ready,)) for _ in range(BUSY)]
        for p in processes:
            p.start()
        for _ in processes:
            ready.get(timeout=300)
        time.sleep(random.uniform(0.1, 1.0))
        for p in processes:
            p.kill()                                    # SIGKILL, as stop() does at the end
        start = time.monotonic()
        check = Process(target=answer, args=(out,))
        check.start()
        try:
            out.get(timeout=60)
        except queue.Empty:
            print(f"round {round_}: HUNG: a new process did not answer within 60 s after "
                  f"{BUSY} busy processes were killed", flush=True)
            break
        print(f"round {round_}: a new process answered {time.monotonic() - start:.1f} s "
              f"after the kills", flush=True)
