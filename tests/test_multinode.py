"""The Parsl multi-node path where no namespaced cluster is needed: a $PBS_NODEFILE naming
two names of this machine ("localhost" and its own name), MPICH's mpiexec with
HYDRA_LAUNCHER=fork. The workflows on real separate nodes are in test_cluster.py; here,
a launcher that fails, and (test_proxystore.py) the stores' addresses across "nodes".
"""
import os
import shutil
import socket
import subprocess

import psutil
import pytest

from conftest import TINY, run_script, script_env


def _install(package: str, program: str) -> str | None:
    """Path of `program`, installing Debian's `package` first when it is missing."""
    if shutil.which(program) is None and shutil.which("apt-get") is not None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # one apt-get at a time (cluster/*.sh take the same lock): tests run in two processes
        lock = ["flock", "/run/lock/pc-apt.lock"] if os.path.isdir("/run/lock") else []
        install = [*lock, "apt-get", "install", "-y", "-q", package]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            # a fresh machine may have no package lists yet
            subprocess.run([*lock, "apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=900)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
    return shutil.which(program)


def installed_or_skip(package: str, program: str) -> str:
    """Path of `program` (see _install); skips the test where it cannot be had."""
    path = _install(package, program)
    if path is None:
        pytest.skip(f"no {program}, and `apt-get install -y {package}` failed "
                    "(needs root and Debian)")
    return path


@pytest.fixture(scope="session")
def mpiexec():
    return installed_or_skip("mpich", "mpiexec")


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
