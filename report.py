"""Turn the workflows' result records into the homework table, observations and plots.

Every workflow script appends one JSON record per run to a JSON-lines file (see
plumbing/records.py). This script reads any number of those files and

- prints the homework table (Markdown), plus a second table with the run counts, max IO
  times, GB/s, host and date, and writes both to --markdown if given;
- prints, with --observations, what the records show (which transport read fastest at each
  data size and node count, how each changed from 1 node to more, the spread of repeated
  runs): a generated block of Markdown, every number in it one the tables also show;
- adds the homework rows to the table of an existing Markdown file (--append-to);
- draws a trainer's read bandwidth and a simulation's write bandwidth against data size,
  one panel per node count, and where each run's time went (--plots DIR).

    python report.py results/<job>/records.jsonl --markdown table.md --plots results/<job>
    python report.py results/<job>/records.jsonl --observations
    python report.py results/<job>/records.jsonl --append-to README.md

Runs of one configuration (see `config_key`) are one row: the median over the runs, with
the range (min-max) where there are several. Runs whose trainers were on the wrong devices
(`devices_ok: false`) or whose data did not all arrive intact (`integrity_ok: false`) are
left out of the tables, observations and plots, and a line says how many and why.

Only numbers found in the records are shown. GB = 10^9 bytes.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import textwrap

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
# colour and marker per transport: the same in every plot, told apart also without colour
STYLES = {"parsl+futures": ("tab:red", "o"), "parsl+filesystem": ("tab:blue", "s"),
          "dragon+ddict": ("tab:green", "^"), "dragon+ddict-broadcast": ("tab:cyan", "v"),
          "parsl+proxystore-redis": ("tab:purple", "D"),
          "parsl+proxystore-file": ("tab:brown", "P"),
          "parsl+proxystore-zmq": ("tab:olive", "X")}

HOMEWORK_HEADER = ("Implementation", "Number of Nodes", "Training Data Size (GB)",
                   "Simulation Run / IO Time (sec)", "Training Run / IO Time (sec)")
DETAILS_HEADER = ("Implementation", "Nodes", "Simulations x grid", "Trainers", "Data (GB)",
                  "Runs", "Start-up (s)", "Sim IO mean (s)", "Sim IO max (s)",
                  "Sim IO per simulation (GB/s)", "Train IO mean (s)", "Train IO max (s)",
                  "Train IO per trainer (GB/s)", "Train IO all trainers (GB/s)", "Host", "Date")
BEGIN_MARKER = "<!-- report:begin -->"     # optional: pick the table between these two lines
END_MARKER = "<!-- report:end -->"

# the table's rounding, which the observations share so that they never disagree with it
RUN_DIGITS, IO_DIGITS, GBPS_DIGITS = 2, 3, 3


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


def problem(record: dict) -> str | None:
    """Why a run cannot stand in the table, or None: its data did not all arrive intact, or
    its trainers were not where the allocation puts them (the CPU of a GPU host, or two
    trainers on one GPU). Records older than the check count as passing it."""
    lost = not record.get("integrity_ok", True)
    devices = not record.get("devices_ok", True)
    reasons = (["data that did not all arrive intact (integrity_ok: false)"] if lost else []) + \
              (["trainers on the wrong devices (devices_ok: false)"] if devices else [])
    return " and ".join(reasons) or None


def sort_out(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the runs to show, the runs left out because of a problem)."""
    return [r for r in records if not problem(r)], [r for r in records if problem(r)]


def left_out_line(left_out: list[dict]) -> str:
    """One sentence: how many runs are left out of the table and plots, and why; "" if none."""
    if not left_out:
        return ""
    why = collections.Counter(problem(r) for r in left_out)
    reasons = ", ".join(f"{count} with {reason}" for reason, count in sorted(why.items()))
    return f"Left out: {plural(len(left_out), 'run')}, {reasons}."


