"""DragonHPC 0.15.0: a process's first Local Services request fails with DRAGON_LOCK_ALREADY_INITD
when the heap block that libdragon takes for its lock held a lock before.

libdragon's dragon_ls_send_receive() (messages_api.cpp) calls init_ls_return_lock() on a
process's first request to Local Services (Channel.make_process_local, a process-local pool,
dragon_ls_set_kv/get_kv). init_ls_return_lock() takes the lock's memory with malloc(),
without clearing it, and dragon_lock_init() -> dragon_fifolite_lock_init() first attaches to
it: where the block still holds the mark of an initialized lock (0x0101010101010101 at
offset 16, left by a lock whose memory was freed, or by any data with those bytes), attach
succeeds and init returns DRAGON_LOCK_ALREADY_INITD. The request fails; in a DDict manager
(manager.py: the first Channel.make_process_local() of its __init__) the manager then dies
with "AttributeError: 'Manager' object has no attribute '_serialized_buffered_return_connector'"
and the orchestrator, and the DDict's creator, wait for it forever.

This script leaves such a block on the heap (malloc, write the mark, free: the next malloc of
that size gets it back) and then makes a process-local channel, in a Dragon process: it fails
every time. A second attempt succeeds (it takes a new block). Fix: calloc() or memset() the
block in init_ls_return_lock(), or initialize with DRAGON_LOCK_* semantics that do not attach.

    dragon ls_return_lock_uninitialized.py
"""
import ctypes
import multiprocessing as mp
import os

import dragon
from dragon.channels import Channel
from dragon.native.process import Process
from dragon.native.queue import Queue

LIBDRAGON = os.path.join(os.path.dirname(dragon.__file__), "lib", "libdragon.so")
FIFOLITE = 1            # dragonLockKind_t DRAGON_LOCK_FIFO_LITE
INITIALIZED_MARK = 0x10  # offset of the mark dragon_fifolite_lock_attach() checks


def first_request(out):
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = ctypes.CDLL(LIBDRAGON).dragon_lock_size(FIFOLITE)
    block = libc.malloc(size)               # a block that held an initialized lock ...
    ctypes.memset(block + INITIALIZED_MARK, 1, 8)
    libc.free(block)                        # ... freed: init_ls_return_lock() gets it back
    seen = []
    for attempt in (1, 2):
        try:
            Channel.make_process_local().destroy_process_local()
            seen.append(f"attempt {attempt}: ok")
        except Exception as error:          # noqa: BLE001 (the error is what this shows)
            seen.append(f"attempt {attempt}: {type(error).__name__}: "
                        + " ".join(str(error).split())[:160])
    out.put(seen)


if __name__ == "__main__":
    mp.set_start_method("dragon")
    out = Queue()
    process = Process(target=first_request, args=(out,))
    process.start()
    print("\n".join(out.get(timeout=120)))
    process.join(timeout=60)
    out.destroy()
