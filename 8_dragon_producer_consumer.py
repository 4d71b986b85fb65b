"""Producer-consumer workflow with DragonHPC, data shared through a Distributed Dictionary.

The simulations run as Dragon processes spread over every node. Each one puts its pairs
into a DDict manager on its own node as ONE contiguous value keyed by the simulation
index. The trainers run as Dragon processes too, one per GPU (pinned by a placement
policy) or on CPU when there are none, and each gets every simulation's value from
whichever node holds it. Only small reports travel through the head process.
With --broadcast every value is put into every node's manager instead (Dragon's broadcast
put), so that every get is from the trainer's own node.

    dragon 8_dragon_producer_consumer.py --num_sims 32 --grid_size 512
    python 8_dragon_producer_consumer.py --num_sims 32 --grid_size 512 --broadcast
    python 8_dragon_producer_consumer.py --num_sims 32 --grid_size 512   (starts Dragon itself)

On Polaris the DDict moves data between nodes by RDMA only after
`dragon-config add --ofi-runtime-lib=<libfabric lib dir>`; otherwise it falls back to TCP.
"""
import socket
import time

import common
from plumbing import cli, ddict_io, dragon_launch, dragon_setup, lifecycle, records

TRANSPORT = "dragon+ddict"


def simulator(worker: int, shared: dragon_setup.Shared):
    """A simulation process: runs simulations worker, worker + shared.num_simulators, ...
    and puts each one's pairs into the DDict, on its own node."""
    args = shared.args
    with dragon_setup.reporting(shared, f"simulator process {worker}") as task:
        store = ddict_io.Writer(shared.pairs, shared.num_nodes, args.broadcast)
        periods = common.wave_periods(args.num_sims)
        shared.reports.put(("ready", "simulator", socket.gethostname()))
        shared.start_signals.get()                  # start-up ends when everyone is ready
        for index in range(worker, args.num_sims, shared.num_simulators):
            task.name = f"simulation {index}"
            sim = common.simulate(index, periods[index], args.grid_size, args.compute_time)
            start = time.perf_counter()
            where = store.put(index, sim.pairs)     # the only IO: one value per simulation
            io_s = time.perf_counter() - start
            shared.reports.put(("simulation", sim.report(io_s, location=where)))
            del sim                                 # the DDict holds its pairs now
        shared.exit_signals.get()   # exiting processes would slow the trainers' gets


def trainer(rank: int, kernel_size: int, cpu_threads: int, shared: dragon_setup.Shared):
    """A training process: gets every simulation's value from the DDict (timed as IO),
    checks it, then trains. Its policy decided its GPU (CUDA_VISIBLE_DEVICES)."""
    args = shared.args
    with dragon_setup.reporting(shared, f"trainer {rank}"):
        device = common.pick_device()
        store = ddict_io.Reader(shared.pairs)
        shared.reports.put(("ready", "trainer", f"{socket.gethostname()} {device}"))
        manifest = shared.manifests.get()
        data = common.TrainingData(manifest, args.grid_size)
        io_s = 0.0
        for sim in common.reading_order(manifest, rank, args.num_trainers):
            start = time.perf_counter()
            pairs = store.get(sim)                  # the only IO
            io_s += time.perf_counter() - start
            data.add(sim.index, pairs)              # copies it: the next get reuses the array
        del pairs
        report = common.train(data, rank, kernel_size, io_s, cpu_threads, args.epochs)
        del data                                    # its memory is not needed while it waits
        shared.reports.put(("trained", report))
        shared.exit_signals.get()   # the other trainers may still be reading


def main(args, launch: dragon_launch.Launch) -> int:
    phases = records.Phases()

    # leaving these blocks, also on an error or Ctrl-C, stops the processes, destroys the
    # DDict and removes the run directory
    with lifecycle.run_directory(args.data_dir, "ddict", args.keep_data) as run_dir, \
            dragon_setup.workflow(args, run_dir) as flow:
        transport = TRANSPORT + ("-broadcast" if args.broadcast else "")
        lifecycle.log(f"{transport}: {flow}")
        shared, workers = flow.shared, flow.num_sim_workers
        for worker in range(workers):
            flow.add(simulator, worker, shared, policy=flow.sim_worker_policy(worker))
        for rank, policy in enumerate(flow.trainer_policies):
            flow.add(trainer, rank, common.kernel_size_for(rank, args.kernel_sizes),
                     flow.cpu_threads[rank], shared, policy=policy)
        flow.start()
        flow.collect("ready", workers + args.num_trainers, timeout=dragon_setup.STARTUP_TIMEOUT_S)
        lifecycle.log(f"{workers} simulation processes on {len(flow.nodes)} node(s) and "
                      f"{args.num_trainers} trainers ready after {phases.lap('startup'):.2f} s"
                      + (f" (+ {launch.runtime_startup_s:.2f} s to start the runtime)"
                         if launch.runtime_startup_s else ""))

        shared.start_signals.put(True, flow.sim_hosts)     # one for each, on its node
        sims = flow.collect("simulation", args.num_sims, progress="simulations")
        lifecycle.log(f"{len(sims)} simulations done in {phases.lap('simulation'):.2f} s")

        start = time.perf_counter()
        shared.pairs.freeze()                       # read-only from here: copy-free gets
        freeze_s = time.perf_counter() - start
        shared.manifests.put(sims, flow.trainer_hosts)
        trainers = flow.collect("trained", args.num_trainers, progress="trainers")
        shared.exit_signals.put(True, flow.sim_hosts + flow.trainer_hosts)  # all may end
        lifecycle.log(f"{len(trainers)} trainers done in {phases.lap('training'):.2f} s")
        ddict = flow.describe_ddict(args.broadcast)
    phases.lap("shutdown")
    if launch.runtime_startup_s:                    # the runtime's start-up is start-up too
        phases.seconds["startup"] += launch.runtime_startup_s
    record = records.make_record(
        args, transport, sims, trainers, phases, hosts=flow.hosts, **launch.record(),
        ddict_create_s=flow.ddict_create_s, ddict_freeze_s=freeze_s, ddict=ddict,
        simulation_processes=workers, kept_run_dir=run_dir if args.keep_data else None)
    return records.finish(record, args.results_file)


if __name__ == "__main__":
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--broadcast", action="store_true",
                        help="put every value into every node's DDict manager (Dragon's "
                             "bput): slower puts, every get from the trainer's own node")
    # checks the arguments, starts Dragon's runtime where `python` started this script, and
    # calls main(args, launch) in its head process; errors in one line
    dragon_launch.run(main, parser)
