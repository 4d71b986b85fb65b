"""9_submit_multinode.sh on this machine (no PBS): every transport at two tiny sizes, then the
table and the plots. Real Parsl, real Dragon, real files; a few minutes on two cores."""
import os
import pty
import select
import signal
import subprocess
import shutil
import time

import pytest

from conftest import ROOT, leftover_processes, read_records, run_script, script_env
from plumbing import dragon_fixes     # conftest puts the repository on sys.path

JOB = "9_submit_multinode.sh"
SCRIPTS = {"parsl+futures": "5_parsl_fut_producer_consumer.py",
           "parsl+filesystem": "6_parsl_fs_producer_consumer.py",
           "dragon+ddict": "8_dragon_producer_consumer.py",
           "parsl+proxystore-file": "5_parsl_fut_producer_consumer.py"}
NAMES = {"parsl+futures": "Parsl + futures", "parsl+filesystem": "Parsl + file system",
         "dragon+ddict": "DragonHPC + DDict", "parsl+proxystore-file": "Parsl + ProxyStore (file)",
         "parsl+proxystore-redis": "Parsl + ProxyStore (redis)"}
if shutil.which("redis-server"):        # the job's default adds Redis where it is installed
    SCRIPTS["parsl+proxystore-redis"] = "5_parsl_fut_producer_consumer.py"
PRESENT = [t for t, script in SCRIPTS.items() if (ROOT / script).exists()]
SHORT = {"parsl+futures": "futures", "parsl+filesystem": "filesystem", "dragon+ddict": "ddict",
         "parsl+proxystore-file": "proxystore-file", "parsl+proxystore-redis": "proxystore-redis"}


def job_env(tmp_path, **settings):
    env = script_env(tmp_path)
    # a job started inside a batch job (or with a local cluster's exports) must not see it
    for name in ("PBS_NODEFILE", "PBS_JOBID", "PBS_ENVIRONMENT", "PBS_O_WORKDIR", "SLURM_JOB_ID",
                 "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES", "SLURM_SUBMIT_DIR", "NODES",
                 "PARSL_IFACE", "PC_DRAGON_ARGS", "PC_CLUSTER_NODES", "PC_CLUSTER_STATE",
                 "PC_CLUSTER_HOST", "PC_CLUSTER_PFS"):
        env.pop(name, None)
    env.update(RESULTS_DIR=str(tmp_path / "results"), NUM_SIMS="4", GRID_SIZES="16 24",
               COMPUTE_TIME="0")
    if len(PRESENT) < len(SCRIPTS):             # while a workflow script is still missing
        env["TRANSPORTS"] = " ".join(SHORT[t] for t in PRESENT)
    env.update(settings)
    return env


@pytest.mark.slow
def test_main_job_fills_the_table_for_every_transport(tmp_path):
    # one size, given as SIMSxN; the dry runs below check several sizes. Every transport but
    # Redis, which test_proxystore.py runs end to end (to keep CI under its time budget)
    transports = [t for t in PRESENT if t != "parsl+proxystore-redis"]
    env = job_env(tmp_path, NUM_SIMS="2", GRID_SIZES="4x16",
                  TRANSPORTS=" ".join(SHORT[t] for t in transports))
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = tmp_path / "results"

    # one record per transport and size, none from the warm-up, every one intact
    records = read_records(results / "records.jsonl")
    assert sorted(r["transport"] for r in records) == sorted(transports)
    assert all(r["num_sims"] == 4 and r["grid_size"] == 16 and r["integrity_ok"]
               for r in records)
    assert (results / "logs" / "warmup.jsonl").exists()

    # the table: one row per transport and size, data size as produced
    table = (results / "table.md").read_text()
    rows = [line for line in table.splitlines()[3:] if line.startswith("| ") and " / " in line
            and line.count("|") == 6]
    assert len(rows) == len(transports)
    for r in records:
        # the transports that keep their data in files say on which file system: this one's
        where = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp_path)],
                               capture_output=True, text=True).stdout.strip()
        in_files = r["transport"] in ("parsl+filesystem", "parsl+proxystore-file")
        assert (r["data_filesystem"] or {}).get("type") == (where if in_files else None)
        name = NAMES[r["transport"]] + (f" [{where}]" if in_files else "")
        assert sum(row.startswith(f"| {name} | 1 | 0.000164 |") for row in rows) == 1

    for name in ("io_vs_size.png", "time_breakdown.png"):
        assert (results / name).stat().st_size > 10_000
    assert f"Outputs in {results}/" in proc.stdout
    # the data directory is gone, nothing was left in the repository or the working directory
    assert sorted(os.listdir(results)) == ["io_vs_size.png", "job.txt", "logs", "records.jsonl",
                                           "table.md", "time_breakdown.png"]
    assert sorted(os.listdir(tmp_path)) == ["results"]
    assert leftover_processes(tmp_path) == []


