"""Helpers for running the real workflow scripts, at tiny sizes, in subprocesses."""
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# tiny but real: 16x16 grids, no emulated compute time
TINY = ["--grid_size", "16", "--compute_time", "0"]
HANG_GUARD_S = 180      # how long a test waits for what should end by itself, at most


def unavailable(reason: str):
    """Skip a test that cannot run here for want of a tool, a permission or a facility, saying
    why. Under CI=true it fails instead: a CI that silently drops the multi-node, Slurm or
    cluster tests would stay green without testing them. (Only a test that needs hardware
    this machine lacks, a GPU, skips everywhere: pytest.skip.)"""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true, and this test cannot run here: {reason}", pytrace=False)
    pytest.skip(reason)


# Workflow tests run their trainers on the CPU, also on a GPU host (they pass --num_trainers 2,
# which one GPU would refuse); test_gpu.py runs on the GPUs where there are some
CPU_ONLY = {"PC_GPUS_PER_NODE": "0", "CUDA_VISIBLE_DEVICES": ""}


TAG = "PC_TEST_RUN"   # every process a test starts inherits this tag, so leftovers can be found


def script_env(tag=None, **overrides) -> dict:
    """The environment a user has after sourcing 0_activate_env.sh: the venv's bin/ on PATH.

    `tag` (e.g. the test's directory) marks the processes started with this environment.
    """
    env = {**os.environ, **CPU_ONLY}
    if tag is not None:
        env[TAG] = str(tag)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def tagged_pids(tag) -> list[int]:
    """Pids of live processes started with script_env(tag), children included."""
    needle = f"{TAG}={tag}".encode() + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.append(int(pid))
        except OSError:
            continue
    return found


def leftover_processes(tag) -> list:
    """Command lines of live processes started with script_env(tag), children included."""
    found = []
    for pid in tagged_pids(tag):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def kill_tagged(tag) -> None:
    """SIGKILL every live process started with script_env(tag): after a test's command timed
    out, what it left (a Dragon runtime stuck in its teardown, say) must not load the machine
    for the tests after it."""
    import signal
    for pid in tagged_pids(tag):
        if pid != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def run_script(argv, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a command (argv[0] a script name under the repository, or a program) and capture it."""
    argv = [str(a) for a in argv]
    if argv[0].endswith(".py"):
        argv = [sys.executable, str(ROOT / argv[0])] + argv[1:]
    env = env or script_env(cwd)
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        if TAG in env:
            kill_tagged(env[TAG])
        raise


def read_records(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


PHASE_TIMES = ("startup_s", "sim_run_s", "sim_io_mean_s", "sim_io_max_s", "train_run_s",
               "train_io_mean_s", "train_io_max_s")


def run_end_to_end(argv, workdir, transport, timeout=600):
    """Run a workflow on 128 tiny simulations with 2 trainers (far above the 41 distinct names
    of the earlier public version) and check what every transport must get right: every byte
    produced reaches every trainer, integrity passes, phase times are measured, and the run
    leaves nothing but its record. argv: the command up to its flags."""
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([*argv, "--num_sims", 128, "--num_trainers", 2, *TINY,
                       "--data_dir", data, "--results_file", results], cwd=workdir,
                      timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    expected = 128 * 10 * 2 * 16 * 16 * 8
    assert record["transport"] == transport
    assert record["bytes_produced"] == expected
    assert record["bytes_read_per_trainer"] == expected
    assert record["integrity_ok"] is True
    assert record["num_sims"] == 128 and record["num_trainers"] == 2 and record["num_nodes"] == 1
    for key in PHASE_TIMES:
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["sim_io_max_s"] >= record["sim_io_mean_s"]
    assert record["train_io_max_s"] >= record["train_io_mean_s"]
    assert "Integrity               : OK" in proc.stdout
    # the run directory (data, engines' files) is gone, nothing else was created
    assert os.listdir(data) == []
    assert sorted(os.listdir(workdir)) == ["data", "results.jsonl"]
    return record, proc


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch directory the script runs in, with a data directory under it."""
    (tmp_path / "data").mkdir()
    return tmp_path


def launcher_pids(tag) -> set:
    """Pids of live Dragon launchers (`dragon x.py`, `python -m dragon x.py`) started by a test."""
    needle = f"{TAG}={tag}".encode()
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[1:2] == [b"-m"] and argv[2:3] == [b"dragon"] or argv[1:2] and argv[1].endswith(b"/dragon"):
            found.add(pid)
    return found


def temp_leftovers() -> set:
    """What a run may leave in the temporary directory: multiprocessing's pymp-* folders
    (Parsl's managers) and this project's pc-* folders."""
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith(("pymp-", "pc-"))}


