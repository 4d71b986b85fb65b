"""The main job, 9_submit_multinode.sh, which holds what a student changes (the batch
directives and the settings) and runs `python -m plumbing.main_job` with the settings in its
environment. Here: its plan said (plumbing/job_plan.py decides it), the local cluster brought
up and taken down, the warm-up, every run in a process group of its own under a time-out with
its output on the screen and in its log, Ctrl-C and SIGTERM, removing what the job made (and
nothing else), and the report at the end."""
from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from plumbing.job_plan import (PROG, Refused, Run, Settings, Where, check_shared,
                               check_walltime, command, command_output, data_dir_and_note,
                               describe_plan, fail_unless, plan, read_settings, warmups,
                               where_it_runs)
from plumbing.lifecycle import remove_tree


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the job stops (after the run in progress has cleaned up)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


KILL_AFTER_S = 60       # a run that does not end within this after its SIGINT is killed
LINGER_S = 10           # how long the processes a run started may outlive it (its engine's
                        # servers ending, or one left behind, holding the output open)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still there (a run's own group: its pid)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def now() -> str:
    return time.strftime("%H:%M:%S")


class Job:
    """The job's runs in turn, each in a process group of its own, under a time-out, its
    output on the screen and in its log; what the job made goes on every way out."""

    def __init__(self, settings: Settings, where: Where, data_dir: str):
        self.settings, self.where, self.data_dir = settings, where, data_dir
        self.child: subprocess.Popen | None = None     # what a signal is passed on to
        self.interrupted = 0
        self.closing = False
        self.made: list[str] = []      # directories made (outermost first) and not yet removed
        self.cluster_up = False

    def on_signal(self, signum: int, frame) -> None:
        """Ctrl-C at a terminal reaches the job alone (each run has a process group of its
        own): the job hands the run ONE SIGINT, so that its clean-up runs once and is not
        cut short by a second signal (SIGINT, not SIGTERM: `dragon` tears its runtime down
        on SIGTERM before the script can clean up). PBS and Slurm send SIGTERM to every
        process of a job themselves: there the job passes nothing on. Between runs the job
        stops at once, cleaning up."""
        self.interrupted = self.interrupted or signum
        if self.child is not None:
            if not (signum == signal.SIGTERM and self.where.batch):
                self.child.send_signal(signal.SIGINT)
        elif not self.closing:
            raise Interrupted(signum)

    def execute(self, argv: list[str], log_path: str, echo: bool) -> int:
        """Run argv, its output to the screen (where `echo`) and to the end of log_path;
        its exit status, or 124 where RUN_TIMEOUT passed first (137 where it was killed
        too): the run gets SIGINT at the time-out and SIGKILL KILL_AFTER_S later."""
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, process_group=0)
            self.child = process
            try:
                timed_out, killed = self._follow(process, log, echo)
            finally:
                self.child = None
                process.stdout.close()
        if timed_out:
            return 137 if killed else 124
        return process.returncode if process.returncode >= 0 else 128 - process.returncode

    def _follow(self, process: subprocess.Popen, log, echo: bool) -> tuple[bool, bool]:
        """Copy the run's output until it and what it started have ended (LINGER_S at most
        after it); signal it at its time-out."""
        fd, deadline = process.stdout.fileno(), time.monotonic() + self.settings.run_timeout
        kill_at = ended_at = None
        killed = eof = False
        while True:
            moment = time.monotonic()
            if process.poll() is None:
                if kill_at is None and moment > deadline:
                    process.send_signal(signal.SIGINT)
                    kill_at = moment + KILL_AFTER_S
                elif kill_at is not None and moment > kill_at and not killed:
                    process.kill()
                    killed = True
            else:
                ended_at = ended_at or moment
                if (eof and not group_alive(process.pid)) or moment > ended_at + LINGER_S:
                    break
            if eof:
                time.sleep(0.1)
            elif select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 1 << 16)
                eof = not chunk
                log.write(chunk)
                log.flush()
                if echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
        process.wait()
        return kill_at is not None, killed

    def run(self, run: Run, results_file: str, log_path: str, echo: bool = True) -> int:
        """One run in a data directory of its own, made here and named for the job and the
        run; after a time-out (the run's head could not clean up) it is removed with what
        is in it, otherwise only where it is empty (--keep_data leaves it)."""
        run_dir = os.path.join(self.data_dir, f"pc-{self.where.job_id}-{run.name}")
        argv = command(run, self.settings, run_dir, results_file, bool(self.where.cluster))
        line = f"[{now()}] {' '.join(argv)}\n"
        if echo:
            print("\n" + line, end="", flush=True)
        with open(log_path, "w") as log:
            log.write(line)
        try:
            os.mkdir(run_dir)
        except OSError as error:
            print(f"cannot make the run's data directory: {error}", flush=True)
            return 1
        self.made.append(run_dir)       # until the run has ended: close() sees it too
        status = self.execute(argv, log_path, echo)
        self.made.remove(run_dir)
        if status in (124, 137):
            print(f"removing {run_dir}, left by the run that timed out", flush=True)
            remove_tree(run_dir)
        else:
            try:
                os.rmdir(run_dir)
            except OSError:
                pass
        return status

    def warm_up(self, runs: list[Run]) -> None:
        logs = os.path.join(self.settings.results_dir, "logs")
        for run in runs:
            print(f"[{now()}] warm-up of {run.engine} (a tiny {run.transport} run, not reported)",
                  flush=True)
            log = os.path.join(logs, f"warmup-{run.engine}.log")
            if self.run(run, os.path.join(logs, "warmup.jsonl"), log, echo=False):
                print(f"warning: the {run.engine} warm-up failed, see {log}", flush=True)
            if self.interrupted:
                print(f"interrupted during the {run.engine} warm-up", file=sys.stderr)
                raise Interrupted(signal.SIGINT)

    def measure(self, runs: list[Run], records: str) -> list[str]:
        """The runs of the plan; the labels of those that failed."""
        failed = []
        for run in runs:
            log = os.path.join(self.settings.results_dir, "logs", f"{run.name}.log")
            status = self.run(run, records, log)
            if self.interrupted:
                # Ctrl-C or SIGTERM (qdel, scancel, walltime): the run has cleaned up; stop
                print(f"interrupted during {run.label}; records so far in {records}",
                      file=sys.stderr)
                raise Interrupted(signal.SIGINT)
            if status in (124, 137):
                failed.append(run.label)
                print(f"run FAILED: {run.label} took over RUN_TIMEOUT="
                      f"{self.settings.run_timeout:g} s (see {log})", flush=True)
            elif status:
                failed.append(run.label)
                print(f"run FAILED: {run.label} (see {log})", flush=True)
        return failed

    def bring_up_cluster(self) -> None:
        """The local cluster for NODES above 1 without a batch job; its exports (the host
        list as PBS_NODEFILE, PC_DRAGON_ARGS, PC_CLUSTER_PFS...) go to every run."""
        nodes = self.where.nodes
        print(f"[{now()}] bringing up the local cluster: bash cluster/local_cluster.sh up {nodes}",
              flush=True)
        self.cluster_up = True          # taken down on the way out, even half made
        up = subprocess.Popen(["bash", "cluster/local_cluster.sh", "up", str(nodes)],
                              stdout=subprocess.PIPE, text=True, process_group=0)
        self.child = up
        try:
            exports = up.communicate()[0]
        finally:
            self.child = None
        if self.interrupted:
            raise Interrupted(self.interrupted)
        fail_unless(up.returncode == 0, "the local cluster did not come up")
        for line in exports.splitlines():
            words = shlex.split(line)           # export NAME='value'
            if len(words) == 2 and words[0] == "export":
                name, _, value = words[1].partition("=")
                os.environ[name] = value
        if self.data_dir == "$PC_CLUSTER_PFS":
            self.data_dir = os.environ["PC_CLUSTER_PFS"]

    def make_data_dir(self) -> None:
        """DATA_DIR, and the directories above it that are missing: this job made those,
        and removes them at the end where they are empty; the others are not its own."""
        missing, path = [], self.data_dir
        while not os.path.isdir(path):
            missing.insert(0, path)
            path = os.path.dirname(path)
        for path in missing:
            try:
                os.mkdir(path)
            except OSError as error:
                raise Refused(f"DATA_DIR: cannot make {path}: {error.strerror}") from None
            self.made.append(path)

    def close(self) -> None:
        """On every way out: the empty directories this job made, and its local cluster."""
        self.closing = True
        for path in reversed(self.made):
            try:
                os.rmdir(path)
            except OSError:
                pass
        if self.cluster_up:
            down = subprocess.run(["bash", "cluster/local_cluster.sh", "down"],
                                  capture_output=True, text=True)
            if down.returncode:
                print("warning: 'bash cluster/local_cluster.sh down' failed; run it by hand",
                      file=sys.stderr)


