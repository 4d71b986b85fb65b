"""The workflows across the nodes of the local cluster (cluster/local_cluster.sh), for real:
DragonHPC launched over ssh on 2 nodes (7, and 8 started both ways), and what happens when a
worker on node 2 is killed or the head on node 1 gets Ctrl-C (8 and 6): the run ends with a
clear message within 60 s and no node keeps a process or a /dev/shm file.

Skipped where namespaces cannot be made (see conftest.local_cluster)."""
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import CLUSTER_SCRIPT, CLUSTER_STATE, ROOT, TINY, leftover_processes, read_records
from plumbing import dragon_fixes
from test_reliability import wait_for_line

INTRO = "7_dragon_ddict.py"
DDICT = "8_dragon_producer_consumer.py"
FS = "6_parsl_fs_producer_consumer.py"


@pytest.fixture
def two(local_cluster):
    return local_cluster(2)


def nothing_left_on(cluster, workdir, seconds=30):
    """Within `seconds`: no node keeps a process (but its sshd), a /dev/shm or /tmp entry."""
    deadline = time.monotonic() + seconds
    while (cluster.leftovers() or leftover_processes(workdir)) and time.monotonic() < deadline:
        time.sleep(1)
    assert cluster.leftovers() == {} and leftover_processes(workdir) == []


def run_args(workdir, *args):
    return [*TINY, *map(str, args), "--data_dir", str(workdir / "data"),
            "--results_file", str(workdir / "r.jsonl")]


