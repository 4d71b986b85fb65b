"""Producer-consumer workflow with Parsl, data shared through the (parallel) file system.

Each simulation task writes its pairs to one .npy file named after its index, inside a
directory that belongs to this run; each trainer task reads every file, checks what it
read, and trains one epoch. Only file names travel through Parsl.

    python 6_parsl_fs_producer_consumer.py --num_sims 32 --grid_size 512 --data_dir /eagle/...
"""
import os

from parsl.app.app import python_app

import common
from plumbing import cli, lifecycle, parsl_setup, records

TRANSPORT = "parsl+filesystem"


@python_app(executors=[parsl_setup.SIMULATORS])
def simulation(index, period, grid_size, compute_time, run_dir):
    """Simulate, then write the pairs to a file; only the write is timed as IO."""
    import os, time  # apps run in worker processes: they import what they use
    import numpy as np
    import common
    sim = common.simulate(index, period, grid_size, compute_time)
    path = os.path.join(run_dir, f"sim_{index:06d}.npy")
    start = time.perf_counter()
    np.save(path, sim.pairs)    # returns once the bytes are in the OS (or Lustre client) cache
    return sim.report(io_s=time.perf_counter() - start, location=path)


@python_app(executors=[parsl_setup.TRAINERS])
def trainer(rank, kernel_size, manifest, grid_size, num_trainers, cpu_threads, epochs):
    """Read every simulation's file (timed as IO), check it, then train one epoch."""
    import time
    import common
    data = common.TrainingData(manifest, grid_size)
    io_s = 0.0
    pairs = None    # one array refilled from every file (np.load faults in fresh pages each time)
    for sim in common.reading_order(manifest, rank, num_trainers):
        start = time.perf_counter()
        pairs = common.load_npy(sim.location, into=pairs)
        io_s += time.perf_counter() - start
        data.add(sim.index, pairs)              # copies what it keeps
    del pairs
    return common.train(data, rank, kernel_size, io_s, cpu_threads, epochs)


def main(argv=None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    args = cli.check_args(parser, argv)
    phases = records.Phases()
    # leaving these blocks, also on an error or Ctrl-C, stops the workers and removes the data
    with lifecycle.run_directory(args.data_dir, "fs", args.keep_data) as run_dir, \
            parsl_setup.workflow(run_dir, args.num_sims, args.num_trainers,
                                 args.num_nodes) as layout:
        lifecycle.log(f"{TRANSPORT}: {layout}, warm after {phases.lap('startup'):.2f} s; "
                      f"data in {run_dir}")

        periods = common.wave_periods(args.num_sims)
        futures = [simulation(i, periods[i], args.grid_size, args.compute_time, run_dir)
                   for i in range(args.num_sims)]
        sims = lifecycle.results_of(futures, "simulation")
        lifecycle.log(f"{len(sims)} simulations done in {phases.lap('simulation'):.2f} s")

        futures = [trainer(rank, common.kernel_size_for(rank, args.kernel_sizes), sims,
                           args.grid_size, args.num_trainers, layout.cpu_threads, args.epochs)
                   for rank in range(args.num_trainers)]
        trainers = lifecycle.results_of(futures, "trainer")
        lifecycle.log(f"{len(trainers)} trainers done in {phases.lap('training'):.2f} s")
    phases.lap("shutdown")
    record = records.make_record(args, TRANSPORT, sims, trainers, phases,
                                 hosts=layout.hosts, data_dir=os.path.abspath(args.data_dir),
                                 kept_run_dir=run_dir if args.keep_data else None)
    return records.finish(record, args.results_file)


if __name__ == "__main__":
    lifecycle.run_workflow(main)