@pytest.fixture
def nothing_left(workdir):
    """After the test, once its processes have ended: no process it started is alive, its
    data directory is empty, and it left nothing in /dev/shm or in the temporary directory.
    The wait is for a launcher still tearing down; its limit only guards against a hang.

    Dragon names a runtime's /dev/shm pools after its launcher's pid (last three digits), so
    pools of other Dragon runs on the machine are told apart from this test's; any other new
    /dev/shm file (e.g. a multiprocessing semaphore, sem.mp-*) counts as left behind."""
    shm_before, temp_before = set(os.listdir("/dev/shm")), temp_leftovers()
    launchers, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            launchers.update(launcher_pids(workdir))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield workdir
    done.set()
    watcher.join()
    tails = {pid[-3:] for pid in launchers}

    def left():
        shm = [name for name in set(os.listdir("/dev/shm")) - shm_before
               if not name.startswith("DD") or any(tail in name for tail in tails)]
        return (sorted(shm) + sorted(temp_leftovers() - temp_before)
                + os.listdir(workdir / "data") + leftover_processes(workdir))

    deadline = time.monotonic() + HANG_GUARD_S
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == []


# --------------------------------------------------------------------------- local cluster
# A cluster of 1-4 "nodes" made of Linux namespaces on this machine (cluster/local_cluster.sh),
# so that tests run the workflows across nodes for real: node1..nodeN, each with its own
# hostname, network address, PIDs, /tmp and /dev/shm; the repository is shared by all. Each
# node has its own /tmp: a test's working directory for cluster runs must be on the shared
# file system, see cluster_workdir.

CLUSTER_SCRIPT = ROOT / "cluster" / "local_cluster.sh"
CLUSTER_STATE = ROOT / "cluster" / ".state"
# local_cluster.sh names this clone's network namespaces pcc-<md5 of its state folder>-...
CLUSTER_NETNS = "pcc-" + hashlib.md5(str(CLUSTER_STATE).encode()).hexdigest()[:6] + "-"
AGENT = f"ssh-agent -a {CLUSTER_STATE / 'agent.sock'} "    # up starts it in node1 (cmdline)
# up mounts the storage node's directory in every node: its sshfs, and the ssh that sshfs runs
STORAGE_MOUNT = (f"sshfs storage:{CLUSTER_STATE / 'pfs'} ", " -- storage sftp ")


def cluster_unavailable():
    """Why no local cluster can be made here, or None when one can."""
    if os.geteuid() != 0:
        return "the local cluster needs root (namespaces, mounts, network devices)"
    try:
        probe = subprocess.run(["unshare", "--net", "--uts", "--ipc", "--mount", "--pid",
                                "--fork", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot make namespaces here: {e}"
    if probe.returncode != 0:
        return f"cannot make namespaces here: {probe.stderr.strip()}"
    return None


def cluster_command(*args, timeout=60) -> subprocess.CompletedProcess:
    """`bash cluster/local_cluster.sh ARGS`, captured."""
    return subprocess.run(["bash", str(CLUSTER_SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def parse_exports(text: str) -> dict:
    """The variables of up's `export NAME='value'` lines (all it prints on stdout)."""
    exports = {}
    for line in text.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        assert line.startswith("export ") and value[:1] == value[-1:] == "'", line
        exports[name] = value[1:-1].replace("'\\''", "'")
    return exports


class LocalCluster:
    """A cluster that is up. env: os.environ with up's exports (PBS_NODEFILE, PARSL_IFACE,
    PC_DRAGON_ARGS, PC_CLUSTER_NODES, PC_CLUSTER_STATE) and the venv's bin/ on PATH."""

    def __init__(self, exports: dict):
        self.broken = False
        self.exports = exports
        self.env = script_env(**exports)
        self.nodes = [f"node{k}" for k in range(1, int(exports["PC_CLUSTER_NODES"]) + 1)]

    def run(self, k, argv, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
        """Run argv in node k from cwd (shared: the repository or below), as run_script does
        here: a script name under the repository runs with this Python."""
        argv = [str(a) for a in argv]
        if argv[0].endswith(".py"):
            argv = [sys.executable, str(ROOT / argv[0])] + argv[1:]
        if env is None:
            env = dict(self.env, **{TAG: str(cwd)})
        try:
            return subprocess.run(["bash", str(CLUSTER_SCRIPT), "run", str(k), *argv], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            # what the command left on the nodes goes with them: the next test gets a new cluster
            self.broken = True
            cluster_command("down")
            raise

    def _in_node(self, k, code: str) -> list:
        proc = self.run(k, [sys.executable, "-I", "-c", code], cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def processes(self, k) -> list:
        """Command lines of node k's processes, but the cluster's own (its sshd, PID 1; its
        sshfs mount of the storage node; in node1 the cluster's ssh-agent) and this query."""
        return self._in_node(k, "import json, os\nfound = []\n"
                             "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
                             "    if int(pid) in (1, os.getpid()):\n        continue\n"
                             "    try:\n        with open(f'/proc/{pid}/cmdline', 'rb') as f:\n"
                             "            found.append(f.read().replace(b'\\0', b' ').decode())\n"
                             "    except OSError:\n        pass\n"
                             f"print(json.dumps([c for c in found if c != {AGENT!r}\n"
                             f"                  and not c.startswith({STORAGE_MOUNT[0]!r})\n"
                             f"                  and {STORAGE_MOUNT[1]!r} not in c]))")

    def listing(self, k, directory) -> list:
        """Names in a directory as node k sees it (e.g. its own /tmp or /dev/shm)."""
        return self._in_node(k, f"import json, os; print(json.dumps(sorted(os.listdir({str(directory)!r}))))")

    def leftovers(self) -> dict:
        """What any node still has besides its sshd: processes, /dev/shm and /tmp entries.

        Not counted: the way into a repository under /tmp (bound back into each node's
        /tmp), and Dragon's network-configuration cache: after an ssh launch Dragon 0.15
        leaves /tmp/dragon-<host id>-<salt> on each node (plumbing/dragon_launch.py fixes the salt, so
        that it stays one small file a node)."""
        found = {}
        way_in = ROOT.parts[2:3] if ROOT.parts[1:2] == ("tmp",) else ()
        for k in range(1, len(self.nodes) + 1):
            left = (self.processes(k) + self.listing(k, "/dev/shm")
                    + [name for name in self.listing(k, "/tmp") if name not in way_in
                       and not re.fullmatch(r"dragon-\d+-\w+", name)])
            if left:
                found[self.nodes[k - 1]] = left
        return found


class LocalClusters:
    """local_cluster(n): a LocalCluster of n nodes, up (reused while n stays the same);
    down() takes it down (tests of up/down themselves start from there)."""

    def __init__(self):
        self.current = None

    def __call__(self, n: int) -> LocalCluster:
        # a cluster with something left on it (a failed test's stuck runtime, say) is not
        # reused: that test has failed already, and its leftovers must not fail the next one
        if (self.current is not None and len(self.current.nodes) == n
                and not self.current.broken and not self.current.leftovers()):
            return self.current
        self.down()
        proc = cluster_command("up", n)
        assert proc.returncode == 0, proc.stderr
        self.current = LocalCluster(parse_exports(proc.stdout))
        return self.current

    def down(self):
        self.current = None
        proc = cluster_command("down")
        assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="session")
def local_cluster():
    """Factory of local clusters (see LocalClusters); skips where namespaces cannot be made.
    Whatever happens, the cluster is down at the end of the session."""
    reason = cluster_unavailable()
    if reason:
        unavailable(reason)
    clusters = LocalClusters()
    try:
        yield clusters
    finally:
        clusters.current = None
        cluster_command("down")


@pytest.fixture
def cluster_workdir(request):
    """A fresh working directory on the cluster's shared file system (the repository), with a
    data directory under it; removed after the test."""
    import shutil
    # not in the state directory: down removes that, and up refuses while it exists
    base = CLUSTER_STATE.parent / ".work"
    path = base / request.node.name.replace("[", "-").replace("]", "")
    shutil.rmtree(path, ignore_errors=True)
    (path / "data").mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    try:
        base.rmdir()                        # the last one out
    except OSError:
        pass



# a test that asks for one of these starts real processes (a workflow script, a job, a
# runtime, a cluster): it is slow; `python -m pytest -m "not slow" tests` leaves it out
SLOW_FIXTURES = {"workdir", "nothing_left", "local_cluster", "cluster_workdir", "slurm",
                 "two_nodes", "redis_server"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Before any test (and before xdist starts its workers): the Debian packages the tests
    use (sshd, mpiexec, Slurm, redis-server, shellcheck), installed where missing, in one
    place (cluster/install_packages.sh says what it installs). Without root or apt-get
    nothing is installed, and the tests that need a missing program skip, saying why."""
    if hasattr(session.config, "workerinput"):
        return
    session.config.stash[DAEMONS_BEFORE] = daemons()
    if os.geteuid() != 0:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        subprocess.run(["bash", str(ROOT / "cluster" / "install_packages.sh"), "tests"],
                       timeout=1800)


# the system services of the packages the tests install; the tests start their own copies
# (in the cluster's nodes, or per run) and stop them
DAEMON_NAMES = ("sshd", "redis-server", "munged", "slurmctld", "slurmd")
DAEMONS_BEFORE = pytest.StashKey[set]()


def daemons() -> set:
    """(pid, name) of the live processes named in DAEMON_NAMES, in any PID namespace."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            if name in DAEMON_NAMES:
                found.add((int(pid), name))
    return found


def pytest_sessionfinish(session, exitstatus):
    """After every test: no daemon is left running that was not running before the session
    (installing the packages must not start their services; the tests stop their own)."""
    if hasattr(session.config, "workerinput") or DAEMONS_BEFORE not in session.config.stash:
        return
    deadline = time.monotonic() + 30        # the last test's own may still be stopping
    while (left := daemons() - session.config.stash[DAEMONS_BEFORE]) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        print(f"\nleft running after the tests: {sorted(left)}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# files whose tests start no workflow, engine or runtime on this machine: they leave nothing
# in /dev/shm or /tmp that the checks of the machine's group would count, so they run beside it
BESIDE_THE_MACHINE = ("test_cluster", "test_slurm", "test_docs", "test_imports",
                      "test_activate_env", "test_shell_scripts", "test_common",
                      "test_install_packages", "test_gpu_check", "test_report")


def pytest_xdist_make_scheduler(config, log):
    """Two groups of tests for pytest-xdist's two processes (pytest.ini), each run one test at
    a time: the ones on the local cluster (test_cluster*.py, test_slurm.py) with the ones
    that run nothing on this machine (BESIDE_THE_MACHINE), and all the others. The cluster's
    nodes have their own network, /tmp and /dev/shm, so the two groups cannot see each
    other's files or ports, and within a group the checks for leftovers in /dev/shm and /tmp
    stay exact."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = nodeid.split("::")[0].rsplit("/", 1)[-1]
            return "cluster" if name.startswith(BESIDE_THE_MACHINE) else "machine"

    return TwoGroups(config, log)
