"""PC_DRAGON_FIXES: where dragon_site/'s fixes of DragonHPC 0.15.0 are applied (the rule,
decided once where `dragon` starts), the switch that forces them on or off, the exact
version guard, and real single-node runtimes whose heads say which fixes ran."""
import functools
import inspect
import json
import os
import pathlib
import subprocess
import sys
import types
from importlib import metadata

import pytest

from conftest import ROOT, run_script, script_env, unavailable

from plumbing import dragon_launch  # noqa: E402  (conftest puts the repository on sys.path)
from plumbing import ddict_io, dragon_fixes  # noqa: E402

SITE = dragon_fixes._SITE           # dragon_site/sitecustomize.py, as plumbing/dragon_fixes.py loaded it


# --------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("transport, nodes, cores, on", [
    ("tcp", 2, 2, True),            # the local cluster: TCP agents on 2 cores
    ("tcp", 4, 64, True),           # TCP agents spin whatever the cores
    ("hsta", 2, 64, False),         # Polaris: HSTA between nodes of many cores
    ("hsta", 2, 2, True),           # the local cluster under HSTA: few cores
    ("hsta", 2, dragon_fixes.FEW_CORES + 1, False),
    ("hsta", 1, 2, True),           # one node of few cores (this machine)
    ("hsta", 1, dragon_fixes.FEW_CORES, True),
    ("hsta", 1, dragon_fixes.FEW_CORES + 1, False),
    ("tcp", 1, 64, False),          # one node has no transport agent: cores decide
])
def test_auto_rule_tcp_agents_or_few_cores(transport, nodes, cores, on):
    decided, why = dragon_fixes.fixes_rule("auto", transport, nodes, cores)
    assert decided is on
    assert why.startswith("auto: ") and "\n" not in why


@pytest.mark.parametrize("setting", ["on", "off"])
@pytest.mark.parametrize("transport, nodes, cores", [("tcp", 2, 2), ("hsta", 2, 64),
                                                     ("hsta", 1, 2), ("hsta", 1, 64)])
def test_on_and_off_force_it_everywhere(setting, transport, nodes, cores):
    assert dragon_fixes.fixes_rule(setting, transport, nodes, cores) == (
        setting == "on", f"PC_DRAGON_FIXES={setting}")


@pytest.mark.parametrize("value, setting", [(None, "auto"), ("", "auto"), ("auto", "auto"),
                                            ("on", "on"), (" OFF ", "off")])
def test_setting_read_from_the_environment(monkeypatch, value, setting):
    if value is None:
        monkeypatch.delenv("PC_DRAGON_FIXES", raising=False)
    else:
        monkeypatch.setenv("PC_DRAGON_FIXES", value)
    assert dragon_fixes.fixes_setting() == setting


def test_a_bad_setting_is_a_value_error(monkeypatch):
    monkeypatch.setenv("PC_DRAGON_FIXES", "yes")
    with pytest.raises(ValueError, match="PC_DRAGON_FIXES='yes': give auto, on or off"):
        dragon_fixes.fixes_setting()


@pytest.fixture
def launching(monkeypatch):
    """Outside any runtime, with PC_DRAGON_ARGS and this node's core count set by the test."""
    for name in ("DRAGON_MY_PUID", "PC_DRAGON_FIXES", "PC_DRAGON_FIXES_RULE",
                 "DRAGON_TRANSPORT_AGENT"):
        monkeypatch.delenv(name, raising=False)

    def set_up(dragon_args="", cores=2):
        monkeypatch.setenv("PC_DRAGON_ARGS", dragon_args)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    return set_up


def test_launch_with_tcp_agents_puts_dragon_site_on_pythonpath(launching):
    launching("-t tcp --wlm ssh --hostlist node1,node2", cores=64)
    assert dragon_launch.runtime_transport() == "tcp"
    env = dragon_launch.launch_fixes_env()              # 2 nodes, counted by launch_plan
    assert env["PYTHONPATH"].split(os.pathsep)[0] == dragon_fixes.DRAGON_SITE
    assert env["PC_DRAGON_FIXES_RULE"].startswith("on: auto: 2 nodes over the TCP")