@pytest.mark.slow
def test_a_failed_run_is_reported_and_fails_the_job(tmp_path):
    env = job_env(tmp_path, TRANSPORTS="filesystem", GRID_SIZES="16", WARMUP="0",
                  PC_INJECT_FAILURE="trainer:1")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1
    assert "run FAILED: filesystem at 4 x 16^2" in proc.stdout
    assert "trainer 1 failed" in (tmp_path / "results" / "logs" / "filesystem-4x16.log").read_text()
    assert "no run produced a record" in proc.stdout
    assert leftover_processes(tmp_path) == []


def ctrl_c_at_a_terminal(workdir, env, timeout) -> str:
    """Start the job on a terminal of its own, type ^C once its first run is simulating,
    and return what it printed, once it has exited with 130."""
    pid, fd = pty.fork()
    if pid == 0:                                 # the child: the job
        # as at a terminal: a test run started in the background of a script inherits SIGINT
        # ignored, and bash cannot trap a signal ignored on entry
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(workdir)
        os.execvpe("bash", ["bash", str(ROOT / JOB)], env)
    output, deadline, sent = b"", time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        if not sent and b"Parsl up" in output:  # the first run is simulating
            os.write(fd, b"\x03")
            sent = True
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:                      # the job has ended and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert sent, text
    assert os.waitstatus_to_exitcode(status) == 130, text
    return text


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_job_and_cleans_up(tmp_path):
    """^C typed at a terminal reaches every process of the job; the job must stop, not go on
    with the next run, and the workflow must remove its data directory."""
    # 1 s of emulated compute per step: the simulations run for seconds, and ^C lands in them
    env = job_env(tmp_path, TRANSPORTS="filesystem", WARMUP="0", COMPUTE_TIME="1")
    text = ctrl_c_at_a_terminal(tmp_path, env, timeout=240)
    assert "interrupted during filesystem at 4 x 16^2" in text
    assert "grid_size 24" not in text            # the next run never started
    assert os.listdir(tmp_path / "results" / "data") == []
    assert leftover_processes(tmp_path) == []


@pytest.mark.parametrize("settings, message", [
    ({"TRANSPORTS": "carrier-pigeon"}, "unknown transport 'carrier-pigeon'"),
    ({"GRID_SIZES": ","}, "GRID_SIZES has no size in it"),
    ({"GRID_SIZES": "16 big"}, "GRID_SIZES N or SIMSxN (positive integers), got 'big'"),
    ({"GRID_SIZES": "16 0x512"}, "GRID_SIZES N or SIMSxN (positive integers), got '0x512'"),
    ({"NUM_SIMS": "0"}, "NUM_SIMS takes a positive integer and GRID_SIZES N or SIMSxN"),
    ({"NODES": "1 x"}, "NODES takes positive integers, got 'x'"),
    ({"NODES": "0"}, "NODES takes positive integers, got '0'"),
    ({"NODES": "1 5"}, "the local cluster (cluster/local_cluster.sh) has 4 at most"),
])
def test_bad_settings_stop_before_anything_runs(tmp_path, settings, message):
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=job_env(tmp_path, **settings),
                      timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert os.listdir(tmp_path) == []


