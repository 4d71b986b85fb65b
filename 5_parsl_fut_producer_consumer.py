"""Producer-consumer workflow with Parsl, data passed through futures: by value, or by proxy.

Each simulation task returns its pairs (a common.SimData: one contiguous float64 array)
as the app's return value, so Parsl pickles them in the worker and ships them through
the interchange to the head process. Each trainer task receives ALL the simulations'
data as arguments, so the head pickles everything again and ships one copy per trainer.
No file system and no data store: the head process is the hub every byte goes through.

With --proxystore CONNECTOR the same two functions run, wrapped (proxystore_setup.ThroughStore):
the arrays go into a ProxyStore store (redis, file or zmq) where they are made, and
only small proxies travel through Parsl; each trainer's wrapper resolves them from the
store before the trainer's body runs. See docs/proxystore.md.

    python 5_parsl_fut_producer_consumer.py --num_sims 32 --grid_size 512
    python 5_parsl_fut_producer_consumer.py --num_sims 32 --grid_size 512 --proxystore redis

What the IO times include (plumbing/records.py writes it into the record):
  simulation: from the end of its compute in the worker to the arrival of its result in
              the head (time.time() stamped in the app, and again in a done-callback);
  trainer:    from submitting the app in the head to the first line of its body.
"""
import dataclasses
import time

import common
from plumbing import cli, lifecycle, parsl_setup, proxystore_setup, records

TRANSPORT = "parsl+futures"


def simulation(index, period, grid_size, compute_time):
    """Simulate and return the data itself; Parsl carries it back to the head."""
    import time
    import common
    sim = common.simulate(index, period, grid_size, compute_time)
    report = sim.report(io_s=0.0, location="returned to the head")  # io_s is filled in there
    return sim, report, time.time()     # the transfer starts as soon as we return


def trainer(rank, kernel_size, manifest, sims, grid_size, num_trainers, cpu_threads, epochs,
            submitted_at):
    """Receive every simulation's data as arguments, check it, then train."""
    import time
    arrived_at = time.time()            # Parsl has just unpickled all the arguments
    import common
    data = common.TrainingData(manifest, grid_size)
    pairs_of = {sim.index: sim.pairs for sim in sims}
    for report in common.reading_order(manifest, rank, num_trainers):
        data.add(report.index, pairs_of[report.index])
    del sims, pairs_of                  # our names; Parsl holds the arguments until we return
    return common.train(data, rank, kernel_size, arrived_at - submitted_at, cpu_threads,
                        epochs)


def main(argv=None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    proxystore_setup.add_argument(parser)
    args = cli.check_args(parser, argv, more_memory=proxystore_setup.store_memory,
                          more_checks=proxystore_setup.check_args,
                          trainer_copies=proxystore_setup.trainer_copies)
    transport = TRANSPORT if args.proxystore is None else f"parsl+proxystore-{args.proxystore}"
    phases = records.Phases()
    # leaving these blocks, also on an error or Ctrl-C, stops the workers, empties and stops
    # the store, and removes Parsl's run files
    with lifecycle.run_directory(args.data_dir, transport.removeprefix("parsl+"),
                                 args.keep_data) as run_dir, \
            proxystore_setup.passing(args.proxystore, run_dir, args.num_nodes,
                                     common.data_bytes(1, args.grid_size)) as passing, \
            parsl_setup.workflow(run_dir, args.num_sims, args.num_trainers,
                                 args.num_nodes) as layout:
        passing.warm_up(layout)
        lifecycle.log(f"{transport}: {layout}, warm after {phases.lap('startup'):.2f} s; {passing}")
        simulation_app = passing.app(simulation, parsl_setup.SIMULATORS)
        trainer_app = passing.app(trainer, parsl_setup.TRAINERS)

        # a done-callback runs in the head the moment a result has arrived and been unpickled
        arrived_at = {}
        periods = common.wave_periods(args.num_sims)
        futures = []
        for i in range(args.num_sims):
            future = simulation_app(i, periods[i], args.grid_size, args.compute_time)
            future.add_done_callback(lambda _, i=i: arrived_at.setdefault(i, time.time()))
            futures.append(future)
        results = passing.results(futures, "simulation")
        lifecycle.log(f"{len(results)} simulations done in {phases.lap('simulation'):.2f} s")
        sims = [sim for sim, _, _ in results]
        manifest = [dataclasses.replace(report, io_s=arrived_at[report.index] - sent_at)
                    for _, report, sent_at in results]
        del results

        # every trainer gets ALL the data: `sims` travels to each one
        futures = [trainer_app(rank, common.kernel_size_for(rank, args.kernel_sizes), manifest,
                               sims, args.grid_size, args.num_trainers, layout.cpu_threads,
                               args.epochs, submitted_at=time.time())
                   for rank in range(args.num_trainers)]
        trainers = passing.results(futures, "trainer")
        lifecycle.log(f"{len(trainers)} trainers done in {phases.lap('training'):.2f} s")
        extra = passing.finish(sims)    # by proxy: nothing may stay in the store
        phases.lap("evict")
        del sims
    phases.lap("shutdown")
    record = records.make_record(args, transport, manifest, trainers, phases, hosts=layout.hosts,
                                 kept_run_dir=run_dir if args.keep_data else None, **extra)
    return records.finish(record, args.results_file)


if __name__ == "__main__":
    lifecycle.run_workflow(main)
