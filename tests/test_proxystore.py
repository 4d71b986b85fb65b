"""5_parsl_fut_producer_consumer.py --proxystore: real Parsl, a real redis-server, real files,
a real zmq server, tiny sizes. Every run leaves nothing behind (see nothing_left): no
redis-server or zmq server, no store files, no processes."""
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

import pytest

import common
from plumbing import cli, hosts, proxystore_setup
from conftest import (ROOT, TINY, leftover_processes, read_records, run_end_to_end, run_script,
                      script_env, unavailable)
from test_multinode import installed_or_skip, mpiexec, two_nodes  # noqa: F401 (fixtures)
from test_reliability import SIMULATING, TRAINING, refused, run_args, wait_for_line

SCRIPT = "5_parsl_fut_producer_consumer.py"


@pytest.fixture(scope="session")
def redis_server():
    return installed_or_skip("redis-server", "redis-server")


def need_redis(request, connector):
    """Only the redis runs need redis-server: the other connectors run without it."""
    if connector == "redis":
        request.getfixturevalue("redis_server")


def servers(workdir) -> list:
    """This test's store servers still alive."""
    return [cmd for cmd in leftover_processes(workdir)
            if "redis-server" in cmd or "start_server" in cmd]


@pytest.mark.parametrize("connector", proxystore_setup.CONNECTORS)
def test_every_sample_arrives_through_the_store_and_the_store_ends_empty(
        nothing_left, request, connector):
    need_redis(request, connector)
    workdir = nothing_left
    record, proc = run_end_to_end([SCRIPT, "--proxystore", connector], workdir,
                                  f"parsl+proxystore-{connector}")
    split = record["proxystore"]
    assert split["connector"] == connector
    assert split["keys_put"] == 128 and split["keys_got_per_trainer"] == [128, 128]
    assert split["keys_evicted"] == 128 and split["keys_left"] == 0
    # ProxyStore's own split, measured in the workers, fits inside the IO times around it
    for name in ("sim_serialize", "sim_put", "train_get", "train_deserialize"):
        assert 0 < split[f"{name}_mean_s"] <= split[f"{name}_max_s"], name
    assert split["sim_serialize_mean_s"] + split["sim_put_mean_s"] < record["sim_io_mean_s"]
    assert split["train_get_mean_s"] + split["train_deserialize_mean_s"] \
        < record["train_io_mean_s"]
    assert split["versions"]["proxystore"].startswith("1.")
    assert "proxy" in record["io_includes"]["sim_io"]
    assert "0 left" in proc.stdout
    if connector == "redis":
        assert split["where"].startswith("redis-server on 127.0.0.1:")