def test_launch_under_hsta_on_big_nodes_leaves_dragon_site_out(launching, monkeypatch):
    launching("--hostlist node1,node2", cores=64)
    monkeypatch.setenv("PYTHONPATH", dragon_fixes.DRAGON_SITE)     # even if a user put it there
    from dragon.infrastructure import facts
    if not facts.HSTA_BINARY.is_file():
        unavailable("this Dragon has no HSTA binary: it falls back to TCP")
    assert dragon_launch.runtime_transport() == "hsta"             # Dragon's default
    env = dragon_launch.launch_fixes_env()
    assert dragon_fixes.DRAGON_SITE not in env["PYTHONPATH"].split(os.pathsep)
    assert dragon_fixes.REPOSITORY in env["PYTHONPATH"].split(os.pathsep)
    assert dragon_fixes.REPAIRS in env["PYTHONPATH"].split(os.pathsep)     # repairs: always
    assert env["PC_DRAGON_FIXES_RULE"].startswith("off: auto: 2 nodes over hsta")


def test_without_the_hsta_binary_dragon_uses_tcp_and_the_rule_follows(launching, monkeypatch,
                                                                       tmp_path):
    launching("--hostlist node1,node2", cores=64)
    from dragon.infrastructure import facts
    monkeypatch.setattr(facts, "HSTA_BINARY", tmp_path / "no-hsta")
    assert dragon_launch.runtime_transport() == "tcp"
    assert dragon_launch.fixes_for_launch()[0] is True


@pytest.mark.parametrize("cores, on", [(2, True), (64, False)])
def test_launch_on_one_node_counts_its_cores(launching, cores, on):
    launching("", cores=cores)
    assert dragon_launch.fixes_for_launch(nodes=1)[0] is on
    # -N 1 of a TCP host list: one node, no agent; the cores decide
    launching("-t tcp --hostlist node1,node2", cores=cores)
    assert dragon_launch.fixes_for_launch(nodes=1)[0] is on


@pytest.mark.parametrize("setting", ["on", "off"])
def test_forced_setting_needs_no_launch_plan(launching, monkeypatch, setting):
    launching("--hostlist node1,node2", cores=64)
    monkeypatch.setenv("PC_DRAGON_FIXES", setting)
    monkeypatch.setattr(dragon_launch, "launch_plan", lambda: pytest.fail("not needed"))
    env = dragon_launch.launch_fixes_env()
    assert (dragon_fixes.DRAGON_SITE in env["PYTHONPATH"].split(os.pathsep)) is (setting == "on")
    assert env["PC_DRAGON_FIXES_RULE"] == f"{setting}: PC_DRAGON_FIXES={setting}"


def test_inside_a_runtime_the_transport_is_the_runtimes(monkeypatch):
    monkeypatch.setenv("DRAGON_MY_PUID", "1")
    monkeypatch.setenv("DRAGON_TRANSPORT_AGENT", "tcp")
    monkeypatch.setenv("PC_DRAGON_ARGS", "")
    assert dragon_launch.runtime_transport() == "tcp"


@pytest.mark.parametrize("script", ["8_dragon_producer_consumer.py", "7_dragon_ddict.py"])
def test_a_bad_value_is_refused_in_one_line_before_the_runtime(tmp_path, script):
    argv = [script] if script.startswith("7") else [script, "--num_sims", "2", "--grid_size", "16"]
    proc = run_script(argv, cwd=tmp_path, env=script_env(tmp_path, PC_DRAGON_FIXES="sometimes"),
                      timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"{script}: error: PC_DRAGON_FIXES='sometimes': give auto, on "
                                  "or off"), proc.stderr
    assert proc.stdout == "" and os.listdir(tmp_path) == []         # no runtime, no control folder


# --------------------------------------------------------------------------- the version guard
def test_one_version_constant_exactly_0_15_0():
    assert SITE["PATCHED_VERSIONS"] == ("0.15.0",)
    assert dragon_fixes.PATCHED_VERSIONS is SITE["PATCHED_VERSIONS"]
    assert "startswith" not in (ROOT / "plumbing" / "dragon_site" / "sitecustomize.py").read_text()


def fake_dragon():
    class Queue:
        def poll(self, timeout=0):
            return False

        def get(self, block=True, timeout=None):
            return None

    class SendResponse:
        pass

    class Client:                   # the shape of dragon.transport.tcp.client.Client
        def recv(self, timeout=0.1):
            return None

        @functools.singledispatchmethod
        async def handle_response(self, resp, addr, msg):
            raise NotImplementedError

        @handle_response.register
        async def _(self, resp: SendResponse, addr, msg):
            msg.send_complete()     # Dragon's: on the event loop
    return (types.SimpleNamespace(Queue=Queue),
            types.SimpleNamespace(Client=Client, SendResponse=SendResponse))


