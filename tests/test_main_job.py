"""9_submit_multinode.sh on this machine (no PBS): every transport at two tiny sizes, then the
table and the plots. Real Parsl, real Dragon, real files; a few minutes on two cores."""
import dataclasses
import os
import pty
import re
import select
import signal
import subprocess
import shutil
import threading
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
               COMPUTE_TIME="0", REPEATS="1")
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

    plots = ["io_vs_size.png", "sim_io_vs_size.png", "time_breakdown.png"]
    assert sorted(name for name in os.listdir(results) if name.endswith(".png")) == plots
    assert all((results / name).stat().st_size > 10_000 for name in plots)
    assert f"Outputs in {results}/" in proc.stdout
    # the data directory is gone, nothing was left in the repository or the working directory
    # (besides report.py's plots)
    assert sorted(name for name in os.listdir(results) if not name.endswith(".png")) == [
        "job.txt", "logs", "records.jsonl", "table.md"]
    assert sorted(os.listdir(tmp_path)) == ["results"]
    assert leftover_processes(tmp_path) == []


@pytest.mark.slow
def test_a_failed_run_is_reported_and_fails_the_job(tmp_path):
    mine = tmp_path / "mine"          # a DATA_DIR of the user's own: it stays, empty
    mine.mkdir()
    env = job_env(tmp_path, TRANSPORTS="filesystem", GRID_SIZES="16", WARMUP="0",
                  PC_INJECT_FAILURE="trainer:1", DATA_DIR=str(mine))
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1
    assert "run FAILED: filesystem at 4 x 16^2" in proc.stdout
    assert "trainer 1 failed" in (tmp_path / "results" / "logs" / "filesystem-4x16.log").read_text()
    assert "no run produced a record" in proc.stdout
    assert os.listdir(mine) == []
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
    # the run removed its data; the job, the directories it made for it (DATA_DIR unset)
    assert not (tmp_path / "results" / "data").exists()
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
    ({"REPEATS": "0"}, "REPEATS: must be at least 1, got 0"),
    ({"RUN_TIMEOUT": "soon"}, "RUN_TIMEOUT: 'soon' is not an integer"),
    ({"COMPUTE_TIME": "-1"}, "COMPUTE_TIME: must be a finite number >= 0, got -1"),
    ({"NUM_TRAINERS": "0"}, "NUM_TRAINERS: must be at least 1, got 0"),
    ({"KERNEL_SIZES": "3,4"}, "KERNEL_SIZES: kernel sizes must be odd, got 3,4"),
    ({"EPOCHS": "-1"}, "EPOCHS: must be at least 0, got -1"),
    ({"DRAGON_LAUNCH": "mpirun"}, "DRAGON_LAUNCH takes python or dragon, got 'mpirun'"),
])
def test_bad_settings_stop_before_anything_runs(tmp_path, settings, message):
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=job_env(tmp_path, **settings),
                      timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert os.listdir(tmp_path) == []


def pbs_env(tmp_path, hosts, **settings) -> dict:
    """A (pretend) PBS batch job on `hosts`: its node file, job id and working directory."""
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"{host}\n" for host in hosts))
    return job_env(tmp_path, DRY_RUN="1", PBS_ENVIRONMENT="PBS_BATCH", PBS_O_WORKDIR=str(ROOT),
                   PBS_NODEFILE=str(nodefile), PBS_JOBID="4242.polaris-pbs-01", **settings)


