"""A real Slurm on the local cluster (cluster/slurm.sh): munge, slurmctld on node1, a slurmd on
each node. The main job is submitted with sbatch and its Parsl managers are started by srun
on both nodes. Skipped where namespaces cannot be made; Slurm and munge are installed with
apt-get when missing."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import (CLUSTER_STATE, ROOT, TAG, leftover_processes, parse_exports, read_records,
                      unavailable)

SLURM_SCRIPT = ROOT / "cluster" / "slurm.sh"
SLURM_DIR = CLUSTER_STATE / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmscriptd", "slurmd")
# what Slurm itself keeps in a node while it is up (spool, controller state, munge socket)
SLURM_FILES = {"/tmp": {"slurmd", "slurmctld"}, "/run": {"munge", "slurmd.pid", "slurmctld.pid"}}
# where Debian's Slurm and munge keep their configuration, keys, state and logs: never used
MACHINE_DIRS = ("/etc/slurm", "/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge",
                "/var/lib/slurm", "/var/spool/slurmd", "/var/log/slurm")
# torch makes an (empty) cache folder in $TMPDIR on import in Dragon's processes, which run
# with the node's /tmp (Parsl's managers get a TMPDIR of their own, removed with them); the
# project's other Dragon tests leave it too (they only look for pymp-* and pc-* there)
TORCH_CACHE = "torchinductor_root"


def program(cmdline: str) -> str:
    """A process's name from its command line (slurmctld's helper calls itself ': slurmscriptd')."""
    words = cmdline.removeprefix(": ").split()
    return os.path.basename(words[0]) if words else ""        # a zombie has no command line


def machine_files() -> dict:
    """(size, mtime) of every file in MACHINE_DIRS, on the machine itself."""
    found = {}
    for top in MACHINE_DIRS:
        for directory, _, names in os.walk(top):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                found[path] = (info.st_size, info.st_mtime_ns)
    return found


def slurm_command(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout)


class Slurm:
    """The local cluster with Slurm up: `env` has SLURM_CONF (and the cluster's exports)."""

    def __init__(self, cluster, exports: dict, machine_before: dict):
        self.cluster = cluster
        self.env = dict(cluster.env, **exports)
        self.machine_before = machine_before

    def sbatch(self, argv, cwd, env, timeout=900) -> subprocess.CompletedProcess:
        """`sbatch --wait ARGV` in node1: returns when the job has ended, with its exit status."""
        return self.cluster.run(1, ["sbatch", "--wait", *map(str, argv)], cwd=cwd, env=env,
                                timeout=timeout)

    def job_env(self, workdir, **settings) -> dict:
        # PC_DRAGON_ARGS of the local cluster names an ssh launch; under Slurm Dragon finds
        # the allocation itself and needs only the transport (HSTA over TCP, as up set it) and network
        env = dict(self.env, PC_DRAGON_ARGS="-t hsta --network-prefix ^pcc0$",
                   **{TAG: str(workdir)})
        env.update(settings)
        return env

    def leftovers(self) -> dict:
        """What the nodes hold besides their sshd and Slurm's own daemons and files."""
        found = {}
        for k, node in enumerate(self.cluster.nodes, start=1):
            left = [cmd for cmd in self.cluster.processes(k) if program(cmd) not in DAEMONS]
            left += self.cluster.listing(k, "/dev/shm")
            for directory, own in SLURM_FILES.items():
                left += [f"{directory}/{name}" for name in self.cluster.listing(k, directory)
                         if name not in own and not (directory == "/run" and name in ("sshd", "mount"))
                         and not (directory == "/tmp" and name == TORCH_CACHE)
                         # Dragon's network-configuration cache (see LocalCluster.leftovers),
                         # left by the Dragon tests that ran on this cluster before
                         and not (directory == "/tmp" and re.fullmatch(r"dragon-\d+-\w+", name))
                         and not (directory == "/tmp" and ROOT.parts[1:2] == ("tmp",)
                                  and name == ROOT.parts[2])]
            if left:
                found[node] = left
        return found


@pytest.fixture(scope="module")
def slurm(local_cluster):
    cluster = local_cluster(2)
    started = time.monotonic()
    installed = slurm_command("install", timeout=900)      # apt-get, where they are missing
    if installed.returncode != 0:
        unavailable(f"no Slurm, and it could not be installed: {installed.stderr.strip()[-300:]}")
    print(f"slurm.sh install: {time.monotonic() - started:.1f} s")
    before = machine_files()
    started = time.monotonic()
    up = slurm_command("up")
    assert up.returncode == 0, up.stderr
    print(f"slurm.sh up: {time.monotonic() - started:.1f} s")
    try:
        yield Slurm(cluster, parse_exports(up.stdout), before)
    finally:
        slurm_command("down")


def test_up_runs_the_daemons_in_the_nodes(slurm):
    """munged in each node, slurmctld in node1 only, a slurmd per node, all nodes idle."""
    assert set(slurm.env) >= {"SLURM_CONF"}
    assert slurm.env["SLURM_CONF"] == str(SLURM_DIR / "slurm.conf")
    daemons = [sorted(program(cmd) for cmd in slurm.cluster.processes(k)) for k in (1, 2)]
    assert daemons == [["munged", "slurmctld", "slurmd", "slurmscriptd"], ["munged", "slurmd"]]
    sinfo = slurm.cluster.run(1, ["sinfo", "-h", "-N", "-o", "%N %t %c"], cwd=ROOT,
                              env=slurm.env, timeout=60)
    assert sinfo.stdout.split("\n")[:2] == [f"node1 idle {os.cpu_count()}",
                                            f"node2 idle {os.cpu_count()}"], sinfo.stderr
    # the munge key is this cluster's, readable by root only
    assert (SLURM_DIR / "munge.key").stat().st_mode & 0o777 == 0o400


def test_hostnames_as_scontrol_expands_them(slurm):
    """hosts.expand_hostlist (used where scontrol cannot run) agrees with scontrol."""
    from plumbing import hosts
    lists = ["node[1-2]", "nid[001-003,007],login1", "x[8-11]", "a[1-2]-b[01-02],c"]
    shown = slurm.cluster.run(1, ["sh", "-c", 'for l; do scontrol show hostnames "$l"; echo; done',
                                  "-", *lists], cwd=ROOT, env=slurm.env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    expanded = [block.split() for block in shown.stdout.split("\n\n")[:len(lists)]]
    assert [hosts.expand_hostlist(nodelist) for nodelist in lists] == expanded


def test_dragon_counts_the_nodes_of_the_allocation(slurm, cluster_workdir):
    """Inside `salloc -N 2`, without starting Dragon: the node count that `python 8_...`
    checks --num_nodes against (and gives Dragon -N from) is the allocation's, 2, and `-N 1`
    in PC_DRAGON_ARGS makes it 1; --num_nodes 2 is accepted, 3 refused in one line."""
    env = slurm.job_env(cluster_workdir)
    code = ("import os; from plumbing import dragon_launch as dc; print(dc.launch_plan()[1]); "
            "os.environ['PC_DRAGON_ARGS'] += ' -N 1'; print(dc.launch_plan()[1])")
    salloc = ["salloc", "-N", "2", "-t", "5", "-J", "pc-count"]
    counted = slurm.cluster.run(1, [*salloc, sys.executable, "-c", code], cwd=ROOT, env=env,
                                timeout=120)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.split() == ["2", "1"], counted.stderr
    check = ("import sys; from plumbing import cli, dragon_launch as dc; "
             "args = dc.check_args(cli.make_parser(''), sys.argv[1:]); "
             "print(args.num_nodes, args.available_nodes)")
    tiny = ["--num_sims", "4", "--grid_size", "16", "--epochs", "0"]
    accepted = slurm.cluster.run(1, [*salloc, sys.executable, "-c", check, "--num_nodes", "2",
                                     *tiny], cwd=ROOT, env=env, timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.split() == ["2", "2"]
    refused = slurm.cluster.run(1, [*salloc, sys.executable, "8_dragon_producer_consumer.py",
                                    "--num_nodes", "3", *tiny], cwd=ROOT, env=env, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert ("argument --num_nodes: 3 nodes asked for, but the allocation has 2"
            in refused.stderr)


def test_the_job_sizes_itself_from_sbatch_options(slurm, cluster_workdir):
    """#SBATCH defaults overridden on the command line: -N 1 makes a one-node job, -N 2 a
    two-node one whose runs go on 1 and on 2 nodes; the dry runs show the sizes, the plan
    and the results directory it takes from the allocation, and the walltime left that
    Slurm tells the job (-t)."""
    out = cluster_workdir / "job.out"
    env = slurm.job_env(cluster_workdir, DRY_RUN="1", GRID_SIZES="16 32", TRANSPORTS="filesystem")
    proc = slurm.sbatch(["-N", "2", "-t", "60", "-J", "pc-dry", "-o", out,
                         ROOT / "9_submit_multinode.sh"], cwd=ROOT, env=env, timeout=300)
    text = out.read_text()
    assert proc.returncode == 0, proc.stderr + text
    job_id = proc.stdout.split()[-1]
    assert f"job          {job_id} on node1 (2 node(s)" in text
    assert "64 simulations (or SIMSx) x grid 16 32, compute time 0.5 s/step" in text
    assert f"results dir  {ROOT}/results/{job_id}" in text
    assert "plan         4 runs: 2 size(s) x 2 node count(s) (1 2) x 1 transport(s) x 1 round(s)" in text
    [walltime] = [line for line in text.splitlines() if line.startswith("walltime")]
    # Slurm 22.05 sets no SLURM_JOB_END_TIME: the job asks squeue
    assert re.fullmatch(r"walltime     (59|60) min left \((squeue %L|SLURM_JOB_END_TIME)\), "
                        r"enough for the estimate", walltime), walltime
    for nodes in (1, 2):
        assert (f"would run: python 6_parsl_fs_producer_consumer.py --num_nodes {nodes} "
                "--num_sims 64 --grid_size 16") in text
    assert not (ROOT / "results" / job_id).exists()
    # the defaults of a one-node job: its sizes, and a plan that does not fit a minute
    env = slurm.job_env(cluster_workdir, DRY_RUN="1")
    proc = slurm.sbatch(["-N", "1", "-t", "1", "-J", "pc-dry", "-o", out,
                         ROOT / "9_submit_multinode.sh"], cwd=ROOT, env=env, timeout=300)
    text = out.read_text()
    assert proc.returncode == 2, proc.stderr + text
    assert "32 simulations (or SIMSx) x grid 256 512 1024, compute time 0.5 s/step" in text
    last = text.splitlines()[-1]
    assert last.startswith("9_submit_multinode.sh: the plan takes about ")
    assert re.search(r"\(an estimate\), but the job has \d+ s left: run fewer sizes", last), last
    assert "would run" not in text
    # more nodes than the allocation has: one line, before anything runs
    bad = slurm.sbatch(["-N", "1", "-o", out, ROOT / "9_submit_multinode.sh"], cwd=ROOT,
                       env=dict(env, NODES="1 2"), timeout=300)
    assert bad.returncode == 2
    assert out.read_text().splitlines() == [
        "9_submit_multinode.sh: NODES asks for 2 nodes, but the slurm job has 1"]


def test_main_job_under_sbatch_runs_on_both_nodes(slurm, cluster_workdir):
    """`NODES=2 sbatch -N 2 9_submit_multinode.sh`: run from the submit directory, results
    in results/<job id>/, srun starts a Parsl manager on each node, 2-node rows in the table;
    DATA_DIR, the user's, stays (empty).

    Not the DDict: test_ddict_under_sbatch_on_one_and_two_nodes runs it in a job of its own
    (TRANSPORTS="ddict" here would check it on both nodes as well). Long because one sbatch
    job is checked from its queue to its last file, in order."""
    out = cluster_workdir / "job.out"
    env = slurm.job_env(cluster_workdir, TRANSPORTS="filesystem futures", GRID_SIZES="16",
                        NUM_SIMS="4", WARMUP="0", COMPUTE_TIME="0", RUN_TIMEOUT="600",
                        NODES="2", DATA_DIR=str(cluster_workdir / "data"))
    made_results = not (ROOT / "results").exists()
    started = time.monotonic()
    proc = slurm.sbatch(["-N", "2", "-o", out, ROOT / "9_submit_multinode.sh"], cwd=ROOT, env=env)
    wall_s = time.monotonic() - started
    job_id = proc.stdout.split()[-1] if proc.stdout.strip() else "?"
    results = ROOT / "results" / job_id
    try:
        text = out.read_text() if out.exists() else ""
        assert proc.returncode == 0, proc.stderr + text[-6000:]
        records = read_records(results / "records.jsonl")
        print(f"sbatch of the main job: {wall_s:.1f} s wall; start-up "
              + ", ".join(f"{r['transport']} {r['startup_s']:.1f} s" for r in records))
        transports = [t for t in ("dragon+ddict", "parsl+filesystem", "parsl+futures")
                      if t.split("+")[1] in env["TRANSPORTS"]]
        assert sorted(r["transport"] for r in records) == transports
        for r in records:
            assert r["integrity_ok"] is True and r["num_sims"] == 4
            assert r["num_nodes"] == 2 and sorted(r["hosts"]) == ["node1", "node2"]
            # srun placed a manager (Dragon: a back end) on each node: tasks of both kinds
            # ran on both
            assert sorted(set(r["sim_hosts"])) == ["node1", "node2"], r["sim_hosts"]
            assert sorted(set(r["trainer_hosts"])) == ["node1", "node2"], r["trainer_hosts"]
        assert f"job          {job_id} on node1 (2 node(s)" in text
        table = (results / "table.md").read_text()
        for r in records:
            if r["transport"] == "dragon+ddict":
                assert r["runtime_startup_s"] is not None   # `python 8_...` started it
                assert sorted(r["ddict"]["manager_hosts"]) == ["node1", "node2"]
            else:                       # the allocation's order, from scontrol
                assert r["hosts"] == ["node1", "node2"]
        names = {"dragon+ddict": "DragonHPC + DDict", "parsl+filesystem": "Parsl + file system",
                 "parsl+futures": "Parsl + futures"}
        for r in records:
            # the file system's runs say where their files were: DATA_DIR, on the repository's disk
            where = r["data_filesystem"]
            name = names[r["transport"]] + (f" [{where['type']}]" if where else "")
            assert (where is not None) == (r["transport"] == "parsl+filesystem")
            assert f"| {name} | 2 (one machine) | 0.000164 |" in table
        assert os.listdir(cluster_workdir / "data") == []   # the user's: emptied, not removed
    finally:
        shutil.rmtree(results, ignore_errors=True)
        if made_results:
            try:
                (ROOT / "results").rmdir()          # made by this job, if nothing else is in it
            except OSError:
                pass
    assert_nothing_left(slurm, cluster_workdir)


def assert_nothing_left(slurm, workdir):
    """The job's processes and files are gone from both nodes (Slurm's own stay up)."""
    deadline = time.monotonic() + 30
    while (slurm.leftovers() or leftover_processes(workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.leftovers() == {} and leftover_processes(workdir) == []


def test_ddict_under_sbatch_on_one_and_two_nodes(slurm, cluster_workdir):
    """`NODES="1 2" TRANSPORTS=ddict sbatch -N 2 9_submit_multinode.sh`: `python 8_...
    --num_nodes 1` starts Dragon with -N 1 on one node of the allocation, `--num_nodes 2`
    (accepted: the allocation has 2 nodes) on both, each with one DDict manager per node,
    and every trainer gets every value intact. Tiny, no training (EPOCHS=0): Dragon's
    start-up is most of it."""
    out = cluster_workdir / "job.out"
    env = slurm.job_env(cluster_workdir, TRANSPORTS="ddict", NODES="1 2", GRID_SIZES="16",
                        NUM_SIMS="4", WARMUP="0", COMPUTE_TIME="0", EPOCHS="0",
                        RUN_TIMEOUT="300", RESULTS_DIR=str(cluster_workdir / "results"),
                        DATA_DIR=str(cluster_workdir / "data"))
    started = time.monotonic()
    proc = slurm.sbatch(["-N", "2", "-t", "15", "-J", "pc-ddict", "-o", out,
                         ROOT / "9_submit_multinode.sh"], cwd=ROOT, env=env, timeout=600)
    wall_s = time.monotonic() - started
    text = out.read_text() if out.exists() else ""
    logs = "".join(log.read_text()[-3000:] for log in
                   sorted((cluster_workdir / "results" / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stderr + text[-6000:] + logs
    records = read_records(cluster_workdir / "results" / "records.jsonl")
    print(f"sbatch of the DDict job (1 and 2 nodes): {wall_s:.1f} s wall; runtime start-up "
          + ", ".join(f"{r['num_nodes']} node(s) {r['runtime_startup_s'] or 0:.1f} s" for r in records))
    assert [(r["transport"], r["num_nodes"]) for r in records] == [("dragon+ddict", 1),
                                                                    ("dragon+ddict", 2)]
    for r in records:
        assert r["integrity_ok"] is True and r["num_sims"] == 4, r
        assert r["runtime_startup_s"] is not None           # `python 8_...` started it
        ddict = r["ddict"]
        # one manager per node, on each of the run's hosts
        assert ddict["managers"] == r["num_nodes"] == len(set(r["hosts"])) == len(r["hosts"])
        assert sorted(ddict["manager_hosts"]) == sorted(r["hosts"]), ddict
        assert set(r["sim_hosts"]) == set(r["trainer_hosts"]) == set(r["hosts"]), r
    one, two = records
    # -N 1: Dragon 0.15 takes the first node whose network-configuration helper answers,
    # which is not always the allocation's first (its srun task 0)
    assert len(one["hosts"]) == 1 and one["hosts"][0] in ("node1", "node2"), one["hosts"]
    assert sorted(two["hosts"]) == ["node1", "node2"]
    assert "--num_nodes 1 " in text and "--num_nodes 2 " in text
    assert "run FAILED" not in text
    assert os.listdir(cluster_workdir / "data") == []       # the user's: emptied, not removed
    assert_nothing_left(slurm, cluster_workdir)


def test_down_removes_daemons_spool_and_keys(slurm):
    down = slurm_command("down")
    assert down.returncode == 0, down.stderr
    assert not SLURM_DIR.exists()                        # configuration, key, logs
    assert slurm.cluster.leftovers() == {}               # no daemon, no spool, no socket
    assert machine_files() == slurm.machine_before       # the machine's own files untouched
    again = slurm_command("down")
    assert again.returncode == 0 and "no Slurm was up" in again.stderr
