"""How Parsl starts one manager per node of a multi-node run: mpiexec (Cray PALS on
Polaris, MPICH's Hydra or Open MPI elsewhere) in a PBS job, srun in a Slurm job. Parsl's
own launchers, adjusted where they would start the managers on the wrong hosts or leave
files behind; parsl_setup.make_config picks one.

Environment knob: PARSL_MPI_FLAVOUR  pals | hydra | openmpi: skip `mpiexec --version`.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

from parsl.launchers import MpiExecLauncher, SrunLauncher

from plumbing import lifecycle


def mpi_flavour(mpiexec: str = "mpiexec") -> str:
    """Which mpiexec is first on PATH: 'pals' (Cray PALS), 'hydra' (MPICH, Intel) or 'openmpi'."""
    forced = os.environ.get("PARSL_MPI_FLAVOUR", "").strip().lower()
    if forced:
        if forced not in ("pals", "hydra", "openmpi"):
            raise ValueError(f"PARSL_MPI_FLAVOUR={forced!r}: use pals, hydra or openmpi")
        return forced
    path = shutil.which(mpiexec)
    if path is None:
        raise FileNotFoundError("a multi-node run needs `mpiexec` on PATH (on Polaris the Cray "
                                "PALS one, /opt/cray/pals/.../bin; elsewhere MPICH or Open MPI)")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).lower()
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    real_path = os.path.realpath(path).lower()
    if "/pals/" in real_path or "pals" in text:
        return "pals"
    if "open mpi" in text or "openrte" in text or "open-mpi" in text:
        return "openmpi"
    if "hydra" in text or "mpich" in text or "intel(r) mpi" in text:
        return "hydra"
    raise RuntimeError(f"cannot tell which MPI {path} belongs to from `mpiexec --version`; "
                       "set PARSL_MPI_FLAVOUR=pals|hydra|openmpi")


class _MpiExecLauncher(MpiExecLauncher):
    """Parsl's MpiExecLauncher, started on exactly the run's hosts, in the run's order, with
    its host list kept next to the submit scripts."""

    def __init__(self, hosts: list[str], **options):
        super().__init__(**options)
        self.hosts = list(hosts)

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int,
                 script_dir: str = "") -> str:
        script = super().__call__(command, tasks_per_node, nodes_per_block, script_dir)
        # Parsl writes the deduplicated $PBS_NODEFILE into the current directory, which
        # litters wherever the user ran the script; the run directory is the place for it
        script = script.replace('HOSTFILE="$JOBNAME.nodes"',
                                'HOSTFILE="${SCRIPT_DIR:-.}/$JOBNAME.nodes"')
        # and it takes `sort -u $PBS_NODEFILE`: with --num_nodes N, mpiexec -n N would start
        # the managers on the first N hosts in sorted order, not on the N the run uses
        hosts = " ".join(shlex.quote(host) for host in self.hosts)
        written = f"printf '%s\\n' {hosts} > $HOSTFILE"
        lines, out, skip = script.splitlines(), [], 0
        for line in lines:
            if skip:
                skip -= 1
                continue
            if line.startswith('if [ -z "$PBS_NODEFILE" ]; then'):
                out.append(written)
                skip = 4                    # the rest of Parsl's if/else/fi
                continue
            out.append(line)
        if written not in out:
            raise RuntimeError("parsl_launchers: Parsl's MpiExecLauncher script changed; "
                               "cannot give it the run's host list")
        return "\n".join(_survive_lost_output(out)) + "\n"


# mpiexec's output goes to files next to the submit scripts, in the run's directory. Where
# that is on a network file system whose server goes away, a write fails, mpiexec exits, and
# its proxies SIGKILL every manager with their multiprocessing helpers, whose semaphores then
# stay in each node's /dev/shm. So it writes into pipes that never fail: what can no longer be
# written is read and dropped, and the readers outlive the SIGTERM with which Parsl stops the
# block (they end when mpiexec does), and `|| true`: the script runs under `set -e`.
DRAIN = ["drain() { trap '' TERM INT; cat || true; cat >/dev/null; }", "set -o pipefail"]


def _survive_lost_output(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.startswith("mpiexec "):
            out += DRAIN + [f"{line} 2> >(drain >&2) | drain"]
        else:
            out.append(line)
    if len(out) != len(lines) + len(DRAIN):
        raise RuntimeError("parsl_launchers: Parsl's MpiExecLauncher script changed; "
                           "cannot find its mpiexec line")
    return out


def mpi_launcher(flavour: str, hosts: list[str]) -> MpiExecLauncher:
    """One manager per node of `hosts`. Parsl writes `mpiexec <bind_cmd> none <overrides>
    -n <nodes> --hostfile <hosts> sh cmd.sh`; the overrides put one rank per node and leave
    the cores to the manager, which places its own workers."""
    if flavour == "pals":
        # ALCF's Polaris recipe: one rank per node, spanning every hardware thread
        return _MpiExecLauncher(hosts, bind_cmd="--cpu-bind",
                                overrides=f"--depth={os.cpu_count() or 1} --ppn 1")
    if flavour == "hydra":
        return _MpiExecLauncher(hosts, bind_cmd="-bind-to", overrides="-ppn 1")
    if flavour == "openmpi":
        # --map-by node: ranks round-robin over the hosts, so -n <nodes> gives one per node.
        # Open MPI passes no environment unless told (-x), and refuses root without the flag.
        carry = ["PATH", "PYTHONPATH"] + [name for name in ("VIRTUAL_ENV", "LD_LIBRARY_PATH")
                                          if name in os.environ]
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return _MpiExecLauncher(hosts, bind_cmd="--bind-to", overrides=" ".join(
            ["--map-by", "node", "--oversubscribe"] + [f"-x {name}" for name in carry] + root))
    raise ValueError(f"unknown MPI flavour {flavour!r}")


class _SrunLauncher(SrunLauncher):
    """Parsl's SrunLauncher, with each block's manager script named after the block, and
    a stop that lets the managers clean up."""

    # Parsl stops a block with SIGTERM to its script's process group. srun answers SIGTERM
    # by killing its step at once (SIGKILL): the managers' temporary folders and
    # multiprocessing semaphores (/dev/shm/sem.mp-*) stayed on every node. So srun gets a
    # process group of its own, and the script passes the stop on as a SIGTERM to the
    # step's processes (scancel --signal), after which srun returns by itself.
    STOP = """set +e
