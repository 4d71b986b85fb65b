"""ProxyStore plumbing for `5_parsl_fut_producer_consumer.py --proxystore CONNECTOR`.

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
import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

import common

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


# --------------------------------------------------------------------------- command line
def add_argument(parser) -> None:
    parser.add_argument("--proxystore", metavar="CONNECTOR", choices=CONNECTORS, default=None,
                        help="pass the data by proxy through ProxyStore with this connector "
                             f"({', '.join(CONNECTORS)}) instead of by value through the head")


def check_args(parser, args) -> None:
    """What --proxystore needs, refused in one line before anything starts: its Python
    packages, redis-server on PATH, and memory for the trainers and the store."""
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
    # the head node: its trainers (as common.check_args counts them) and its part of the
    # store: redis keeps everything there; each node's zmq server keeps that node's share
    # (the nodes run as many simulation workers each); files sit in --data_dir, not in memory
    nodes = args.num_nodes                  # set by common.check_args
    produced = common.data_bytes(args.num_sims, args.grid_size)
    store_bytes = {"redis": produced, "zmq": produced / nodes}.get(connector, 0)
    trainers_here = -(-args.num_trainers // nodes)
    need = trainers_here * produced * COPIES_PER_TRAINER + store_bytes
    available = common.available_memory_bytes()
    if available and need > 0.9 * available:
        parser.error(f"arguments --num_sims/--grid_size/--num_trainers: {trainers_here} "
                     f"trainer(s) per node and the {connector} store would hold "
                     f"{need / common.GB:.1f} GB but the node has "
                     f"{available / common.GB:.1f} GB available")


# --------------------------------------------------------------------------- servers
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even by
    SIGKILL, so that a server never outlives its owner."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(argv: list[str], log_path: str | None) -> subprocess.Popen:
    # a process group of its own: a Ctrl-C in the terminal reaches the head only, which
    # stops the server after everything that uses it
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, process_group=0,
                                preexec_fn=_die_with_parent)
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
                max_value_bytes: int) -> tuple[subprocess.Popen, int]:
    """A redis-server for this run alone: no persistence, its files in `directory`."""
    import redis
    os.makedirs(directory, exist_ok=True)
    port = _free_port(address)
    log_path = os.path.join(directory, "redis.log")
    argv = ["redis-server", "--port", str(port), "--bind", address,
            # protected mode refuses clients from other hosts when no password is set: keep
            # it on loopback, lift it for the cluster address the workers connect to
            "--protected-mode", "yes" if address.startswith("127.") else "no",
            "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no",
            # its own title would overwrite its command line and environment: ps could then
            # not tell whose server it is
            "--set-proc-title", "no",
            # a value is one serialized simulation; Redis refuses bulks above 512 MB by default
            "--proto-max-bulk-len", str(max(512 * 2**20, 2 * max_value_bytes))]
    server = _start(argv, log_path)
    client = redis.Redis(host=address, port=port)

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
    return server, port


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
def open_store(connector: str | None, run_dir: str, hosts: list[str], max_value_bytes: int):
    """Start what `connector` needs and yield a Store for it (None without a connector).
    On the way out, also after an error or Ctrl-C, its contents are removed and its servers
    stopped."""
    if connector is None:
        yield None
        return
    from proxystore.store import Store
    address = LOOPBACK
    if len(hosts) > 1:
        import parsl_config     # the address the managers reach the head by ($PARSL_IFACE)
        address = parsl_config.interchange_address() or socket.gethostname()
    servers = []
    store = None
    try:
        if connector == "redis":
            from proxystore.connectors.redis import RedisConnector
            server, port = start_redis(address, os.path.join(run_dir, "redis"), max_value_bytes)
            servers.append(server)
            backend = RedisConnector(address, port, clear=True)
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
            import parsl_config
            options["address"] = parsl_config.interchange_address() or socket.gethostname()
        _node_servers.append(start_zmq_server(options["address"], options["port"]))
        config = config.model_copy(update={"connector": ConnectorConfig(
            kind=config.connector.kind, options=options)})
    store = Store.from_config(config)
    proxystore.store.register_store(store, exist_ok=True)
    return store


_node_servers: list = []    # keeps a worker's zmq server (if it started one) referenced


def _connect(config, hold_s: float) -> tuple[str, int]:
    """Warm-up task: import ProxyStore and connect to the store, so no IO time pays for it."""
    _worker_store(config)
    time.sleep(hold_s)      # stay busy so that the next warm-up task lands on another worker
    return socket.gethostname(), os.getpid()    # pids repeat across nodes (PID namespaces)


def warm_up(store, workers: dict[str, int], timeout_s: float = 120.0) -> None:
    """Run _connect once in every worker of every executor (label -> worker count)."""
    from parsl.app.app import python_app
    config = store.config()
    connect = {label: python_app(_connect, executors=[label]) for label in workers}
    seen: dict[str, set[tuple[str, int]]] = {label: set() for label in workers}
    deadline = time.monotonic() + timeout_s
    while any(len(seen[label]) < expected for label, expected in workers.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ProxyStore warm-up: not every worker connected to the store "
                               f"within {timeout_s:.0f} s")
        # both executors at once; a round again only where a worker was missed
        rounds = {label: [connect[label](config, 0.3) for _ in range(expected)]
                  for label, expected in workers.items() if len(seen[label]) < expected}
        for label, futures in rounds.items():
            seen[label].update(common.results_of(futures, "ProxyStore warm-up"))


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
    versions = {}
    for package in ("proxystore", "proxystore-ex", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
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
    common.log(f"ProxyStore ({entry['where']}): per simulation serialize "
               f"{entry['sim_serialize_mean_s']:.4f} s + put {entry['sim_put_mean_s']:.4f} s; "
               f"per trainer get {entry['train_get_mean_s']:.3f} s + deserialize "
               f"{entry['train_deserialize_mean_s']:.3f} s (means); "
               f"{entry['keys_evicted']} keys evicted, {entry['keys_left']} left")
    return entry


def io_includes(by_value: dict) -> dict:
    """What script 5's IO times include with --proxystore: the same two stamps as by value
    (`by_value`), but what happens between them differs."""
    return {
        **by_value,
        "sim_io": "per simulation, time.time() from the end of its compute in the worker to "
                  "the proxy's arrival in the head (done-callback): ProxyStore serializing the "
                  "array and putting it into the store, then Parsl carrying the small result (a "
                  "proxy instead of the array) to the head; proxystore.sim_* splits the store's part",
        "train_io": "per trainer, time.time() from submitting the app in the head to the first "
                    "line of its body: Parsl carrying the small arguments (proxies) to the "
                    "worker, then the wrapper resolving every proxy (getting each array from the "
                    "store and deserializing it); proxystore.train_* splits the store's part",
        "serialization_probe": "Parsl's own (de)serializers run once more in the head after the "
                               "training phase, outside every phase: what travels through Parsl "
                               "is proxies, so these bytes are small",
    }
