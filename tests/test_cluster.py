"""cluster/local_cluster.sh, for real: Linux namespaces as nodes, sshd in each, the workflows
across them. Skipped where namespaces cannot be made (not root, or unshare refused)."""
import importlib.util
import json
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import (CLUSTER_NETNS, CLUSTER_SCRIPT, CLUSTER_STATE, ROOT, TINY, cluster_command,
                      leftover_processes, parse_exports, read_records, unavailable)
from test_multinode import installed_or_skip

EXPORTED = {"PBS_NODEFILE", "PARSL_IFACE", "PC_DRAGON_ARGS", "PC_CLUSTER_NODES", "PC_CLUSTER_STATE",
            "PC_CLUSTER_HOST", "PC_CLUSTER_PFS", "SSH_AUTH_SOCK"}
# Dragon's configuration folder (HSTA's fabric), and the mark local_cluster.sh puts in it
# when it made it
DRAGON_CONFIG = pathlib.Path(importlib.util.find_spec("dragon").origin).parent / ".hsta-config"
MADE_MARK = ".made-by-local-cluster"
USE_MARK = ".used-by-"      # each cluster that binds the folder marks it so while it is up
OUR_USE = USE_MARK + CLUSTER_NETNS.rstrip("-")


def _lines(command) -> list:
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.splitlines()


def host_state() -> dict:
    """What a cluster could leave behind on the machine."""
    own_net = os.stat("/proc/self/ns/net").st_ino
    processes = set()           # in another network namespace, or running the script
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if (os.stat(f"/proc/{pid}/ns/net").st_ino != own_net
                    or b"local_cluster.sh" in cmdline):
                processes.add((pid, cmdline))
        except OSError:
            continue
    with open("/proc/self/mountinfo") as f:
        mounts = set(f.read().splitlines())
    with open("/etc/hosts") as f:
        hosts = f.read()
    return {"netns": _lines(["ip", "netns", "list"]),
            "links": [line.split(":")[1] for line in _lines(["ip", "-o", "link"])],
            "mounts": mounts, "processes": processes, "etc_hosts": hosts,
            "run_netns": (os.path.isdir("/run/netns"), os.path.ismount("/run/netns")),
            "run_sshd": os.path.exists("/run/sshd"),
            "home_ssh": os.path.exists(os.path.expanduser("~/.ssh")),
            "state": CLUSTER_STATE.exists(),
            "dragon_config": _dragon_config()}


def _dragon_config():
    """What Dragon's configuration folder holds, as the machine sees it (None: nothing).
    An empty folder counts as none: Dragon's launcher makes one at every start (it runs
    `dragon-config --get=...`), and the other test process starts runtimes meanwhile."""
    if not DRAGON_CONFIG.is_dir():
        return None
    return sorted(p.name for p in DRAGON_CONFIG.iterdir()) or None


def other_uses(listing) -> set[str]:
    """Marks, in Dragon's configuration folder, of clusters of other clones that bind it."""
    return {name for name in listing or () if name.startswith(USE_MARK) and name != OUR_USE}


def assert_same(before: dict, after: dict):
    for key in before:
        if key == "processes":              # processes that ended meanwhile are fine
            assert after[key] <= before[key], f"left running: {after[key] - before[key]}"
        elif key == "dragon_config" and other_uses(after[key]):
            # a cluster of another clone binds the folder still: its down removes it
            new = set(after[key]) - other_uses(after[key]) - set(before[key] or ())
            assert new <= {MADE_MARK}, key
        else:
            assert after[key] == before[key], key


def _wait_for(path, seconds=20):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


@pytest.fixture
def three(local_cluster):
    return local_cluster(3)


