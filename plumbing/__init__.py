"""The machinery behind the numbered scripts, out of the way of the science (common.py) and
of each script's data path. One module per job:

cli               the command line every script shares, and the checks made before anything starts
records           the result record, its summary, what each transport's IO times cover
hosts             the allocation's hosts, their GPUs and memory (Slurm, PBS, or this machine)
lifecycle         progress, waiting for tasks, the run directory, Ctrl-C and errors (run_workflow)
parsl_setup       Parsl's configuration and warm workers (5, 6)
parsl_launchers   mpiexec and srun, one Parsl manager per node
proxystore_setup  ProxyStore's stores and servers, and the by-proxy wrapper (5 --proxystore)
proxystore_redis  ProxyStore's Redis connector with a password
dragon_launch     `python 8_...` under `dragon`, the head linked to where it was started (7, 8)
dragon_setup      Dragon's placement, processes and queues (8)
ddict_io          how the pairs sit in the DDict, written and read (8)
dragon_fixes      where the fixes of DragonHPC 0.15.0 (dragon_site/) apply, and what ran
"""
import os

# the repository's root: the workers on every node import common.py and plumbing/ from it
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
