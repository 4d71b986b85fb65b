"""Where the trainers go, for 1-4 nodes x 0-4 GPUs, without a GPU: the Parsl layout and
config, Dragon's placement policies, the refusal of more trainers than GPUs (both engines,
before anything starts), and the check that fails a run whose trainers did not get a GPU
each. The GPU count is set the one way both engines ask for it: $PC_GPUS_PER_NODE."""
import itertools
import os
import subprocess
import sys

import pytest

import common
from plumbing import cli, records
from conftest import ROOT, TINY, read_records, run_script, script_env

NODES = [1, 2, 3, 4]
GPUS = [0, 1, 2, 3, 4]


def hosts_of(nodes: int) -> list[str]:
    return [f"n{k}" for k in range(1, nodes + 1)]


def default_trainers(nodes: int, gpus: int) -> int:
    return gpus * nodes or cli.CPU_TRAINERS


@pytest.mark.parametrize("nodes,gpus", list(itertools.product(NODES, GPUS)))
def test_dragon_puts_one_trainer_on_each_gpu(nodes, gpus):
    from plumbing import dragon_setup
    trainers = default_trainers(nodes, gpus)
    policies = dragon_setup.trainer_policies(hosts_of(nodes), trainers, gpus)
    assert len(policies) == trainers
    places = [(p.host_name, tuple(p.gpu_affinity)) for p in policies]
    if gpus:
        # every GPU of every node exactly once
        assert sorted(places) == sorted((h, (g,)) for h in hosts_of(nodes) for g in range(gpus))
    else:
        assert all(gpu == () for _, gpu in places)
        # round-robin: the nodes' trainer counts differ by one at most
        counts = [sum(h == host for h, _ in places) for host in hosts_of(nodes)]
        assert max(counts) - min(counts) <= 1
    # fewer trainers than GPUs: spread over the nodes first
    if gpus and nodes > 1:
        first = dragon_setup.trainer_policies(hosts_of(nodes), nodes, gpus)
        assert sorted(p.host_name for p in first) == hosts_of(nodes)
        assert all(p.gpu_affinity == [0] for p in first)


@pytest.mark.parametrize("nodes,gpus", list(itertools.product(NODES, GPUS)))
def test_parsl_gives_each_node_one_trainer_worker_per_gpu(nodes, gpus, tmp_path, monkeypatch):
    from plumbing import parsl_setup
    monkeypatch.setenv("PARSL_MPI_FLAVOUR", "hydra")    # no mpiexec needed to build a config
    monkeypatch.setenv("PARSL_IFACE", "lo")
    trainers = default_trainers(nodes, gpus)
    layout = parsl_setup.Layout.plan(hosts_of(nodes), num_sims=32, num_trainers=trainers,
                                      gpus=gpus, cpus=8)
    assert layout.trainer_workers * nodes >= trainers
    assert layout.trainer_workers == (gpus or -(-cli.CPU_TRAINERS // nodes))
    assert layout.cpu_threads == (0 if gpus else 8 // layout.trainer_workers)
    config = parsl_setup.make_config(str(tmp_path), layout.sim_workers, layout.trainer_workers,
                                      gpus, hosts=layout.hosts)
    executor = {e.label: e for e in config.executors}[parsl_setup.TRAINERS]
    assert executor.available_accelerators == [str(g) for g in range(gpus)]
    # Parsl starts min(max_workers_per_node, GPUs) workers per node where there are GPUs
    assert executor.max_workers_per_node == layout.trainer_workers
    if gpus:
        assert len(executor.available_accelerators) >= layout.trainer_workers
    if nodes > 1:       # one manager per node, on the run's hosts in the run's order
        script = executor.provider.launcher("CMD", 1, nodes)
        assert f"printf '%s\\n' {' '.join(layout.hosts)} > $HOSTFILE" in script
        assert "sort -u" not in script and "-n $WORKERCOUNT" in script


@pytest.mark.parametrize("machine", ["vm", None])
def test_nodes_sharing_one_machine_divide_its_cores(machine, monkeypatch):
    from plumbing import hosts
    if machine:
        monkeypatch.setenv(hosts.SHARED_MACHINE_ENV, machine)
    else:
        monkeypatch.delenv(hosts.SHARED_MACHINE_ENV, raising=False)
    assert hosts.shared_machine() == machine
    cases = {(2, 1): 2, (2, 2): 1, (2, 3): 1, (16, 4): 4, (64, 1): 64}
    for (cores, nodes), shared in cases.items():
        # real nodes (no machine named) keep their own cores, whatever their number
        assert hosts.cores_per_node(cores, nodes) == (shared if machine else cores)


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 4), (2, 4), (4, 2)])
def test_parsl_layout_refuses_more_trainers_per_node_than_gpus(nodes, gpus):
    from plumbing import parsl_setup
    with pytest.raises(ValueError, match="trainers per node"):
        parsl_setup.Layout.plan(hosts_of(nodes), 8, gpus * nodes + 1, gpus, 8)


