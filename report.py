"""Turn the workflows' result records into the homework table and a few plots.

Every workflow script appends one JSON record per run to a JSON-lines file (see
plumbing/records.py). This script reads any number of those files and

- prints the homework table (Markdown), plus a second table with the max IO times, GB/s,
  host and date, and writes both to --markdown if given;
- adds the homework rows to the table of an existing Markdown file (--append-to);
- draws IO time and bandwidth versus data size, and each run's time split into start-up,
  simulation, transfer and training (--plots DIR).

    python report.py results/<job>/records.jsonl --markdown table.md --plots results/<job>
    python report.py results/<job>/records.jsonl --append-to README.md

Only numbers found in the records are shown. GB = 10^9 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import tempfile

GB = 1e9

# the spec's names, in the spec's order
IMPLEMENTATIONS = {
    "parsl+futures": "Parsl + futures",
    "parsl+filesystem": "Parsl + file system",
    "dragon+ddict": "DragonHPC + DDict",
    "dragon+ddict-broadcast": "DragonHPC + DDict (broadcast)",
    # 5_parsl_fut_producer_consumer.py --proxystore CONNECTOR: the futures, passing proxies
    "parsl+proxystore-redis": "Parsl + ProxyStore (redis)",
    "parsl+proxystore-file": "Parsl + ProxyStore (file)",
    "parsl+proxystore-zmq": "Parsl + ProxyStore (zmq)",
}
COLORS = {"parsl+futures": "tab:red", "parsl+filesystem": "tab:blue", "dragon+ddict": "tab:green",
          "dragon+ddict-broadcast": "tab:cyan",
          "parsl+proxystore-redis": "tab:purple", "parsl+proxystore-file": "tab:brown",
          "parsl+proxystore-zmq": "tab:olive"}

HOMEWORK_HEADER = ("Implementation", "Number of Nodes", "Training Data Size (GB)",
                   "Simulation Run / IO Time (sec)", "Training Run / IO Time (sec)")
DETAILS_HEADER = ("Implementation", "Nodes", "Simulations x grid", "Trainers",
                  "Data (GB)", "Start-up (s)", "Sim IO mean / max (s)", "Sim IO per simulation (GB/s)",
                  "Train IO mean / max (s)", "Train IO per trainer (GB/s)",
                  "Train IO all trainers (GB/s)", "Host", "Date")
BEGIN_MARKER = "<!-- report:begin -->"     # optional: pick the table between these two lines
END_MARKER = "<!-- report:end -->"


# --------------------------------------------------------------------------- records
def load_records(paths: list[str]) -> list[dict]:
    """Every record of every JSON-lines file, in file order."""
    records = []
    for path in paths:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON record ({error.msg})") from None
    return records


def storage(record: dict) -> str:
    """Where a transport that uses files kept them, from the record: "ext4", "lustre from
    10.140.0.10@o2ib", "sshfs from storage"; "" for the others and for older records."""
    fs = record.get("data_filesystem")
    if not fs:
        return ""
    kind = fs["type"].removeprefix("fuse.")
    server = fs["source"].split(":")[0] if ":" in fs["source"] else ""
    return kind + (f" from {server}" if server else "")


def transport_name(record: dict) -> str:
    """The spec's name of the transport, with the file system its files were on."""
    name = IMPLEMENTATIONS.get(record["transport"], record["transport"])
    where = storage(record)
    return f"{name} [{where}]" if where else name


def implementation(record: dict) -> str:
    name = transport_name(record)
    return name if record.get("integrity_ok", True) else name + " (integrity check FAILED)"


def ordered(records: list[dict]) -> list[dict]:
    """Nodes, then data size, then the spec's order of transports: one size's rows side by side."""
    rank = {transport: i for i, transport in enumerate(IMPLEMENTATIONS)}
    return sorted(records, key=lambda r: (r["num_nodes"], r["bytes_produced"],
                                          rank.get(r["transport"], len(rank))))


# --------------------------------------------------------------------------- tables
def gigabytes(nbytes: float) -> str:
    """3 decimals; 3 significant digits below 0.01 GB so that tiny test runs stay distinct."""
    gb = nbytes / GB
    return f"{gb:.3f}" if gb >= 0.01 or gb == 0 else f"{gb:.3g}"