def test_under_pbs_it_sizes_the_job_for_the_allocation(tmp_path):
    """A dry run inside a (pretend) two-node batch job: its defaults (every run on 1 and on
    both nodes), the plan with its estimate, and the commands, each run in a data directory
    of its own named for the job and the run."""
    # PBS lists a host once per chunk
    env = pbs_env(tmp_path, ["x1001", "x1002", "x1001"], DATA_DIR="/eagle/project/me")
    for name in ("NUM_SIMS", "GRID_SIZES", "COMPUTE_TIME", "RESULTS_DIR", "REPEATS"):
        env.pop(name)
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(2 node(s)" in out
    assert "64 simulations (or SIMSx) x grid 256 512 1024, compute time 0.5 s/step" in out
    assert f"results dir  {ROOT}/results/4242" in out
    assert (f"plan         {3 * 2 * len(PRESENT)} runs: 3 size(s) x 2 node count(s) (1 2) x "
            f"{len(PRESENT)} transport(s) x 1 round(s), after 2 warm-up run(s)") in out
    assert "estimate     about " in out and "(an estimate" in out
    assert "walltime     not known (pbs did not say): not checked" in out      # no qstat here
    flags = {t: f"--proxystore {t.split('-')[1]} " for t in SCRIPTS if "proxystore" in t}
    for grid in (256, 512, 1024):
        for nodes in (1, 2):
            for transport in PRESENT:
                assert (f"would run: python {SCRIPTS[transport]} {flags.get(transport, '')}"
                        f"--num_nodes {nodes} --num_sims 64 --grid_size {grid} --compute_time 0.5 "
                        f"--data_dir /eagle/project/me/pc-4242-{SHORT[transport]}-64x{grid}-{nodes}n "
                        f"--results_file {ROOT}/results/4242/records.jsonl") in out
    assert not (ROOT / "results" / "4242").exists()


def test_ddict_broadcast_is_script_8_with_broadcast(tmp_path):
    env = job_env(tmp_path, DRY_RUN="1", TRANSPORTS="ddict ddict-broadcast", GRID_SIZES="16")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line.split(" --num_sims")[0] for line in proc.stdout.splitlines()
            if line.startswith("would run:")]
    assert runs == ["would run: python 8_dragon_producer_consumer.py",
                    "would run: python 8_dragon_producer_consumer.py --broadcast"], runs


@pytest.mark.parametrize("nodes", ["1 2", "", "2"])
def test_under_pbs_nodes_picks_part_of_the_allocation(tmp_path, nodes):
    """NODES="1 2" in a (pretend) two-node batch job: every run on its first 1, then 2 nodes;
    unset, the same (1 node and all of them, what the homework compares); "2": on both only;
    more nodes than it has: one line, nothing run."""
    env = pbs_env(tmp_path, ["x1001", "x1002"], NODES=nodes, TRANSPORTS="filesystem ddict",
                  GRID_SIZES="16")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if line.startswith("would run:")]
    expected = [f"would run: python {script} --num_nodes {n} --num_sims 4 "
                for n in (nodes or "1 2").split() for script in ("6_parsl_fs_producer_consumer.py",
                                                                 "8_dragon_producer_consumer.py")]
    assert [run[:len(start)] for run, start in zip(runs, expected)] == expected, runs
    assert len(runs) == len(expected)
    if nodes == "1 2":      # DRAGON_LAUNCH=dragon: what `python 8_...` would start, fix included
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


def test_on_one_node_the_runs_use_the_scripts_default(tmp_path):
    """A one-node allocation, NODES unset: no --num_nodes (the scripts take all, one)."""
    env = pbs_env(tmp_path, ["x1001"], TRANSPORTS="filesystem", GRID_SIZES="16")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [run] = [line for line in proc.stdout.splitlines() if line.startswith("would run:")]
    assert run.startswith("would run: python 6_parsl_fs_producer_consumer.py --num_sims 4 ")


def test_repeats_interleave_the_transports(tmp_path):
    """REPEATS=2: round 1 of every size, node count and transport, then round 2; each run
    with a log and a data directory of its own."""
    env = job_env(tmp_path, DRY_RUN="1", TRANSPORTS="filesystem ddict", GRID_SIZES="16 24",
                  REPEATS="2")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line.split("--data_dir ")[1].split()[0].rsplit("/", 1)[1]
            for line in proc.stdout.splitlines() if line.startswith("would run:")]
    job_id = proc.stdout.split()[1]
    assert runs == [f"pc-{job_id}-{transport}-4x{grid}-r{r}" for r in (1, 2)
                    for grid in (16, 24) for transport in ("filesystem", "ddict")]
    assert "repeats      2 (round r of every run before round r+1)" in proc.stdout