def test_the_run_order_of_hosts_not_the_sorted_one():
    """PBS with --num_nodes below the allocation: the managers start on the first N hosts
    of $PBS_NODEFILE in its order, the ones the record lists (Parsl sorted them)."""
    from plumbing import parsl_launchers
    script = parsl_launchers.mpi_launcher("hydra", ["x3", "x1"])("CMD", 1, 2)
    assert "printf '%s\\n' x3 x1 > $HOSTFILE" in script


def test_mpiexec_outlives_output_files_that_cannot_be_written(tmp_path):
    """The block's script writes mpiexec's output to files in the run's directory; where a
    storage node died, writes there fail. mpiexec (here a Python writer in its place, its
    files /dev/full) must still run to its end and exit 0: a writer that dies of it would
    make Hydra SIGKILL every manager."""
    import subprocess
    import sys
    from plumbing import parsl_launchers
    script = parsl_launchers.mpi_launcher("hydra", ["x1", "x2"])("CMD", 1, 2)
    [line] = [line for line in script.splitlines() if line.startswith("mpiexec ")]
    assert line.endswith(" 2> >(drain >&2) | drain")
    assert all(part in script.splitlines() for part in parsl_launchers.DRAIN)
    writer = (f"{sys.executable} -c 'import sys\nfor _ in range(50):\n"
              f"    sys.stdout.write(\"x\" * 99999 + \"\\n\"); sys.stderr.write(\"y\" * 99999 + \"\\n\")'")

    def run(command):
        done = tmp_path / "done"
        done.unlink(missing_ok=True)
        with open("/dev/full", "w") as full:
            status = subprocess.run(["bash", "-c", "\n".join(["set -e", *parsl_launchers.DRAIN,
                                                                 command, f"touch {done}"])],
                                    stdout=full, stderr=full, timeout=60).returncode
        return status, done.exists()
    assert run(f"{writer} 2> >(drain >&2) | drain") == (0, True)
    assert run(writer)[0] != 0                  # as Parsl wrote it: the writer fails


@pytest.mark.parametrize("script", ["6_parsl_fs_producer_consumer.py",
                                    "5_parsl_fut_producer_consumer.py",
                                    "8_dragon_producer_consumer.py"])
def test_more_trainers_than_gpus_is_refused_before_anything_starts(script, workdir):
    env = script_env(workdir, PC_GPUS_PER_NODE="1")
    proc = run_script([script, "--num_sims", 2, "--num_trainers", 2, *TINY, "--data_dir",
                       workdir / "data"], cwd=workdir, env=env, timeout=120)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "--num_trainers: 2 trainers on 1 node(s) put 2 on a node, which has 1 GPU(s)" in line
    assert proc.stdout == "" and sorted(p.name for p in workdir.iterdir()) == ["data"]


def test_a_bad_gpu_count_is_refused_in_one_line(workdir):
    env = script_env(workdir, PC_GPUS_PER_NODE="four")
    proc = run_script(["6_parsl_fs_producer_consumer.py", *TINY], cwd=workdir, env=env,
                      timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "6_parsl_fs_producer_consumer.py: error: PC_GPUS_PER_NODE='four': give a number of "
        "GPUs (0 or more) (see --help)"]


def _trainer(rank, host="n1", device="cuda", visible="0", uuid="GPU-a"):
    return common.TrainReport(rank=rank, kernel_size=3, device=device, host=host, bytes_read=0,
                              samples=0, io_s=0, check_s=0, warmup_s=0, train_s=0, losses=[],
                              peak_rss_bytes=0, gpu=visible, gpu_uuid=uuid)


