"""plumbing/dragon_launch.py: where Dragon's runtime may start (a batch job Dragon cannot use
is refused, never run on one node), and the one retry of a start that failed before any work
began: real Dragon runtimes, single node, with a start failure injected through
PC_INJECT_FAILURE (runtime: Dragon's launcher crashes; ddict: the DDict's creation stalls)."""
import json
import os
import shutil
import sys

import pytest

from conftest import ROOT, TINY, read_records, run_script, script_env

from plumbing import dragon_launch  # noqa: E402  (conftest puts the repository on sys.path)

INTRO = "7_dragon_ddict.py"
SCRIPT = "8_dragon_producer_consumer.py"
RETRY = "starting Dragon's runtime again, once: it failed before any work began"


# --------------------------------------------------------------------------- batch jobs
def pbs_job_without_pals(tmp_path, with_srun: bool) -> dict:
    """The environment of a 2-node PBS job whose mpiexec is not PALS': PBS's variables and a
    `qstat` under a .../pbs/... path, as Dragon looks for them; `srun` on PATH too (a
    machine with both batch systems' commands) or not."""
    bin_dir = tmp_path / "opt" / "pbs" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "qstat").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "qstat").chmod(0o755)
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("nodeA\nnodeB\n")
    path = [str(bin_dir), os.path.dirname(sys.executable)]
    if with_srun:
        assert shutil.which("srun"), "Slurm's srun is installed for the tests"
        path.append(os.path.dirname(shutil.which("srun")))
    return {"PBS_JOBID": "1234.pbs", "PBS_NODEFILE": str(nodefile), "PC_DRAGON_ARGS": "",
            "PATH": os.pathsep.join(path)}


@pytest.mark.parametrize("with_srun", [False, True], ids=["pbs-only", "pbs-and-slurm"])
def test_a_batch_job_that_dragon_cannot_use_is_refused(monkeypatch, tmp_path, with_srun):
    """Dragon's own detection (detect_wlm) finds no usable batch system (PBS without PALS'
    mpiexec; and Slurm's commands without a Slurm job): inside a job that is an error in
    one line, not a quiet run on one node of two."""
    for name, value in pbs_job_without_pals(tmp_path, with_srun).items():
        monkeypatch.setenv(name, value)
    for name in ("DRAGON_MY_PUID", "SLURM_JOB_ID", "DRAGON_RUN_NODEFILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"this is a batch job \(\$PBS_JOBID is set\), but "
                                         r"Dragon cannot start on its nodes"):
        dragon_launch.launch_plan()


def test_outside_any_job_slurms_commands_still_mean_this_node(monkeypatch, tmp_path):
    """srun installed, no job (a login node, this machine): Dragon refuses to guess, and the
    run is on this node alone."""
    env = pbs_job_without_pals(tmp_path, with_srun=True)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("PC_DRAGON_ARGS", "")
    for name in ("DRAGON_MY_PUID", "SLURM_JOB_ID", "PBS_JOBID", "PBS_NODEFILE",
                 "DRAGON_RUN_NODEFILE"):
        monkeypatch.delenv(name, raising=False)
    assert dragon_launch.launch_plan() == (["--single-node-override"], 1)


@pytest.mark.parametrize("script", [INTRO, SCRIPT])
def test_a_script_in_such_a_job_says_so_in_one_line(nothing_left, script):
    env = script_env(nothing_left, **pbs_job_without_pals(nothing_left, with_srun=True))
    args = [] if script == INTRO else ["--data_dir", "data", "--results_file", "r.jsonl", *TINY]
    proc = run_script([script, *args], cwd=nothing_left, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert "error: " in proc.stderr and "Dragon cannot start on its nodes" in proc.stderr
    assert sorted(os.listdir(nothing_left)) == ["data", "nodefile", "opt"]


# --------------------------------------------------------------------------- the retry
def run_8(workdir, inject: str, timeout=600, **settings):
    env = script_env(workdir, PC_INJECT_FAILURE=inject, **settings)
    return run_script([SCRIPT, "--num_sims", 4, "--num_trainers", 1, *TINY, "--data_dir",
                       workdir / "data", "--results_file", workdir / "r.jsonl"], cwd=workdir,
                      env=env, timeout=timeout)


@pytest.mark.parametrize("inject, why", [
    ("runtime:0", "Dragon's launcher died of SIGSEGV"),
    ("ddict:0", "DragonStalled: failure injected through PC_INJECT_FAILURE: the DDict's creation"),
])
def test_a_start_that_failed_before_any_work_is_retried_once_visibly(nothing_left, inject, why):
    proc = run_8(nothing_left, inject)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if RETRY in line]
    assert line.startswith(f"{SCRIPT}: {RETRY} ({why}"), line
    [record] = read_records(nothing_left / "r.jsonl")
    assert record["integrity_ok"] is True
    assert record["runtime_starts"] == 2 and record["runtime_first_failure"].startswith(why)