def sends_complete_off_the_loop(client_module) -> bool:
    """Whether the agent's handler of a SendResponse completes the message in another
    thread than its event loop's (a real asyncio loop; the message records the thread)."""
    import asyncio
    import threading

    class Message:
        is_send_kind = True

        def send_complete(self):
            self.thread = threading.current_thread()
    msg = Message()
    asyncio.run(client_module.Client().handle_response(client_module.SendResponse(), None, msg))
    return msg.thread is not threading.main_thread()


@pytest.mark.parametrize("version, patched", [("0.15.0", True), ("0.15", False),
                                              ("0.15.1", False), ("0.15.0rc1", False),
                                              ("0.16.0", False)])
def test_only_the_exact_version_is_patched(monkeypatch, version, patched):
    monkeypatch.setattr(metadata, "version", lambda name: version)
    queue_module, client_module = fake_dragon()
    poll, get = queue_module.Queue.poll, queue_module.Queue.get
    assert SITE["fix"](queue_module) is patched
    assert (queue_module.Queue.poll is not poll) is patched
    assert (queue_module.Queue.get is not get) is patched
    assert SITE["calm_agent"](client_module) is patched
    recv_s = SITE["AGENT_RECV_S"] if patched else 0.1
    assert client_module.Client.recv.__defaults__ == (recv_s,)
    assert sends_complete_off_the_loop(client_module) is patched
    assert dragon_fixes.dragon_version_patched() is patched
    facts = types.SimpleNamespace(TA_PING_TIMEOUT=10)
    assert SITE["patient_transport_agent"](facts) is patched
    assert facts.TA_PING_TIMEOUT == (SITE["TA_PING_TIMEOUT_S"] if patched else 10)
    if not patched:     # the one-copy read, a private-API path, is guarded the same way
        assert ddict_io.one_copy_supported() is False


def test_hsta_starts_with_the_timer_slack_and_its_starter_keeps_its_own(monkeypatch):
    """The wrapper's start of HSTA, wrapped: the real child it starts sleeps with 1 ms of
    timer slack (Linux's, read back from /proc), the starting thread is as it was."""
    mine = int(pathlib.Path("/proc/self/timerslack_ns").read_text())

    def start_hsta_job():                 # HSTA's wrapper starts the binary, like this
        return subprocess.run(["cat", "/proc/self/timerslack_ns"], capture_output=True,
                              text=True, check=True).stdout
    hsta_module = types.SimpleNamespace(start_hsta_job=start_hsta_job)
    assert SITE["calm_hsta"](hsta_module) is True
    assert int(hsta_module.start_hsta_job()) == SITE["HSTA_TIMER_SLACK_NS"] == 1_000_000
    assert int(pathlib.Path("/proc/self/timerslack_ns").read_text()) == mine
    monkeypatch.setattr(metadata, "version", lambda name: "0.16.0")
    other = types.SimpleNamespace(start_hsta_job=start_hsta_job)
    assert SITE["calm_hsta"](other) is False and other.start_hsta_job is start_hsta_job


def test_the_agent_fix_names_what_dragon_0_15_0_has():
    from dragon.transport.tcp import client
    assert SITE["AGENT_MODULE"] == client.__name__
    assert client.SendResponse in vars(client.Client)["handle_response"].dispatcher.registry


def test_the_hsta_fix_names_the_function_dragon_0_15_0_has():
    from dragon.transport.hsta import __main__ as hsta_main
    assert callable(hsta_main.start_hsta_job)
    assert SITE["HSTA_MODULE"] == hsta_main.__name__


def test_a_group_manager_starts_beside_its_owner_only_in_the_measured_version(monkeypatch):
    """The wrapped start places the manager with a policy naming this node; other versions
    keep Dragon's own (no placement: round robin over the nodes)."""
    started = []

    class Process:
        def __init__(self, target, args, policy):
            started.append((target, args, policy))
            self.puid = 7

        def start(self):
            pass

    def dragons_own(self, inq, exq, name="", policy=None):
        raise AssertionError("Dragon's own start was kept")

    class ProcessGroup:
        _start_manager = dragons_own

        def _update_mgr(self):
            pass
    from dragon.infrastructure.policy import Policy
    from dragon.utils import host_id
    group_module = types.SimpleNamespace(ProcessGroup=ProcessGroup, Process=Process,
                                         Policy=Policy, _run_manager=print)
    assert SITE["home_group_manager"](group_module) is True
    group = ProcessGroup()
    group._start_manager("inq", "exq", "name")
    [(target, args, policy)] = started
    assert (target, args, group._mgr_p_uid) == (print, ("inq", "exq", "name"), 7)
    assert policy.placement == Policy.Placement.HOST_ID and policy.host_id == host_id()
    monkeypatch.setattr(metadata, "version", lambda name: "0.16.0")
    other = types.SimpleNamespace(ProcessGroup=type("ProcessGroup", (),
                                                    {"_start_manager": dragons_own}))
    assert SITE["home_group_manager"](other) is False
    assert other.ProcessGroup._start_manager is dragons_own