def plural(count: int, word: str) -> str:
    """"1 run", "3 runs"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def shares_machine(r: dict) -> bool:
    """Several nodes that were namespaces of one machine (cluster/local_cluster.sh)."""
    return bool(r.get("nodes_share_machine")) and r["num_nodes"] > 1


def shared_machines(records: list[dict]) -> list[str]:
    """The machines whose namespaces were several nodes of a run, sorted."""
    return sorted({r["nodes_share_machine"] for r in records if shares_machine(r)})


def nodes_cell(r: dict) -> str:
    """The node count, "2 (one machine)" when those nodes shared one machine's cores and
    memory bandwidth: such rows show behaviour across nodes, not scaling."""
    return f"{r['num_nodes']} (one machine)" if shares_machine(r) else str(r["num_nodes"])


def nodes_label(r: dict) -> str:
    """"1 node", "2 nodes", "2 nodes (one machine)": for titles and sentences."""
    return plural(r["num_nodes"], "node") + (" (one machine)" if shares_machine(r) else "")


def trainer_devices(r: dict) -> str:
    """"GPU", "CPU", or "CPU and GPU": where the run's trainers trained."""
    kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in r.get("devices") or []}
    return " and ".join(sorted(kinds)) or "?"


# --------------------------------------------------------------------------- configurations
def config_key(r: dict) -> tuple:
    """What makes runs repeats of each other: the transport and the file system its files
    were on; the node count and the machine the nodes shared (if they did); the simulations'
    number, grid, steps and compute time; the trainers' number, kernel sizes and epochs; and
    whether they trained on CPU or GPU. The hosts and the date are not part of it, so runs
    on other nodes of the same system (another batch job) are repeats too: give report.py
    one system's records at a time. The tuple sorts as the tables list the rows: by nodes,
    then data size, then the spec's order of transports."""
    rank = list(IMPLEMENTATIONS).index(r["transport"]) if r["transport"] in IMPLEMENTATIONS \
        else len(IMPLEMENTATIONS)
    return (r["num_nodes"], r.get("nodes_share_machine") or "", r["bytes_produced"],
            r["num_sims"], r["grid_size"], *extras_key(r), rank, r["transport"], storage(r))


EXTRAS = ("steps_per_sim", "compute_time_s", "num_trainers", "kernel_sizes", "epochs")


def extras_key(r: dict) -> tuple:
    """The settings besides size and nodes, in EXTRAS's order, then the trainers' devices."""
    return (*(json.dumps(r.get(field)) for field in EXTRAS), trainer_devices(r))


def extras_label(r: dict, varying: set[int]) -> str:
    """", 4 trainers, 3 epochs": the settings among `varying` (indices into extras_key) that
    tell this run's configuration from others shown beside it; "" when all agree."""
    words = [plural(r.get("steps_per_sim"), "step"), f"compute {r.get('compute_time_s')} s/step",
             plural(r.get("num_trainers"), "trainer"), f"kernels {r.get('kernel_sizes')}",
             plural(r.get("epochs"), "epoch"), f"trainers on {trainer_devices(r)}"]
    return "".join(f", {words[i]}" for i in sorted(varying))


def varying_extras(configs: list[Config]) -> set[int]:
    """The positions of extras_key in which the configurations differ."""
    keys = [extras_key(c.first) for c in configs]
    return {i for i in range(len(keys[0]) if keys else 0) if len({k[i] for k in keys}) > 1}


@dataclasses.dataclass
class Config:
    """The runs of one configuration (config_key), in the order they were recorded."""
    runs: list[dict]

    @property
    def first(self) -> dict:
        return self.runs[0]

    def values(self, field: str) -> list[float]:
        return [r[field] for r in self.runs if r.get(field) is not None]

    def median(self, field: str) -> float | None:
        values = self.values(field)
        return statistics.median(values) if values else None

    def span(self, field: str) -> tuple[float, float] | None:
        """(min, max) over the runs, or None where no run has the field."""
        values = self.values(field)
        return (min(values), max(values)) if values else None

    @property
    def panel(self) -> tuple:
        """The node count, and the machine the nodes shared: one plot panel each."""
        r = self.first
        return r["num_nodes"], r["nodes_share_machine"] if shares_machine(r) else ""

    @property
    def size(self) -> tuple:
        r = self.first
        return r["bytes_produced"], r["num_sims"], r["grid_size"]

    @property
    def case(self) -> tuple:
        """What the observations compare transports within: one size, node count, setting."""
        return self.size, self.panel, extras_key(self.first)

    @property
    def series(self) -> tuple:
        """What one plot line and one 1-to-N comparison follow across sizes (and nodes)."""
        r = self.first
        return r["transport"], storage(r), extras_key(r)


