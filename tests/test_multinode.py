"""The Parsl multi-node path where no namespaced cluster is needed: a $PBS_NODEFILE naming
two names of this machine ("localhost" and its own name), MPICH's mpiexec with
HYDRA_LAUNCHER=fork. The workflows on real separate nodes are in test_cluster.py; here,
a launcher that fails, and (test_proxystore.py) the stores' addresses across "nodes".
"""
import os
import shutil
import socket

import psutil
import pytest

from conftest import TINY, run_script, script_env, unavailable


def installed_or_skip(package: str, program: str) -> str:
    """Path of `program`; skips the test where it is missing. The Debian packages the tests
    use are installed once, before any test starts (tests/conftest.py)."""
    path = shutil.which(program)
    if path is None:
        unavailable(f"no {program}: Debian's {package} is not installed, and "
                    "cluster/install_packages.sh could not install it (needs root and apt-get)")
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
    [line] = [line for line in proc.stderr.splitlines() if "error:" in line]
    saved = line.split("(traceback in ")[1].rstrip(")")     # the one file the run leaves
    # nothing of the run is left: no interchange or manager outlives it, no other files
    left = [p.info for p in psutil.process_iter(["pid", "cmdline", "cwd"])
            if p.info["cwd"] == str(workdir)]
    assert left == []
    assert sorted(os.listdir(workdir)) == ["data", os.path.basename(saved)]
    assert os.listdir(workdir / "data") == []


@pytest.mark.parametrize("flavour", ["bogus"])
def test_an_engine_set_up_error_is_one_line_with_its_traceback_in_a_file(two_nodes, workdir,
                                                                          flavour):
    """An error the workflow did not foresee (here the MPI flavour, refused while Parsl is set
    up) ends the run with one line that names the file holding the full traceback."""
    names, env = two_nodes
    env = dict(env, PARSL_MPI_FLAVOUR=flavour)
    results = workdir / "out" / "results.jsonl"
    proc = run_script(["6_parsl_fs_producer_consumer.py", "--num_sims", 2, "--num_trainers", 1,
                       *TINY, "--data_dir", workdir / "data", "--results_file", results],
                      cwd=workdir, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "error" in line]
    assert "Traceback" not in proc.stderr
    assert line.startswith("6_parsl_fs_producer_consumer.py: error: ValueError: "
                           f"PARSL_MPI_FLAVOUR='{flavour}': use pals, hydra or openmpi")
    saved = line.split("(traceback in ")[1].rstrip(")")
    assert os.path.dirname(saved) == str(workdir / "out")
    with open(saved) as f:
        text = f.read()
    assert text.startswith("Traceback") and "mpi_flavour" in text
    assert os.listdir(workdir / "data") == []