def test_the_group_fix_names_what_dragon_0_15_0_has():
    from dragon.native import process_group
    assert SITE["GROUP_MODULE"] == process_group.__name__
    for name in ("Process", "Policy", "_run_manager"):
        assert hasattr(process_group, name), name
    assert list(inspect.signature(process_group.ProcessGroup._start_manager).parameters) == [
        "self", "inq", "exq", "name", "policy"]


def sitecustomize_installs(**env) -> bool:
    """Whether dragon_site/sitecustomize.py installs its import hook in a fresh Python."""
    code = ("import sys; print(any(type(f).__name__ == '_PatchOnImport' for f in sys.meta_path))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "plumbing" / "dragon_site"), **env)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip() == "True"


def test_off_keeps_the_fixes_out_even_with_dragon_site_on_pythonpath():
    assert sitecustomize_installs(PC_DRAGON_FIXES="auto") is True
    assert sitecustomize_installs(PC_DRAGON_FIXES="off") is False


def test_runtime_pythonpath_with_and_without_dragon_site(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([dragon_fixes.DRAGON_SITE, "/elsewhere"]))
    assert dragon_fixes.runtime_pythonpath(True).split(os.pathsep) == [
        dragon_fixes.DRAGON_SITE, dragon_fixes.REPOSITORY, dragon_fixes.REPAIRS, "/elsewhere"]
    assert dragon_fixes.runtime_pythonpath(False).split(os.pathsep) == [
        dragon_fixes.REPOSITORY, dragon_fixes.REPAIRS, "/elsewhere"]


# --------------------------------------------------------------------------- the repairs
STALE_LOCK = '''
import ctypes, json, os, runpy, sys
import dragon, dragon.channels
library = ctypes.CDLL(os.path.join(os.path.dirname(dragon.__file__), "lib", "libdragon.so"))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]


def leave_stale_lock():
    """A freed heap block that held an initialized lock: the next malloc of its size."""
    block = libc.malloc(library.dragon_lock_size(1))
    ctypes.memset(block + 0x10, 1, 8)
    libc.free(block)


init = getattr(library, "_Z19init_ls_return_lockv")
seen = {{}}
if sys.argv[1] == "dragon":
    leave_stale_lock()
    seen["first_init"] = init()
else:
    site = runpy.run_path({site!r}, run_name="dragon_site")
    leave_stale_lock()
    seen["repaired"] = site["ls_return_lock_ready"](dragon.channels)
    seen["attempts"] = dragon.channels.pc_ls_return_lock_attempts
seen["then"] = init()
print(json.dumps(seen))
'''


def stale_lock(tmp_path, how: str) -> dict:
    script = tmp_path / "stale_lock.py"
    script.write_text(STALE_LOCK.format(site=str(ROOT / "plumbing" / "dragon_site" /
                                                 "sitecustomize.py")))
    proc = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=""))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dragon_refuses_a_lock_in_a_reused_heap_block(tmp_path):
    """Dragon 0.15.0's own init_ls_return_lock, as a first Local Services request calls it,
    in a block that held a lock: DRAGON_LOCK_ALREADY_INITD (the bug R1 repairs)."""
    from dragon.dtypes import DragonError
    seen = stale_lock(tmp_path, "dragon")
    assert seen["first_init"] == DragonError.LOCK_ALREADY_INITD.value
    assert seen["then"] == 0                        # a new block: it works the second time


def test_the_transport_agent_repair_names_what_dragon_0_15_0_reads():
    """Local Services reads facts.TA_PING_TIMEOUT when it waits for its agent (not a copy
    taken at import), so the repaired value is the one it uses."""
    from dragon.infrastructure import facts
    from dragon.localservices import local_svc
    assert SITE["FACTS_MODULE"] == facts.__name__ and isinstance(facts.TA_PING_TIMEOUT, int)
    assert "dfacts.TA_PING_TIMEOUT" in inspect.getsource(local_svc)