# --------------------------------------------------------------------------- what it says
def load_average() -> str:
    """The machine may be shared: its load, next to the numbers, says how far to trust them."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def describe(settings: Settings, where: Where, data_dir: str, note: str) -> list[str]:
    """The job's settings, as job.txt keeps them."""
    lines = [f"job          {where.job_id} on {socket.gethostname()} ({where.nodes} node(s), "
             f"{os.cpu_count()} cores here), {time.strftime('%F %T %z')}"]
    counts = " ".join(str(n) for n in settings.node_counts if n)
    if where.cluster:
        lines.append(f"nodes        {counts or where.nodes}: the local cluster's "
                     "(cluster/local_cluster.sh), which share this machine")
    elif counts:
        lines.append(f"nodes        {counts}, the first of the allocation")
    lines += [
        f"transports   {' '.join(settings.transports)}",
        f"runs         {settings.num_sims} simulations (or SIMSx) x grid "
        f"{' '.join(settings.grid_sizes)}, compute time {settings.compute_time} s/step",
        f"repeats      {settings.repeats} (round r of every run before round r+1)",
        f"trainers     {os.environ.get('NUM_TRAINERS') or 'default'} (kernel sizes "
        f"{os.environ.get('KERNEL_SIZES') or 'default'}, epochs {settings.epochs})",
        f"data dir     {data_dir}" + (f"\n             ({note})" if note else ""),
        f"results dir  {settings.results_dir}",
        f"python       {shutil.which('python') or sys.executable}",
        # -dirty: the working tree had changes that commit does not hold
        f"commit       {command_output(['git', 'describe', '--always', '--dirty', '--abbrev=7']).strip() or 'unknown'}",
        f"load average {load_average()} (1, 5, 15 min) at the start"]
    return lines