def configurations(records: list[dict]) -> list[Config]:
    """The records grouped by configuration, in the tables' order."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(config_key(r), []).append(r)
    return [Config(groups[key]) for key in sorted(groups)]


# --------------------------------------------------------------------------- numbers as shown
def gigabytes(nbytes: float) -> str:
    """3 decimals; 3 significant digits below 0.01 GB so that tiny test runs stay distinct."""
    gb = nbytes / GB
    return f"{gb:.3f}" if gb >= 0.01 or gb == 0 else f"{gb:.3g}"


def number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def shown(value: float | None, digits: int) -> float | None:
    """The value as the table prints it: sentences compute from these, never from more
    digits, so that a reader who divides two of the table's numbers gets the same ratio."""
    return None if value is None else float(number(value, digits))


def measured(config: Config, field: str, digits: int) -> str:
    """The median, and after it the range over the runs where there were several:
    "0.239" or "0.239 (0.212-0.266)"; "-" where the records have no value."""
    median = number(config.median(field), digits)
    span = config.span(field)
    if len(config.runs) < 2 or span is None:
        return median
    return f"{median} ({number(span[0], digits)}-{number(span[1], digits)})"


def size_label(config: Config) -> str:
    """"0.010 GB (16 x 64^2)"."""
    nbytes, sims, grid = config.size
    return f"{gigabytes(nbytes)} GB ({sims} x {grid}^2)"


# --------------------------------------------------------------------------- tables
def markdown_row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_table(header, rows) -> list[str]:
    return [markdown_row(header), markdown_row("---" for _ in header)] + [markdown_row(r) for r in rows]


def shared_machine_note(records: list[dict]) -> list[str]:
    """The sentence under a table with "(one machine)" rows, or nothing."""
    machines = shared_machines(records)
    if not machines:
        return []
    return [f"Number of Nodes \"N (one machine)\": the N nodes were Linux namespaces of one "
            f"machine ({', '.join(machines)}, cluster/local_cluster.sh), sharing its cores, "
            "memory and memory bandwidth. Those rows show how each transport behaves across "
            "nodes (separate processes, network, /tmp and /dev/shm), not how it scales.", ""]


def homework_rows(records: list[dict]) -> list[str]:
    """One row per configuration of the records that pass their checks."""
    rows = []
    for c in configurations(sort_out(records)[0]):
        r = c.first
        rows.append(markdown_row([
            transport_name(r), nodes_cell(r), gigabytes(r["bytes_produced"]),
            *(f"{number(c.median(phase + '_run_s'), RUN_DIGITS)} / "
              f"{measured(c, phase + '_io_mean_s', IO_DIGITS)}" for phase in ("sim", "train"))]))
    return rows


def details_cells(c: Config) -> list:
    r = c.first
    hosts = r.get("hosts") or ["?"]
    host = hosts[0] + (f" +{len(hosts) - 1}" if len(hosts) > 1 else "")
    epochs = r.get("epochs", 1)
    trainers = f"{r['num_trainers']}" + ("" if epochs == 1 else f" ({epochs} epochs)")
    first_date = min(run["date"] for run in c.runs)
    return [transport_name(r), nodes_cell(r), f"{r['num_sims']} x {r['grid_size']}^2",
            trainers, gigabytes(r["bytes_produced"]), len(c.runs),
            measured(c, "startup_s", RUN_DIGITS),
            *(measured(c, field, digits) for field, digits in (
                ("sim_io_mean_s", IO_DIGITS), ("sim_io_max_s", IO_DIGITS),
                ("sim_io_gbps", GBPS_DIGITS), ("train_io_mean_s", IO_DIGITS),
                ("train_io_max_s", IO_DIGITS), ("train_io_gbps", GBPS_DIGITS),
                ("train_io_aggregate_gbps", GBPS_DIGITS))),
            host, first_date[:16].replace("T", " ")]


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