def test_device_problems_are_found():
    ok = [_trainer(0, uuid="GPU-a"), _trainer(1, visible="1", uuid="GPU-b"),
          _trainer(2, host="n2", uuid="GPU-a")]                # the same GPU name on another node
    assert records.device_problem(ok, gpus_per_node=4) is None
    assert records.device_problem([_trainer(0, device="cpu", uuid="")], gpus_per_node=0) is None
    shared = [_trainer(0, uuid="GPU-a"), _trainer(1, visible="1", uuid="GPU-a")]
    assert "trainers 0 and 1 shared one GPU of n1" in records.device_problem(shared, 4)
    on_cpu = [_trainer(0), _trainer(1, device="cpu", visible="", uuid="")]
    assert ("trainer 1 trained on the CPU of n1, whose node has 4 GPU(s)"
            in records.device_problem(on_cpu, 4))


def test_a_cpu_trainer_is_a_problem_whatever_gpu_it_was_shown():
    """Slurm and the engines give each trainer CUDA_VISIBLE_DEVICES of its own GPU; a torch
    that sees no GPU then trains on the CPU. The check compares with the nodes' GPU count
    that the run was planned with, not with what the trainer itself could see."""
    pinned_but_on_cpu = [_trainer(0, device="cpu", visible="0", uuid=""),
                         _trainer(1, device="cpu", visible="1", uuid="")]
    assert "trainer 0 trained on the CPU" in records.device_problem(pinned_but_on_cpu, 4)


def _gpus_seen(dev, **env):
    """hosts.gpus_per_node() in a fresh process with `env` (torch reads CUDA_VISIBLE_DEVICES
    once per process): its answer, or its one-line refusal."""
    code = ("import sys; from plumbing import hosts\n"
            "try: print(hosts.gpus_per_node(sys.argv[1]))\n"
            "except ValueError as error: print('refused:', error)")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PC_GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES")}
    out = subprocess.run([sys.executable, "-c", code, str(dev)], capture_output=True, text=True,
                         cwd=ROOT, env={**clean, **env}, timeout=120, check=True)
    return out.stdout.strip()


NO_SUCH_GPU = "GPU-00000000-0000-0000-0000-000000000000"    # torch sees none, GPU host or not


@pytest.mark.parametrize("visible", [None, "0,1", NO_SUCH_GPU])
def test_gpu_device_files_that_torch_cannot_use_are_refused(tmp_path, visible):
    """A GPU node (its device files) where torch sees no GPU: a CPU build of torch, or one
    newer than the driver. Refused also when a batch system set CUDA_VISIBLE_DEVICES (Slurm
    does in every GPU job), which used to pass as a deliberate CPU run."""
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    import torch
    if torch.cuda.is_available() and visible != NO_SUCH_GPU:
        env["CUDA_VISIBLE_DEVICES"] = NO_SUCH_GPU       # this host's torch does see GPUs
    answer = _gpus_seen(tmp_path, **env)
    assert answer.startswith("refused: this node has GPUs") and "torch" in answer, answer


@pytest.mark.parametrize("visible", ["", "-1"])
def test_gpus_hidden_on_purpose_mean_a_cpu_run(tmp_path, visible):
    (tmp_path / "nvidia0").touch()
    assert _gpus_seen(tmp_path, CUDA_VISIBLE_DEVICES=visible) == "0"


def test_no_gpu_device_files_mean_no_gpus_without_asking_torch(tmp_path):
    assert _gpus_seen(tmp_path, CUDA_VISIBLE_DEVICES="0") == "0"
    assert _gpus_seen(tmp_path, PC_GPUS_PER_NODE="3") == "3"