def report(settings: Settings, records: str) -> bool:
    """The homework table and the plots, from the records of this job's runs."""
    print()
    if not os.path.exists(records) or not os.path.getsize(records):
        print("no run produced a record")
        return True
    return subprocess.run(["python", "report.py", records, "--markdown",
                           os.path.join(settings.results_dir, "table.md"),
                           "--plots", settings.results_dir]).returncode == 0


def outputs(settings: Settings, records: str) -> None:
    print(f"Outputs in {settings.results_dir}/:")
    if os.path.exists(records) and os.path.getsize(records):
        plots = sorted(name for name in os.listdir(settings.results_dir) if name.endswith(".png"))
        print("  records.jsonl  one JSON record per run (the raw numbers)\n"
              "  table.md       the homework table, and IO max / GB/s / host / date\n"
              f"  {' '.join(plots)}   the plots")
    print("  logs/          each run's output; job.txt: this job's settings")


def start(settings: Settings, where: Where) -> tuple[Job, list[Run], list[Run], float]:
    """Everything decided and said before anything starts: the plan, its estimate against
    the walltime, and the job (a dry run prints the commands and makes nothing)."""
    data_dir, note = data_dir_and_note(settings, where)
    check_shared(where, settings.results_dir, data_dir)
    runs, warm = plan(settings), warmups(settings)
    lines = describe(settings, where, data_dir, note)
    plan_lines, seconds = describe_plan(settings, where, runs, warm)
    print("\n".join(lines + plan_lines), flush=True)
    lines += plan_lines + [check_walltime(where, seconds)]
    print(lines[-1], flush=True)
    if not settings.dry_run:
        os.makedirs(os.path.join(settings.results_dir, "logs"), exist_ok=True)
        with open(os.path.join(settings.results_dir, "job.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return Job(settings, where, data_dir), runs, warm, seconds


def dry_run(job: Job, runs: list[Run]) -> None:
    if job.where.cluster == "own":
        print(f"would bring up the local cluster: bash cluster/local_cluster.sh up {job.where.nodes}")
    records = os.path.join(job.settings.results_dir, "records.jsonl")
    for run in runs:
        data_dir = os.path.join(job.data_dir, f"pc-{job.where.job_id}-{run.name}")
        argv = command(run, job.settings, data_dir, records, bool(job.where.cluster))
        print(f"\nwould run: {' '.join(argv)}")


def main() -> int:
    """The job; its exit status: 0 when every run succeeded, 1 when one failed, 2 for a
    setting or a plan refused, 128 + the signal for Ctrl-C (130) or SIGTERM."""
    began, job = time.monotonic(), None
    started_in = os.environ.get("STARTED_IN") or os.getcwd()
    try:
        where = where_it_runs()
        settings = read_settings(where, started_in)
        job, runs, warm, estimate = start(settings, where)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, job.on_signal)
        if settings.dry_run:
            dry_run(job, runs)
            return 0
        if where.cluster == "own":
            job.bring_up_cluster()
        job.make_data_dir()
        records = os.path.join(settings.results_dir, "records.jsonl")
        job.warm_up(warm)
        failed = job.measure(runs, records)
        reported = report(settings, records)
        job.close()
        took = (f"\nMain job finished in {time.monotonic() - began:.0f} s (the estimate was "
                f"{estimate:.0f} s); load average {load_average()} (1, 5, 15 min) at the end")
        print(took)
        with open(os.path.join(settings.results_dir, "job.txt"), "a") as f:
            f.write(took.lstrip() + "\n")
        outputs(settings, records)
        if failed:
            print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed or not reported else 0
    except Refused as refusal:
        print(f"{PROG}: {refusal}", file=sys.stderr)
        return 2
    except Interrupted as interruption:
        return 128 + interruption.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        if job is not None and not job.closing:
            job.close()


if __name__ == "__main__":
    sys.exit(main())
