"""The local cluster's storage node (cluster/local_cluster.sh): every node mounts its shared
data directory, PC_CLUSTER_PFS, with sshfs over the cluster's bridge, so files that one node
writes and another reads cross the network, as on Lustre. For real: sshd, sshfs, the
workflows, and a storage node killed in the middle of a run.

Skipped where namespaces cannot be made (see conftest.local_cluster)."""
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import CLUSTER_STATE, ROOT, TINY, read_records
from test_cluster_main_job import cluster_namespaces
from test_cluster_workflows import SLOW, nothing_left_on, start, struck

FS = "6_parsl_fs_producer_consumer.py"
FUT = "5_parsl_fut_producer_consumer.py"
PFS = CLUSTER_STATE / "pfs"
MB = 1_000_000


@pytest.fixture
def two(local_cluster):
    return local_cluster(2)


def storage_traffic() -> dict:
    """Bytes through the storage node's network interface so far: rx (what nodes wrote to
    it), tx (what they read from it)."""
    [ns] = [name for name in cluster_namespaces() if name.endswith("-storage")]
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "pcc0"],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return {"rx": stats["rx"]["bytes"], "tx": stats["tx"]["bytes"]}


def grown(before: dict) -> dict:
    after = storage_traffic()
    return {key: after[key] - before[key] for key in before}


def pfs_runs() -> list:
    """The runs' own directories on the storage node's disk."""
    return sorted(name for name in os.listdir(PFS) if name.startswith("pc-"))


def test_files_cross_the_network_and_each_node_caches_what_it_has(two):
    """node1 writes 20 MB: it goes over the bridge to the storage node's disk (the machine
    sees it there); node2 reads it over the bridge, bytes intact; node1 reads it again from
    its own page cache, as a Lustre client would."""
    for k in (1, 2):
        # the last (the top) of the mounts there: sshfs over a read-only stand-in
        mounts = two.run(k, ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--mountpoint", PFS],
                         cwd=ROOT, timeout=60).stdout.splitlines()
        assert [line.split() for line in mounts] == [["tmpfs", "storage-unreachable"],
                                                     ["fuse.sshfs", f"storage:{PFS}"]]
    name = f"pcc-test-{os.getpid()}"
    before = storage_traffic()
    write = f"head -c {20 * MB} /dev/urandom > {PFS / name} && sha256sum < {PFS / name}"
    written = two.run(1, ["sh", "-c", write], cwd=ROOT, timeout=60)
    try:
        assert written.returncode == 0, written.stderr
        wrote = grown(before)
        assert wrote["rx"] >= 20 * MB, wrote
        with open(PFS / name, "rb") as f:                   # on the storage node's disk
            assert hashlib.sha256(f.read()).hexdigest() in written.stdout
        before = storage_traffic()
        read = two.run(2, ["sha256sum", PFS / name], cwd=ROOT, timeout=60)
        assert read.stdout.split()[0] == written.stdout.split()[0]
        assert grown(before)["tx"] >= 20 * MB
        before = storage_traffic()
        again = two.run(1, ["sha256sum", PFS / name], cwd=ROOT, timeout=60)
        assert again.stdout.split()[0] == written.stdout.split()[0]
        assert grown(before)["tx"] < 2 * MB                 # node1's own page cache
    finally:
        (PFS / name).unlink(missing_ok=True)


@pytest.mark.parametrize("script", [FS, f"{FUT} --proxystore file"], ids=["files", "proxystore-file"])
def test_a_workflow_on_two_nodes_keeps_its_files_on_the_storage_node(two, cluster_workdir, script):
    """6 (and 5 with ProxyStore's file store) with --data_dir on the storage node: every
    byte produced crosses the bridge to it, the trainers get all of it intact, the record
    says where the files were, and nothing is left on the storage or any node."""
    results = cluster_workdir / "r.jsonl"
    before = storage_traffic()
    proc = two.run(1, [*script.split(), "--num_sims", 8, "--num_trainers", 2, *TINY,
                       "--data_dir", PFS, "--results_file", results], cwd=cluster_workdir,
                   timeout=600)
    traffic = grown(before)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    print(f"{script} on 2 nodes, data on the storage node: storage in {traffic['rx'] / MB:.1f} MB, "
          f"out {traffic['tx'] / MB:.1f} MB for {record['bytes_produced'] / MB:.1f} MB produced")
    assert record["integrity_ok"] is True and record["num_nodes"] == 2
    assert sorted(set(record["trainer_hosts"])) == two.nodes
    assert record["data_filesystem"] == {"type": "fuse.sshfs", "source": f"storage:{PFS}",
                                         "mount_point": str(PFS)}
    assert traffic["rx"] >= record["bytes_produced"]
    assert pfs_runs() == []
    nothing_left_on(two, cluster_workdir)


def test_a_storage_node_killed_mid_run_ends_the_run_clearly(two, cluster_workdir):
    """SIGKILL of the storage node's sshd while 6 simulates on 2 nodes: every node's sshfs
    loses its server, the head says in one line that the run's directory cannot be reached
    (within seconds, not when Parsl's heartbeats give up), and no node keeps a process."""
    proc = start(two, [FS, *map(str, SLOW), "--grid_size", "16", "--data_dir", str(PFS),
                       "--results_file", str(cluster_workdir / "r.jsonl")], cluster_workdir)

    def kill_the_storage_node():
        time.sleep(1)
        os.kill(int((CLUSTER_STATE / "storage" / "pid").read_text()), signal.SIGKILL)
        two.broken = True           # the next test gets a cluster with a storage node
    out, err, ended_s = struck(proc, "warm after", kill_the_storage_node)
    print(f"6 ended {ended_s:.1f} s after the storage node was killed")
    assert proc.returncode == 1, out + err
    [line] = [line for line in (out + err).splitlines() if "error:" in line]
    assert f"the run's directory {PFS}/pc-fs-" in line and "cannot be reached any more" in line, line
    assert not (cluster_workdir / "r.jsonl").exists()
    nothing_left_on(two, cluster_workdir, seconds=60)
