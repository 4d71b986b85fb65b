"""7_dragon_ddict.py and 8_dragon_producer_consumer.py end to end: a real Dragon runtime
(single node), real DDict, tiny sizes. Each run must leave no process and no /dev/shm pool."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import common
from conftest import ROOT, TAG, TINY, leftover_processes, read_records, run_script, script_env

INTRO = "7_dragon_ddict.py"
SCRIPT = "8_dragon_producer_consumer.py"


def shm_files() -> set:
    # sem.mp-* are Python multiprocessing semaphores (Parsl runs make them), never Dragon's
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}


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


@pytest.fixture
def clean_runtime(workdir):
    """After the test: no process it started is alive and no /dev/shm file it made remains.

    Dragon names a runtime's pools after its launcher's pid (last three digits), so files of
    other Dragon runs on the same machine are told apart from this test's."""
    before, launchers, done = shm_files(), set(), threading.Event()

    def watch():
        while not done.is_set():
            launchers.update(launcher_pids(workdir))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield workdir
    done.set()
    watcher.join()
    ours = {pid[-3:] for pid in launchers}

    def left():
        new = [name for name in shm_files() - before if any(tail in name for tail in ours)]
        return sorted(new) + leftover_processes(workdir)

    deadline = time.monotonic() + 20        # the launcher may still be tearing down
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left() == []


def test_ddict_introduction_puts_in_one_process_and_gets_in_another(clean_runtime):
    proc = run_script([INTRO], cwd=clean_runtime, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manager 0 on " in proc.stdout and "MiB of memory" in proc.stdout
    assert "got 'hello from the writer on " in proc.stdout
    assert "keys: ['greeting', 'reader_note', 'wave'], len(d) = 3" in proc.stdout
    assert "received 8,000,000 bytes" in proc.stdout
    assert "DDict destroyed" in proc.stdout
    assert sorted(os.listdir(clean_runtime)) == ["data"]      # no DDict metadata file left


@pytest.mark.parametrize("launcher", ["python", "dragon"])
def test_ddict_workflow_moves_every_sample_exactly_once(clean_runtime, launcher):
    workdir = clean_runtime
    data, results = workdir / "data", workdir / "results.jsonl"
    argv = [SCRIPT, "--num_sims", 56, "--num_trainers", 2, *TINY,
            "--data_dir", data, "--results_file", results]
    if launcher == "dragon":                # as the README says; `python` restarts under dragon
        argv = ["dragon", ROOT / SCRIPT, *argv[1:]]
    proc = run_script(argv, cwd=workdir, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    expected = 56 * 10 * 2 * 16 * 16 * 8
    assert record["transport"] == "dragon+ddict"
    assert record["bytes_produced"] == expected
    assert record["bytes_read_per_trainer"] == expected
    assert record["integrity_ok"] is True
    assert record["num_sims"] == 56 and record["num_trainers"] == 2
    assert record["num_nodes"] == 1 and len(record["hosts"]) == 1
    assert record["devices"] == ["cpu", "cpu"] and record["kernel_sizes"] == [3, 5]
    ddict = record["ddict"]
    assert ddict["keys"] == 56                                  # one value per simulation
    assert ddict["used_bytes"] >= expected and ddict["managers"] == 1
    for key in ("startup_s", "sim_run_s", "sim_io_mean_s", "sim_io_max_s", "train_run_s",
                "train_io_mean_s", "train_io_max_s", "ddict_create_s"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["sim_io_max_s"] >= record["sim_io_mean_s"]
    assert record["train_io_max_s"] >= record["train_io_mean_s"]
    # the runtime's own start-up is only visible when the script started it
    assert (record["runtime_startup_s"] is None) == (launcher == "dragon")
    assert "Integrity               : OK" in proc.stdout
    assert os.listdir(data) == []
    assert sorted(os.listdir(workdir)) == ["data", "results.jsonl"]


def test_a_failing_trainer_ends_the_run_and_everything_is_cleaned_up(clean_runtime):
    workdir = clean_runtime
    env = script_env(workdir, PC_INJECT_FAILURE="trainer:1")
    proc = run_script([SCRIPT, "--num_sims", 3, "--num_trainers", 2, *TINY,
                       "--data_dir", workdir / "data", "--results_file", workdir / "r.jsonl"],
                      cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: trainer 1 failed: RuntimeError: failure injected" in proc.stderr
    assert not (workdir / "r.jsonl").exists()
    assert os.listdir(workdir / "data") == []


def test_ctrl_c_stops_the_run_and_everything_is_cleaned_up(clean_runtime):
    """^C at a terminal reaches the script's process group; the script passes it to its head
    process, which stops its processes and destroys the DDict before the runtime goes down."""
    workdir = clean_runtime
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / SCRIPT), "--num_sims", "8", "--num_trainers", "1",
         "--grid_size", "16", "--compute_time", "2", "--data_dir", str(workdir / "data"),
         "--results_file", str(workdir / "r.jsonl")], cwd=workdir, env=script_env(workdir),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in proc.stdout:                # the simulations run for 20 s
            if "ready after" in line:
                break
        time.sleep(1)
        assert os.listdir(workdir / "data"), "the run directory should exist mid-run"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "cleaned up" in err
    assert not (workdir / "r.jsonl").exists()
    assert os.listdir(workdir / "data") == []


@pytest.mark.parametrize("args,message", [
    (["--num_sims", "0"], "--num_sims"),
    (["--grid_size", "4"], "--grid_size"),
    ("too much for the DDict", "the DDict needs"),
])
def test_bad_input_is_refused_before_the_runtime_starts(clean_runtime, args, message):
    if args == "too much for the DDict":
        # more than the trainers alone would refuse, less than DDict + trainers need
        sims = int(0.6 * common.available_memory_bytes() / common.data_bytes(1, 512))
        args = ["--num_sims", str(sims), "--grid_size", "512", "--num_trainers", "2"]
    proc = run_script([SCRIPT, *args], cwd=clean_runtime, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""                # the Dragon launcher would have printed
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert sorted(os.listdir(clean_runtime)) == ["data"]
