"""Helpers for running the real workflow scripts, at tiny sizes, in subprocesses."""
import json
import os
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


TAG = "PC_TEST_RUN"   # every process a test starts inherits this tag, so leftovers can be found


def script_env(tag=None, **overrides) -> dict:
    """The environment a user has after sourcing 0_activate_env.sh: the venv's bin/ on PATH.

    `tag` (e.g. the test's directory) marks the processes started with this environment.
    """
    env = dict(os.environ)
    if tag is not None:
        env[TAG] = str(tag)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def leftover_processes(tag) -> list:
    """Command lines of live processes started with script_env(tag), children included."""
    needle = f"{TAG}={tag}".encode() + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read() + b"\0":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def run_script(argv, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a command (argv[0] a script name under the repository, or a program) and capture it."""
    argv = [str(a) for a in argv]
    if argv[0].endswith(".py"):
        argv = [sys.executable, str(ROOT / argv[0])] + argv[1:]
    return subprocess.run(argv, cwd=cwd, env=env or script_env(cwd), capture_output=True,
                          text=True, timeout=timeout)


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
    """After the test, within 20 s: no process it started is alive, its data directory is
    empty, and it left nothing in /dev/shm or in the temporary directory.

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

    deadline = time.monotonic() + 20        # a launcher may still be tearing down
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == []
