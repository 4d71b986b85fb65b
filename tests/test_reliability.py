"""Faults, interruptions and concurrent runs: the run ends cleanly and leaves nothing behind."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, leftover_processes, read_records, run_script, script_env

FS = "6_parsl_fs_producer_consumer.py"


def assert_nothing_left(workdir, timeout=15):
    """No run directory under data/ and no process started from one, within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = os.listdir(workdir / "data") + leftover_processes(workdir)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == []


@pytest.mark.parametrize("kind,index", [("simulation", 3), ("trainer", 1)])
def test_a_failing_task_ends_the_run_with_its_name(workdir, kind, index):
    env = script_env(workdir, PC_INJECT_FAILURE=f"{kind}:{index}")
    proc = run_script([FS, "--num_sims", 6, "--num_trainers", 2, *TINY,
                       "--data_dir", workdir / "data", "--results_file", workdir / "r.jsonl"],
                      cwd=workdir, env=env, timeout=120)
    assert proc.returncode == 1
    assert f"error: {kind} {index} failed: RuntimeError: failure injected" in proc.stderr
    assert not (workdir / "r.jsonl").exists()
    assert_nothing_left(workdir)


def start(argv, workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / argv[0]), *map(str, argv[1:])],
                            cwd=workdir, env=script_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, text, timeout=120):
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if text in line:
            return
        assert time.monotonic() < deadline, f"no line with {text!r}"
    raise AssertionError(f"process ended before printing {text!r}: {proc.stderr.read()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase,marker,extra", [
    ("simulation", "Parsl up", ["--compute_time", "1"]),
    ("training", "simulations done", ["--compute_time", "0", "--grid_size", "96"]),
])
def test_interrupt_cleans_up(workdir, signum, phase, marker, extra):
    proc = start([FS, "--num_sims", 40, "--num_trainers", 2, *extra,
                  "--data_dir", workdir / "data", "--results_file", workdir / "r.jsonl"], workdir)
    try:
        wait_for_line(proc, marker)
        time.sleep(0.5)
        assert os.listdir(workdir / "data"), "the run directory should exist mid-run"
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in proc.stderr.read()
    assert_nothing_left(workdir)


def test_two_runs_at_once_in_the_same_directory_both_succeed(workdir):
    argv = [FS, "--num_sims", 44, "--num_trainers", 1, *TINY,
            "--data_dir", workdir / "data", "--results_file", workdir / "r.jsonl"]
    runs = [start(argv, workdir) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    records = read_records(workdir / "r.jsonl")
    assert len(records) == 2 and all(r["integrity_ok"] for r in records)
    assert_nothing_left(workdir)


BAD_INPUT = [
    (["--num_sims", "0"], "--num_sims"),
    (["--num_sims", "-3"], "--num_sims"),
    (["--grid_size", "0"], "--grid_size"),
    (["--grid_size", "abc"], "--grid_size"),
    (["--num_trainers", "0"], "--num_trainers"),
    (["--grid_size", "8"], "--grid_size"),                    # smaller than the 9x9 kernel
    (["--kernel_sizes", "3,4"], "--kernel_sizes"),
    (["--compute_time", "-1"], "--compute_time"),
    (["--num_sims", "100000", "--grid_size", "4096"], "--num_sims"),   # cannot fit in memory
    (["--data_dir", "missing"], "--data_dir"),
    (["--data_dir", "afile"], "--data_dir"),
    (["--data_dir", "/sys"], "--data_dir"),                   # exists, but no file can be made
    (["--results_file", "/sys/r.jsonl"], "--results_file"),
    (["--results_file", "data"], "--results_file"),           # a directory
    (["--no_such_flag"], "--no_such_flag"),
]


@pytest.mark.parametrize("args,flag", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_refused_in_one_line_before_anything_starts(workdir, args, flag):
    (workdir / "afile").write_text("not a directory")
    proc = run_script([FS, *args], cwd=workdir, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and flag in proc.stderr and "error:" in proc.stderr
    assert sorted(os.listdir(workdir)) == ["afile", "data"]
    assert os.listdir(workdir / "data") == []
    assert leftover_processes(workdir) == []
