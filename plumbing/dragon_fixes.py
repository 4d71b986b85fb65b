"""The fixes of DragonHPC 0.15.0's busy waiting and the repairs of its crashes
(dragon_site/sitecustomize.py): where they apply, and the record of what ran. One version
guard (PATCHED_VERSIONS, in the fixes' own file) decides for every Dragon internal this
project touches. The repairs run in every process of the runtimes that 7 and 8 start
(dragon_site/repairs/ is always on their PYTHONPATH); the fixes where this rule says so:

PC_DRAGON_FIXES  auto (default) | on | off. "auto" decides once, where `dragon` is
                 started: on when the runtime's nodes talk through the TCP transport
                 agents (`-t tcp` in PC_DRAGON_ARGS, or no HSTA binary), or when its
                 nodes have at most FEW_CORES (8) cores each; off otherwise, so off under
                 HSTA on big nodes (e.g. Polaris) and on one big node. "on"/"off" force
                 it. Anything else is refused before the runtime starts. The record's ddict.dragon_fixes says
                 what ran; docs/dragon.md has the numbers behind the rule.
"""
from __future__ import annotations

import os
import runpy

from plumbing import REPOSITORY

DRAGON_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dragon_site")
REPAIRS = os.path.join(DRAGON_SITE, "repairs")
# dragon_site/sitecustomize.py's constants, read from the file itself: one copy of each
_SITE = runpy.run_path(os.path.join(DRAGON_SITE, "sitecustomize.py"), run_name="dragon_site")
PATCHED_VERSIONS = _SITE["PATCHED_VERSIONS"]    # exact versions the fixes were measured on
FIXES_ENV = _SITE["SWITCH_ENV"]                 # PC_DRAGON_FIXES: auto | on | off
FIXES_SETTINGS = ("auto", "on", "off")
FIXES_RULE_ENV = "PC_DRAGON_FIXES_RULE"         # "on: why" / "off: why", launcher to head
FEW_CORES = 8       # a node of at most this many cores gets the fixes (docs/dragon.md)


def dragon_version_patched() -> bool:
    """Whether this DragonHPC is exactly a version the fixes (and the one-copy read of
    ddict_io) were measured on: the fixes' own guard."""
    return _SITE["version_patched"]()


def ddict_orchestrator_ended(ddict) -> bool:
    """Whether the DDict's orchestrator process has ended, where this Dragon is one the
    fixes know (0.15's DDict.destroy then waits for its answer without a limit); False
    where that cannot be told."""
    orchestrator = getattr(ddict, "_orc_proc", None) if dragon_version_patched() else None
    return orchestrator is not None and not orchestrator.is_alive


def fixes_setting() -> str:
    """$PC_DRAGON_FIXES: "auto" (also when unset or empty), "on" or "off"; ValueError else."""
    value = os.environ.get(FIXES_ENV, "").strip().lower() or "auto"
    if value not in FIXES_SETTINGS:
        raise ValueError(f"{FIXES_ENV}={os.environ[FIXES_ENV]!r}: give auto, on or off")
    return value


def fixes_rule(setting: str, transport: str | None, nodes: int, cores: int) -> tuple[bool, str]:
    """Whether a runtime gets dragon_site's fixes, and why: `transport` between its nodes
    ("tcp" or "hsta"), its node count, and the cores of one node.

    The fixes stop Dragon 0.15.0's spinning (TCP agents 40-70% of a core each, idle; a
    DDict's orchestrator a whole core) but make every Queue wait that has idled past ~30 ms
    see its message up to 20 ms late, in Dragon's own control plane too. So: on with the
    TCP agents; under HSTA (whose idling the fixes calm too) and on one node, on when the
    spinning is a large share of a node's cores."""
    if setting != "auto":
        return setting == "on", f"{FIXES_ENV}={setting}"
    if nodes > 1 and transport == "tcp":
        return True, f"auto: {nodes} nodes over the TCP transport agents, which spin without them"
    if nodes > 1 and cores <= FEW_CORES:
        return True, (f"auto: {nodes} nodes over {transport}, {cores} cores a node (at most "
                      f"{FEW_CORES}): the overlay's TCP agents and HSTA's idling would take "
                      f"a large share of them")
    if nodes > 1:
        return False, (f"auto: {nodes} nodes over {transport}, {cores} cores a node (more than "
                       f"{FEW_CORES}): the overlay's TCP agent and HSTA's idling cost little there")
    if cores <= FEW_CORES:
        return True, (f"auto: one node of {cores} cores (at most {FEW_CORES}): Dragon's "
                      f"spinning would take a large share of them")
    return False, (f"auto: one node of {cores} cores (more than {FEW_CORES}): Dragon's "
                   f"spinning costs little there")


def runtime_pythonpath(fixes: bool = True) -> str:
    """PYTHONPATH for the runtime's processes: dragon_site/ first when `fixes` (its
    sitecustomize fixes Dragon 0.15.0 in every process, Dragon's own agents included) and
    nowhere when not, then this repository, for common.py and plumbing/, then
    dragon_site/repairs/ (the repairs, in every process)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.abspath(p) not in (DRAGON_SITE, REPAIRS)]
    return os.pathsep.join(dict.fromkeys([*([DRAGON_SITE] if fixes else []), REPOSITORY,
                                          REPAIRS, *rest]))


_FIXES = {"setting": None, "rule": "init_head() was not called", "agents": False}


def apply_in_head(setting: str, on: bool, rule: str, site_on_path: bool) -> None:
    """In the head (dragon_launch.init_head): note the decision, give the processes it
    starts the matching PYTHONPATH, and fix this process too where the fixes are on."""
    _FIXES.update(setting=setting, rule=rule,
                  agents=on and site_on_path and dragon_version_patched())
    os.environ["PYTHONPATH"] = runtime_pythonpath(on)
    if on:
        _SITE["install"]()
    if not _SITE["switched_off"](_SITE["REPAIRS_SWITCH_ENV"]):
        _SITE["install_repairs"]()


def site_on_pythonpath() -> bool:
    """Whether dragon_site/ is on PYTHONPATH (then `dragon` gave it to the whole runtime)."""
    return DRAGON_SITE in map(os.path.abspath, filter(
        None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))


def queue_poll_fixed() -> bool:
    """Whether this process runs with dragon_site's fix of Queue.poll (it waits)."""
    from dragon.native.queue import Queue
    return bool(getattr(Queue.poll, "patched_by", None))


def queue_get_sleeps() -> bool:
    """Whether this process's Queue.get sleeps while it waits (dragon_site), not spins."""
    from dragon.native.queue import Queue
    return bool(getattr(Queue.get, "patched_by", None))


def group_manager_at_home() -> bool:
    """Whether a ProcessGroup made in this process starts its manager on this node (dragon_site)."""
    from dragon.native.process_group import ProcessGroup
    return bool(getattr(ProcessGroup._start_manager, "patched_by", None))


def ls_return_lock_repaired() -> bool:
    """Whether this process made libdragon's Local Services lock ready (dragon_site's R1)."""
    import dragon.channels
    return bool(getattr(dragon.channels, "pc_ls_return_lock_attempts", 0))


def runtime_fixed() -> bool:
    """Whether Dragon's own processes (transport agents, services) have dragon_site's fixes
    too: yes when the rule put dragon_site/ on the launcher's PYTHONPATH (`python SCRIPT`,
    or `dragon` with dragon_site on PYTHONPATH); plain `dragon SCRIPT` fixes at most the
    head and the processes it starts."""
    return _FIXES["agents"]


def fixes_record() -> dict:
    """Which of dragon_site's fixes ran, and why: the record's ddict.dragon_fixes."""
    return {"setting": _FIXES["setting"], "rule": _FIXES["rule"],
            "queue_poll_waits": queue_poll_fixed(), "queue_get_sleeps": queue_get_sleeps(),
            "group_manager_at_home": group_manager_at_home(), "agents_fixed": runtime_fixed(),
            "ls_return_lock_repaired": ls_return_lock_repaired()}
