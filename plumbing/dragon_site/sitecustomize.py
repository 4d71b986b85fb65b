"""Fixes for DragonHPC 0.15, loaded by every Python process of the Dragon runtimes that 7
and 8 start: Python imports `sitecustomize` at start-up from the first folder on
PYTHONPATH that has one, and plumbing/dragon_fixes.py puts this folder there when its rule says
so (PC_DRAGON_FIXES; below, "The price"). Dragon passes
PYTHONPATH on to its processes on every node, its own transport agents included, so the
fixes reach them too.

1. dragon.native.queue.Queue.poll(timeout) returns at once instead of waiting up to
   `timeout` seconds for an item (it asks the channel how many messages it holds, a
   question that never waits). Loops written to wait on it spin instead:
   - every TCP transport agent (`dragon-tcp`, several per node: one for the data, one for
     the runtime's own messages) polls its control queue with timeout=5 in a loop, through
     a thread pool: 40-70% of a core each, all the time, measured on the 2-node local cluster;
   - a ProcessGroup's exception monitor polls with timeout=0.1: a DDict's orchestrator keeps
     a core busy for as long as the DDict lives.
   Queue.poll then waits as documented, checking every 20 ms.
2. A blocking Queue.get waits on the channel in Dragon's compiled-in ADAPTIVE mode, which
   spins on sched_yield() before it sleeps, and starts over at every call. The processes
   that wait in loops of short gets (a ProcessGroup's manager, timeout=0.3 s; the head's
   collection of messages; the runtime's own services in the launcher) made 10-24
   thousand involuntary context switches per 0.2 s each while the trainers read (counted
   in /proc/PID/status), and on 2 cores the trainers shared the CPU with them. Queue.get
   on a channel of this node now sleeps until an item is there (checks after 1, 2, 4 ...
   ms, then every 20 ms) and only then receives it, with Dragon's own get; a get with
   block=False, on another node's channel, or with a stream channel is Dragon's as it is.
3. The TCP transport agent's receive loop waits 1 s at a time instead of 0.1 s. And the
   agent completes a piece it has sent (GatewayMessage.send_complete, a blocking call into
   the channel library: median 11-13 ms per 512 KB piece, measured) in a worker thread
   instead of inside its one asyncio loop, which meanwhile moves the value's other pieces.
4. HSTA (`dragon-hsta`, compiled) has no setting for how it idles: once it has had no work
   for 1 s, its main loop calls usleep(1) between checks, and Linux stretches that sleep by
   the thread's timer slack (50 us by default), so an idle agent wakes ~17,000 times a
   second (15% of a core, measured on the local cluster). Its Python wrapper now starts it
   with a timer slack of HSTA_TIMER_SLACK_NS (1 ms; prctl PR_SET_TIMERSLACK, which a child
   keeps across fork and exec): an idle agent wakes ~1,000 times a second, and the first
   message after a second of idling waits up to 1 ms more. Busy, it never sleeps.
5. A ProcessGroup starts its manager process with no placement, so Dragon's round robin
   may put it on another node than the group's owner, whose queues it then reads with
   short timed gets: across nodes HSTA then never idles (85-98% of a core on each node of
   the 2-node local cluster, for as long as a DDict lives: its orchestrator owns such a
   group). The manager now starts on its owner's node (2-3% each, idle).

The price: a process whose Queue waits have been idle for more than ~30 ms sees the next
message up to 20 ms late, and Dragon's own services (global and local services, HSTA's
Python wrapper: their InfraQueue is a Queue) are patched too, so every hop of the runtime's
control plane can add that much. So plumbing/dragon_fixes.py puts this folder on PYTHONPATH only
where the spinning costs more than that (PC_DRAGON_FIXES, see plumbing/dragon_fixes.py and
docs/dragon.md). PC_DRAGON_FIXES=off in a process's environment keeps the fixes out of it
even with this folder on PYTHONPATH.

The repairs of Dragon's crashes live here too (REPAIRS), but run wherever the runtimes of 7
and 8 run, fixes or not: plumbing/dragon_fixes.py puts repairs/ on PYTHONPATH always, and its
sitecustomize calls install_repairs() from this file.

R1. A process's first request to Dragon's Local Services (Channel.make_process_local, a
   process-local pool, a key-value get or set: libdragon's dragon_ls_send_receive) first
   initializes a process-wide lock, in memory it takes with malloc() and does not clear
   (init_ls_return_lock, messages_api.cpp). Where that memory held a lock before, or any
   data with eight bytes of 0x01 at offset 16 (the lock's "initialized" mark), the lock
   library refuses it: DRAGON_LOCK_ALREADY_INITD, and the request fails. A DDict manager
   whose first request fails that way dies, and the DDict's creation never completes.
   The repair makes that initialization once, when dragon.channels is imported, before
   any request, and again until it succeeds (each attempt takes a new block of memory).
R2. On every node of a multi-node runtime, Local Services waits for its transport agent's
   first message (TAPingLS) for dragon.infrastructure.facts.TA_PING_TIMEOUT, 10 s, then
   gives up and the whole runtime fails to start ("Expected TAUp during startup but received
   AbnormalTermination" from the launcher). An agent that is slow to start on a busy node
   is not broken: the repair gives it TA_PING_TIMEOUT_S, as long as Dragon gives a process
   it launches on this node (facts.LOCAL_LAUNCH_TIMEOUT, 60 s) and then some.

Only DragonHPC 0.15.0, the version this was measured on (PATCHED_VERSIONS), is patched,
and only when the Dragon module concerned is imported; other processes pay one import hook.
Another sitecustomize further along the path is still run.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import queue as queue_errors
import sys
import time

PATCHED_VERSIONS = ("0.15.0",)    # exact versions; plumbing/dragon_fixes.py reads this one too
SWITCH_ENV = "PC_DRAGON_FIXES"     # "off": no fix in this process (see plumbing/dragon_fixes.py)
REPAIRS_SWITCH_ENV = "PC_DRAGON_REPAIRS"    # "off": no repair in this process
POLL_EVERY_S = 0.02         # control messages wait at most this long; a sleep costs ~nothing
FIRST_CHECK_S = 0.001       # a get checks again after 1, 2, 4 ... ms, up to POLL_EVERY_S
QUEUE_MODULE = "dragon.native.queue"
AGENT_MODULE = "dragon.transport.tcp.client"
AGENT_RECV_S = 1.0          # was 0.1
HSTA_MODULE = "dragon.transport.hsta.__main__"
GROUP_MODULE = "dragon.native.process_group"
CHANNELS_MODULE = "dragon.channels"
LS_RETURN_LOCK_INIT = "_Z19init_ls_return_lockv"    # init_ls_return_lock(), C++ linkage
LS_RETURN_LOCK_ATTEMPTS = 5
FACTS_MODULE = "dragon.infrastructure.facts"
TA_PING_TIMEOUT_S = 120
HSTA_TIMER_SLACK_NS = 1_000_000     # an idle HSTA's usleep(1) lasts about this long
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30      # <linux/prctl.h>


def _wait_for_item(queue, poll, timeout, first_pause) -> bool:
    """Sleep until `poll` (Dragon's own, which never waits) sees an item in `queue`: True,
    or False after `timeout` seconds (None: no limit). Checks after first_pause, then
    twice as long each time, up to POLL_EVERY_S."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = first_pause
    while not poll(queue, timeout=0):
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        time.sleep(pause if left is None else min(pause, left))
        pause = min(2 * pause, POLL_EVERY_S)
    return True


def _waiting_poll(poll):
    def waiting_poll(self, timeout=0):
        return _wait_for_item(self, poll, timeout, POLL_EVERY_S)
    waiting_poll.__doc__ = poll.__doc__
    waiting_poll.patched_by = __file__
    return waiting_poll


def _on_this_node(queue) -> bool:
    channel = getattr(queue, "_main_channel", None)
    try:
        return channel is not None and channel.is_local
    except Exception:               # a channel that cannot say: leave it to Dragon
        return False


def _sleeping_get(get, poll):
    def sleeping_get(self, block=True, timeout=None, **kwargs):
        if not block or kwargs or not _on_this_node(self):
            return get(self, block, timeout, **kwargs)
        start = time.monotonic()
        if not _wait_for_item(self, poll, timeout, FIRST_CHECK_S):
            raise queue_errors.Empty
        # Dragon's get from here: an item in several pieces must not meet a zero timeout,
        # and another reader may have taken this one (then it waits as Dragon does)
        left = None if timeout is None else max(POLL_EVERY_S,
                                                timeout - (time.monotonic() - start))
        return get(self, True, left)
    sleeping_get.__doc__ = get.__doc__
    sleeping_get.patched_by = __file__
    return sleeping_get


def version_patched() -> bool:
    """The one version guard: only the exact versions this was measured on are patched."""
    from importlib import metadata
    return metadata.version("dragonhpc") in PATCHED_VERSIONS


def fix(queue_module) -> bool:
    """Make Queue.poll wait and Queue.get sleep while it waits; True if this Dragon needed
    it (and has it now)."""
    queue = queue_module.Queue
    if getattr(queue.poll, "patched_by", None):
        return True
    if not version_patched():
        return False
    poll_now = queue.poll
    queue.poll = _waiting_poll(poll_now)
    queue.get = _sleeping_get(queue.get, poll_now)
    return True


async def _send_completed_off_loop(self, resp, addr, msg) -> None:
    import asyncio
    assert msg.is_send_kind
    await asyncio.to_thread(msg.send_complete)


_send_completed_off_loop.patched_by = __file__


def calm_agent(client_module) -> bool:
    """The TCP agent's receive loop: waits of 1 s instead of 0.1 s between its checks; a
    sent piece is completed in a worker thread, off the agent's event loop."""
    if not version_patched():
        return False
    client_module.Client.recv.__defaults__ = (AGENT_RECV_S,)
    client_module.Client.handle_response.register(client_module.SendResponse,
                                                  _send_completed_off_loop)
    return True


def _timer_slack(start):
    def start_with_slack(*args, **kwargs):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        old = libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
        libc.prctl(PR_SET_TIMERSLACK, HSTA_TIMER_SLACK_NS, 0, 0, 0)
        try:
            return start(*args, **kwargs)       # the child keeps the slack it started with
        finally:
            libc.prctl(PR_SET_TIMERSLACK, max(old, 0), 0, 0, 0)     # 0: the default again
    start_with_slack.__doc__ = start.__doc__
    start_with_slack.patched_by = __file__
    return start_with_slack


def calm_hsta(hsta_module) -> bool:
    """HSTA's wrapper starts the agent with a timer slack of HSTA_TIMER_SLACK_NS."""
    if not version_patched() or sys.platform != "linux":
        return False
    if not getattr(hsta_module.start_hsta_job, "patched_by", None):
        hsta_module.start_hsta_job = _timer_slack(hsta_module.start_hsta_job)
    return True


def _manager_at_home(group_module):
    def start_manager(self, inq, exq, name="", policy=None):
        from dragon.utils import host_id
        here = group_module.Policy(placement=group_module.Policy.Placement.HOST_ID,
                                   host_id=host_id())
        manager = group_module.Process(target=group_module._run_manager,
                                       args=(inq, exq, name), policy=here)
        manager.start()
        self._mgr_p_uid = manager.puid
        self._update_mgr()
    start_manager.patched_by = __file__
    return start_manager


def home_group_manager(group_module) -> bool:
    """A ProcessGroup's manager starts on the node of the process that owns the group."""
    group = group_module.ProcessGroup
    if not version_patched():
        return False
    if not getattr(group._start_manager, "patched_by", None):
        group._start_manager = _manager_at_home(group_module)
    return True


def ls_return_lock_ready(channels_module) -> bool:
    """R1: initialize libdragon's Local Services lock now, until it succeeds; True if this
    Dragon needed it (and has it now)."""
    if not version_patched():
        return False
    import ctypes
    library = os.path.join(os.path.dirname(channels_module.__file__), "lib", "libdragon.so")
    init = getattr(ctypes.CDLL(library), LS_RETURN_LOCK_INIT)   # the same copy Dragon uses
    for attempt in range(1, LS_RETURN_LOCK_ATTEMPTS + 1):
        if init() == 0:
            channels_module.pc_ls_return_lock_attempts = attempt
            return True
    return False


def patient_transport_agent(facts_module) -> bool:
    """R2: Local Services waits TA_PING_TIMEOUT_S for its transport agent's first message."""
    if not version_patched():
        return False
    facts_module.TA_PING_TIMEOUT = max(facts_module.TA_PING_TIMEOUT, TA_PING_TIMEOUT_S)
    return True


FIXES = {QUEUE_MODULE: fix, AGENT_MODULE: calm_agent, HSTA_MODULE: calm_hsta,
         GROUP_MODULE: home_group_manager}
REPAIRS = {CHANNELS_MODULE: ls_return_lock_ready, FACTS_MODULE: patient_transport_agent}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs a fix right after the Dragon module it fixes is first imported."""

    def __init__(self, fixes: dict):
        self.fixes = fixes

    def find_spec(self, name, path, target=None):
        if name not in self.fixes:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            self.fixes[name](module)
        spec.loader.exec_module = exec_module
        return spec


def _install(fixes: dict) -> None:
    for name, fix_it in fixes.items():
        if name in sys.modules:
            fix_it(sys.modules[name])
    if not any(getattr(finder, "fixes", None) is fixes for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(fixes))


def install() -> None:
    """Fix what is imported already; fix the rest as it gets imported."""
    _install(FIXES)


def install_repairs() -> None:
    """Repair what is imported already; repair the rest as it gets imported."""
    _install(REPAIRS)


def run_next_sitecustomize(here: str) -> None:
    """The sitecustomize that the one in folder `here` hides (repairs/'s, a site's, a
    distribution's): the first one in the folders after `here` on sys.path."""
    folders = [os.path.abspath(p or os.curdir) for p in sys.path]
    rest = sys.path[folders.index(here) + 1:] if here in folders else sys.path
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def switched_off(switch: str = SWITCH_ENV) -> bool:
    return os.environ.get(switch, "").strip().lower() == "off"


if __name__ == "sitecustomize":
    if not switched_off():
        install()
    run_next_sitecustomize(os.path.dirname(os.path.abspath(__file__)))
