"""A workaround for DragonHPC 0.15, used by 8_dragon_producer_consumer.py.

A DDict's orchestrator process starts the managers in a ProcessGroup whose exception
monitor thread loops on `Queue.poll(timeout=0.1)`, and that poll returns at once instead of
waiting: the orchestrator keeps one CPU core 100% busy for as long as the DDict lives. On a
laptop that is half of the CPUs the trainers read with (measured on a 2-core VM: one
trainer's DDict reads 0.88 -> 1.43 GB/s with the fix, see README "Performance"); on a
64-thread Polaris node it is one thread.

calm_ddict_orchestrator() makes the DDicts created afterwards by this process start their
orchestrator through _orchestrator_main() below, which gives the monitor a loop that sleeps
0.1 s between polls. Only Dragon 0.15 is patched; this module must be importable by the
orchestrator process (it is on the PYTHONPATH that the script sets).
"""
from importlib import metadata

PATCHED_VERSIONS = ("0.15",)


def _calm_exception_monitor(group) -> None:
    """ProcessGroup._exq_monitor of Dragon 0.15, waiting between polls instead of spinning."""
    while not group._exq_shutdown.wait(group._EXCEPTION_Q_PATIENCE):
        if group._exq.poll(timeout=0):
            with group._exq_lock:
                error = group._exq.get()
                group._exq.put(error)           # left for whoever joins the group
            if isinstance(error, Exception):
                group._ex_raised = True
                return


def _orchestrator_main(*args, **kwargs):
    """The DDict orchestrator's entry point, run in the orchestrator process."""
    from dragon.data.ddict import orchestrator
    from dragon.native.process_group import ProcessGroup
    ProcessGroup._exq_monitor = _calm_exception_monitor
    return orchestrator.start(*args, **kwargs)


def calm_ddict_orchestrator() -> bool:
    """Start DDict orchestrators without the busy loop; True if this Dragon needed it."""
    if not metadata.version("dragonhpc").startswith(PATCHED_VERSIONS):
        return False
    from dragon.data.ddict import orchestrator
    # DDict() looks orchestrator.start up each time it starts an orchestrator; the
    # orchestrator process imports that module afresh, so there it is still the original
    orchestrator.start = _orchestrator_main
    return True
