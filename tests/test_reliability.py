"""Faults, interruptions, bad input and concurrent runs of 5, 6 and 8, with the real engines:
every run ends, says why, and leaves nothing behind (see nothing_left). Time limits here only
guard against a hang; they are generous, for a loaded machine."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import common
from plumbing import hosts
from conftest import ROOT, TINY, leftover_processes, read_records, run_script, script_env

FUT = "5_parsl_fut_producer_consumer.py"
FS = "6_parsl_fs_producer_consumer.py"
DDICT = "8_dragon_producer_consumer.py"
INTRO = "7_dragon_ddict.py"


def run_args(workdir, *args):
    return [*map(str, args), "--data_dir", str(workdir / "data"),
            "--results_file", str(workdir / "r.jsonl")]


@pytest.mark.parametrize("script,kind,index", [
    # each kind of task once per engine: the scripts share the Parsl side's handling
    (FS, "simulation", 3), (FUT, "trainer", 0),
    (DDICT, "simulation", 2), (DDICT, "trainer", 1),
])
def test_a_failing_task_ends_the_run_with_its_name(nothing_left, script, kind, index):
    workdir = nothing_left
    env = script_env(workdir, PC_INJECT_FAILURE=f"{kind}:{index}")
    proc = run_script([script, *run_args(workdir, "--num_sims", 6, "--num_trainers", 2, *TINY)],
                      cwd=workdir, env=env, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert f"error: {kind} {index} failed: RuntimeError: failure injected" in line
    assert not (workdir / "r.jsonl").exists()
    assert "starting Dragon's runtime again" not in proc.stderr     # work had begun
    # the task's own traceback, from the worker that ran it, in the file the line names
    assert_traceback_of_task(line, "simulate" if kind == "simulation" else "train")


def assert_traceback_of_task(line: str, function: str) -> str:
    """The file that an error line names holds the traceback of the task that failed: the
    science's function that raised it, and the failure injected there."""
    match = re.search(r"\(traceback in (\S+)\)$", line)
    assert match, line
    text = open(match.group(1)).read()
    assert f"in {function}\n" in text and "maybe_inject_failure" in text, text
    assert "RuntimeError: failure injected" in text, text
    return text


def start(argv, workdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / argv[0]), *map(str, argv[1:])],
                            cwd=workdir, env=script_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_line(proc, text, timeout=600):
    """Read proc's output until a line holds `text`; fail after `timeout` s even when the
    process prints nothing more (a run that hangs must fail the test, not stop the suite)."""
    import select
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {text!r} within {timeout} s"
        if not select.select([proc.stdout], [], [], min(left, 1.0))[0]:
            continue
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before printing {text!r}: {proc.stderr.read()}")
        if text in line:
            return


HANG_S = 300        # an interrupted run that has not ended by then hangs
# the simulation phase lasts 40 x 1 s / 2 workers; the training phase never ends by itself
SIMULATING = ["--compute_time", "1", "--grid_size", "16"]
TRAINING = ["--compute_time", "0", "--grid_size", "32", "--epochs", "100000"]


