"""ProxyStore set-up for `5_parsl_fut_producer_consumer.py --proxystore CONNECTOR`.

ProxyStore (https://docs.proxystore.dev) replaces an object by a small *proxy*: the bytes go
into a store, and the proxy, which knows the store and the key, fetches them itself when it
is used. The script's apps stay plain functions; ByProxy wraps them so that

- the arrays in a function's result go into the store on the way out, and only proxies
  travel back to the head through Parsl;
- every proxy in a function's arguments is resolved before the body runs, so the body sees
  the same arrays as it does when they travel by value.

Connectors (where the bytes go), each started here and stopped on every way out:

  redis   a redis-server started on the head node, on a free port, bound to the address the
          workers use (127.0.0.1 on one node, the interchange address across nodes)
  file    one file per object under the run's directory in --data_dir (shared file system)
  zmq     proxystore-ex's distributed in-memory connector: one small server per node keeps
          the values made on that node in memory, readers fetch them from it directly

Nothing here imports ProxyStore at import time, so the script runs by value without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from parsl.app.app import python_app

import common
from plumbing import lifecycle, parsl_setup, records

CONNECTORS = ("redis", "file", "zmq")
STORE_NAME = "pc-proxystore"     # the workers' stores find the head's by this name
LOOPBACK = "127.0.0.1"
ZMQ_KIND = "proxystore_ex.connectors.dim.zmq.ZeroMQConnector"
START_TIMEOUT_S = 30.0
# the packages each connector imports (PyPI names for the error message)
NEEDS = {"redis": ("proxystore", "redis"), "file": ("proxystore",),
         "zmq": ("proxystore", "proxystore_ex", "zmq")}
PIP_NAMES = {"proxystore": "proxystore", "redis": "redis", "proxystore_ex": "proxystore-ex",
             "zmq": "pyzmq"}
# per trainer: every float64 array once (resolved into the task's arguments, which Parsl's
# worker holds until the task returns) plus the float32 copy TrainingData keeps
COPIES_PER_TRAINER = 1.5
# by value: the pickles in the head, the interchange and the worker, the unpickled float64
# and the float32 copy
COPIES_BY_VALUE = 5.0


def trainer_copies(args) -> float:
    """Copies of the data one trainer's task holds at once, in units of the data's bytes."""
    return COPIES_BY_VALUE if args.proxystore is None else COPIES_PER_TRAINER


# --------------------------------------------------------------------------- command line
def add_argument(parser) -> None:
    parser.add_argument("--proxystore", metavar="CONNECTOR", choices=CONNECTORS, default=None,
                        help="pass the data by proxy through ProxyStore with this connector "
                             f"({', '.join(CONNECTORS)}) instead of by value through the head")


def store_memory(args) -> dict[str, float]:
    """For cli.check_args: what the store keeps in a node's memory. redis keeps everything
    on the head node; each node's zmq server keeps that node's share; files sit in
    --data_dir, not in memory."""
    produced = common.data_bytes(args.num_sims, args.grid_size)
    held = {"redis": produced, "zmq": produced / args.num_nodes}.get(args.proxystore, 0)
    return {f"the {args.proxystore} store": held} if held else {}


def check_args(parser, args) -> None:
    """For cli.check_args: what --proxystore needs, refused in one line before anything
    starts: its Python packages and redis-server on PATH."""
    connector = args.proxystore
    if connector is None:
        return
    for module in NEEDS[connector]:
        try:
            __import__(module)
        except ImportError:
            parser.error(f"argument --proxystore {connector}: the Python package "
                         f"{PIP_NAMES[module]} is not installed (pip install -r requirements.txt)")
    if connector == "redis" and shutil.which("redis-server") is None:
        parser.error("argument --proxystore redis: no redis-server on PATH (Debian: apt-get "
                     "install redis-server; conda: conda install -c conda-forge redis)")


# --------------------------------------------------------------------------- servers
def _start(argv: list[str], log_path: str | None) -> subprocess.Popen:
    # a process group of its own: a Ctrl-C in the terminal reaches the head only, which
    # stops the server after everything that uses it; SIGTERM when its owner dies
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, process_group=0,
                                preexec_fn=lifecycle.signal_when_parent_dies(signal.SIGTERM))
    finally:
        if log_path:
            log.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _wait_until(ready, process: subprocess.Popen, what: str, log_path: str | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            last = ""
            if log_path and os.path.exists(log_path):
                with open(log_path, errors="replace") as f:
                    lines = f.read().strip().splitlines()
                last = f": {lines[-1].strip()}" if lines else ""
            raise ChildProcessError(f"{what} exited with status {process.returncode}{last}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.05)


def start_redis(address: str, directory: str,
                max_value_bytes: int) -> tuple[subprocess.Popen, int, str]:
    """A redis-server for this run alone: no persistence, its files in `directory`, and a
    password of its own, so that no other job on a shared node can read or change the data.
    The password is in a file only this user can read (a command line is visible to all)
    and travels to the workers inside the proxies. Returns (server, port, password)."""
    import redis
    os.makedirs(directory, exist_ok=True)
    port = _free_port(address)
    password = secrets.token_hex(32)
    settings = {"port": port, "bind": address, "requirepass": password, "protected-mode": "yes",
                "save": '""', "appendonly": "no", "dir": directory, "daemonize": "no",
                # its own title would overwrite its command line and environment: ps could
                # then not tell whose server it is
                "set-proc-title": "no",
                # a value is one serialized simulation; Redis refuses bulks above 512 MB
                "proto-max-bulk-len": max(512 * 2**20, 2 * max_value_bytes)}
    config = os.path.join(directory, "redis.conf")
    with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"{name} {value}\n" for name, value in settings.items())
    log_path = os.path.join(directory, "redis.log")
    server = _start(["redis-server", config], log_path)
    client = redis.Redis(host=address, port=port, password=password)

    def ready():
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    try:
        _wait_until(ready, server, "redis-server", log_path)
    except BaseException:
        _stop(server)
        raise
    finally:
        client.close()
    return server, port, password


def _zmq_answers(address: str, port: int) -> bool:
    from proxystore_ex.connectors.dim.exceptions import ServerTimeoutError
    from proxystore_ex.connectors.dim.zmq import wait_for_server
    try:
        wait_for_server(address, port, timeout=0.2)
        return True
    except ServerTimeoutError:
        return False


def start_zmq_server(address: str, port: int) -> subprocess.Popen | None:
    """This node's proxystore-ex ZeroMQ server, unless one answers already; it dies with the
    calling process (ProxyStore's own spawn would outlive a worker stopped by SIGTERM)."""
    if _zmq_answers(address, port):
        return None
    code = ("import sys\nfrom proxystore_ex.connectors.dim.zmq import start_server\n"
            "start_server(sys.argv[1], int(sys.argv[2]))")
    server = _start([sys.executable, "-c", code, address, str(port)], None)
    try:
        # two workers may race to start it: the loser's bind fails, the winner's answers
        _wait_until(lambda: _zmq_answers(address, port), server, "the zmq server", None)
    except ChildProcessError:
        if not _zmq_answers(address, port):
            raise
        return None
    except BaseException:
        _stop(server)
        raise
    return server


# --------------------------------------------------------------------------- the store
@contextlib.contextmanager
def open_store(connector: str | None, run_dir: str, num_nodes: int, max_value_bytes: int):
    """Start what `connector` needs and yield a Store for it (None without a connector).
    On the way out, also after an error or Ctrl-C, its contents are removed and its servers
    stopped."""
    if connector is None:
        yield None
        return
    from proxystore.store import Store
    address = LOOPBACK
    if num_nodes > 1:
        # the address the managers reach the head by ($PARSL_IFACE)
        address = parsl_setup.interchange_address() or socket.gethostname()
    servers = []
    store = None
    try:
        if connector == "redis":
            server, port, password = start_redis(address, os.path.join(run_dir, "redis"),
                                                 max_value_bytes)
            servers.append(server)
            from plumbing.proxystore_redis import PasswordRedisConnector
            backend = PasswordRedisConnector(address, port, password, clear=True)
        elif connector == "file":
            from proxystore.connectors.file import FileConnector
            backend = FileConnector(os.path.join(run_dir, "proxystore"), clear=True)
        else:
            from proxystore_ex.connectors.dim.zmq import ZeroMQConnector
            port = _free_port(address)      # the same port on every node
            servers.append(start_zmq_server(address, port))
            backend = ZeroMQConnector(port, address=address, timeout=10)
        # cache_size=0: a resolved value is not kept a second time in the process's cache;
        # populate_target=False: a proxy does not keep its array alive where it was made
        store = Store(STORE_NAME, backend, metrics=True, cache_size=0, populate_target=False,
                      register=True)
        yield store
    finally:
        try:
            if store is not None:
                # redis: FLUSHDB; file: remove the directory; zmq: the servers go below
                store.close(**({} if connector == "zmq" else {"clear": True}))
        except Exception:
            pass            # a server that died already holds nothing; stop the rest anyway
        finally:
            for server in servers:
                if server is not None:
                    _stop(server)


def describe(store) -> str:
    """Where the store keeps the bytes, in words."""
    options = store.config().connector.options
    if "hostname" in options:
        return f"redis-server on {options['hostname']}:{options['port']}"
    if "store_dir" in options:
        return f"files in {options['store_dir']}"
    return f"a zmq server per node, port {options['port']}"


def _worker_store(config):
    """This process's Store: the head's configuration, made once per worker process.

    For zmq the connector is pointed at this node's own server (started if needed), so
    that a value is stored on the node that made it."""
    import proxystore.store
    from proxystore.store import Store
    from proxystore.store.config import ConnectorConfig
    store = proxystore.store.get_store(config.name)
    if store is not None:
        return store
    if config.connector.kind == ZMQ_KIND:
        options = dict(config.connector.options)
        if options["address"] != LOOPBACK:
            options["address"] = parsl_setup.interchange_address() or socket.gethostname()
        _node_servers.append(start_zmq_server(options["address"], options["port"]))
        config = config.model_copy(update={"connector": ConnectorConfig(
            kind=config.connector.kind, options=options)})
    store = Store.from_config(config)
    proxystore.store.register_store(store, exist_ok=True)
    return store


_node_servers: list = []    # keeps a worker's zmq server (if it started one) referenced


def warm_up(store, layout: parsl_setup.Layout, timeout_s: float = 120.0) -> None:
    """Every worker of every executor connects to the store once, before any phase."""
    parsl_setup.warm_up(layout.workers, time.monotonic() + timeout_s, _worker_store,
                        store.config())


# --------------------------------------------------------------------------- the wrapper
def _map(value, kind, fn):
    """`value` with every object of type `kind` inside it replaced by fn(object). Lists, dicts
    and dataclasses are changed in place (no second reference to what they hold), tuples
    are rebuilt."""
    from proxystore.proxy import Proxy
    # a proxy first: asking a proxy anything else (isinstance(p, list)) would resolve it
    if isinstance(value, Proxy):
        return fn(value) if kind is Proxy else value
    if isinstance(value, kind):
        return fn(value)
    if isinstance(value, list):
        value[:] = [_map(item, kind, fn) for item in value]
    elif isinstance(value, tuple):
        return type(value)(*(_map(i, kind, fn) for i in value)) if hasattr(value, "_fields") \
            else tuple(_map(item, kind, fn) for item in value)
    elif isinstance(value, dict):
        for key in value:
            value[key] = _map(value[key], kind, fn)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            setattr(value, field.name, _map(getattr(value, field.name), kind, fn))
    return value


def _seconds(store, key, event: str) -> float:
    times = store.metrics.get_metrics(key).times.get(event)
    return times.avg_time_ms * times.count / 1000 if times else 0.0


@dataclasses.dataclass
class Proxied:
    """What a wrapped app returns: the function's result (arrays replaced by proxies) and
    ProxyStore's own timing of this call, measured in the worker (seconds, summed over keys)."""
    value: object
    split: dict


class ByProxy:
    """function(*args) for Parsl, with its data through the store: proxies in the arguments are
    resolved before it runs, numpy arrays in its result are proxied after it returns."""

    def __init__(self, function, store):
        import functools
        functools.update_wrapper(self, function)    # Parsl names the app after the function
        self.function = function
        self.config = store.config()                # picklable: a Store is not

    def __call__(self, *args, **kwargs):
        from proxystore.proxy import Proxy, get_factory
        from proxystore.store.utils import get_key
        store = _worker_store(self.config)
        got, put = [], []

        def resolve(proxy):
            got.append(get_key(proxy))
            return get_factory(proxy)()     # fetch without caching the value in the proxy

        def proxy(array):
            made = store.proxy(array)
            put.append(get_key(made))
            return made

        args, kwargs = _map((args, kwargs), Proxy, resolve)
        result = _map(self.function(*args, **kwargs), np.ndarray, proxy)
        split = {"serialize_s": sum(_seconds(store, k, "store.put.serialize") for k in put),
                 "put_s": sum(_seconds(store, k, "store.put.connector") for k in put),
                 "get_s": sum(_seconds(store, k, "store.get.connector") for k in got),
                 "deserialize_s": sum(_seconds(store, k, "store.get.deserialize") for k in got),
                 "keys_put": len(put), "keys_got": len(got)}
        return Proxied(result, split)


def unwrap(results: list) -> tuple[list, list[dict]]:
    """Wrapped apps' results -> (the functions' results, ProxyStore's split of each call)."""
    return [r.value for r in results], [r.split for r in results]


# --------------------------------------------------------------------------- after the run
def evict(store, objects) -> dict:
    """Evict every proxy's object from the store; count what is still there."""
    from proxystore.proxy import Proxy
    from proxystore.store.utils import get_key
    keys = []
    _map(objects, Proxy, lambda p: keys.append(get_key(p)) or p)
    start = time.perf_counter()
    for key in keys:
        store.evict(key)
    evict_s = time.perf_counter() - start
    return {"keys_evicted": len(keys), "evict_s": evict_s,
            "keys_left": sum(bool(store.exists(key)) for key in keys)}


def _stats(splits: list[dict], field: str) -> dict:
    values = [split[field] for split in splits]
    return {"mean": float(np.mean(values)) if values else 0.0, "max": max(values, default=0.0)}


def record(store, connector: str, sim_splits: list[dict], train_splits: list[dict],
           evicted: dict) -> dict:
    """The record's `proxystore` entry: where the bytes went, ProxyStore's own split of the
    IO times (Store metrics, per simulation and per trainer: mean and max), what was left."""
    versions = {package: records.version(package)
                for package in ("proxystore", "proxystore-ex", "redis")}
    entry = {"connector": connector, "where": describe(store), "versions": versions}
    for prefix, splits, fields in (("sim", sim_splits, ("serialize_s", "put_s")),
                                   ("train", train_splits, ("get_s", "deserialize_s"))):
        for field in fields:
            stats = _stats(splits, field)
            name = field[:-2]
            entry[f"{prefix}_{name}_mean_s"] = stats["mean"]
            entry[f"{prefix}_{name}_max_s"] = stats["max"]
    entry["keys_put"] = sum(split["keys_put"] for split in sim_splits)
    entry["keys_got_per_trainer"] = [split["keys_got"] for split in train_splits]
    entry.update(evicted)
    lifecycle.log(f"ProxyStore ({entry['where']}): per simulation serialize "
               f"{entry['sim_serialize_mean_s']:.4f} s + put {entry['sim_put_mean_s']:.4f} s; "
               f"per trainer get {entry['train_get_mean_s']:.3f} s + deserialize "
               f"{entry['train_deserialize_mean_s']:.3f} s (means); "
               f"{entry['keys_evicted']} keys evicted, {entry['keys_left']} left")
    return entry


# --------------------------------------------------------------------------- for script 5
class ByValue:
    """Parsl's own way: the data travel in the apps' results and arguments, through the head."""

    def __str__(self) -> str:
        return "data by value through the head"

    def app(self, function, executor: str):
        return python_app(function, executors=[executor])

    def warm_up(self, layout: parsl_setup.Layout) -> None:
        pass

    def results(self, futures: list, kind: str) -> list:
        return lifecycle.results_of(futures, kind)

    def finish(self, sims) -> dict:
        return {}


class ThroughStore(ByValue):
    """The same apps, wrapped (ByProxy): the arrays go into `store`, proxies through Parsl."""

    def __init__(self, store, connector: str):
        self.store, self.connector = store, connector
        self.splits: dict[str, list[dict]] = {}

    def __str__(self) -> str:
        return f"data by proxy, store: {describe(self.store)}"

    def app(self, function, executor: str):
        return python_app(ByProxy(function, self.store), executors=[executor])

    def warm_up(self, layout: parsl_setup.Layout) -> None:
        warm_up(self.store, layout)         # every worker imports ProxyStore and connects

    def results(self, futures: list, kind: str) -> list:
        values, self.splits[kind] = unwrap(lifecycle.results_of(futures, kind))
        return values

    def finish(self, sims) -> dict:
        """Nothing may stay in the store: evict what the simulations put, and say what ran."""
        evicted = evict(self.store, sims)
        return {"proxystore": record(self.store, self.connector, self.splits["simulation"],
                                     self.splits["trainer"], evicted)}


@contextlib.contextmanager
def passing(connector: str | None, run_dir: str, num_nodes: int, max_value_bytes: int):
    """How script 5 passes its data: ByValue without a connector, else ThroughStore with the
    store open (its contents removed and its servers stopped on every way out)."""
    with open_store(connector, run_dir, num_nodes, max_value_bytes) as store:
        yield ByValue() if store is None else ThroughStore(store, connector)
