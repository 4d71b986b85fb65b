"""The floor under script 8's DDict reads: the same values, the same reader, nothing else.

A frozen DDict (one manager per node, as script 8 makes it) holds `--num_sims` values of
one simulation's size, put by ddict_io.Writer in a process on the runtime's last node;
then `--readers` Dragon processes, on the first node, each get every value with
ddict_io.Reader (the trainers' code) and time each get. No simulation, no check or
conversion between gets, no head polling: what is left is the cost of a get itself. On
one node that is a local get; in a runtime of several nodes (e.g. on the local cluster:
`bash cluster/local_cluster.sh run 1 python benchmarks/ddict_floor.py ...`) every get
crosses nodes.

    python benchmarks/ddict_floor.py --num_sims 16 --grid_size 256 --readers 1,2
    python benchmarks/ddict_floor.py ... --json out.json

Prints per-get time and GB/s per reader (GB = 1e9 bytes); transport_bench.py runs it next
to script 8 at the same sizes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
from plumbing import ddict_io, dragon_launch, dragon_setup, records  # noqa: E402

SETTLE_S = 2.0      # a process that starts or exits slows the others' gets for a while


def reader(d, manifest, rounds, between, reply_wait, go, out, release):
    """Get every value `rounds` times; report each round's per-get times (and each get's
    stages, on the one-copy path). With `between`, each value is also read and copied into
    a float32 array after its get, untimed, as a trainer does (common.TrainingData.add)."""
    import time
    import numpy as np
    os.environ[ddict_io.REPLY_WAIT_ENV] = reply_wait
    store = ddict_io.Reader(d, stages=True)
    copy = None
    out.put("ready")
    go.get()
    seconds = []
    for _ in range(rounds):
        for sim in manifest:
            start = time.perf_counter()
            value = store.get(sim)
            seconds.append(time.perf_counter() - start)
            if between:
                copy = np.empty(value.shape, np.float32) if copy is None else copy
                np.copyto(copy, value, casting="same_kind")
                value.sum()
    out.put({"get_s": seconds, "path": store.path, "stages": store.stages})
    release.get()   # exit when every reader is done: an exit slows the others' gets here
    d.detach()


def writer(d, num_sims, grid_size, broadcast, out):
    """Put `num_sims` copies of one simulation's pairs into this node's manager (with
    `broadcast`: into every manager)."""
    import time
    pairs = common.simulate(0, 50.0, grid_size, compute_time=0).pairs
    store = ddict_io.Writer(d, 1, broadcast)
    manifest, put_s = [], 0.0
    for index in range(num_sims):
        start = time.perf_counter()
        where = store.put(index, pairs)
        put_s += time.perf_counter() - start
        manifest.append(common.SimReport(index, 0.0, 0, pairs.nbytes, 0.0, 0.0, "", 0, where))
    out.put((manifest, put_s))
    d.detach()


def measure(num_sims: int, grid_size: int, readers: int, rounds: int,
            broadcast: bool = False, between: bool = False, reply_wait: str = "") -> dict:
    from dragon.data import DDict
    from dragon.native.machine import Node, System
    from dragon.native.process import Process
    from dragon.native.queue import Queue
    nodes = [Node(h) for h in System().nodes]
    hosts = [node.hostname for node in nodes]
    total, _ = ddict_io.ddict_size(num_sims, grid_size, 1, broadcast)
    d = DDict(1, len(nodes), total * len(nodes),
              timeout=ddict_io.ddict_timeout_s(nodes, readers + 1))
    go, out, release = Queue(), Queue(), Queue()
    try:
        put = Process(target=writer, args=(d, num_sims, grid_size, broadcast, out),
                      policy=dragon_setup.on(hosts[-1]))
        put.start()
        manifest, put_s = out.get(timeout=600)
        put.join(timeout=60)
        d.freeze()
        here = dragon_setup.on(hosts[0])
        procs = [Process(target=reader, args=(d, manifest, rounds, between, reply_wait, go, out,
                                              release),
                         policy=here)
                 for _ in range(readers)]
        for p in procs:
            p.start()
        for _ in procs:
            assert out.get(timeout=300) == "ready"
        time.sleep(SETTLE_S)    # let the runtime finish starting them (it competes with gets)
        for _ in procs:
            go.put(True)
        results = [out.get(timeout=600) for _ in procs]
        for _ in procs:
            release.put(True)
        for p in procs:
            p.join(timeout=60)
    finally:
        go.destroy()
        out.destroy()
        release.destroy()
        d.destroy()
    return {**summarize(results, num_sims, grid_size, rounds, broadcast, between, hosts),
            "put_mean_s": put_s / num_sims, "reply_wait": reply_wait or "dragon"}


def summarize(results, num_sims, grid_size, rounds, broadcast, between, hosts) -> dict:
    """One measurement's figures from every reader's per-get times and stages."""
    nbytes = common.data_bytes(1, grid_size)
    first = [r["get_s"][:num_sims] for r in results]          # each value's first read
    per_reader = [sum(s) for s in first]
    stages = [stage for r in results for stage in r["stages"][:num_sims]]
    return {"num_sims": num_sims, "grid_size": grid_size, "readers": len(results),
            "between": between, "loadavg": os.getloadavg(),
            "stage_median_s": ({name: statistics.median(s[i] for s in stages) for i, name in
                                enumerate(("send", "reply", "receive", "cpu"))} if stages else None),
            "value_bytes": nbytes, "path": results[0]["path"], "broadcast": broadcast,
            "reader_host": hosts[0], "manager_host": hosts[-1],
            "get_s": [r["get_s"] for r in results],
            "get_median_s": statistics.median(x for s in first for x in s),
            "get_mean_s": statistics.fmean(x for s in first for x in s),
            "read_s_per_reader": per_reader,
            "read_gbps_per_reader": nbytes * num_sims / statistics.fmean(per_reader) / records.GB,
            "repeat_gbps_per_reader": (nbytes * num_sims * (rounds - 1)
                                       / statistics.fmean(sum(r["get_s"][num_sims:])
                                                          for r in results) / records.GB
                                       if rounds > 1 else None)}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_sims", type=int, default=16)
    parser.add_argument("--grid_size", type=int, default=256)
    parser.add_argument("--readers", default="1", help="reader counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="reads of every value per reader")
    parser.add_argument("--json", help="append one JSON line per measurement here")
    parser.add_argument("--broadcast", action="store_true",
                        help="put every value into every manager (Dragon's bput); the "
                             "readers then get it from their own node's manager")
    parser.add_argument("--reply_waits", default="",
                        help="comma-separated: how the one-copy get waits for the manager's "
                             "reply, in turn: '' (Dragon's own wait) or idle (sleeps until it "
                             "is there; PC_DDICT_REPLY_WAIT)")
    parser.add_argument("--table", metavar="JSONL",
                        help="print the markdown table of the measurements in this file, and exit")
    parser.add_argument("--between", action="store_true",
                        help="after each get, copy the value to float32 and sum it (untimed), "
                             "as a trainer checks and keeps it")
    return parser.parse_args(argv)


def table(path: str) -> str:
    """One row per measurement of a --json file: per-get medians and their stages, in ms."""
    rows = ["| readers | reply wait | work between gets | get median ms | send | reply | "
            "receive | reader's CPU | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            st = r.get("stage_median_s") or {}
            rows.append(f"| {r['readers']} | {r.get('reply_wait', 'dragon')} | "
                        f"{'yes' if r.get('between') else 'no'} | {r['get_median_s'] * 1e3:.2f} | "
                        + " | ".join(f"{st[k] * 1e3:.2f}" if k in st else "-"
                                     for k in ("send", "reply", "receive", "cpu"))
                        + f" | {r['loadavg'][0]:.2f} |")
    return "\n".join(rows)


def main() -> int:
    args = parse()
    for readers, reply_wait in itertools.product(map(int, args.readers.split(",")),
                                                 args.reply_waits.split(",")):
        result = measure(args.num_sims, args.grid_size, readers, args.rounds, args.broadcast,
                         args.between, reply_wait)
        where = ("" if result["reader_host"] == result["manager_host"] else
                 f" on {result['reader_host']} from {result['manager_host']}")
        if args.broadcast:
            where += f", broadcast put from {result['manager_host']} to every node"
        print(f"floor: {args.num_sims} x {result['value_bytes'] / 1e6:.3f} MB, {readers} "
              f"reader(s){where}, {result['path']} path: get median "
              f"{result['get_median_s'] * 1e3:.2f} ms, "
              f"{result['read_gbps_per_reader']:.3f} GB/s per reader (first read), "
              f"put {result['put_mean_s'] * 1e3:.2f} ms"
              + ("".join(f", {k} {v * 1e3:.2f}" for k, v in result["stage_median_s"].items())
                 + " ms (median stages)" if result["stage_median_s"] else "")
              + f", reply wait {result['reply_wait']}, load {result['loadavg'][0]:.2f}",
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    if parse().table:
        print(table(parse().table))
        sys.exit(0)
    dragon_launch.run(main)     # in the head of a Dragon runtime; errors in one line
