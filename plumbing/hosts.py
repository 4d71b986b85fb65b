"""Where a run is: the hosts of the allocation (Slurm, PBS, or this machine alone), their
GPUs and their memory. Every engine and every check asks these functions, so that they
all count the same nodes and GPUs."""
from __future__ import annotations

import os
import shutil
import socket


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, or 0 where there is none (then no check is made)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pbs_hosts() -> list[str]:
    """The unique hosts of the PBS allocation, in order; [] outside a PBS job."""
    nodefile = os.environ.get("PBS_NODEFILE")
    if not nodefile or not os.path.exists(nodefile):
        return []
    with open(nodefile) as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))


def in_slurm_job() -> bool:
    """True inside a Slurm allocation (sbatch, salloc, or srun outside either)."""
    return bool(os.environ.get("SLURM_JOB_ID")
                and (os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")))


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list ("nid[001-003,007],login1") as host names, in order.

    What `scontrol show hostnames` does, for when scontrol cannot be run.
    """
    names, depth, start = [], 0, 0
    for i, char in enumerate(hostlist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names += _expand_host(hostlist[start:i].strip())
            start = i + 1
    return [name for name in names if name]


def _expand_host(pattern: str) -> list[str]:
    """One entry of a host list: its first [ranges] expanded, the rest recursively."""
    import re
    match = re.match(r"([^\[]*)\[([^\]]*)\](.*)$", pattern)
    if not match:
        return [pattern]
    prefix, ranges, rest = match.groups()
    names = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)                    # nid[001-003]: the numbers keep their zeros
        for number in range(int(low), int(high or low) + 1):
            names += [f"{prefix}{number:0{width}d}{tail}" for tail in _expand_host(rest)]
    return names


def slurm_hosts() -> list[str]:
    """The hosts of the Slurm allocation, in order; [] outside a Slurm job."""
    if not in_slurm_job():
        return []
    import subprocess
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ["SLURM_NODELIST"]
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", nodelist],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0 and out.stdout.split():
                return list(dict.fromkeys(out.stdout.split()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return list(dict.fromkeys(expand_hostlist(nodelist)))


def node_hosts() -> list[str]:
    """Hosts this run may use: the Slurm or PBS allocation's, or just this machine.

    Slurm first: a job submitted from the local cluster (cluster/local_cluster.sh) also
    inherits the cluster's PBS_NODEFILE, and the allocation is what it was given.
    """
    return slurm_hosts() or pbs_hosts() or [socket.gethostname()]


SHARED_MACHINE_ENV = "PC_CLUSTER_HOST"     # cluster/local_cluster.sh: the machine its nodes share


def shared_machine() -> str | None:
    """The machine that the run's nodes share (the local cluster's nodes are namespaces of
    one machine and say which), or None on real nodes."""
    return os.environ.get(SHARED_MACHINE_ENV) or None


def cores_per_node(node_cores: int, num_nodes: int) -> int:
    """Cores that one of a run's `num_nodes` nodes may keep busy: its own `node_cores`,
    except where the nodes share one machine (shared_machine()): each of them then sees
    all of the machine's cores, so the run's nodes divide them (at least one each): threads
    beyond the cores only take turns, and slow every trainer down."""
    if shared_machine() and num_nodes > 1:
        return max(1, node_cores // num_nodes)
    return node_cores


GPUS_ENV = "PC_GPUS_PER_NODE"   # the GPU count to use instead of asking the machine
NO_GPU_NAMES = ("", "-1", "NoDevFiles")     # CUDA_VISIBLE_DEVICES values that hide every GPU


def gpus_per_node(dev: str = "/dev") -> int:
    """How many GPUs a node has for trainers: THE answer both engines and every check use
    (the nodes of a run are alike, so the node that asks speaks for all).

    $PC_GPUS_PER_NODE, where set (a machine whose driver and torch disagree; the tests);
    else 0 where this node has no GPU device file in `dev` (NVIDIA, AMD, WSL2's /dev/dxg),
    without loading torch; else what torch sees, CUDA_VISIBLE_DEVICES applied. A node with
    GPU device files whose torch sees none is an error, not a silent CPU run (a CPU build of
    torch, or one newer than the driver), unless CUDA_VISIBLE_DEVICES hides every GPU on
    purpose ("" or -1). A batch system's CUDA_VISIBLE_DEVICES=0,1,... names GPUs: it is no
    reason to train on the CPU.
    """
    import glob
    given = os.environ.get(GPUS_ENV, "").strip()
    if given:
        if not given.isdigit():
            raise ValueError(f"{GPUS_ENV}={given!r}: give a number of GPUs (0 or more)")
        return int(given)
    files = [path for pattern in ("nvidia[0-9]*", "kfd", "dxg")
             for path in glob.glob(os.path.join(dev, pattern))]
    if not files:
        return 0
    import torch
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not seen and (visible is None or visible.strip() not in NO_GPU_NAMES):
        named = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible})"
        raise ValueError(f"this node has GPUs{named} ({', '.join(sorted(files)[:4])}) but torch "
                         f"{torch.__version__} sees none (a CPU build, or one that does not "
                         f"match the driver): fix torch, or set {GPUS_ENV}=0 to train on the CPU")
    return seen