def homework_table(records: list[dict]) -> list[str]:
    """The homework table of the records that pass their checks, after a list of the runs
    left out and why (one line each: when, what), and before the note on shared machines."""
    shown_records, left_out = sort_out(records)
    lines = []
    if left_out:
        lines += [left_out_line(left_out) + " They are in neither table nor the plots:", ""]
        lines += [f"- {transport_name(r)}, {nodes_label(r)}, {gigabytes(r['bytes_produced'])} GB, "
                  f"{r['date'][:16].replace('T', ' ')}: {problem(r)}"
                  + (f": {r['devices_problem']}" if r.get("devices_problem") else "")
                  for r in left_out] + [""]
    lines += markdown_table(HOMEWORK_HEADER, []) + homework_rows(shown_records)
    return lines + [""] + shared_machine_note(shown_records)


def render_markdown(records: list[dict], machine: str) -> str:
    """The homework table and the details table of the records that pass their checks, with
    the line that says which runs are left out and why (one per run: when, what)."""
    shown_records = sort_out(records)[0]
    lines = [f"Measured on {machine}.", ""] + homework_table(records)
    lines += ["Run time: wall time of the phase in the workflow's head process. IO time: the "
              "mean over tasks of the time each simulation spent handing its data to the "
              "transport, and each trainer spent receiving all the data; the max over tasks "
              "and the bandwidths are in the table below. Start-up (workers or runtime up, "
              "torch imported) is in neither. Where a configuration ran more than once, each "
              "number is the median over its runs, and after IO times and bandwidths the range "
              "(min-max) over the runs follows in brackets. GB = 10^9 bytes, inputs and "
              "outputs (float64).", ""]
    lines += markdown_table(DETAILS_HEADER, [details_cells(c)
                                             for c in configurations(shown_records)])
    lines += ["",
              "Sim IO per simulation: bytes produced / summed simulation IO time. Train IO per "
              "trainer: bytes one trainer read / its mean IO time. All trainers: bytes read by "
              "all trainers / the slowest trainer's IO time. Runs: how many runs of that "
              "configuration the row sums up.", ""]
    lines += [f"- {transport_name(r)}: {note}" for r, note in io_notes(shown_records)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- observations
def read_time(c: Config) -> float | None:
    """A trainer's read time as the homework table shows it (median over the runs)."""
    return shown(c.median("train_io_mean_s"), IO_DIGITS)


def read_text(c: Config) -> str:
    """"0.028 s (0.372 GB/s)": a trainer's read time and bandwidth, as the tables show them."""
    return (f"{number(read_time(c), IO_DIGITS)} s "
            f"({number(shown(c.median('train_io_gbps'), GBPS_DIGITS), GBPS_DIGITS)} GB/s)")


def times(slow: float | None, fast: float | None) -> float | None:
    """slow / fast, or None where the table's rounding leaves nothing to divide."""
    return slow / fast if slow and fast else None


def change_text(before: float | None, after: float | None) -> str:
    """"2.1x slower", "1.3x faster", "about the same": from `before` to `after` seconds."""
    ratio = times(after, before)
    if ratio is None:
        return "too fast to compare at the table's 0.001 s"
    if f"{ratio:.1f}" == "1.0" and f"{1 / ratio:.1f}" == "1.0":
        return "about the same"
    return f"{ratio:.1f}x slower" if ratio > 1 else f"{1 / ratio:.1f}x faster"


def overlap(a: Config, b: Config) -> bool:
    """Whether the read times of two configurations' runs overlap, as the table shows their
    ranges (where at least one ran more than once): then neither is clearly faster."""
    if len(a.runs) < 2 and len(b.runs) < 2:
        return False
    (a_low, a_high), (b_low, b_high) = (
        [shown(value, IO_DIGITS) for value in c.span("train_io_mean_s")] for c in (a, b))
    return a_low <= b_high and b_low <= a_high


def short_name(transport: str) -> str:
    """"futures", "file system", "DDict": the spec's name without the engine."""
    return IMPLEMENTATIONS.get(transport, transport).split(" + ", 1)[-1]


@dataclasses.dataclass
class Wording:
    """How the observations name what they compare: short transport names ("file system",
    "DDict"), with the file system only for a transport seen on several; the settings
    besides size and nodes only where the configurations differ in them."""
    configs: list[Config]

    def __post_init__(self):
        self.varying = varying_extras(self.configs)
        places = collections.defaultdict(set)
        for c in self.configs:
            places[c.first["transport"]].add(storage(c.first))
        self.several = {t for t, where in places.items() if len(where) > 1}
        self.files = collections.defaultdict(list)      # one file system: said once
        for t, where in places.items():
            if t not in self.several and where != {""}:
                self.files[where.pop()].append(short_name(t))

    def name(self, c: Config) -> str:
        r = c.first
        name = short_name(r["transport"])
        return f"{name} [{storage(r)}]" if r["transport"] in self.several else name

    def cases(self) -> list[list[Config]]:
        """The configurations by case (Config.case), in sorted order."""
        found: dict[tuple, list[Config]] = {}
        for c in self.configs:
            found.setdefault(c.case, []).append(c)
        return [found[case] for case in sorted(found)]

    def case(self, c: Config, nodes: bool = True) -> str:
        """"0.010 GB (16 x 64^2), 1 node": the data size, node count and differing settings."""
        return (size_label(c) + (f", {nodes_label(c.first)}" if nodes else "")
                + extras_label(c.first, self.varying))

    def files_lines(self) -> list[str]:
        return [f"The {' and '.join(names)} runs kept their files on {where}."
                for where, names in sorted(self.files.items())]


def fastest_lines(say: Wording) -> list[str]:
    """Per data size and node count: the transport that read fastest, then the others with
    their read time and, in brackets, that time as a multiple of the fastest one's."""
    lines = []
    for case in say.cases():
        ranked = sorted(case, key=lambda c: (read_time(c) is None, read_time(c) or 0))
        best, others = ranked[0], ranked[1:]
        rest = [f"{say.name(c)} {number(read_time(c), IO_DIGITS)} s ("
                + (f"{ratio:.1f}x" if (ratio := times(read_time(c), read_time(best)))
                   else "no ratio at 0.001 s")
                + (", the runs' ranges overlap" if overlap(c, best) else "") + ")"
                for c in others]
        lines.append(f"- {say.case(best)}: **{say.name(best)}** {read_text(best)}"
                     + (f"; then {', '.join(rest)}." if rest else ", the only one that ran."))
    return lines


def change_lines(say: Wording) -> list[str]:
    """Per data size and node count above the smallest: each transport's read time on the
    smallest node count, then on this one, and the change."""
    smallest = min(c.panel for c in say.configs)
    base = {(c.series, c.size): c for c in say.configs if c.panel == smallest}
    pairs: dict[tuple, list[tuple[Config, Config]]] = {}
    for c in say.configs:
        if c.panel != smallest and (c.series, c.size) in base:
            pairs.setdefault((c.panel, c.size, c.series[2]), []).append((base[c.series, c.size], c))
    lines = []
    for key in sorted(pairs):
        before, after = pairs[key][0]
        parts = [f"{say.name(a)} {number(read_time(b), IO_DIGITS)} -> "
                 f"{number(read_time(a), IO_DIGITS)} s ({change_text(read_time(b), read_time(a))})"
                 for b, a in pairs[key]]
        lines.append(f"- {say.case(after, nodes=False)}, {nodes_label(before.first)} -> "
                     f"{nodes_label(after.first)}: {', '.join(parts)}.")
    return lines


def spread_lines(say: Wording) -> list[str]:
    """One summary of the configurations that ran more than once: how far apart their runs'
    read times were (the slowest run's as a multiple of the fastest one's: the largest, and
    the median over the configurations). The ranges themselves are in the table."""
    ratios = []
    for c in (c for case in say.cases() for c in case if len(c.runs) > 1):
        low, high = (shown(value, IO_DIGITS) for value in c.span("train_io_mean_s"))
        ratios.append((times(high, low) or 1.0, say.name(c), say.case(c), len(c.runs)))
    if not ratios:
        return []
    worst = max(ratios)
    median = statistics.median(ratio for ratio, *_ in ratios)
    counts = sorted({runs for *_, runs in ratios})
    how_often = (f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}")
    return [f"- {plural(len(ratios), 'configuration')} ran {how_often} times each. "
            f"Between the runs of one configuration a trainer's read time varied by up to "
            f"{worst[0]:.1f}x ({worst[1]}, {worst[2]}), by {median:.1f}x at the median; the "
            "table gives each range in brackets, and above, \"the runs' ranges overlap\" "
            "marks an order that these runs do not settle."]


def observations(records: list[dict]) -> str:
    """What the records show, in Markdown, for a student: which transport read fastest at
    each data size and node count and by how much, how each transport changed from the
    smallest node count to the others, and the spread where a configuration ran more than
    once. Every number is one the tables print (same quantity, same rounding): a trainer's
    read time (the homework table's Training IO Time, the median over runs) and its GB/s
    (the details table's per trainer). The text depends on the records alone, in sorted
    order: the same records give the same text."""
    shown_records, left_out = sort_out(records)
    say = Wording(configurations(shown_records))
    lines = [f"Generated by `report.py --observations` from {plural(len(shown_records), 'run')}. "
             "Read time: a trainer's IO time in the homework table (the median where a "
             "configuration ran more than once); GB/s: per trainer."]
    lines += [left_out_line(left_out)] if left_out else []
    lines += say.files_lines()
    machines = shared_machines(shown_records)
    if machines:
        lines += [f"\"(one machine)\": those nodes were namespaces of one machine "
                  f"({', '.join(machines)}), sharing its cores and memory."]
    lines = [" ".join(lines)]
    if not say.configs:
        return "\n".join(lines) + "\n"
    lines += ["", "**Which transport read fastest** (then the others, each with its read time "
                  "as a multiple of the fastest one's):", ""] + fastest_lines(say)
    changes = change_lines(say)
    if changes:
        lines += ["", "**From fewer nodes to more** (each transport's read time):", ""] + changes
    spreads = spread_lines(say)
    if spreads:
        lines += ["", "**Spread between repeated runs:**", ""] + spreads
    else:
        lines += ["", "Each configuration ran once, so these records show no spread between runs."]
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


def fill_readme(text: str, records: list[dict]) -> str:
    """`text` with its generated blocks made anew from `records`: the homework table between
    <!-- sample:begin --> and <!-- sample:end -->, the observations between
    <!-- observations:begin --> and <!-- observations:end -->. ValueError where a pair is missing."""
    for name, block in (("sample", "\n".join(homework_table(records)).strip()),
                        ("observations", observations(records).strip())):
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin not in text or end not in text:
            raise ValueError(f"no {begin} ... {end} block")
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}"
    return text