# `qstat -f` of a running job, in PBS Professional's format (the attributes the job reads:
# Resource_List.walltime, stime, Account_Name; wrapped lines indented further)
QSTAT_F = """Job Id: 4242.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov
    Job_Name = producer-consumer
    Job_Owner = student@polaris-login-02.hsn.cm.polaris.alcf.anl.gov
    resources_used.walltime = 00:05:10
    job_state = R
    queue = debug
    Account_Name = ALCFAITP
    exec_host = x3001c0s13b0n0/0*64+x3001c0s13b1n0/0*64
    Resource_List.filesystems = home:eagle
    Resource_List.ncpus = 128
    Resource_List.nodect = 2
    Resource_List.place = scatter
    Resource_List.select = 2
    Resource_List.walltime = {walltime}
    stime = {stime}
    Variable_List = PBS_O_HOME=/home/student,PBS_O_LANG=en_US.UTF-8,
        PBS_O_WORKDIR=/home/student/producer-consumer,
        PBS_O_QUEUE=debug,PBS_O_HOST=polaris-login-02.hsn.cm.polaris.alcf.anl.gov
    project = _pbs_project_default
"""


def qstat_text(walltime: str, started_ago_s: float) -> str:
    stime = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(time.time() - started_ago_s))
    return QSTAT_F.format(walltime=walltime, stime=stime)


def test_pbs_time_left_from_qstat():
    from plumbing import job_plan
    text = qstat_text("01:00:00", 600)
    attributes = job_plan.pbs_attributes(text)
    assert attributes["Account_Name"] == "ALCFAITP"
    assert "PBS_O_WORKDIR" not in str(attributes.keys())          # wrapped lines are no attributes
    assert abs(job_plan.pbs_time_left_s(attributes, time.time()) - 3000) < 5
    del attributes["stime"]                                       # then the time used so far
    assert job_plan.pbs_time_left_s(attributes, time.time()) == 3600 - 310
    assert job_plan.pbs_time_left_s({}, time.time()) is None


@pytest.mark.parametrize("text, seconds", [
    ("01:00:00", 3600), ("59:32", 3572), ("1-02:00:00", 93600), ("45", 45),
    ("UNLIMITED", None), ("NOT_SET", None), ("", None), ("1:2:3:4", None)])
def test_clock_times_as_pbs_and_slurm_write_them(text, seconds):
    from plumbing import job_plan
    assert job_plan.clock_s(text) == seconds


