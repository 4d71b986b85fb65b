"""Producer-consumer workflow with Parsl, data passed through futures: by value, or by proxy.

Each simulation task returns its pairs (a common.SimData: one contiguous float64 array)
as the app's return value, so Parsl pickles them in the worker and ships them through
the interchange to the head process. Each trainer task receives ALL the simulations'
data as arguments, so the head pickles everything again and ships one copy per trainer.
No file system and no data store: the head process is the hub every byte goes through.

With --proxystore CONNECTOR the same two functions run, wrapped (proxystore_config.ByProxy):
the arrays go into a ProxyStore store (redis, file or zmq) where they are made, and
only small proxies travel through Parsl; each trainer's wrapper resolves them from the
store before the trainer's body runs. See docs/proxystore.md.

    python 5_parsl_fut_producer_consumer.py --num_sims 32 --grid_size 512
    python 5_parsl_fut_producer_consumer.py --num_sims 32 --grid_size 512 --proxystore redis

What the IO times include (also written into the record, see IO_INCLUDES):
  simulation: from the end of its compute in the worker to the arrival of its result in
              the head (time.time() stamped in the app, and again in a done-callback);
  trainer:    from submitting the app in the head to the first line of its body.
"""
import dataclasses
import time

from parsl.app.app import python_app
from parsl.serialize import deserialize, pack_apply_message, serialize, unpack_apply_message

import common
import parsl_config
import proxystore_config

TRANSPORT = "parsl+futures"

IO_INCLUDES = {
    "sim_io": "per simulation, time.time() from the end of its compute in the worker to the "
              "result's arrival in the head (done-callback): pickling in the worker, worker -> "
              "manager -> interchange -> head over ZeroMQ, unpickling in the head, and waiting "
              "behind other results in the head's single result thread",
    "train_io": "per trainer, time.time() from submitting the app in the head to the first line "
                "of its body: pickling all simulations' data in the head (one task at a time: "
                "Parsl launches tasks from one thread), head -> interchange -> manager -> worker "
                "over ZeroMQ, and unpickling in the worker",
    "clock": "the two ends of each interval are read on different processes; across nodes "
             "the interval also contains the difference between the nodes' clocks",
    "serialization_probe": "Parsl's own (de)serializers run once more in the head after the "
                           "training phase, outside every phase: the pickling part of the above",
}

def simulation(index, period, grid_size, compute_time):
    """Simulate and return the data itself; Parsl carries it back to the head."""
    import time
    import common
    common.maybe_inject_failure("simulation", index)
    sim = common.simulate(index, period, grid_size, compute_time)
    report = sim.report(io_s=0.0, location="returned to the head")  # io_s is filled in there
    return sim, report, time.time()     # the transfer starts as soon as we return


def trainer(rank, kernel_size, manifest, sims, grid_size, num_trainers, cpu_threads, epochs,
            submitted_at):
    """Receive every simulation's data as arguments, check it, then train."""
    import time
    arrived_at = time.time()            # Parsl has just unpickled all the arguments
    import common
    common.maybe_inject_failure("trainer", rank)
    data = common.TrainingData(manifest, grid_size)
    pairs_of = {sim.index: sim.pairs for sim in sims}
    for report in common.reading_order(manifest, rank, num_trainers):
        data.add(report.index, pairs_of[report.index])
    del sims, pairs_of                  # our names; Parsl holds the arguments until we return
    return common.train(data, rank, kernel_size, arrived_at - submitted_at, cpu_threads,
                        epochs)


def apps(store=None):
    """The two functions as Parsl apps: as they are (by value), or wrapped so that their
    arrays travel through `store` and only proxies through Parsl. The bodies are the same."""
    def wrap(function):
        return function if store is None else proxystore_config.ByProxy(function, store)

    return (python_app(wrap(simulation), executors=[parsl_config.SIMULATORS]),
            python_app(wrap(trainer), executors=[parsl_config.TRAINERS]))