# --------------------------------------------------------------------------- plots
def machine_label(records: list[dict], given: str | None = None) -> str:
    """'host (N cores, trainers on CPU), 2026-11-24': cores only when the records come from
    this machine; "trainers on GPU" only when every trainer of every record used a GPU."""
    hosts = sorted({(r.get("hosts") or ["?"])[0] for r in records})
    nodes = sorted({r["num_nodes"] for r in records})
    if given:
        machine = given
    else:
        machine = ", ".join(hosts)
        details = []
        if hosts == [socket.gethostname()] and nodes == [1]:
            details.append(f"{os.cpu_count()} cores")
        kinds = {kind for r in records for kind in trainer_devices(r).split(" and ")}
        details.append(f"trainers on {' and '.join(sorted(kinds))}")
        machine += f" ({', '.join(details)})"
    days = sorted({r["date"][:10] for r in records})
    return f"{machine}, {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "")


def figure_title(fig, title: str, machine: str, left_out: list[dict]) -> None:
    """The title, the machine and date, and the line about left-out runs where there are any."""
    note = textwrap.fill(left_out_line(left_out), width=int(fig.get_figwidth() * 11))
    fig.suptitle("\n".join([title, machine] + ([note] if left_out else [])))


def plot_vs_size(configs: list[Config], field: str, ylabel: str):
    """`field` (a bandwidth) against data size: one panel per node count (shared y axis),
    one line per transport, the median over runs with the range (min-max) as an error bar,
    log axes with the measured sizes as ticks. Where there are error bars, each transport's
    points sit a little to the side of the size (a few percent), so that bars at one size
    do not hide each other. Returns the figure."""
    import matplotlib.pyplot as plt

    panels = sorted({c.panel for c in configs})
    varying = varying_extras(configs)
    series = list(dict.fromkeys(c.series for c in configs))
    dodge = any(len(c.runs) > 1 for c in configs)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 5 * len(panels), 5.4), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        lines: dict[tuple, list[Config]] = {}
        for c in configs:
            if c.panel == panel and c.median(field) is not None:
                lines.setdefault(c.series, []).append(c)
        for key, line in lines.items():
            shift = 10 ** (0.012 * (series.index(key) - (len(series) - 1) / 2)) if dodge else 1
            draw_line(ax, line, field, shift, varying)
        ax.set_title(nodes_label(next(c for c in configs if c.panel == panel).first))
        size_axes(ax, sorted({c.size[0] for c in configs}))
        ax.set_xlabel("training data size (GB, at the measured sizes)")
    axes[0][0].set_ylabel(ylabel)
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncols=min(len(handles), 3))
    return fig