def test_ddict_introduction_puts_on_one_node_and_gets_on_the_other(two, cluster_workdir):
    started = time.monotonic()
    proc = two.run(1, [INTRO], cwd=cluster_workdir, timeout=600)
    print(f"7 on 2 nodes: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Dragon runtime on 2 node(s)" in out
    assert {line.split(" on ")[1].split(":")[0] for line in out.splitlines()
            if line.startswith("  manager ") and " on " in line} == {"node1", "node2"}
    [line] = [line for line in out.splitlines() if "got 'hello from the writer on " in line]
    reader_host = line.split("reader on ")[1].split()[0]
    writer_host = line.split("writer on ")[1].split("'")[0]
    assert {reader_host, writer_host} == {"node1", "node2"}       # across the nodes
    assert "DDict destroyed" in out
    assert sorted(os.listdir(cluster_workdir)) == ["data"]
    nothing_left_on(two, cluster_workdir)


def check_two_node_record(record, nodes, trainers_per_node, broadcast=False):
    """What a DDict run over every node of the cluster must show."""
    assert record["integrity_ok"] is True and record["num_nodes"] == 2
    assert sorted(record["hosts"]) == nodes
    assert record["nodes_share_machine"]                        # labelled as one machine
    # the 2 nodes divide the machine's cores: torch threads never outnumber them
    assert sum(record["trainer_cpu_threads"]) <= max(os.cpu_count(), record["num_trainers"])
    assert sorted(set(record["sim_hosts"])) == nodes
    assert Counter(record["trainer_hosts"]) == {node: trainers_per_node for node in nodes}
    ddict = record["ddict"]
    assert ddict["managers"] == 2 and sorted(ddict["manager_hosts"]) == nodes
    # one value per simulation, half on each node: every trainer gets half of what it
    # reads from the other node; broadcast: every value on both
    assert ddict["keys_per_manager"] == [record["num_sims"] // (1 if broadcast else 2)] * 2
    assert ddict["broadcast"] is broadcast
    assert record["transport"] == "dragon+ddict" + ("-broadcast" if broadcast else "")
    # HSTA, over the TCP back end the cluster configured in its nodes
    assert (ddict["transport_agent"], ddict["hsta_backend"]) == ("hsta", "tcp"), ddict
    fixes = ddict["dragon_fixes"]        # PC_DRAGON_FIXES=auto: on, nodes of 2 cores
    assert fixes["queue_poll_waits"] is True and fixes["agents_fixed"] is True
    assert fixes["queue_get_sleeps"] is True and fixes["group_manager_at_home"] is True


@pytest.mark.parametrize("launch", ["python", "dragon", "broadcast"])
def test_ddict_workflow_uses_every_node(two, cluster_workdir, launch):
    """2 trainers on 2 nodes: 1 per node; simulations on both; one manager per node. With
    --broadcast (started as with `python`) every value on both managers."""
    args = run_args(cluster_workdir, "--num_sims", 8, "--num_trainers", 2,
                    *(["--broadcast"] if launch == "broadcast" else []))
    env = None
    if launch != "dragon":          # the script starts Dragon itself, with $PC_DRAGON_ARGS
        argv = [DDICT, *args]
    else:       # as docs/dragon.md has a user type it: the fixes and the repairs on PYTHONPATH
        argv = ["dragon", *two.exports["PC_DRAGON_ARGS"].split(), str(ROOT / DDICT), *args]
        env = dict(two.env, PC_TEST_RUN=str(cluster_workdir), PYTHONFAULTHANDLER="1",
                   PYTHONPATH=dragon_fixes.runtime_pythonpath(fixes=True))
    started = time.monotonic()
    proc = two.run(1, argv, cwd=cluster_workdir, timeout=600, env=env)
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(cluster_workdir / "r.jsonl")
    print(f"8 ({launch}) on 2 nodes: {wall_s:.1f} s wall, start-up {record['startup_s']:.1f} s "
          f"(DDict {record['ddict_create_s']:.1f} s)")
    check_two_node_record(record, two.nodes, trainers_per_node=1,
                          broadcast=launch == "broadcast")
    assert (record["runtime_startup_s"] is None) == (launch == "dragon")
    assert os.listdir(cluster_workdir / "data") == []
    nothing_left_on(two, cluster_workdir)


def test_one_node_of_two_is_the_node_it_was_started_on(two, cluster_workdir):
    """--num_nodes 1 on the 2-node cluster: the whole run is on node1, where it was started
    (Dragon's own -N took either node: 1-node rows of the main job came from node2)."""
    proc = two.run(1, [DDICT, *run_args(cluster_workdir, "--num_nodes", 1, "--num_sims", 4)],
                   cwd=cluster_workdir, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(cluster_workdir / "r.jsonl")
    assert record["hosts"] == ["node1"] and record["ddict"]["manager_hosts"] == ["node1"]
    assert set(record["trainer_hosts"]) == set(record["sim_hosts"]) == {"node1"}
    nothing_left_on(two, cluster_workdir)


def start(cluster, argv, workdir) -> subprocess.Popen:
    """`local_cluster.sh run 1 python SCRIPT ARGS` in the background, its output piped."""
    env = dict(cluster.env, PC_TEST_RUN=str(workdir))
    return subprocess.Popen(["bash", str(CLUSTER_SCRIPT), "run", "1", sys.executable,
                             str(ROOT / argv[0]), *argv[1:]], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def struck(proc, ready: str, strike) -> tuple[str, str, float]:
    """Once the run says `ready`, strike(); then the run's output when it has ended (within
    60 s), and how long after the strike it ended. The run is killed on the way out."""
    try:
        wait_for_line(proc, ready, timeout=300)
        strike()
        started = time.monotonic()
        out, err = proc.communicate(timeout=60)
        return out, err, time.monotonic() - started
    finally:
        proc.kill()


# the simulations take 16 x 2 s / (2 nodes x 2 workers) = 8 s: time to strike
SLOW = ["--num_sims", 16, "--num_trainers", 2, "--compute_time", "0.2"]
# processes are named by dragon_setup.reporting and parsl_setup's warm-up
WORKERS_ON_NODE_2 = {DDICT: "^pc: simulator", FS: "^pc: simulators worker"}


# ids without spaces: they name the working directory, and paths stay [A-Za-z0-9_./-]
@pytest.mark.parametrize("strike", ["SIGKILL of a worker on node 2", "Ctrl-C of the head"],
                         ids=["sigkill-worker-node2", "ctrl-c-head"])
@pytest.mark.parametrize("script", [DDICT, FS])
def test_a_run_struck_across_nodes_ends_clearly_and_cleans_up_every_node(
        two, cluster_workdir, script, strike):
    proc = start(two, [script, *run_args(cluster_workdir, *SLOW)], cluster_workdir)

    def strike_it():
        if strike.startswith("Ctrl-C"):
            time.sleep(1)
            proc.send_signal(signal.SIGINT)     # `run` passes it on to the head in node 1
        else:
            killed = two.run(2, ["pkill", "-KILL", "-f", WORKERS_ON_NODE_2[script]],
                             cwd=cluster_workdir, timeout=60)
            assert killed.returncode == 0, "no worker to kill on node 2"
    out, err, ended_s = struck(proc, "ready after" if script == DDICT else "warm after", strike_it)
    print(f"{script}: ended {ended_s:.1f} s after the {strike}")
    if strike.startswith("Ctrl-C"):
        assert proc.returncode == 130, out + err
        assert "interrupted (SIGINT); cleaned up" in out + err
    else:
        assert proc.returncode == 1, out + err
        # Dragon's multi-node launcher prints the head's stderr on its stdout
        [line] = [line for line in (out + err).splitlines() if "error:" in line]
        assert "failed" in line or "died" in line, line
    assert not (cluster_workdir / "r.jsonl").exists()
    assert os.listdir(cluster_workdir / "data") == []
    nothing_left_on(two, cluster_workdir, seconds=60)


def test_a_head_refused_inside_a_multi_node_runtime_fails_the_run(two, cluster_workdir):
    """The head's checks refuse the run inside a 2-node runtime (before it is linked to the
    launching process): Dragon 0.15's multi-node launcher still exits with 0, but the
    launching process must exit with the head's status and show its one-line error."""
    from conftest import TAG
    env = dict(two.env, PC_INJECT_FAILURE="head:0", **{TAG: str(cluster_workdir)})
    proc = two.run(1, [DDICT, *run_args(cluster_workdir, "--num_sims", 2)], cwd=cluster_workdir,
                   env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "error: failure injected through PC_INJECT_FAILURE=head:0, inside the runtime" in out
    assert not (cluster_workdir / "r.jsonl").exists()
    assert sorted(os.listdir(cluster_workdir)) == ["data"]
    nothing_left_on(two, cluster_workdir)


@pytest.mark.parametrize("script", [DDICT, FS])
def test_a_task_that_fails_on_another_node_names_its_traceback(two, cluster_workdir, script):
    """Trainer 1 raises: the run fails with one line naming a file that holds that task's own
    traceback. For 8, trainer 0 runs on the head's node and trainer 1 on the other one (Dragon
    picks the head's node): the file says the task failed on another node than the head's."""
    import re
    from conftest import TAG
    from test_reliability import assert_traceback_of_task
    env = dict(two.env, PC_INJECT_FAILURE="trainer:1", **{TAG: str(cluster_workdir)})
    proc = two.run(1, [script, *run_args(cluster_workdir, "--num_sims", 4)], cwd=cluster_workdir,
                   env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1, out
    assert "error: trainer 1 failed: RuntimeError: failure injected" in lines[0], out
    text = assert_traceback_of_task(lines[0], "train")
    if script == DDICT:
        [task_host] = re.findall(r"^on (node\d):$", text, re.M)
        [head_host] = re.findall(r"^reported to the head process on (node\d):$", text, re.M)
        assert task_host != head_host, text
    nothing_left_on(two, cluster_workdir)


def test_a_runtime_that_fails_to_start_leaves_nothing_on_any_node(two, cluster_workdir):
    """node2 loses the cluster's Dragon configuration (as a node set up differently from
    the others would): its HSTA probes libfabric, which this machine lacks, and the launch
    fails after the runtime's processes are up on both nodes. Dragon's own clean-up then
    reaches the nodes (the host file, which the launching script hands it as
    DRAGON_RUN_NODEFILE, and the cluster's ssh-agent): no process and no /dev/shm file is
    left on any node (before, the runtime ran on, its TCP agents at 60-80% of a core)."""
    from conftest import TAG
    config = (CLUSTER_STATE / "hsta_config_dir").read_text().strip()
    assert two.run(2, ["umount", config], cwd=ROOT).returncode == 0
    try:
        proc = two.run(1, [INTRO], cwd=cluster_workdir, timeout=300,
                       env=dict(two.env, **{TAG: str(cluster_workdir)}))
    finally:
        assert two.run(2, ["mount", "--bind", str(CLUSTER_STATE / "hsta-config"), config],
                       cwd=ROOT).returncode == 0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Abnormal exit detected" in out, out
    # after Dragon's traceback, the one line of the script that was started
    [line] = [line for line in out.splitlines() if "error:" in line]
    assert line.startswith(f"{INTRO}: error: the head process never reported how it ended "
                           "(Dragon's launcher exited with status "), out
    nothing_left_on(two, cluster_workdir, seconds=90)