def test_a_trainer_on_the_cpu_of_a_gpu_node_fails_the_run(workdir):
    """The node says it has 2 GPUs, but torch sees none (as with a torch build that does not
    match the driver): the trainers train on the CPU, and the run must not pass for a GPU run."""
    results = workdir / "results.jsonl"
    env = script_env(workdir, PC_GPUS_PER_NODE="2")
    proc = run_script(["6_parsl_fs_producer_consumer.py", "--num_sims", 2, *TINY, "--data_dir",
                       workdir / "data", "--results_file", results], cwd=workdir, env=env,
                      timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "trained on the CPU of" in proc.stderr.splitlines()[-1]
    [record] = read_records(results)
    assert record["integrity_ok"] is True and record["devices_ok"] is False
    assert [t["visible"] for t in record["trainer_gpus"]] in (["0", "1"], ["1", "0"])
    assert record["gpus_per_node"] == 2
    assert all(t["device"] == "cpu" for t in record["trainer_gpus"])
    assert "Devices                 : FAILED" in proc.stdout


@pytest.mark.parametrize("dragon_args, expected", [
    ("-t tcp --wlm ssh --hostfile {dir}/nodes.txt", "{dir}/nodes.txt"),
    ("--wlm ssh --hostlist n1,n2", "n1\nn2\n"),
    ("-t tcp", None),                       # Slurm or PBS finds its own nodes
])
def test_an_ssh_launch_tells_dragons_clean_up_its_nodes(monkeypatch, tmp_path, dragon_args,
                                                        expected):
    """dragon_launch.cleanup_hosts_env: the nodes of an ssh launch, for dragon-cleanup after a
    failed start; nothing for other launches (the variable would override their WLM)."""
    from plumbing import dragon_launch
    monkeypatch.setenv("PC_DRAGON_ARGS", dragon_args.format(dir=tmp_path))
    env = dragon_launch.cleanup_hosts_env(str(tmp_path))
    if expected is None:
        assert env == {}
    elif expected.endswith(".txt"):
        assert env == {"DRAGON_RUN_NODEFILE": expected.format(dir=tmp_path)}
    else:
        assert open(env["DRAGON_RUN_NODEFILE"]).read() == expected


@pytest.mark.parametrize("dragon_args", ["-t hsta --wlm ssh --hostfile {dir}/nodes.txt",
                                         "--wlm ssh --hostlist node3,node1,node2", "-t tcp"])
@pytest.mark.parametrize("count", [1, 2])
def test_fewer_nodes_are_the_first_of_an_ssh_launchs_hosts(monkeypatch, tmp_path, dragon_args,
                                                            count):
    """dragon_launch.first_nodes_args, read by Dragon's own launcher parser after
    $PC_DRAGON_ARGS: an ssh launch gets exactly its first `count` hosts (Dragon's -N would
    take any of them); other launches get -N."""
    from dragon.launcher import launchargs
    from plumbing import dragon_launch
    (tmp_path / "nodes.txt").write_text("node3\nnode1\nnode2\n")
    monkeypatch.setenv("PC_DRAGON_ARGS", dragon_args.format(dir=tmp_path))
    extra = dragon_launch.first_nodes_args(count, str(tmp_path))
    options = launchargs.get_args([*dragon_launch.launch_args(), *extra, "script.py"])
    if "ssh" not in dragon_args:
        assert extra == ["-N", str(count)] and options["node_count"] == count
        return
    assert "node_count" not in options or not options["node_count"]
    hosts = options.get("hostlist") or (tmp_path / "first-hosts").read_text().split()
    assert hosts == ["node3", "node1"][:count]


def test_a_crashed_launcher_is_named_and_only_its_unused_ddict_pools_go():
    """dragon_launch.launcher_crashed, on real files in /dev/shm: of Dragon's pool files made
    since the launch, the one no process maps goes; one that a live process maps (another
    run's), one from before the launch and a file of another name stay."""
    import signal
    import subprocess
    import sys
    from plumbing import dragon_launch
    tag = f"pctest{os.getpid()}"
    names = {k: f"{prefix}{tag}{k}" for k, prefix in
             (("old", "DD"), ("unused", "DD"), ("mapped", "DD"), ("other", "xx"))}
    paths = {k: os.path.join("/dev/shm", name) for k, name in names.items()}
    with open(paths["old"], "wb") as f:
        f.write(b"\0" * 4096)
    before = set(os.listdir("/dev/shm"))
    for k in ("unused", "mapped", "other"):
        with open(paths[k], "wb") as f:
            f.write(b"\0" * 4096)
    holder = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time\n"
                               "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 4096)\n"
                               "print('mapped', flush=True); time.sleep(60)", paths["mapped"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "mapped\n"
        line = dragon_launch.launcher_crashed(signal.SIGSEGV, before)
        left = {k for k, path in paths.items() if os.path.exists(path)}
        assert left == {"old", "mapped", "other"}
        assert "\n" not in line
        assert line.startswith("Dragon's launcher died of SIGSEGV") and \
            "removed 1 file(s) of its pools" in line
    finally:
        holder.kill()
        holder.wait()
        for path in paths.values():
            if os.path.exists(path):
                os.unlink(path)