def test_under_pbs_it_sizes_the_job_for_the_allocation(tmp_path):
    """A dry run inside a (pretend) two-node batch job: the settings and commands it would use."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x1001\nx1002\nx1001\n")          # PBS lists a host once per chunk
    env = job_env(tmp_path, DRY_RUN="1", PBS_ENVIRONMENT="PBS_BATCH", PBS_O_WORKDIR=str(ROOT),
                  PBS_NODEFILE=str(nodefile), PBS_JOBID="4242.polaris-pbs-01",
                  DATA_DIR="/eagle/project/me")
    for name in ("NUM_SIMS", "GRID_SIZES", "COMPUTE_TIME", "RESULTS_DIR"):
        env.pop(name)
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(2 node(s)" in out
    assert "64 simulations (or SIMSx) x grid 256 512 1024, compute time 0.5 s/step" in out
    assert f"results dir  {ROOT}/results/4242" in out
    flags = {t: f"--proxystore {t.split('-')[1]} " for t in SCRIPTS if "proxystore" in t}
    for grid in (256, 512, 1024):
        for transport in PRESENT:
            assert (f"would run: python {SCRIPTS[transport]} {flags.get(transport, '')}"
                    f"--num_sims 64 --grid_size {grid} --compute_time 0.5 "
                    "--data_dir /eagle/project/me") in out
    assert not (ROOT / "results" / "4242").exists()


def test_ddict_broadcast_is_script_8_with_broadcast(tmp_path):
    env = job_env(tmp_path, DRY_RUN="1", TRANSPORTS="ddict ddict-broadcast", GRID_SIZES="16")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line.split(" --num_sims")[0] for line in proc.stdout.splitlines()
            if line.startswith("would run:")]
    assert runs == ["would run: python 8_dragon_producer_consumer.py",
                    "would run: python 8_dragon_producer_consumer.py --broadcast"], runs


@pytest.mark.parametrize("nodes", ["1 2", ""])
def test_under_pbs_nodes_picks_part_of_the_allocation(tmp_path, nodes):
    """NODES="1 2" in a (pretend) two-node batch job: every run on its first 1, then 2 nodes;
    unset, every run on all of them as before; more nodes than it has: one line, nothing run."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x1001\nx1002\n")
    env = job_env(tmp_path, DRY_RUN="1", PBS_ENVIRONMENT="PBS_BATCH", PBS_O_WORKDIR=str(ROOT),
                  PBS_NODEFILE=str(nodefile), PBS_JOBID="4243.polaris-pbs-01", NODES=nodes,
                  TRANSPORTS="filesystem ddict", GRID_SIZES="16")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if line.startswith("would run:")]
    if nodes:
        expected = [f"would run: python {script} --num_nodes {n} --num_sims 4 "
                    for n in (1, 2) for script in ("6_parsl_fs_producer_consumer.py",
                                                   "8_dragon_producer_consumer.py")]
    else:
        expected = ["would run: python 6_parsl_fs_producer_consumer.py --num_sims 4 ",
                    "would run: python 8_dragon_producer_consumer.py --num_sims 4 "]
    assert [run[:len(start)] for run, start in zip(runs, expected)] == expected, runs
    assert len(runs) == len(expected)
    if nodes:               # DRAGON_LAUNCH=dragon: what `python 8_...` would start, fix included
        proc = run_script(["bash", ROOT / JOB], cwd=tmp_path,
                          env=dict(env, DRAGON_LAUNCH="dragon"), timeout=60)
        [run] = [line for line in proc.stdout.splitlines() if "-N 2 8_dragon" in line]
        # 2 nodes under HSTA (no PC_DRAGON_ARGS): PC_DRAGON_FIXES's rule puts dragon_site
        # first where the nodes (as this one) have few cores, and leaves it out elsewhere
        few_cores = len(os.sched_getaffinity(0)) <= dragon_fixes.FEW_CORES
        assert run.startswith("would run: env PYTHONPATH=")
        assert run.startswith(f"would run: env PYTHONPATH={dragon_fixes.DRAGON_SITE}:{ROOT}"
                              if few_cores else f"would run: env PYTHONPATH={ROOT}"), run
        assert " dragon -N 2 8_dragon_producer_consumer.py --num_nodes 2 " in run
    too_many = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=dict(env, NODES="1 3"), timeout=60)
    assert too_many.returncode == 2
    assert too_many.stderr == "9_submit_multinode.sh: NODES asks for 3 nodes, but the pbs job has 2\n"