def fake_qstat(tmp_path, text: str) -> str:
    """A `qstat` that answers `qstat -f 4242.polaris-pbs-01` with `text` (what PBS would
    print), for the logic of the walltime check on a machine without PBS."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "qstat.txt").write_text(text)
    qstat = tmp_path / "bin" / "qstat"
    qstat.write_text(f'#!/bin/sh\n[ "$*" = "-f 4242.polaris-pbs-01" ] || exit 1\n'
                     f'cat {tmp_path / "qstat.txt"}\n')
    qstat.chmod(0o755)
    return f"{tmp_path / 'bin'}:{os.environ['PATH']}"


def test_a_plan_longer_than_the_walltime_left_is_refused(tmp_path):
    """Under PBS the job reads its walltime and start from qstat: a plan whose estimate does
    not fit the time left stops in one line, after the plan; one that fits goes on."""
    env = pbs_env(tmp_path, ["x1001", "x1002"], TRANSPORTS="filesystem futures",
                  GRID_SIZES="16 512", NUM_SIMS="64", REPEATS="2")
    env["PATH"] = fake_qstat(tmp_path, qstat_text("00:10:00", 300))
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("9_submit_multinode.sh: the plan takes about ")
    assert line.endswith("min (an estimate), but the job has 5 min left: run fewer sizes, node "
                         "counts, transports or REPEATS, or ask for a longer walltime")
    assert "estimate     about " in proc.stdout and "would run" not in proc.stdout
    (tmp_path / "qstat.txt").write_text(qstat_text("01:00:00", 60))
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=dict(env, GRID_SIZES="16"),
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "walltime     59 min left (qstat -f), enough for the estimate" in proc.stdout


def test_slurm_time_left_from_its_end_time(monkeypatch):
    """Slurm 23.02 and later tell the job its end (SLURM_JOB_END_TIME); older ones answer
    squeue %L (tests/test_slurm.py runs that with a real Slurm)."""
    from plumbing import job_plan
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 600))
    left, source = job_plan.time_left_s(job_plan.Where("slurm", 2, "7", ""))
    assert 590 < left <= 600 and source == "SLURM_JOB_END_TIME"


def default_batch_plan_s(transports: str) -> float:
    """The estimate of the default plan of `qsub 9_submit_multinode.sh` on two Polaris
    nodes (4 GPUs, 64 hardware threads each), warm-ups and report included."""
    from plumbing import job_plan
    where = job_plan.Where("pbs", 2, "4242", "")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("NUM_SIMS", "GRID_SIZES", "COMPUTE_TIME", "REPEATS", "NODES", "EPOCHS",
                     "NUM_TRAINERS", "KERNEL_SIZES", "RUN_TIMEOUT", "EXTRA_ARGS"):
            patch.delenv(name, raising=False)
        patch.setenv("TRANSPORTS", transports)
        for name, value in (("WARMUP", "1"), ("DRY_RUN", "1"), ("DRAGON_LAUNCH", "python")):
            patch.setenv(name, value)
        patch.chdir(ROOT)
        settings = job_plan.read_settings(where, str(ROOT))
    machine = job_plan.Machine(nodes=2, cores=64, gpus=4, trainers=None)
    runs = job_plan.plan(settings) + job_plan.warmups(settings)
    assert len(runs) == 3 * 2 * len(transports.split()) + 2
    return sum(job_plan.estimate_s(run, machine, 0.5, settings.epochs)
               for run in runs) + job_plan.REPORT_S


def test_the_default_batch_plan_fits_the_default_walltime():
    """qsub 9_submit_multinode.sh as it is, on two Polaris nodes: the estimate of its
    default plan (with Redis's ProxyStore where redis-server is installed, and without)
    fits the hour its #PBS line asks for, and docs/polaris.md says what it is."""
    script = (ROOT / JOB).read_text()
    assert "#PBS -l select=2\n" in script and "#PBS -l walltime=01:00:00\n" in script
    four = default_batch_plan_s("filesystem ddict futures proxystore-file")
    five = default_batch_plan_s("filesystem ddict futures proxystore-file proxystore-redis")
    assert five < 60 * 60
    text = " ".join((ROOT / "docs" / "polaris.md").read_text().split())
    [(low, high)] = re.findall(r"The default plan on 2 nodes is estimated at (\d+) to (\d+) "
                               r"minutes", text)
    assert int(low) <= round(four / 60) and round(five / 60) <= int(high), (four, five)


def test_on_polaris_the_data_goes_to_eagle_for_the_jobs_project(tmp_path, monkeypatch):
    """DATA_DIR unset in a PBS job where /eagle is: /eagle/<project>/$USER/producer-consumer
    for the job's project (-A: PBS_ACCOUNT); a project without a directory there is refused
    in one line; the home file system is never the silent default."""
    from plumbing import job_plan
    eagle = tmp_path / "eagle"
    (eagle / "ALCFAITP").mkdir(parents=True)
    monkeypatch.setattr(job_plan, "EAGLE", str(eagle))
    monkeypatch.setenv("USER", "student")
    monkeypatch.setenv("PBS_ACCOUNT", "ALCFAITP")
    monkeypatch.setenv("PATH", "/nonexistent")                   # no qstat
    where = job_plan.Where("pbs", 2, "4242", "")
    settings = job_plan.Settings(["filesystem"], 4, ["16"], [None], 1, "0", 60,
                                 str(tmp_path / "results"), "", False, True, "python", [], 1)
    data_dir, note = job_plan.data_dir_and_note(settings, where)
    assert data_dir == f"{eagle}/ALCFAITP/student/producer-consumer"
    assert "from the job's project ALCFAITP (-A)" in note
    monkeypatch.setenv("PBS_ACCOUNT", "NoSuchProject")
    with pytest.raises(job_plan.Refused, match=r"DATA_DIR is not set and the job's project "
                       r"\(NoSuchProject\) has no directory in .*: give one, e\.g\. qsub -v "
                       rf"DATA_DIR={eagle}/<project>/student"):
        job_plan.data_dir_and_note(settings, where)
    # given, it is used as it is; elsewhere (Slurm) the results directory, said loudly
    assert job_plan.data_dir_and_note(dataclasses.replace(settings, data_dir="/x"), where) == ("/x", "")
    data_dir, note = job_plan.data_dir_and_note(settings, job_plan.Where("slurm", 2, "7", ""))
    assert data_dir == str(tmp_path / "results" / "data")
    assert note.startswith("DATA_DIR is not set: the files go under the results directory, on ")
    assert "not the parallel one" in note


def test_the_script_reads_as_a_batch_script():
    """9_submit_multinode.sh holds the directives, the settings with their defaults and the
    runs, in at most 120 lines; the defaults it shows in [batch | here] are the job's."""
    from plumbing import job_plan
    script = (ROOT / JOB).read_text()
    assert len(script.splitlines()) <= 120
    for name, (batch, here) in job_plan.DEFAULTS.items():
        [line] = [line for line in script.splitlines() if line.startswith(f"export {name}=")]
        block = script[script.index(line):].split("\nexport ")[0]
        assert f"[{batch} | {here}]" in block, (name, block)
    assert (f"[{job_plan.SIMS_PER_BATCH_NODE} per node | {job_plan.SIMS_HERE}]"
            in script)


@pytest.mark.slow
def test_repeats_make_a_record_each_in_rounds(tmp_path):
    """REPEATS=2 for real: round 1 of both transports, then round 2, every run a record and
    a log of its own."""
    env = job_env(tmp_path, TRANSPORTS="filesystem futures", GRID_SIZES="16", WARMUP="0",
                  REPEATS="2")
    proc = run_script(["bash", ROOT / JOB], cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = tmp_path / "results"
    records = read_records(results / "records.jsonl")
    assert [r["transport"] for r in records] == ["parsl+filesystem", "parsl+futures"] * 2
    assert all(r["integrity_ok"] for r in records)
    assert sorted(os.listdir(results / "logs")) == [f"{t}-4x16-r{r}.log" for t in
                                                    ("filesystem", "futures") for r in (1, 2)]
    assert leftover_processes(tmp_path) == []


@pytest.mark.slow
def test_after_a_time_out_only_what_the_job_made_goes(tmp_path):
    """A run that times out is stopped and its data directory removed: the one the job made
    for it, by name. Another job's directory that appears in the same DATA_DIR meanwhile
    stays, and so does DATA_DIR itself, which the user made."""
    data = tmp_path / "shared"
    data.mkdir()
    env = job_env(tmp_path, TRANSPORTS="filesystem", GRID_SIZES="16", WARMUP="0",
                  COMPUTE_TIME="20", RUN_TIMEOUT="15", DATA_DIR=str(data))
    other = data / "pc-fs-20261205-101010-another-job"

    def another_job_writes():
        other.mkdir()
        (other / "sim_0.npy").write_bytes(b"another job's live data")

    job = subprocess.Popen(["bash", str(ROOT / JOB)], cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = []
    for line in job.stdout:
        output.append(line)
        if "] python 6_parsl_fs_producer_consumer.py" in line:      # the run is starting
            threading.Timer(3, another_job_writes).start()
    job.wait(timeout=300)
    text = "".join(output)
    assert job.returncode == 1, text
    assert "run FAILED: filesystem at 4 x 16^2 took over RUN_TIMEOUT=15 s" in text
    [own] = [line.split()[1].rstrip(",") for line in output if line.startswith("removing ")]
    assert own.startswith(f"{data}/pc-") and own.endswith("-filesystem-4x16")
    assert os.listdir(data) == [other.name]
    assert (other / "sim_0.npy").read_bytes() == b"another job's live data"
    assert leftover_processes(tmp_path) == []
