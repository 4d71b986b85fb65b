"""7_dragon_ddict.py and 8_dragon_producer_consumer.py end to end: a real Dragon runtime
(single node), real DDict, tiny sizes. Each run must leave no process and no /dev/shm pool."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_end_to_end, run_script, script_env

INTRO = "7_dragon_ddict.py"
SCRIPT = "8_dragon_producer_consumer.py"


def test_ddict_introduction_puts_in_one_process_and_gets_in_another(nothing_left):
    proc = run_script([INTRO], cwd=nothing_left, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manager 0 on " in proc.stdout and "64 MiB" in proc.stdout
    assert "got 'hello from the writer on " in proc.stdout
    assert "keys: ['greeting', 'reader_note', 'wave'], len(d) = 3" in proc.stdout
    assert "received 8,000,000 bytes" in proc.stdout
    assert "DDict destroyed" in proc.stdout
    assert sorted(os.listdir(nothing_left)) == ["data"]      # no DDict metadata file left


def test_ddict_workflow_moves_every_sample_exactly_once(nothing_left):
    # `python 8_...` restarts itself under dragon; `dragon 8_...` is tested on the local
    # cluster (test_cluster_workflows.py), which keeps this suite's time down
    record, _ = run_end_to_end([SCRIPT], nothing_left, "dragon+ddict", timeout=400)
    assert len(record["hosts"]) == 1
    assert record["devices"] == ["cpu", "cpu"] and record["kernel_sizes"] == [3, 5]
    ddict = record["ddict"]
    assert ddict["keys"] == 128                                 # one value per simulation
    assert ddict["used_bytes"] >= record["bytes_produced"] and ddict["managers"] == 1
    fixes = ddict["dragon_fixes"]                   # PC_DRAGON_FIXES=auto: one node, its cores
    from plumbing import dragon_fixes
    on, rule = dragon_fixes.fixes_rule("auto", None, 1, len(os.sched_getaffinity(0)))
    assert fixes["setting"] == "auto" and fixes["rule"] == rule
    assert fixes["queue_get_sleeps"] is on and fixes["agents_fixed"] is on
    assert isinstance(record["ddict_create_s"], float) and record["ddict_create_s"] > 0
    # the runtime's own start-up is measured when the script started it
    assert record["runtime_startup_s"] > 0


def test_ctrl_c_stops_the_run_and_everything_is_cleaned_up(nothing_left):
    """^C at a terminal reaches the script's process group; the script passes it to its head
    process, which stops its processes and destroys the DDict before the runtime goes down."""
    workdir = nothing_left
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


def test_a_full_ddict_fails_at_once_with_a_clear_message(nothing_left):
    """40 x 2.6 MB into a DDict of 64 MiB: a put fails (no waiting for room that never comes)."""
    workdir = nothing_left
    env = script_env(workdir, PC_DDICT_BYTES=str(64 * 2**20))
    proc = run_script([SCRIPT, "--num_sims", 40, "--num_trainers", 1, "--grid_size", 128,
                       "--compute_time", 0, "--data_dir", workdir / "data",
                       "--results_file", workdir / "r.jsonl"], cwd=workdir, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "failed: no room left in the DDict: DDictFullError" in line
    assert not (workdir / "r.jsonl").exists()


@pytest.mark.parametrize("path", ["one-copy", "public"])
def test_values_of_every_size_class_round_trip_through_a_real_ddict(nothing_left, path):
    """ddict_io.Writer puts, Reader gets in another process: every size class of the
    value pickler (one element, not a power of two, one piece, just over, several pieces)
    comes back equal, through the one-copy read and through Dragon's public API. In the
    same runtime, dragon_site's sleeping Queue.get, in the head and in a child: an empty
    get still times out, and an item of many pieces put while a get waits arrives whole."""
    env = script_env(nothing_left, PC_DRAGON_FIXES="on",       # the fixes, on any machine
                     **({"PC_DDICT_READ": "public"} if path == "public" else {}))
    proc = run_script([sys.executable, ROOT / "tests" / "ddict_roundtrip.py"], cwd=nothing_left,
                      env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("ROUNDTRIP ")]
    result = json.loads(line[len("ROUNDTRIP "):])
    assert result["path"] == path
    import ddict_roundtrip
    assert [tuple(v["shape"]) for v in result["seen"]] == ddict_roundtrip.SHAPES
    assert all(v["dtype"] == "float64" and v["equal"] for v in result["seen"]), result
    waits = result["waits"]
    assert result["head_get_sleeps"] and waits["get_sleeps"], result
    assert waits["empty_raised"] and 0.3 <= waits["empty_after_s"] < 30, waits
    assert waits["item_intact"], waits


def test_script_8_runs_where_the_only_network_is_loopback(workdir):
    """A GPU machine cut off from every network: Dragon's runtime then gives its processes no
    DRAGON_RT_UID, and the script must still see that it runs inside one (it relaunched
    itself without end). Here in a network namespace with only `lo`."""
    from conftest import cluster_unavailable, leftover_processes, unavailable
    if cluster_unavailable():
        unavailable(cluster_unavailable())
    results = workdir / "r.jsonl"
    command = (f"ip link set lo up && exec {sys.executable} {ROOT / SCRIPT} --num_sims 4 "
               f"--grid_size 16 --compute_time 0 --data_dir {workdir / 'data'} "
               f"--results_file {results}")
    proc = subprocess.run(["unshare", "--net", "bash", "-c", command], cwd=workdir,
                          env=script_env(workdir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["integrity_ok"] is True
    assert sorted(os.listdir(workdir)) == ["data", "r.jsonl"] and os.listdir(workdir / "data") == []
    assert leftover_processes(workdir) == []


ORPHANED_DDICT = '''
import sys
sys.path.insert(0, {root!r})
from plumbing import dragon_launch, dragon_setup


def main():
    from dragon.data import DDict
    d = DDict(1, 1, 64 * 2**20, timeout=60)
    d._orc_proc.kill()                          # the DDict's orchestrator ends
    d._orc_proc.join(timeout=120)
    try:
        dragon_setup._destroy(d)
    except RuntimeError as error:
        print("REFUSED " + str(error), flush=True)


if __name__ == "__main__":
    dragon_launch.run(main)
'''


def test_a_ddict_whose_orchestrator_ended_is_an_error_not_a_hang(nothing_left):
    """DDict.destroy waits without a limit for its orchestrator (DragonHPC 0.15); where that
    process has ended, the clean-up says so instead of never ending."""
    probe = nothing_left / "orphaned.py"
    probe.write_text(ORPHANED_DDICT.format(root=str(ROOT)))
    proc = run_script([sys.executable, probe], cwd=nothing_left, timeout=600)
    probe.unlink()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REFUSED the DDict's orchestrator process has ended" in proc.stdout