@pytest.mark.parametrize("connector", ["zmq"])     # the interrupts below stop redis-server
def test_a_failing_simulation_stops_the_run_and_the_server(nothing_left, request, connector):
    need_redis(request, connector)
    workdir = nothing_left
    env = script_env(workdir, PC_INJECT_FAILURE="simulation:2")
    proc = run_script([SCRIPT, "--proxystore", connector,
                       *run_args(workdir, "--num_sims", 6, "--num_trainers", 2, *TINY)],
                      cwd=workdir, env=env, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: simulation 2 failed: RuntimeError: failure injected" in proc.stderr
    assert not (workdir / "r.jsonl").exists()
    assert servers(workdir) == []


@pytest.mark.parametrize("connector,phase,signum", [
    ("redis", "simulation", signal.SIGINT), ("redis", "training", signal.SIGTERM),
    ("zmq", "training", signal.SIGINT),
], ids=lambda p: p.name if isinstance(p, signal.Signals) else p)
def test_interrupt_stops_the_store_server(nothing_left, request, connector, phase, signum):
    need_redis(request, connector)
    workdir = nothing_left
    extra, marker = ((SIMULATING, "warm after") if phase == "simulation"
                     else (TRAINING, "simulations done"))
    argv = [sys.executable, str(ROOT / SCRIPT), "--proxystore", connector,
            *run_args(workdir, "--num_sims", 40, "--num_trainers", 2, *extra)]
    proc = subprocess.Popen(argv, cwd=workdir, env=script_env(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, marker)
        time.sleep(1)
        assert servers(workdir), "the store's server should be running mid-run"
        proc.send_signal(signum)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr[-3000:]
    assert f"interrupted ({signum.name}); cleaned up" in stderr
    assert servers(workdir) == []       # at once, not only within nothing_left's 20 s


def cluster_interface():
    """A network interface other than loopback that has an IPv4 address (eth0 here)."""
    from parsl.addresses import address_by_interface
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            if name != "lo" and not address_by_interface(name).startswith("127."):
                return name
        except OSError:
            continue
    return None


@pytest.mark.parametrize("connector", ["redis", "zmq"])
def test_two_nodes_reach_the_store_over_the_cluster_address(nothing_left, request, mpiexec,
                                                            two_nodes, connector):
    """Both "nodes" are this machine (see test_multinode), so the workers reach the store
    through the interchange address, as on a cluster, and redis runs without protected mode."""
    need_redis(request, connector)
    workdir = nothing_left
    names, env = two_nodes
    iface = cluster_interface()
    if iface is None:
        unavailable("no network interface with an IPv4 address besides loopback")
    env = dict(env, PC_TEST_RUN=str(workdir), PARSL_IFACE=iface)
    proc = run_script([SCRIPT, "--proxystore", connector,
                       *run_args(workdir, "--num_sims", 8, "--num_trainers", 2, *TINY)],
                      cwd=workdir, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(workdir / "r.jsonl")
    assert record["integrity_ok"] is True and record["num_nodes"] == 2
    assert record["proxystore"]["keys_left"] == 0
    if connector == "redis":
        assert not record["proxystore"]["where"].startswith("redis-server on 127.0.0.1:")


def test_a_node_server_dies_with_the_process_that_started_it(nothing_left):
    """A zmq server that a worker starts goes when the worker goes, even on SIGKILL."""
    port = proxystore_setup._free_port("127.0.0.1")
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom plumbing import proxystore_setup as p\n"
         f"p.start_zmq_server('127.0.0.1', {port}); print('up', flush=True); time.sleep(600)"],
        cwd=ROOT, env=script_env(nothing_left), stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "up\n"
        assert proxystore_setup._zmq_answers("127.0.0.1", port)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while servers(nothing_left) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert servers(nothing_left) == []
    finally:
        owner.kill()


def test_the_redis_server_lets_in_only_who_has_its_password(nothing_left, redis_server):
    """Any job on a shared node can reach the server's port: it asks for a password, which
    is in no command line (ps shows those to every user) and in a file only we can read."""
    import redis
    from plumbing.proxystore_redis import PasswordRedisConnector
    address = proxystore_setup.LOOPBACK
    server, port, password = proxystore_setup.start_redis(address, str(nothing_left / "r"), 2**20)
    try:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=address, port=port).get("anything")
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert password.encode() not in f.read()
        assert os.stat(nothing_left / "r" / "redis.conf").st_mode & 0o077 == 0
        connector = PasswordRedisConnector.from_config(
            PasswordRedisConnector(address, port, password).config())  # as a worker makes it
        key = connector.put(b"pairs")
        assert connector.get(key) == b"pairs"
        connector.evict(key)
        connector.close()
    finally:
        proxystore_setup._stop(server)
        shutil.rmtree(nothing_left / "r")


def test_an_unknown_connector_is_refused(nothing_left):
    err = refused(nothing_left, SCRIPT, ["--proxystore", "nosuch", *run_args(nothing_left)],
                  "--proxystore")
    assert "invalid choice: 'nosuch'" in err


def test_redis_server_missing_is_refused(nothing_left):
    # the venv's own bin/ only: Python is there, redis-server is not
    env = script_env(nothing_left, PATH=os.path.dirname(sys.executable))
    err = refused(nothing_left, SCRIPT, ["--proxystore", "redis", *run_args(nothing_left)],
                  "--proxystore", env=env)
    assert "no redis-server on PATH" in err


def test_a_missing_proxystore_package_is_refused(nothing_left, tmp_path):
    # the venv's site-packages without ProxyStore's: -S drops them, PYTHONPATH gives the rest
    site = sysconfig.get_paths()["purelib"]
    packages = tmp_path / "site-packages-without-proxystore"
    packages.mkdir()
    for name in os.listdir(site):
        if not name.lower().startswith("proxystore"):
            (packages / name).symlink_to(os.path.join(site, name))
    env = script_env(nothing_left, PYTHONPATH=str(packages))
    proc = subprocess.run([sys.executable, "-S", str(ROOT / SCRIPT), "--proxystore", "file",
                           *run_args(nothing_left)], cwd=nothing_left, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "proxystore is not installed" in proc.stderr, \
        proc.stderr
    assert proc.stdout == "" and os.listdir(nothing_left / "data") == []


def test_the_memory_check_counts_proxies_honestly(nothing_left, redis_server):
    """By value ~5 copies per trainer travel; by proxy each trainer holds 1.5, plus the
    store's one copy for redis and zmq (files are on disk)."""
    one = common.data_bytes(1, 512)
    available = hosts.available_memory_bytes()
    if not available:
        unavailable("no /proc/meminfo")

    def check(connector, num_sims, trainers):
        parser = cli.make_parser("test")
        proxystore_setup.add_argument(parser)
        cli.check_args(parser, ["--proxystore", connector, "--num_sims", str(num_sims),
                                "--num_trainers", str(trainers), "--data_dir",
                                str(nothing_left), "--results_file", str(nothing_left / "r.jsonl")],
                       trainer_copies=proxystore_setup.COPIES_PER_TRAINER,
                       more_memory=proxystore_setup.store_memory,
                       more_checks=proxystore_setup.check_args)

    # what script 5 refuses by value (see test_reliability: 5 copies of 0.3 of the memory)
    fits_by_proxy = int(0.3 * available / one)
    check("file", fits_by_proxy, 1)         # 0.45 of the memory
    check("redis", fits_by_proxy, 1)        # 0.75
    with pytest.raises(SystemExit) as refusal:
        check("redis", fits_by_proxy, 2)    # 1.2: two trainers and the store
    assert refusal.value.code == 2
    # and the script refuses it in one line before anything starts
    refused(nothing_left, SCRIPT, ["--proxystore", "redis", "--num_sims", str(fits_by_proxy),
                                   "--num_trainers", "2", *run_args(nothing_left)],
            "--num_sims")