def test_script_passes_shellcheck():
    shellcheck = installed_or_skip("shellcheck", "shellcheck")
    proc = subprocess.run([shellcheck, "-x", "cluster/local_cluster.sh"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ up / down
def test_up_exports_and_down_leaves_nothing(local_cluster):
    local_cluster.down()
    before = host_state()
    started = time.monotonic()
    up = cluster_command("up", 3)
    up_s = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    exports = parse_exports(up.stdout)
    assert set(exports) == EXPORTED
    hostfile = exports["PBS_NODEFILE"]
    assert open(hostfile).read() == "node1\nnode2\nnode3\n"
    assert exports["PARSL_IFACE"] == "pcc0" and exports["PC_CLUSTER_NODES"] == "3"
    assert exports["PC_DRAGON_ARGS"] == f"-t hsta --wlm ssh --hostfile {hostfile} --network-prefix ^pcc0$"
    # the nodes see the cluster's Dragon configuration (HSTA over TCP); the machine does not
    seen = cluster_command("run", 2, "cat", str(DRAGON_CONFIG / "dragon-config.json"))
    assert seen.returncode == 0 and json.loads(seen.stdout) == {"tcp_runtime": True}, seen
    while_up = set(host_state()["dragon_config"])
    assert OUR_USE in while_up
    assert while_up - set(before["dragon_config"] or ()) <= {OUR_USE, MADE_MARK}
    assert exports["PC_CLUSTER_STATE"] == str(CLUSTER_STATE)
    assert exports["SSH_AUTH_SOCK"] == str(CLUSTER_STATE / "agent.sock")
    # while up, the machine's own network namespace has nothing new
    assert host_state()["links"] == before["links"]
    assert exports["PC_CLUSTER_PFS"] == str(CLUSTER_STATE / "pfs")
    status = cluster_command("status")
    assert [line.split()[:3] for line in status.stdout.splitlines()] == [
        ["node1", "10.250.0.1", "up:"], ["node2", "10.250.0.2", "up:"],
        ["node3", "10.250.0.3", "up:"], ["storage", "10.250.0.100", "up:"]], status.stdout

    started = time.monotonic()
    down = cluster_command("down")
    down_s = time.monotonic() - started
    assert down.returncode == 0 and down.stdout == "", down.stderr
    assert_same(before, host_state())
    print(f"local_cluster.sh up 3: {up_s:.1f} s, down: {down_s:.1f} s")   # printed, not asserted
    # a second down is harmless
    again = cluster_command("down")
    assert again.returncode == 0 and "no cluster was up" in again.stderr
    assert_same(before, host_state())


@pytest.mark.parametrize("bad", ["0", "5", "x", ""])
def test_up_refuses_a_bad_node_count(local_cluster, bad):
    local_cluster.down()
    proc = cluster_command("up", bad)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "1 to 4" in proc.stderr
    assert not CLUSTER_STATE.exists()


def test_up_refuses_without_root(local_cluster):
    local_cluster.down()
    if shutil.which("setpriv") is None:
        unavailable("no setpriv (util-linux)")
    # the script on stdin: user nobody may not be allowed to read the clone (mktemp -d: 0700)
    with open(CLUSTER_SCRIPT) as script:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "bash", "-s", "up", "2"], stdin=script, cwd="/",
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["local_cluster: up needs root (it makes namespaces, "
                                        "mounts and network devices)"]


def test_up_refuses_when_up(local_cluster):
    cluster = local_cluster(2)
    proc = cluster_command("up", 2)
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "up already" in proc.stderr
    # and the cluster is untouched
    assert cluster.run(2, ["hostname"], cwd=ROOT, timeout=60).stdout == "node2\n"


@pytest.mark.parametrize("how", ["SIGKILL, then down", "SIGTERM"])
def test_a_half_finished_up_is_taken_down(local_cluster, how):
    """Killed mid-way, up leaves namespaces and processes; down removes them. Stopped by
    SIGTERM, up removes them itself."""
    local_cluster.down()
    before = host_state()
    up = subprocess.Popen(["bash", str(CLUSTER_SCRIPT), "up", "3"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    _wait_for(CLUSTER_STATE / "node3" / "log")      # the nodes are starting
    up.send_signal(signal.SIGKILL if how.startswith("SIGKILL") else signal.SIGTERM)
    assert up.wait(timeout=60) != 0
    if how.startswith("SIGKILL"):
        assert CLUSTER_STATE.exists()
        down = cluster_command("down")
        assert down.returncode == 0, down.stderr
    assert_same(before, host_state())


def test_a_repository_under_tmp_stays_visible(local_cluster, tmp_path):
    """A clone in /tmp (CI) is hidden by each node's fresh /tmp unless bound back. Its
    cluster is another one (its own namespace names): both can be up at once, and in one
    environment they share Dragon's configuration folder: the clone's, up first, makes it,
    and its down leaves it to the cluster still up, whose down removes it."""
    local_cluster.down()
    before = host_state()
    clone = tmp_path / "clone"
    (clone / "cluster").mkdir(parents=True)
    for name in ("local_cluster.sh", "node_exec.py", "install_packages.sh"):
        shutil.copy(CLUSTER_SCRIPT.parent / name, clone / "cluster" / name)
    (clone / "marker.txt").write_text("shared\n")
    script = ["bash", str(clone / "cluster" / "local_cluster.sh")]
    try:
        up = subprocess.run(script + ["up", "1"], capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        seen = subprocess.run(script + ["run", "1", "sh", "-c", "cat marker.txt; ls /tmp"],
                              cwd=clone, capture_output=True, text=True, timeout=60)
        assert seen.returncode == 0, seen.stderr
        # the node's /tmp holds only the way to the clone
        assert seen.stdout.splitlines() == ["shared", tmp_path.relative_to("/tmp").parts[0]]
        ours = local_cluster(1)
    finally:
        down = subprocess.run(script + ["down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not (clone / "cluster" / ".state").exists()
    config = (CLUSTER_STATE / "hsta_config_dir").read_text().strip()
    seen = ours.run(1, ["cat", f"{config}/dragon-config.json"], cwd=ROOT, timeout=60)
    assert seen.returncode == 0 and json.loads(seen.stdout) == {"tcp_runtime": True}, seen
    local_cluster.down()
    assert host_state()["dragon_config"] == before["dragon_config"]


def test_down_forgets_the_mark_of_a_cluster_that_is_gone(local_cluster, tmp_path):
    """A cluster whose state folder is gone (its clone deleted while it was up) binds
    nothing: down removes its mark. The mark of a cluster still up stays."""
    local_cluster.down()
    before = host_state()
    local_cluster(1)
    gone, alive = DRAGON_CONFIG / f"{USE_MARK}pcc-000000", DRAGON_CONFIG / f"{USE_MARK}pcc-111111"
    gone.write_text("/nonexistent/cluster/.state\n")
    alive.write_text(f"{tmp_path}\n")
    try:
        local_cluster.down()
        assert not gone.exists() and alive.exists()
        assert OUR_USE not in os.listdir(DRAGON_CONFIG)
    finally:
        gone.unlink(missing_ok=True)
        alive.unlink()
        local_cluster(1)        # the last down removes the folder if a cluster made it
        local_cluster.down()
    assert_same(before, host_state())


def test_a_configuration_folder_that_dragon_made_stays(local_cluster):
    """Dragon's launcher makes an empty .hsta-config at every start (`dragon-config --get`,
    run here as the launcher runs it), also while a cluster comes up: up binds over it as
    it is, without its mark, and down leaves it."""
    local_cluster.down()
    listing = host_state()["dragon_config"]
    if MADE_MARK in (listing or ()) and other_uses(listing):
        unavailable(f"a cluster of another clone ({', '.join(sorted(other_uses(listing)))}) "
                    "binds Dragon's configuration folder, which that cluster made")
    dragon_config = pathlib.Path(sys.executable).parent / "dragon-config"
    made = subprocess.run([str(dragon_config), "--get=cuda_runtime_libname"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and DRAGON_CONFIG.is_dir(), made.stderr
    cluster = local_cluster(1)
    assert MADE_MARK not in os.listdir(DRAGON_CONFIG)
    seen = cluster.run(1, ["cat", str(DRAGON_CONFIG / "dragon-config.json")], cwd=ROOT, timeout=60)
    assert seen.returncode == 0 and json.loads(seen.stdout) == {"tcp_runtime": True}, seen
    local_cluster.down()
    assert DRAGON_CONFIG.is_dir()


# ---------------------------------------------------------------------------- the nodes
NODE_FACTS = r"""
import json, os, socket, subprocess
def read(path):
    with open(path) as f:
        return f.read().strip()
print(json.dumps({
    "hostname": socket.gethostname(),
    "boot_id": read("/proc/sys/kernel/random/boot_id"),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "routes": [line.strip() for line in subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True).stdout.splitlines()],
    "all_routes": subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                                 text=True).stdout,
    "addresses": {name: socket.gethostbyname(name) for name in ("node1", "node2", "node3")},
    "pid1": read("/proc/1/cmdline").replace("\0", " "),
}))
"""


def test_each_node_is_a_host_of_its_own(three):
    facts = [json.loads(three.run(k, [sys.executable, "-c", NODE_FACTS], cwd=ROOT,
                                  timeout=60).stdout) for k in (1, 2, 3)]
    with open("/proc/sys/kernel/random/boot_id") as f:
        host_boot_id = f.read().strip()
    assert len({fact["boot_id"] for fact in facts} | {host_boot_id}) == 4
    for k, fact in enumerate(facts, start=1):
        assert fact["hostname"] == f"node{k}"
        assert fact["interfaces"] == ["lo", "pcc0"]
        assert fact["routes"] == [
            f"10.250.0.0/24 dev pcc0 proto kernel scope link src 10.250.0.{k}",
            f"10.254.254.254 dev lo scope link src 10.250.0.{k}"]
        assert "default" not in fact["all_routes"]
        assert fact["addresses"] == {f"node{j}": f"10.250.0.{j}" for j in (1, 2, 3)}
        assert fact["pid1"].startswith("sshd: ") and f"node{k}/sshd_config" in fact["pid1"]


def test_tmp_and_shm_are_per_node_and_the_repository_is_shared(three, cluster_workdir):
    name = f"pcc-test-{uuid.uuid4().hex[:8]}"
    write = f"echo one > /tmp/{name}; echo one > /dev/shm/{name}; echo from-node1 > {name}"
    assert three.run(1, ["sh", "-c", write], cwd=cluster_workdir, timeout=60).returncode == 0
    try:
        for directory in ("/tmp", "/dev/shm"):
            assert name in three.listing(1, directory)
            assert name not in three.listing(2, directory)
            assert name not in os.listdir(directory)                # nor on the machine
        # the repository: what node1 wrote, the machine and node3 read, and node2 can change
        assert (cluster_workdir / name).read_text() == "from-node1\n"
        assert three.run(3, ["cat", name], cwd=cluster_workdir, timeout=60).stdout == "from-node1\n"
        three.run(2, ["sh", "-c", f"echo from-node2 > {name}"], cwd=cluster_workdir, timeout=60)
        assert (cluster_workdir / name).read_text() == "from-node2\n"
    finally:
        three.run(1, ["rm", "-f", f"/tmp/{name}", f"/dev/shm/{name}"], cwd=ROOT, timeout=60)


def test_ssh_between_nodes_and_nowhere_else(three):
    assert three.run(1, ["ssh", "node2", "hostname"], cwd=ROOT, timeout=60).stdout == "node2\n"
    assert three.run(3, ["ssh", "node1", "hostname"], cwd=ROOT, timeout=60).stdout == "node1\n"
    # the machine's own addresses are out of reach from a node
    own = [line.split()[3].split("/")[0]
           for line in _lines(["ip", "-4", "-o", "addr", "show", "scope", "global"])]
    if not own:
        unavailable("this machine has no global IPv4 address to try")
    probe = ("import socket, sys\ns = socket.socket()\ns.settimeout(2)\n"
             "try:\n    s.connect((sys.argv[1], 22))\nexcept OSError as e:\n    print(e.errno)\n")
    out = three.run(1, [sys.executable, "-c", probe, own[0]], cwd=ROOT, timeout=60).stdout
    assert out.strip() == "101", out                          # ENETUNREACH: no route


# --------------------------------------------------------------------------------- run
def test_run_is_like_running_the_command_there(three, cluster_workdir):
    def run(*argv, **kwargs):
        return three.run(2, list(argv), cwd=cluster_workdir, timeout=60, **kwargs)

    assert run("bash", "-c", "exit 7").returncode == 7
    assert run("bash", "-c", "kill -TERM $$").returncode == -signal.SIGTERM
    missing = run("no-such-command-pcc")
    assert missing.returncode == 127 and "no-such-command-pcc" in missing.stderr
    assert run("pwd").stdout == f"{cluster_workdir}\n"
    # the environment as given, but what local_cluster.sh's own bash changes (SHLVL, _, PWD;
    # a non-interactive bash drops PS1 and PS2)
    env = dict(three.env, PC_TEST_VALUE="a b'c\nd", LC_CTYPE="C")
    shown = run(sys.executable, "-I", "-S", "-c",
                "import json, sys\nwith open('/proc/self/environ', 'rb') as f:\n"
                "    print(json.dumps(dict(e.decode().split('=', 1) for e in f.read().split(b'\\0') if e)))",
                env=env)
    seen = json.loads(shown.stdout)
    for name in ("SHLVL", "_", "PWD", "OLDPWD", "PS1", "PS2"):
        env.pop(name, None), seen.pop(name, None)
    assert seen == env
    # a directory that is another one in the nodes, and a node that is not there
    elsewhere = subprocess.run(["bash", str(CLUSTER_SCRIPT), "run", "1", "true"], cwd="/tmp",
                               capture_output=True, text=True, timeout=60)
    assert elsewhere.returncode != 0 and "not the same directory" in elsewhere.stderr
    missing_node = cluster_command("run", "4", "true")
    assert missing_node.returncode != 0 and "no node4" in missing_node.stderr


WAIT_FOR_SIGNALS = r"""
import signal, sys, time
got = []
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda signum, frame: got.append(signum))
print("ready", flush=True)
while not got:
    time.sleep(0.05)
time.sleep(1)                   # a second copy of the signal would arrive meanwhile
sys.exit(10 * len(got) + got[0])
"""


def test_run_passes_a_signal_on(three, cluster_workdir):
    proc = subprocess.Popen(["bash", str(CLUSTER_SCRIPT), "run", "1", sys.executable, "-c",
                             WAIT_FOR_SIGNALS], cwd=cluster_workdir, env=three.env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 10 + signal.SIGTERM      # once, and the command's status
    assert three.processes(1) == []


def test_ctrl_c_at_the_terminal_reaches_the_command_once(three, cluster_workdir):
    pid, terminal = pty.fork()
    if pid == 0:                        # the child: a session whose terminal is the pty
        try:
            os.chdir(cluster_workdir)
            os.execvpe("bash", ["bash", str(CLUSTER_SCRIPT), "run", "1", sys.executable, "-c",
                                WAIT_FOR_SIGNALS], three.env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 60
    while b"ready" not in output and time.monotonic() < deadline:
        output += os.read(terminal, 1024)       # the terminal echoes, then the command prints
    os.write(terminal, b"\x03")         # Ctrl-C: the terminal signals its foreground group
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 10 + signal.SIGINT, output
    assert three.processes(1) == []


# ------------------------------------------------------------------- workflows on 3 nodes
@pytest.mark.parametrize("script", ["6_parsl_fs_producer_consumer.py",
                                    "5_parsl_fut_producer_consumer.py"])
def test_parsl_workflow_runs_on_every_node(three, cluster_workdir, script):
    """mpiexec (MPICH's Hydra) starts a manager per node over ssh; tasks run on all three."""
    results = cluster_workdir / "results.jsonl"
    started = time.monotonic()
    proc = three.run(1, [script, "--num_sims", 12, "--num_trainers", 3, *TINY,
                         "--data_dir", cluster_workdir / "data", "--results_file", results],
                     cwd=cluster_workdir, timeout=900)
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    print(f"{script} on 3 nodes: {wall_s:.1f} s wall, startup {record['startup_s']:.1f} s, "
          f"simulations {record['sim_run_s']:.2f} s, training {record['train_run_s']:.2f} s")
    assert record["num_nodes"] == 3 and record["hosts"] == three.nodes
    assert sorted(set(record["sim_hosts"])) == three.nodes
    assert sorted(set(record["trainer_hosts"])) == three.nodes
    assert record["integrity_ok"] is True
    # warm workers told apart by pid alone would never all warm up (pids repeat across
    # nodes, each numbers its own): start() then times out and the run above fails
    assert os.listdir(cluster_workdir / "data") == []
    deadline = time.monotonic() + 20            # managers may still be stopping
    while (three.leftovers() or leftover_processes(cluster_workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert three.leftovers() == {} and leftover_processes(cluster_workdir) == []


def test_a_node_is_known_by_its_pid_before_it_becomes_sshd(tmp_path):
    """local_cluster.sh's node_pid: between writing its pid file and becoming sshd, a node is
    `bash .../local_cluster.sh _node NAME`; under load `up` looks in that moment (a fresh CI
    saw "node1 stopped" for a node that was fine)."""
    here, state = tmp_path / "cluster", tmp_path / "cluster" / ".state"
    (state / "node1").mkdir(parents=True)
    (here / "local_cluster.sh").write_text("sleep 30\n")
    node = subprocess.Popen(["bash", str(here / "local_cluster.sh"), "_node", "node1"])
    try:
        deadline = time.monotonic() + 10
        while b"_node" not in pathlib.Path(f"/proc/{node.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (state / "node1" / "pid").write_text(f"{node.pid}\n")
        function = subprocess.run(["sed", "-n", "/^node_pid()/,/^}/p", str(CLUSTER_SCRIPT)],
                                  capture_output=True, text=True, check=True).stdout
        found = subprocess.run(["bash", "-c", f"{function}\nnode_pid node1; node_pid node2"],
                               env=dict(os.environ, HERE=str(here), STATE=str(state)),
                               capture_output=True, text=True, timeout=30)
        assert found.stdout == f"{node.pid}\n", found
    finally:
        node.kill()
        node.wait()