def draw_line(ax, line: list[Config], field: str, shift: float, varying: set[int]) -> None:
    """One transport's medians of `field` at its sizes, with the range over the runs as
    error bars where any configuration ran more than once; x is the size times `shift`."""
    r = line[0].first
    color, marker = STYLES.get(r["transport"], (None, "o"))
    y = [c.median(field) for c in line]
    spans = [c.span(field) for c in line]
    bars = [[m - low for m, (low, _) in zip(y, spans)],
            [high - m for m, (_, high) in zip(y, spans)]]
    ax.errorbar([c.size[0] / GB * shift for c in line], y,
                yerr=bars if any(len(c.runs) > 1 for c in line) else None,
                color=color, marker=marker, markersize=7, capsize=4, linewidth=1.8,
                label=transport_name(r) + extras_label(r, varying))


def size_axes(ax, sizes: list[int]) -> None:
    """Log axes; the measured sizes (bytes) as the x ticks, in GB rather than powers of ten;
    y ticks as plain numbers at 1, 2 and 5 times a power of ten (easier than 6 x 10^-1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([s / GB for s in sizes], [gigabytes(s) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)


def save(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=120)
    plt.close(fig)


# one stacked bar's parts, in order: (label, colour)
PARTS = (("start-up (before any phase)", "tab:gray"),
         ("simulation phase, the rest", "tab:orange"),
         ("simulation write: one simulation's IO time", "tab:brown"),
         ("training phase, the rest (mostly training)", "tab:cyan"),
         ("trainer read: one trainer's IO time", "tab:purple"),
         ("shut-down", "lightgray"))


def time_parts(r: dict) -> list[float]:
    """The run's wall time in the order of PARTS. A simulation's mean IO time is taken out
    of the simulation phase, a trainer's out of the training phase; each is the IO time
    the homework table shows for its phase."""
    sim_io, train_io = r["sim_io_mean_s"], r["train_io_mean_s"]
    return [r["startup_s"], max(r["sim_run_s"] - sim_io, 0.0), sim_io,
            max(r["train_run_s"] - train_io, 0.0), train_io, r.get("shutdown_s", 0.0)]


def plot_breakdown(configs: list[Config]):
    """One horizontal stacked bar per configuration (each part the median over its runs),
    one panel per node count: where the wall time went. Returns the figure."""
    import matplotlib.pyplot as plt

    panels = sorted({c.panel for c in configs})
    rows = [[c for c in configs if c.panel == panel] for panel in panels]
    varying = varying_extras(configs)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, layout="constrained",
                             figsize=(12, 2.6 + 0.36 * len(configs) + 0.5 * len(panels)),
                             height_ratios=[len(row) for row in rows])
    for ax, row in zip(axes[:, 0], rows):
        parts = [[statistics.median(p) for p in zip(*map(time_parts, c.runs))] for c in row]
        y = list(range(len(row)))[::-1]          # first row at the top
        left = [0.0] * len(row)
        for k, (name, color) in enumerate(PARTS):
            widths = [p[k] for p in parts]
            ax.barh(y, widths, left=left, color=color, label=name, edgecolor="white", height=0.7)
            left = [a + b for a, b in zip(left, widths)]
        for yy, total, c in zip(y, left, row):
            ax.text(total, yy, f"  {total:.1f} s (read {number(read_time(c), IO_DIGITS)} s)",
                    va="center", fontsize="small")
        ax.set_yticks(y, [f"{transport_name(c.first)}, {gigabytes(c.size[0])} GB"
                          + extras_label(c.first, varying)
                          + (f" ({len(c.runs)} runs)" if len(c.runs) > 1 else "") for c in row])
        ax.set_title(nodes_label(row[0].first), loc="left", weight="bold")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_xlim(0, max(left) * 1.3)
    notes = ["wall time of the run as the workflow script times it (s)",
             "at each bar's end: the total, and (read ...) a trainer's read time "
             "as the table shows it"]
    if any(len(c.runs) > 1 for c in configs):
        notes.append("with several runs of a configuration: each part is the median over them")
    axes[-1, 0].set_xlabel("\n".join(notes))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    return fig


RANGE = "(median of the runs; bars: their range, min-max)"
# file name: (the record's field drawn against data size, or None for the breakdown; the y
# axis's label; the title)
PLOTS = {
    "io_vs_size.png": ("train_io_gbps", "GB/s per trainer (higher is better)",
                       f"How fast a trainer reads all the simulations' data\n{RANGE}"),
    "sim_io_vs_size.png": ("sim_io_gbps", "GB/s per simulation (higher is better)",
                           f"How fast a simulation hands its data to the transport\n{RANGE}"),
    "time_breakdown.png": (None, "", "Where each run's time went"),
}


def figures(records: list[dict], machine: str) -> dict:
    """The figures of PLOTS by file name, of the records that pass their checks, each titled
    with the machine and the line about left-out runs. The main one (io_vs_size.png) shows
    GB/s rather than seconds: time grows with the data for every transport, so seconds
    mostly show that more data takes longer, while GB/s sets the transports apart at every
    size, shows which reach a limit (a flat line), and puts the better one at the top."""
    import matplotlib
    matplotlib.use("Agg")                     # files only, no display needed
    shown_records, left_out = sort_out(records)
    configs = configurations(shown_records)
    drawn = {}
    for name, (field, ylabel, title) in PLOTS.items():
        drawn[name] = plot_vs_size(configs, field, ylabel) if field else plot_breakdown(configs)
        figure_title(drawn[name], title, machine, left_out)
    return drawn


def make_plots(records: list[dict], directory: str, machine: str) -> list[str]:
    """Write the figures of PLOTS into `directory`; their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, fig in figures(records, machine).items():
        paths.append(os.path.join(directory, name))
        save(fig, paths[-1])
    return paths