def run_io(run_s: float, io_s: float) -> str:
    """The spec's cell format: run seconds with 2 decimals / IO seconds with 3."""
    return f"{run_s:.2f} / {io_s:.3f}"


def rate(gbps: float | None) -> str:
    return "-" if gbps is None else f"{gbps:.3f}"


def markdown_row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_table(header, rows) -> list[str]:
    return [markdown_row(header), markdown_row("---" for _ in header)] + [markdown_row(r) for r in rows]


def shares_machine(r: dict) -> bool:
    """Several nodes that were namespaces of one machine (cluster/local_cluster.sh)."""
    return bool(r.get("nodes_share_machine")) and r["num_nodes"] > 1


def nodes_cell(r: dict) -> str:
    """The node count, "2 (one machine)" when those nodes shared one machine's cores and
    memory bandwidth: such rows show behaviour across nodes, not scaling."""
    return f"{r['num_nodes']} (one machine)" if shares_machine(r) else str(r["num_nodes"])


def shared_machine_note(records: list[dict]) -> list[str]:
    """The sentence under a table with "(one machine)" rows, or nothing."""
    machines = sorted({r["nodes_share_machine"] for r in records if shares_machine(r)})
    if not machines:
        return []
    return [f"Number of Nodes \"N (one machine)\": the N nodes were Linux namespaces of one "
            f"machine ({', '.join(machines)}, cluster/local_cluster.sh), sharing its cores, "
            "memory and memory bandwidth. Those rows show how each transport behaves across "
            "nodes (separate processes, network, /tmp and /dev/shm), not how it scales.", ""]


def homework_rows(records: list[dict]) -> list[str]:
    return [markdown_row([implementation(r), nodes_cell(r), gigabytes(r["bytes_produced"]),
                          run_io(r["sim_run_s"], r["sim_io_mean_s"]),
                          run_io(r["train_run_s"], r["train_io_mean_s"])])
            for r in ordered(records)]


def details_cells(r: dict) -> list:
    hosts = r.get("hosts") or ["?"]
    host = hosts[0] + (f" +{len(hosts) - 1}" if len(hosts) > 1 else "")
    epochs = r.get("epochs", 1)
    trainers = f"{r['num_trainers']}" + ("" if epochs == 1 else f" ({epochs} epochs)")
    return [implementation(r), nodes_cell(r), f"{r['num_sims']} x {r['grid_size']}^2",
            trainers, gigabytes(r["bytes_produced"]), f"{r['startup_s']:.2f}",
            f"{r['sim_io_mean_s']:.3f} / {r['sim_io_max_s']:.3f}", rate(r["sim_io_gbps"]),
            f"{r['train_io_mean_s']:.3f} / {r['train_io_max_s']:.3f}", rate(r["train_io_gbps"]),
            rate(r.get("train_io_aggregate_gbps")), host, r["date"][:16].replace("T", " ")]


def io_notes(records: list[dict]) -> list[tuple[dict, str]]:
    """What each transport's IO times cover, as its records say (plumbing/records.py wrote
    it into every record; older records without it get no note)."""
    notes = {}
    for r in records:
        covers = r.get("io_includes") or {}
        if r["transport"] not in notes and "sim_io" in covers and "train_io" in covers:
            notes[r["transport"]] = (r, f"a simulation's IO time is {covers['sim_io']}; a "
                                        f"trainer's is {covers['train_io']}.")
    return list(notes.values())


