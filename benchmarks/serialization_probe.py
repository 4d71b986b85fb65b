"""How much of script 5's IO time is pickling: Parsl's own serializers, timed in one process.

Script 5 passes each simulation's result (a common.SimData, its report and a time stamp)
back through Parsl, and each trainer's arguments (every simulation's data) out again. This
runs the calls the worker and the head make on the way: parsl.serialize.serialize /
deserialize of one result, pack_apply_message / unpack_apply_message of one trainer's
arguments. No Parsl executor, no communication: the pickling share alone.

    python benchmarks/serialization_probe.py                    # 16 x 64, 16 x 256, 4 x 512
    python benchmarks/serialization_probe.py --runs 32x512

GB = 1e9 bytes. Every number printed was measured in this run. Not part of the test suite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from plumbing.records import GB  # noqa: E402


def timed(function, *args):
    start = time.perf_counter()
    out = function(*args)
    return out, time.perf_counter() - start


def trainer(rank, kernel_size, manifest, sims, grid_size, num_trainers, cpu_threads, epochs,
            submitted_at):
    """Script 5's trainer signature: what pack_apply_message packs."""


def probe(num_sims: int, grid_size: int) -> dict:
    from parsl.serialize import deserialize, pack_apply_message, serialize, unpack_apply_message
    sims = [common.simulate(i, p, grid_size, 0.0)
            for i, p in enumerate(common.wave_periods(num_sims))]
    manifest = [sim.report(io_s=0.0, location="returned to the head") for sim in sims]
    packed, result_ser = timed(serialize, (sims[0], manifest[0], time.time()))
    _, result_deser = timed(deserialize, packed)
    result_bytes = len(packed)
    args = (0, 3, manifest, sims, grid_size, 2, 1, 1)
    packed, args_ser = timed(pack_apply_message, trainer, args, {"submitted_at": 0.0})
    _, args_deser = timed(unpack_apply_message, packed)
    return {"sim_result_bytes": result_bytes, "sim_result_serialize_s": result_ser,
            "sim_result_deserialize_s": result_deser, "trainer_args_bytes": len(packed),
            "trainer_args_serialize_s": args_ser, "trainer_args_deserialize_s": args_deser}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="16x64,16x256,4x512",
                        help="SIMSxGRID,... (the main job's sizes by default)")
    args = parser.parse_args(argv)
    print(f"{'run':>10} {'result MB':>10} {'pickle s':>9} {'unpickle s':>10} "
          f"{'args MB':>9} {'pack s':>8} {'unpack s':>9} {'pack GB/s':>9}")
    for run in args.runs.split(","):
        num_sims, grid_size = (int(n) for n in run.lower().split("x"))
        p = probe(num_sims, grid_size)
        print(f"{run:>10} {p['sim_result_bytes'] / 1e6:10.2f} {p['sim_result_serialize_s']:9.4f} "
              f"{p['sim_result_deserialize_s']:10.4f} {p['trainer_args_bytes'] / 1e6:9.1f} "
              f"{p['trainer_args_serialize_s']:8.3f} {p['trainer_args_deserialize_s']:9.3f} "
              f"{p['trainer_args_bytes'] / p['trainer_args_serialize_s'] / GB:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
