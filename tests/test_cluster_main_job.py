"""9_submit_multinode.sh with NODES="1 2" on a machine without a batch system: the job runs
every transport on 1 and on 2 nodes of the local cluster (cluster/local_cluster.sh), bringing
it up and down itself, or using one that is up. Real Parsl over ssh, real files."""
import os
import subprocess
import time

import pytest

from conftest import CLUSTER_NETNS, CLUSTER_STATE, leftover_processes, read_records, run_script
from test_main_job import JOB, ROOT, ctrl_c_at_a_terminal, job_env


def cluster_namespaces() -> list:
    """This clone's network namespaces."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in names.splitlines() if line.startswith(CLUSTER_NETNS)]


@pytest.fixture
def no_cluster(local_cluster):
    """No local cluster up (the job brings up its own); skips where none can be made."""
    local_cluster.down()
    yield
    assert cluster_namespaces() == [] and not CLUSTER_STATE.exists()


def test_nodes_1_2_bring_up_the_local_cluster_and_take_it_down(no_cluster, cluster_workdir):
    """NODES="1 2" on a machine without a batch system: the job brings the local cluster up,
    runs each transport in its node1 on 1 and on 2 nodes, with the files on the cluster's
    storage node, labels the rows of the nodes that share this machine and those of files on
    that storage, and takes the cluster down."""
    results = cluster_workdir / "results"
    env = job_env(cluster_workdir, NODES="1 2", TRANSPORTS="filesystem", GRID_SIZES="16",
                  WARMUP="0", RESULTS_DIR=str(results))
    started = time.monotonic()
    proc = run_script(["bash", ROOT / JOB], cwd=cluster_workdir, env=env, timeout=900)
    print(f"NODES='1 2' job: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = read_records(results / "records.jsonl")
    assert sorted((r["num_nodes"], tuple(r["hosts"])) for r in records) == [
        (1, ("node1",)), (2, ("node1", "node2"))]
    two = next(r for r in records if r["num_nodes"] == 2)
    assert sorted(set(two["sim_hosts"])) == ["node1", "node2"]
    # the two nodes share this machine's cores: one trainer each, half the cores each
    assert two["trainer_cpu_threads"] == [max(1, os.cpu_count() // 2)] * 2
    assert all(r["nodes_share_machine"] and r["integrity_ok"] for r in records)
    pfs = str(CLUSTER_STATE / "pfs")
    assert all(r["data_filesystem"] == {"type": "fuse.sshfs", "source": f"storage:{pfs}",
                                        "mount_point": pfs} for r in records)
    assert all(r["data_dir"].startswith(pfs + "/") for r in records)
    table = (results / "table.md").read_text()
    assert "| Parsl + file system [sshfs from storage] | 1 | 0.000164 |" in table
    assert "| Parsl + file system [sshfs from storage] | 2 (one machine) | 0.000164 |" in table
    assert "the N nodes were Linux namespaces of one machine" in table
    assert (results / "logs" / "filesystem-4x16-2n.log").exists()
    assert not (results / "data").exists()                 # the data went to the storage node
    assert cluster_namespaces() == [] and not CLUSTER_STATE.exists()
    assert leftover_processes(cluster_workdir) == []


def test_nodes_use_a_local_cluster_that_is_up(local_cluster, cluster_workdir):
    """With a cluster up (its exports set) the job uses it: every run in node1, none brought up."""
    cluster = local_cluster(2)
    env = dict(job_env(cluster_workdir, DRY_RUN="1", NODES="1 2", TRANSPORTS="filesystem",
                       GRID_SIZES="16", RESULTS_DIR=str(cluster_workdir / "results")),
               **cluster.exports)
    proc = run_script(["bash", ROOT / JOB], cwd=cluster_workdir, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "would bring up" not in proc.stdout
    runs = [line for line in proc.stdout.splitlines() if line.startswith("would run:")]
    assert [run.split("--num_nodes ")[1].split()[0] for run in runs] == ["1", "2"]
    assert all(run.startswith("would run: bash cluster/local_cluster.sh run 1 python "
                              "6_parsl_fs_producer_consumer.py") for run in runs), runs
    # the files go to the cluster's storage node, each run in a directory of its own there,
    # named for the job and the run
    data_dir = f"{cluster.exports['PC_CLUSTER_PFS']}/pc-{proc.stdout.split()[1]}"
    assert [run.split(" --data_dir ")[1].split()[0] for run in runs] == [
        f"{data_dir}-filesystem-4x16-{n}n" for n in (1, 2)], runs
    # a results directory the nodes cannot see: one line, before anything runs
    elsewhere = run_script(["bash", ROOT / JOB], cwd=cluster_workdir,
                           env=dict(env, RESULTS_DIR="/tmp/pc-results-x"), timeout=60)
    assert elsewhere.returncode == 2 and "is not shared with the local cluster's nodes" in elsewhere.stderr
    assert len(elsewhere.stderr.splitlines()) == 1


def test_ctrl_c_takes_the_jobs_own_cluster_down(no_cluster, cluster_workdir):
    """^C while a run of NODES="1 2" is simulating in node1: the run cleans up, the job stops
    with 130 and the local cluster it brought up is gone."""
    # DATA_DIR given (the storage node's files go with the cluster), the user's own: the run
    # removed its data, the job the directory it made for the run, and DATA_DIR stays
    env = job_env(cluster_workdir, NODES="1 2", TRANSPORTS="filesystem", GRID_SIZES="16",
                  WARMUP="0", COMPUTE_TIME="1", RESULTS_DIR=str(cluster_workdir / "results"),
                  DATA_DIR=str(cluster_workdir / "data"))
    text = ctrl_c_at_a_terminal(cluster_workdir, env, timeout=300)
    assert "interrupted during filesystem on 1 node(s) at 4 x 16^2" in text
    assert os.listdir(cluster_workdir / "data") == []
    assert cluster_namespaces() == [] and not CLUSTER_STATE.exists()
    assert leftover_processes(cluster_workdir) == []