# --------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", help="JSON-lines files of result records")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--plots", metavar="DIR", help=f"write {', '.join(PLOTS)} to DIR")
    parser.add_argument("--observations", action="store_true",
                        help="print the observations (Markdown) instead of the tables")
    parser.add_argument("--append-to", metavar="FILE",
                        help="add the homework rows to the homework table in this Markdown file")
    parser.add_argument("--machine", help="how to name the machine in titles (default: from the records)")
    parser.add_argument("--readme", metavar="FILE",
                        help="make FILE's generated blocks (sample, observations) anew from the records")
    args = parser.parse_args(argv)

    try:
        records = load_records(args.records)
    except (OSError, ValueError) as error:
        parser.exit(2, f"report.py: error: {error}\n")
    if not records:
        parser.exit(2, f"report.py: error: no records in {', '.join(args.records)}\n")
    good = sort_out(records)[0]
    if not good:
        parser.exit(1, f"report.py: error: no run to show. {left_out_line(records)}\n")
    machine = machine_label(good, args.machine)
    text = render_markdown(records, machine)
    print(observations(records) if args.observations else text, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
        print(f"Tables written to {args.markdown}")
    if args.plots:
        for path in make_plots(records, args.plots, machine):
            print(f"Plot written to {path}")
    if args.readme:
        try:
            with open(args.readme) as f:
                filled = fill_readme(f.read(), records)
        except (OSError, ValueError) as error:
            parser.exit(1, f"report.py: error: {args.readme}: {error}\n")
        with open(args.readme, "w") as f:
            f.write(filled)
        print(f"Generated blocks of {args.readme} made anew")
    if args.append_to:
        rows = homework_rows(records)
        try:
            line = append_rows(args.append_to, rows)
        except (OSError, ValueError) as error:
            parser.exit(1, f"report.py: error: {error}\n")
        print(f"{len(rows)} row(s) added to {args.append_to} at line {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