def test_the_repairs_run_in_a_process_with_repairs_on_its_path():
    code = ("import dragon.infrastructure.facts as f, dragon.channels as c; "
            "print(f.TA_PING_TIMEOUT, c.pc_ls_return_lock_attempts)")
    env = dict(os.environ, PYTHONPATH=dragon_fixes.REPAIRS, PC_DRAGON_REPAIRS="")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(SITE["TA_PING_TIMEOUT_S"]), "1"]


def test_the_repair_makes_the_lock_ready_whatever_the_heap_holds(tmp_path):
    seen = stale_lock(tmp_path, "repair")
    assert seen["repaired"] is True and seen["attempts"] >= 1 and seen["then"] == 0


# --------------------------------------------------------------------------- real runtimes
PROBE = '''
import json, sys
sys.path.insert(0, {root!r})
from plumbing import dragon_fixes, dragon_launch


def child(out):
    out.put({{"queue_get_sleeps": dragon_fixes.queue_get_sleeps(),
              "queue_poll_waits": dragon_fixes.queue_poll_fixed(),
              "group_manager_at_home": dragon_fixes.group_manager_at_home(),
              "ls_return_lock_repaired": dragon_fixes.ls_return_lock_repaired()}})


def main():
    from dragon.native.process import Process
    from dragon.native.queue import Queue
    out = Queue()
    p = Process(target=child, args=(out,))
    p.start()
    seen = out.get(timeout=120)
    p.join(timeout=60)
    out.destroy()
    print("FIXES " + json.dumps({{"head": dragon_fixes.fixes_record(), "child": seen}}))
    return 0


if __name__ == "__main__":
    dragon_launch.run(main)
'''


def run_probe(workdir, launch, **env) -> dict:
    """A single-node runtime, started as 7 and 8 start it (`python`) or with plain `dragon`;
    what its head and one process the head started report."""
    probe = workdir / "probe.py"
    probe.write_text(PROBE.format(root=str(ROOT)))
    # -s: this node alone, also where Slurm is installed but no job runs (docs/dragon.md)
    argv = [sys.executable, probe] if launch == "python" else ["dragon", "-s", probe]
    env = script_env(workdir, **env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                        if p and "dragon_site" not in p)
    proc = run_script(argv, cwd=workdir, env=env, timeout=180)
    probe.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("FIXES ")]
    return json.loads(line[len("FIXES "):])


@pytest.mark.parametrize("setting", ["off", "on", "auto"])
def test_a_real_runtime_records_which_fixes_ran(nothing_left, setting):
    """`python SCRIPT`: the launching process decides, the head and its processes follow, and
    the record says so (on this machine auto means on when it has at most FEW_CORES cores)."""
    seen = run_probe(nothing_left, "python", PC_DRAGON_FIXES=setting)
    on = setting == "on" if setting != "auto" else dragon_fixes.fixes_rule(
        "auto", "hsta", 1, len(os.sched_getaffinity(0)))[0]
    head = seen["head"]
    assert head["setting"] == setting
    assert head["rule"] == (f"PC_DRAGON_FIXES={setting}" if setting != "auto" else
                            dragon_launch.fixes_for_launch(nodes=1)[1])
    assert head["queue_poll_waits"] is on and head["queue_get_sleeps"] is on
    assert head["group_manager_at_home"] is on
    assert head["agents_fixed"] is on                       # dragon_site on the launcher's path
    assert seen["child"] == {"queue_get_sleeps": on, "queue_poll_waits": on,
                             "group_manager_at_home": on, "ls_return_lock_repaired": True}
    assert head["ls_return_lock_repaired"] is True          # the repairs: fixes or not


def test_plain_dragon_fixes_only_the_head_and_its_processes(nothing_left):
    """`dragon SCRIPT` without dragon_site on PYTHONPATH: Dragon's own processes started
    unfixed; init_head applies the rule to the head, and its processes inherit it."""
    seen = run_probe(nothing_left, "dragon", PC_DRAGON_FIXES="on")
    head = seen["head"]
    assert head["queue_poll_waits"] is True and head["queue_get_sleeps"] is True
    assert head["agents_fixed"] is False
    assert head["rule"].startswith("PC_DRAGON_FIXES=on (the head and its processes only")
    assert seen["child"] == {"queue_get_sleeps": True, "queue_poll_waits": True,
                             "group_manager_at_home": True, "ls_return_lock_repaired": True}