def test_a_second_failed_start_fails_as_the_first_would(nothing_left):
    proc = run_8(nothing_left, "runtime:all")
    assert proc.returncode == 128 + 11, proc.stdout + proc.stderr
    assert proc.stderr.count(RETRY) == 1
    [error] = [line for line in proc.stderr.splitlines() if f"{SCRIPT}: error:" in line]
    assert "Dragon's launcher died of SIGSEGV" in error
    assert "stopped" in error and "process(es) of its runtime" in error
    assert not (nothing_left / "r.jsonl").exists()


def test_a_failure_after_work_began_is_never_retried(nothing_left):
    proc = run_8(nothing_left, "simulation:1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert RETRY not in proc.stderr and "error: simulation 1 failed" in proc.stderr
    assert not (nothing_left / "r.jsonl").exists()


def test_a_runtime_that_does_not_shut_down_is_stopped_after_the_head_ended(nothing_left):
    """The head ends (its record written), then Dragon's launcher never does (here it is
    stopped with SIGSTOP): the script stops what is left of the runtime, says so, and exits
    with the head's status."""
    proc = run_8(nothing_left, "shutdown:all", **{dragon_launch.SHUTDOWN_PATIENCE_ENV: "5"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "did not shut down" in line]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    [line] = lines
    assert line.startswith(f"{SCRIPT}: warning: Dragon's runtime did not shut down within "
                           "5 s after the head ended; stopped "), line
    [record] = read_records(nothing_left / "r.jsonl")
    assert record["integrity_ok"] is True


def test_script_7_is_retried_too(nothing_left):
    proc = run_script([INTRO], cwd=nothing_left, timeout=600,
                      env=script_env(nothing_left, PC_INJECT_FAILURE="runtime:0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count(RETRY) == 1 and "DDict destroyed" in proc.stdout


# --------------------------------------------------------------------------- faulthandler
PROBE = '''
import faulthandler, json, os, sys
sys.path.insert(0, {root!r})
from plumbing import dragon_launch


def child(out):
    out.put(faulthandler.is_enabled())


def main():
    from dragon.native.process import Process
    from dragon.native.queue import Queue
    out = Queue()
    p = Process(target=child, args=(out,))
    p.start()
    seen = {{"head": faulthandler.is_enabled(), "child": out.get(timeout=120)}}
    p.join(timeout=60)
    out.destroy()
    # the runtime's processes on this node (the launcher, this head), by the control folder
    # they inherit
    pids = dragon_launch.runtime_processes(os.environ[dragon_launch.CONTROL_ENV])
    environs = [open(f"/proc/{{pid}}/environ", "rb").read().split(b"\\0") for pid in pids]
    seen["runtime"] = [b"PYTHONFAULTHANDLER=1" in e for e in environs]
    print("FAULTHANDLER " + json.dumps(seen))


if __name__ == "__main__":
    dragon_launch.run(main)
'''


def test_every_process_of_the_runtime_says_where_it_crashed(nothing_left):
    """faulthandler is on in Dragon's launcher (which runs the runtime's services on one node;
    PYTHONFAULTHANDLER in its environment), the head and a process the head starts."""
    probe = nothing_left / "probe.py"
    probe.write_text(PROBE.format(root=str(ROOT)))
    proc = run_script([sys.executable, probe], cwd=nothing_left, timeout=300)
    probe.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("FAULTHANDLER ")]
    seen = json.loads(line[len("FAULTHANDLER "):])
    assert seen["head"] is True and seen["child"] is True
    assert len(seen["runtime"]) >= 2 and all(seen["runtime"]), seen      # launcher, head