def serialization_probe(result, trainer_args) -> dict:
    """Time Parsl's serializers on one simulation result and one trainer's arguments.

    These are the calls the worker and the head make on the way, so this is the pickling
    share of the IO times, measured apart from any communication.
    """
    def timed(fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - start

    packed, result_ser = timed(serialize, result)
    _, result_deser = timed(deserialize, packed)
    result_bytes = len(packed)
    packed, args_ser = timed(pack_apply_message, trainer, trainer_args, {"submitted_at": 0.0})
    _, args_deser = timed(unpack_apply_message, packed)
    return {"sim_result_bytes": result_bytes, "sim_result_serialize_s": result_ser,
            "sim_result_deserialize_s": result_deser, "trainer_args_bytes": len(packed),
            "trainer_args_serialize_s": args_ser, "trainer_args_deserialize_s": args_deser}


def main(argv=None) -> int:
    parser = common.make_parser(__doc__.splitlines()[0])
    proxystore_config.add_argument(parser)
    args = parser.parse_args(argv)
    # by value each byte exists ~5 times per trainer on the way (pickles in head, interchange
    # and worker, the unpickled float64, the float32 copy); by proxy 1.5 (float64 and float32),
    # and the store's copy is checked apart
    args = common.check_args(parser, args, copies_per_trainer=5.0 if args.proxystore is None
                             else proxystore_config.COPIES_PER_TRAINER)
    proxystore_config.check_args(parser, args)
    transport = TRANSPORT if args.proxystore is None else f"parsl+proxystore-{args.proxystore}"
    phases = common.Phases()
    # leaving these blocks, also on an error or Ctrl-C, stops the workers, empties and stops
    # the store, and removes Parsl's run files
    value_bytes = common.data_bytes(1, args.grid_size)
    with common.run_directory(args.data_dir, "fut" if args.proxystore is None
                              else f"ps-{args.proxystore}", args.keep_data) as run_dir, \
            proxystore_config.open_store(args.proxystore, run_dir,
                                         common.node_hosts()[:args.num_nodes],
                                         value_bytes) as store, \
            parsl_config.workflow(run_dir, args.num_sims, args.num_trainers,
                                  args.num_nodes) as layout:
        if store is not None:       # every worker imports ProxyStore and connects, once
            proxystore_config.warm_up(store, {
                parsl_config.SIMULATORS: layout.sim_workers * len(layout.hosts),
                parsl_config.TRAINERS: layout.trainer_workers * len(layout.hosts)})
        common.log(f"{transport}: {layout}, warm after {phases.lap('startup'):.2f} s"
                   + ("" if store is None else f"; store: {proxystore_config.describe(store)}"))
        simulation_app, trainer_app = apps(store)

        # a done-callback runs in the head the moment a result has arrived and been unpickled
        arrived_at = {}
        periods = common.wave_periods(args.num_sims)
        futures = []
        for i in range(args.num_sims):
            future = simulation_app(i, periods[i], args.grid_size, args.compute_time)
            future.add_done_callback(lambda _, i=i: arrived_at.setdefault(i, time.time()))
            futures.append(future)
        results = common.results_of(futures, "simulation")
        if store is not None:
            results, sim_splits = proxystore_config.unwrap(results)
        common.log(f"{len(results)} simulations done in {phases.lap('simulation'):.2f} s")
        sims = [sim for sim, _, _ in results]
        manifest = [dataclasses.replace(report, io_s=arrived_at[report.index] - sent_at)
                    for _, report, sent_at in results]

        def trainer_args(rank):     # every trainer gets ALL the data: `sims` travels each time
            return (rank, common.kernel_size_for(rank, args.kernel_sizes), manifest, sims,
                    args.grid_size, args.num_trainers, layout.cpu_threads, args.epochs)

        futures = [trainer_app(*trainer_args(rank), submitted_at=time.time())
                   for rank in range(args.num_trainers)]
        trainers = common.results_of(futures, "trainer")
        if store is not None:
            trainers, train_splits = proxystore_config.unwrap(trainers)
        common.log(f"{len(trainers)} trainers done in {phases.lap('training'):.2f} s")

        probe = serialization_probe(results[0], trainer_args(0))
        phases.lap("serialization_probe")
        common.log(f"Parsl's serializers in the head: one simulation result "
                   f"({probe['sim_result_bytes']:,} bytes) {probe['sim_result_serialize_s']:.4f} s "
                   f"to pickle, {probe['sim_result_deserialize_s']:.4f} s to unpickle; one "
                   f"trainer's arguments ({probe['trainer_args_bytes']:,} bytes) "
                   f"{probe['trainer_args_serialize_s']:.3f} s / "
                   f"{probe['trainer_args_deserialize_s']:.3f} s")
        extra = {}
        if store is not None:       # nothing may stay in the store after the run
            split = proxystore_config.record(store, args.proxystore, sim_splits, train_splits,
                                             proxystore_config.evict(store, sims))
            phases.lap("evict")
            extra = {"proxystore": split}
        del results, sims
    phases.lap("shutdown")
    record = common.make_record(args, transport, manifest, trainers, phases, hosts=layout.hosts,
                                io_includes=IO_INCLUDES if store is None
                                else proxystore_config.io_includes(IO_INCLUDES),
                                serialization_probe=probe,
                                kept_run_dir=run_dir if args.keep_data else None, **extra)
    return common.finish(record, args.results_file)


if __name__ == "__main__":
    common.run_workflow(main)