stop_step() {
    local step
    step=$(squeue -h -s -j "$SLURM_JOB_ID" -o "%i %j" | awk -v name="$JOBNAME" '$2 == name {print $1}')
    [[ -n $step ]] && scancel --signal=TERM "$step"
}
set -m
SRUN &
srun_pid=$!
trap stop_step TERM INT
while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; done
"""

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int,
                 script_dir: str = "") -> str:
        script = super().__call__(command, tasks_per_node, nodes_per_block, script_dir)
        # Parsl names it after the Slurm job (cmd_$SLURM_JOB_NAME.sh), the same name for both
        # executors, whose blocks start at the same moment: one could run the other's
        # command. $JOBNAME (set by LocalProvider) is the block's own name.
        script = script.replace("cmd_$SLURM_JOB_NAME.sh", "cmd_$JOBNAME.sh")
        lines = script.splitlines()
        [at] = [i for i, line in enumerate(lines) if line.startswith("srun ")]
        # the step named after the block, so that stop_step finds it
        srun = lines[at].replace("srun ", 'srun --job-name="$JOBNAME" ', 1)
        lines[at:at + 1] = self.STOP.replace("SRUN", srun).splitlines()
        return "\n".join(lines) + "\n"


def srun_launcher(hosts: list[str], gpus: int = 0) -> SrunLauncher:
    """One manager per node of `hosts` (a part of the allocation), started by srun.

    --overlap: the two executors' steps run at once, on the same nodes, beside the batch
    step; without it the second waits for the first to end. --cpus-per-task: all the
    node's CPUs, which a task-binding site (task/affinity, task/cgroup) would otherwise
    confine the manager and all its workers to one of.
    """
    overrides = [f"--nodes={len(hosts)}", "--ntasks-per-node=1", f"--nodelist={','.join(hosts)}",
                 "--overlap", "--cpus-per-task=${SLURM_CPUS_ON_NODE:-1}"]
    if gpus:
        overrides.append(f"--gpus-per-node={gpus}")
    return _SrunLauncher(overrides=" ".join(overrides))


def wait_for_blocks(config, timeout_s: float = 60.0) -> None:
    """Return once every block's launch script (and so its srun) has ended, or after timeout_s.

    dfk.cleanup() only signals the blocks. In a Slurm job that is not enough: when the
    batch script ends, Slurm kills the job's steps at once, and managers that were still
    stopping left their temporary folders on every node. srun returns only when every
    manager has exited, and the launch script with it.
    """
    pids = [job["remote_pid"] for executor in config.executors
            for job in getattr(executor.provider, "resources", {}).values() if "remote_pid" in job]
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            # ended (a zombie: not yet reaped), or no /proc: nothing to wait for
            if lifecycle.process_state(pid) in (None, "Z"):
                break
            time.sleep(0.1)
