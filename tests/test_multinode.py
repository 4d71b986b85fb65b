"""The multi-node path of the Parsl workflows, for real: a $PBS_NODEFILE naming two hosts,
MPICH's mpiexec starting one Parsl manager per host, tasks running under both.

Both host names ("localhost" and this machine's name) reach this machine, so no second
machine, batch system or ssh is needed; everything else is what runs on a cluster.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import psutil
import pytest

from conftest import ROOT, TINY, read_records, run_script, script_env


def _install(package: str, program: str) -> str | None:
    """Path of `program`, installing Debian's `package` first when it is missing."""
    if shutil.which(program) is None and shutil.which("apt-get") is not None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", package]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
    return shutil.which(program)


@pytest.fixture(scope="session")
def mpiexec():
    path = _install("mpich", "mpiexec")
    if path is None:
        pytest.skip("no mpiexec, and `apt-get install -y mpich` failed (needs root and Debian)")
    return path


def _host_names() -> list[str]:
    """Two different names for this machine."""
    own = socket.gethostname()
    try:
        socket.gethostbyname(own)
    except OSError:
        own = ""
    return ["localhost", own if own and own != "localhost" else "127.0.0.1"]


@pytest.fixture
def two_nodes(tmp_path_factory):
    """Environment of a two-node PBS job whose nodes are both this machine."""
    names = _host_names()
    nodefile = tmp_path_factory.mktemp("pbs") / "PBS_NODEFILE"
    # PBS lists a host once per chunk: repeat one to check that each host counts once
    nodefile.write_text("\n".join([names[0], names[1], names[0]]) + "\n")
    # HYDRA_LAUNCHER=fork: both "nodes" are this machine, never try ssh (CI may lack it)
    return names, script_env(PBS_NODEFILE=str(nodefile), HYDRA_LAUNCHER="fork")


PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])         # the repository, for the head process only
import parsl_config
from parsl.app.app import python_app

def where(hold_s):
    import os, socket, sys, time
    time.sleep(hold_s)                  # keep the worker busy so the next task goes elsewhere
    rank = [os.environ[name] for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID")
            if name in os.environ]
    return {"rank": rank[0] if rank else None,
            "launched_on": os.environ.get("MPIR_CVAR_CH3_INTERFACE_HOSTNAME"),
            "host": socket.gethostname(), "prefix": sys.prefix, "path": sys.path}

config = parsl_config.make_config(sys.argv[1], 2, 1, 0)
dfk = parsl_config.start(config, {"simulators": 4, "trainers": 2}, timeout_s=240)
out = {"flavour": parsl_config.mpi_flavour(), "address": config.executors[0].address,
       "prefix": sys.prefix}
for label, workers in (("simulators", 2), ("trainers", 1)):
    app = python_app(where, executors=[label])
    out[label] = {"workers": sorted(m["worker_count"] for m in
                                    dfk.executors[label].connected_managers()),
                  "tasks": [f.result() for f in [app(1.0) for _ in range(2 * workers)]]}
dfk.cleanup()
print("PROBE " + json.dumps(out))
"""


def test_one_parsl_manager_per_node_through_mpiexec(mpiexec, two_nodes, workdir):
    names, env = two_nodes
    proc = run_script([sys.executable, "-c", PROBE, workdir / "run", ROOT], cwd=workdir, env=env,
                      timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    out = json.loads(line[len("PROBE "):])
    # Debian's MPICH, installed above (Open MPI also works where it is the mpiexec)
    assert out["flavour"] in ("hydra", "openmpi")
    for label, workers in (("simulators", 2), ("trainers", 1)):
        # two managers (one per node), each with its own workers, and tasks ran under both
        assert out[label]["workers"] == [workers, workers], label
        tasks = out[label]["tasks"]
        assert {task["rank"] for task in tasks} == {"0", "1"}, label
        if out["flavour"] == "hydra":       # Hydra tells each rank the host it was given
            assert {task["launched_on"] for task in tasks} == set(names), label
        for task in tasks:
            # the workers run in this environment, with the repository importable
            assert task["prefix"] == out["prefix"] == sys.prefix
            assert str(ROOT) in task["path"]
    # Parsl's host list and scripts stay in the run directory, not where the user stood
    assert sorted(os.listdir(workdir)) == ["data", "run"]


SCRIPTS = ["6_parsl_fs_producer_consumer.py", "5_parsl_fut_producer_consumer.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_workflow_runs_on_two_nodes_and_says_so(script, mpiexec, two_nodes, workdir):
    if not (ROOT / script).exists():
        pytest.skip(f"{script} is not in this checkout")
    names, env = two_nodes
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([script, "--num_sims", 8, "--num_trainers", 2, *TINY, "--keep_data",
                       "--data_dir", data, "--results_file", results], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    assert record["integrity_ok"] is True
    assert record["num_nodes"] == 2 and record["hosts"] == names
    assert record["num_trainers"] == 2 and record["devices"] == ["cpu", "cpu"]
    # tasks report the machine's real name: both "nodes" are this machine
    assert set(record["trainer_hosts"]) | set(record["sim_hosts"]) == {socket.gethostname()}
    assert "2 node(s)" in proc.stdout
    # one manager per node for each executor: each kept its own log directory
    [run_dir] = os.listdir(data)
    for label in ("simulators", "trainers"):
        managers = os.listdir(data / run_dir / "workers" / label / "block-0")
        assert len(managers) == 2, (label, managers)
    assert sorted(os.listdir(workdir)) == ["data", "results.jsonl"]


def test_a_launcher_that_fails_stops_the_run_with_its_message(mpiexec, two_nodes, workdir):
    names, env = two_nodes
    # Open MPI's flags, which MPICH's mpiexec refuses: the managers never start
    env = dict(env, PARSL_MPI_FLAVOUR="openmpi")
    proc = run_script(["6_parsl_fs_producer_consumer.py", "--num_sims", 2, "--num_trainers", 1,
                       *TINY, "--data_dir", workdir / "data",
                       "--results_file", workdir / "results.jsonl"], cwd=workdir, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "could not start its workers" in proc.stderr
    assert "unrecognized argument" in proc.stderr       # mpiexec's own words reach the user
    assert "Traceback" not in proc.stderr
    # nothing of the run is left: no interchange or manager outlives it, no files
    left = [p.info for p in psutil.process_iter(["pid", "cmdline", "cwd"])
            if p.info["cwd"] == str(workdir)]
    assert left == []
    assert sorted(os.listdir(workdir)) == ["data"] and os.listdir(workdir / "data") == []