def render_markdown(records: list[dict], machine: str) -> str:
    records = ordered(records)
    lines = [f"Measured on {machine}.", ""]
    lines += [markdown_row(HOMEWORK_HEADER), markdown_row("---" for _ in HOMEWORK_HEADER)]
    lines += homework_rows(records)
    lines += [""] + shared_machine_note(records)
    lines += ["Run time: wall time of the phase in the workflow's head process. IO time: the "
              "mean over tasks of the time each simulation spent handing its data to the "
              "transport, and each trainer spent receiving all the data; the max over tasks "
              "and the bandwidths are in the table below. Start-up (workers or runtime up, "
              "torch imported) is in neither. GB = 10^9 bytes, inputs and outputs (float64).",
              ""]
    lines += markdown_table(DETAILS_HEADER, [details_cells(r) for r in records])
    lines += ["",
              "Sim IO per simulation: bytes produced / summed simulation IO time. Train IO per trainer: "
              "bytes one trainer read / its mean IO time. All trainers: bytes read by all "
              "trainers / the slowest trainer's IO time.", ""]
    lines += [f"- {implementation(r)}: {note}" for r, note in io_notes(records)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- appending to a file
def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _is_row(line: str) -> bool:
    return line.lstrip().startswith("|")


def _is_placeholder(line: str) -> bool:
    """A row such as `| ... | ... | ... / ... |` that stands for rows to come."""
    return _is_row(line) and re.fullmatch(r"[\s|./]*", line) is not None


def append_rows(path: str, rows: list[str]) -> int:
    """Add `rows` at the end of the table whose header is the homework header, above a
    placeholder row if it has one. With BEGIN/END markers, only the table between them counts.
    Returns the line number (1-based) of the first added row."""
    with open(path) as f:
        lines = f.read().splitlines()
    start, end = 0, len(lines)
    if BEGIN_MARKER in lines and END_MARKER in lines:
        start, end = lines.index(BEGIN_MARKER), lines.index(END_MARKER)
    wanted = [c.lower() for c in HOMEWORK_HEADER]
    header = next((i for i in range(start, end)
                   if _is_row(lines[i]) and [c.lower() for c in _cells(lines[i])] == wanted), None)
    if header is None:
        raise ValueError(f"{path}: no table with the header | {' | '.join(HOMEWORK_HEADER)} |")
    at = header + 2                           # after the |---| line
    while at < end and _is_row(lines[at]) and not _is_placeholder(lines[at]):
        at += 1
    lines[at:at] = rows
    # write next to the file, then rename: a reader never sees half a file
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(f.name, os.stat(path).st_mode)
    os.replace(f.name, path)
    return at + 1


# --------------------------------------------------------------------------- plots
def machine_label(records: list[dict], given: str | None = None) -> str:
    """'host (N cores, no GPU), 2026-11-24': cores only when the records come from this machine."""
    hosts = sorted({(r.get("hosts") or ["?"])[0] for r in records})
    nodes = sorted({r["num_nodes"] for r in records})
    if given:
        machine = given
    else:
        machine = ", ".join(hosts)
        details = []
        if hosts == [socket.gethostname()] and nodes == [1]:
            details.append(f"{os.cpu_count()} cores")
        devices = {d.split()[0] for r in records for d in r.get("devices", [])}
        details.append("trainers on GPU" if devices & {"cuda"} else "no GPU")
        machine += f" ({', '.join(details)})"
    days = sorted({r["date"][:10] for r in records})
    return f"{machine}, {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "")


def nodes_label(r: dict) -> str:
    """"1 node", "2 nodes", "2 nodes (one machine)": for plot labels."""
    n = r["num_nodes"]
    return f"{n} node{'s' if n > 1 else ''}" + (" (one machine)" if shares_machine(r) else "")


def _series(records: list[dict]):
    """(label, transport, records sorted by size) for each transport and node count."""
    node_counts = {r["num_nodes"] for r in records}
    groups: dict[tuple, list[dict]] = {}
    for r in ordered(records):
        groups.setdefault((r["transport"], storage(r), r["num_nodes"], shares_machine(r)),
                          []).append(r)
    for (transport, _, _, _), runs in groups.items():
        label = transport_name(runs[0])
        if len(node_counts) > 1:
            label += f", {nodes_label(runs[0])}"
        yield label, transport, runs


def plot_io(records: list[dict], path: str, machine: str) -> None:
    """IO time (mean, bar up to max) and bandwidth versus data size, per transport."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    for label, transport, runs in _series(records):
        color = COLORS.get(transport)
        # one node: filled markers; several: hollow, so that the two runs of a transport part
        face = {"mfc": "white"} if runs[0]["num_nodes"] > 1 else {}
        size = [r["bytes_produced"] / GB for r in runs]
        for phase, style, marker in (("train", "-", "o"), ("sim", "--", "s")):
            mean = [r[f"{phase}_io_mean_s"] for r in runs]
            spread = [max(r[f"{phase}_io_max_s"] - m, 0.0) for r, m in zip(runs, mean)]
            name = "trainer read" if phase == "train" else "simulation write"
            left.errorbar(size, mean, yerr=[[0] * len(mean), spread], color=color, ls=style,
                          marker=marker, capsize=3, label=f"{label}: {name}", **face)
            gbps = [(s, r[f"{phase}_io_gbps"]) for s, r in zip(size, runs)
                    if r[f"{phase}_io_gbps"]]
            if gbps:
                right.plot(*zip(*gbps), color=color, ls=style, marker=marker,
                           label=f"{label}: {name}", **face)
    sizes = sorted({r["bytes_produced"] for r in records})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        # label the measured sizes themselves, in GB, rather than powers of ten
        ax.set_xticks([s / GB for s in sizes], [gigabytes(s) for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training data size (GB, inputs + outputs)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("IO time per task (s): mean, bar to max")
    left.set_title("Time to hand over / receive the data")
    right.set_ylabel("bandwidth (GB/s)")
    right.set_title("Bandwidth (per simulation / per trainer)")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Data movement by transport - {machine}")
    fig.savefig(path, dpi=120)
    plt.close(fig)


PARTS = (("start-up", "tab:gray"), ("simulation", "tab:orange"),
         ("transfer (IO)", "tab:purple"), ("training", "tab:cyan"), ("shut-down", "lightgray"))


def time_parts(r: dict) -> list[float]:
    """The run's wall time in the order of PARTS. Transfer is the mean IO time of one
    simulation plus that of one trainer; it is taken out of the phase it happened in."""
    sim_io, train_io = r["sim_io_mean_s"], r["train_io_mean_s"]
    return [r["startup_s"], max(r["sim_run_s"] - sim_io, 0.0), sim_io + train_io,
            max(r["train_run_s"] - train_io, 0.0), r.get("shutdown_s", 0.0)]


def plot_breakdown(records: list[dict], path: str, machine: str) -> None:
    """One horizontal stacked bar per run: where its wall time went."""
    import matplotlib.pyplot as plt

    runs = ordered(records)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.45 * len(runs)), layout="constrained")
    several_node_counts = len({r["num_nodes"] for r in runs}) > 1
    labels = [f"{transport_name(r)}, "
              + (f"{nodes_label(r)}, " if several_node_counts else "")
              + f"{gigabytes(r['bytes_produced'])} GB" for r in runs]
    parts = [time_parts(r) for r in runs]
    y = list(range(len(runs)))[::-1]          # first row at the top
    left = [0.0] * len(runs)
    for k, (name, color) in enumerate(PARTS):
        widths = [p[k] for p in parts]
        ax.barh(y, widths, left=left, color=color, label=name, edgecolor="white", height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    for yy, total, p in zip(y, left, parts):
        ax.text(total, yy, f"  {total:.1f} s (IO {p[2]:.2f} s)", va="center", fontsize="small")
    ax.set_yticks(y, labels)
    ax.set_xlabel("wall time of the run as timed by the workflow script (s)")
    ax.set_xlim(0, max(left, default=1) * 1.25)
    ax.legend(ncols=len(PARTS), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small")
    fig.suptitle(f"Where each run's time went - {machine}")
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_plots(records: list[dict], directory: str, machine: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")                     # files only, no display needed
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, "io_vs_size.png"), os.path.join(directory, "time_breakdown.png")]
    plot_io(records, paths[0], machine)
    plot_breakdown(records, paths[1], machine)
    return paths


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", help="JSON-lines files of result records")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--plots", metavar="DIR", help="write io_vs_size.png and time_breakdown.png to DIR")
    parser.add_argument("--append-to", metavar="FILE",
                        help="add the homework rows to the homework table in this Markdown file")
    parser.add_argument("--machine", help="how to name the machine in titles (default: from the records)")
    args = parser.parse_args(argv)

    try:
        records = load_records(args.records)
    except (OSError, ValueError) as error:
        parser.exit(2, f"report.py: error: {error}\n")
    if not records:
        parser.exit(2, f"report.py: error: no records in {', '.join(args.records)}\n")
    machine = machine_label(records, args.machine)
    text = render_markdown(records, machine)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
        print(f"Tables written to {args.markdown}")
    if args.plots:
        for path in make_plots(records, args.plots, machine):
            print(f"Plot written to {path}")
    if args.append_to:
        try:
            line = append_rows(args.append_to, homework_rows(records))
        except (OSError, ValueError) as error:
            parser.exit(1, f"report.py: error: {error}\n")
        print(f"{len(records)} row(s) added to {args.append_to} at line {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