@pytest.mark.parametrize("script,phase,signum", [
    # each signal in each phase once per engine
    (FS, "simulation", signal.SIGINT), (FS, "training", signal.SIGTERM),
    (FUT, "simulation", signal.SIGTERM), (FUT, "training", signal.SIGINT),
    (DDICT, "simulation", signal.SIGTERM), (DDICT, "training", signal.SIGINT),
], ids=lambda p: p.name if isinstance(p, signal.Signals) else p.split("_")[0])
def test_interrupt_exits_and_cleans_up(nothing_left, script, phase, signum):
    workdir = nothing_left
    extra, marker = ((SIMULATING, "warm after" if script != DDICT else "ready after")
                     if phase == "simulation" else (TRAINING, "simulations done"))
    proc = start([script, *run_args(workdir, "--num_sims", 40, "--num_trainers", 2, *extra)],
                 workdir)
    try:
        wait_for_line(proc, marker)
        time.sleep(1)
        assert os.listdir(workdir / "data"), "the run directory should exist mid-run"
        proc.send_signal(signum)
        if script == FS and phase == "training":    # an impatient user: again, mid-clean-up
            time.sleep(0.2)
            proc.send_signal(signum)
        proc.wait(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 130
    err = proc.stderr.read()
    assert f"interrupted ({'SIGINT' if script == DDICT else signum.name}); cleaned up" in err
    assert not (workdir / "r.jsonl").exists()


AN_ERROR_AFTER_A_SIGNAL = """
import os, signal, sys
sys.argv = ["x.py"]
from plumbing import lifecycle
def main():
    lifecycle.defer_interrupts()
    os.kill(os.getpid(), signal.SIGTERM)    # noted; then a clean-up step fails
    raise OSError("the store's server is gone")
lifecycle.run_workflow(main)
"""


def test_an_error_after_a_signal_still_ends_the_run_as_interrupted(tmp_path):
    proc = subprocess.run([sys.executable, "-c", AN_ERROR_AFTER_A_SIGNAL], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.startswith("x.py: interrupted (SIGTERM), then error: OSError: the store's "
                                  f"server is gone (traceback in {tmp_path}/results/error-x-"), proc.stderr
    assert proc.stderr.count("\n") == 1


def test_two_runs_at_once_in_the_same_directory_both_succeed(nothing_left):
    workdir = nothing_left
    argv = [FS, *run_args(workdir, "--num_sims", 8, "--num_trainers", 1, *TINY)]
    runs = [start(argv, workdir) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    records = read_records(workdir / "r.jsonl")
    assert len(records) == 2 and all(r["integrity_ok"] for r in records)
    assert records[0]["kept_run_dir"] is None


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


def memory_share(fraction):
    """--num_sims whose 512x512 data fill `fraction` of the memory available when the test runs
    (not when it is collected: the xdist workers must all collect the same test names)."""
    return lambda: str(int(fraction * hosts.available_memory_bytes() / common.data_bytes(1, 512)))


# each script checks its own limits on top of the shared ones (cli.check_args)
BAD_INPUT_5_8 = [
    (FUT, ["--num_sims", "0"], "--num_sims"),
    (FUT, ["--data_dir", "missing"], "--data_dir"),
    # the futures hold ~5 copies per trainer: refused where 6 (0.5 copies) would run
    (FUT, ["--num_sims", memory_share(0.3), "--num_trainers", "1"], "--num_sims"),
    (DDICT, ["--grid_size", "4"], "--grid_size"),
    (DDICT, ["--results_file", "/sys/r.jsonl"], "--results_file"),
    # more than the trainers alone would refuse, less than DDict + trainers need
    (DDICT, ["--num_sims", memory_share(0.6), "--num_trainers", "2"], "the DDict"),
]


def refused(workdir, script, args, flag, env=None):
    """Exit status 2, one line naming `flag`, nothing printed or made, nothing running."""
    proc = run_script([script, *args], cwd=workdir, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""                # a Dragon launcher or Parsl would have printed
    assert proc.stderr.count("\n") == 1 and flag in proc.stderr and "error:" in proc.stderr, \
        proc.stderr
    assert os.listdir(workdir / "data") == []
    assert leftover_processes(workdir) == []
    return proc.stderr


@pytest.mark.parametrize("args,flag", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_refused_in_one_line_before_anything_starts(workdir, args, flag):
    (workdir / "afile").write_text("not a directory")
    refused(workdir, FS, args, flag)
    assert sorted(os.listdir(workdir)) == ["afile", "data"]


@pytest.mark.parametrize("script,args,flag", BAD_INPUT_5_8,
                         ids=[f"{s[0]} " + " ".join(a if isinstance(a, str) else "<memory share>"
                                                    for a in args)
                              for s, args, _ in BAD_INPUT_5_8])
def test_bad_input_to_5_and_8_is_refused_before_anything_starts(nothing_left, script, args,
                                                                  flag):
    args = [a if isinstance(a, str) else a() for a in args]
    refused(nothing_left, script, args, flag)
    assert sorted(os.listdir(nothing_left)) == ["data"]


@pytest.mark.parametrize("script, setting, value", [
    (DDICT, "PC_DDICT_BYTES", "1GB"),
    (DDICT, "PC_DRAGON_SHUTDOWN_PATIENCE_S", "0"),
    (INTRO, "PC_DRAGON_SHUTDOWN_PATIENCE_S", "a minute")])
def test_a_bad_dragon_setting_is_refused_before_the_runtime_starts(nothing_left, script, setting,
                                                                  value):
    env = script_env(nothing_left, **{setting: value})
    assert f"{setting}={value!r}" in refused(nothing_left, script, [], setting, env=env)


def python_without_dragon(tmp_path) -> list:
    """The venv's Python with its packages, but no DragonHPC: a folder of links to every
    entry of site-packages except Dragon's, used instead of site-packages."""
    import sysconfig
    site = sysconfig.get_paths()["purelib"]
    packages = tmp_path / "site-packages-without-dragon"
    packages.mkdir()
    for name in os.listdir(site):
        if not name.lower().startswith(("dragon", "_dragon")):
            (packages / name).symlink_to(os.path.join(site, name))
    return packages


@pytest.mark.parametrize("script", [INTRO, DDICT])
def test_a_missing_dragon_runtime_is_one_line(workdir, tmp_path_factory, script):
    packages = python_without_dragon(tmp_path_factory.mktemp("nodragon"))
    # -S: no site-packages of the venv; PYTHONPATH: all of them but Dragon's
    env = script_env(workdir, PYTHONPATH=str(packages))
    args = [] if script == INTRO else run_args(workdir)
    proc = subprocess.run([sys.executable, "-S", str(ROOT / script), *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "DragonHPC is not installed" in proc.stderr, \
        proc.stderr
    assert sorted(os.listdir(workdir)) == ["data"] and os.listdir(workdir / "data") == []
