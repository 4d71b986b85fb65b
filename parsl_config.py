"""Parsl configuration for the two Parsl workflows (5 and 6), in the spirit of Parsl's
"modularizing" example: one factory that returns a Config, plus the warm-up both use.

One DFK, two HighThroughputExecutors: "simulators" (one CPU worker per simulation slot)
and "trainers" (one worker per GPU, or a few CPU workers on a laptop). Nothing here reads
the environment at import time.
"""
from __future__ import annotations

import os
import time

import parsl
from parsl.app.app import python_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

SIMULATORS = "simulators"
TRAINERS = "trainers"
HERE = os.path.dirname(os.path.abspath(__file__))


def _worker_init() -> str:
    # workers import common.py and the scripts' helpers from this directory
    return f"export PYTHONPATH={HERE}${{PYTHONPATH:+:$PYTHONPATH}}"


def make_config(run_dir: str, sim_workers: int, trainer_workers: int, gpus: int = 0) -> Config:
    """Parsl Config for this machine.

    sim_workers: CPU workers for simulations; trainer_workers: trainers per node
    (with gpus > 0, one worker per GPU, pinned through CUDA_VISIBLE_DEVICES).
    """
    def executor(label: str, workers: int, accelerators: int = 0) -> HighThroughputExecutor:
        return HighThroughputExecutor(
            label=label,
            address="127.0.0.1",
            max_workers_per_node=workers,
            cores_per_worker=1e-6,          # the worker count, not the core count, decides
            available_accelerators=accelerators or (),
            prefetch_capacity=0,
            encrypted=False,                # loopback only; CurveZMQ slows large payloads 1.6-1.9x
            worker_logdir_root=os.path.join(run_dir, "workers"),
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                   worker_init=_worker_init()),
        )

    return Config(
        executors=[executor(SIMULATORS, sim_workers),
                   executor(TRAINERS, trainer_workers, accelerators=gpus)],
        run_dir=os.path.join(run_dir, "parsl"),
        strategy="none",                    # fixed blocks: no scaling in or out mid-run
        initialize_logging=False,
    )


def _warm_up_worker(hold_s: float):
    """Import what the tasks import (numpy, torch) so that no phase pays for it."""
    import os
    import time
    import common  # noqa: F401
    time.sleep(hold_s)                      # stay busy so the next warm-up task lands elsewhere
    return os.getpid()


def start(config: Config, workers: dict[str, int], timeout_s: float = 300.0) -> parsl.DataFlowKernel:
    """Load the config and return once every worker is connected and has imported torch."""
    dfk = parsl.load(config)
    deadline = time.monotonic() + timeout_s
    for label, expected in workers.items():
        executor = dfk.executors[label]
        while sum(m["worker_count"] for m in executor.connected_managers()) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Parsl executor {label!r}: {expected} workers did not "
                                   f"connect within {timeout_s:.0f} s")
            time.sleep(0.1)
        warm_up = python_app(_warm_up_worker, executors=[label])
        warm: set[int] = set()
        while len(warm) < expected and time.monotonic() < deadline:
            futures = [warm_up(0.3) for _ in range(expected)]
            warm.update(f.result() for f in futures)
    return dfk
