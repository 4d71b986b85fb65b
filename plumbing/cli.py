"""The command line every workflow script shares, and the checks made before anything
starts: a bad flag, or a run that cannot fit, costs one line and exit status 2."""
from __future__ import annotations

import argparse
import os
import tempfile

import common
from plumbing import hosts, lifecycle
from plumbing.records import GB

CPU_TRAINERS = 2                # default trainer count on a machine without GPUs


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag costs one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def kernel_list(text: str) -> tuple[int, ...]:
    sizes = tuple(positive_int(part) for part in text.split(","))
    if any(size % 2 == 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"kernel sizes must be odd, got {text}")
    return sizes


def make_parser(description: str) -> OneLineParser:
    """The command line every workflow script shares."""
    parser = OneLineParser(description=description,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num_sims", type=positive_int, default=32,
                        help="total number of simulations (each produces 10 input/output pairs)")
    parser.add_argument("--grid_size", type=positive_int, default=512,
                        help="grid points per side of the N x N simulation grid")
    parser.add_argument("--num_trainers", type=positive_int, default=None,
                        help="number of CNN trainers, each reading ALL the data "
                             f"(default: one per GPU; {CPU_TRAINERS} on a machine without GPUs)")
    parser.add_argument("--kernel_sizes", type=kernel_list, default=common.DEFAULT_KERNEL_SIZES,
                        metavar="K1,K2,...",
                        help="convolution kernel sizes, given to the trainers in turn")
    parser.add_argument("--compute_time", type=non_negative_float, default=0.5,
                        help="emulated compute seconds per simulation step (0 = none)")
    parser.add_argument("--epochs", type=non_negative_int, default=1,
                        help="training epochs per trainer (0 = move and check the data only, "
                             "as the benchmark does)")
    parser.add_argument("--num_nodes", type=positive_int, default=None,
                        help="nodes to use: the first N of the allocation (default: all of them)")
    parser.add_argument("--data_dir", default=".",
                        help="existing directory under which the run's own data directory is made")
    parser.add_argument("--keep_data", action="store_true",
                        help="keep the run's data directory (and engine logs) instead of removing it")
    parser.add_argument("--results_file",
                        default=os.path.join(lifecycle.RESULTS_DIR, "results.jsonl"),
                        help="JSON-lines file the run's result record is appended to")
    return parser


def _can_write_in(directory: str) -> bool:
    """Try it: permission bits say nothing for root, read-only mounts or Lustre ACLs."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _can_append_to(path: str) -> bool:
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isfile(path):
            return False
        try:
            with open(path, "a"):
                return True
        except OSError:
            return False
    parent = os.path.dirname(path)
    while not os.path.exists(parent):       # missing folders are made when the record is written
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and _can_write_in(parent)


def check_args(parser: OneLineParser, argv: list[str] | None, *, trainer_copies=0.5,
               available_nodes=None, more_memory=None, more_checks=None) -> argparse.Namespace:
    """Parse `argv` and refuse what cannot work, in one line, before any executor, runtime
    or file exists. Every script calls this, with what its transport adds:

    trainer_copies: bytes each trainer holds per byte produced (0.5: the float32 copy), or
    a function of the parsed arguments that says it;
    available_nodes(): the nodes the run may use (default: the allocation's, hosts.py);
    more_memory(args): {what: bytes} a node holds besides its trainers (a store, the DDict);
    more_checks(parser, args): the transport's own refusals, called last.

    It adds to the arguments: available_nodes, gpus_per_node (what every engine and the
    record use), trainers_per_node, and fills in num_nodes and num_trainers.
    """
    args = parser.parse_args(argv)
    try:
        args.available_nodes = available_nodes() if available_nodes else len(hosts.node_hosts())
        args.gpus_per_node = hosts.gpus_per_node()
    except ValueError as error:
        parser.error(str(error))
    _check_placement(parser, args)
    _check_paths(parser, args)
    lifecycle.save_errors_in(os.path.dirname(os.path.abspath(args.results_file)))
    copies = trainer_copies(args) if callable(trainer_copies) else trainer_copies
    _check_memory(parser, args, {
        f"{args.trainers_per_node} trainer(s)":
            args.trainers_per_node * common.data_bytes(args.num_sims, args.grid_size) * copies,
        **(more_memory(args) if more_memory else {})})
    if more_checks:
        more_checks(parser, args)
    return args


def _check_placement(parser: OneLineParser, args: argparse.Namespace) -> None:
    """Nodes within the allocation; at most one trainer per GPU; kernels that fit the grid."""
    if args.num_nodes is None:
        args.num_nodes = args.available_nodes
    elif args.num_nodes > args.available_nodes:
        parser.error(f"argument --num_nodes: {args.num_nodes} nodes asked for, but the "
                     f"allocation has {args.available_nodes}")
    nodes, gpus = args.num_nodes, args.gpus_per_node
    if args.num_trainers is None:
        args.num_trainers = gpus * nodes or CPU_TRAINERS
    args.trainers_per_node = -(-args.num_trainers // nodes)
    if gpus and args.trainers_per_node > gpus:
        parser.error(f"argument --num_trainers: {args.num_trainers} trainers on {nodes} "
                     f"node(s) put {args.trainers_per_node} on a node, which has {gpus} GPU(s): "
                     f"one trainer per GPU (at most {gpus * nodes})")
    largest_kernel = max(args.kernel_sizes)
    if args.grid_size < largest_kernel:
        parser.error(f"argument --grid_size: {args.grid_size} is smaller than the largest "
                     f"kernel size {largest_kernel}")


def _check_paths(parser: OneLineParser, args: argparse.Namespace) -> None:
    if not os.path.isdir(args.data_dir):
        parser.error(f"argument --data_dir: {args.data_dir!r} is not an existing directory")
    if not _can_write_in(args.data_dir):
        parser.error(f"argument --data_dir: cannot create files in {args.data_dir!r}")
    if not _can_append_to(args.results_file):
        parser.error(f"argument --results_file: cannot write {args.results_file!r}")


def _check_memory(parser: OneLineParser, args: argparse.Namespace, held: dict) -> None:
    """The one memory check: what the busiest node holds ({what: bytes}), against what it has."""
    available_bytes = hosts.available_memory_bytes()
    if available_bytes and sum(held.values()) > 0.9 * available_bytes:
        parts = " and ".join(f"{what} {need / GB:.1f} GB" for what, need in held.items() if need)
        parser.error(f"arguments --num_sims/--grid_size/--num_trainers: a node would hold "
                     f"{parts}, but it has {available_bytes / GB:.1f} GB available")
