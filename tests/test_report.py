"""report.py on hand-made records: grouping of repeats, runs left out, the tables, the
observations, appending to a README, and the plots' panels and lines."""
import json
import random
import re
from pathlib import Path

import pytest

import report
from conftest import run_script, unavailable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAPTOP = Path(__file__).resolve().parents[1] / "figures" / "laptop-records.jsonl"


def record(transport, grid_size=512, **overrides):
    """A record with the keys records.make_record writes, and round numbers."""
    produced = 32 * 10 * 2 * grid_size * grid_size * 8
    base = {
        "transport": transport, "date": "2026-11-24T10:30:00+0000", "num_nodes": 1,
        "hosts": ["x3005c0s7b0n0"], "num_sims": 32, "grid_size": grid_size,
        "steps_per_sim": 10, "compute_time_s": 0.5, "epochs": 1, "num_trainers": 4,
        "kernel_sizes": [3, 5, 7, 9], "devices": ["cuda (CUDA_VISIBLE_DEVICES=0)"] * 4,
        "bytes_produced": produced, "bytes_read_per_trainer": produced,
        "startup_s": 7.5, "sim_run_s": 11.2234, "sim_io_mean_s": 0.0936, "sim_io_max_s": 0.25,
        "sim_io_gbps": 0.448, "train_run_s": 14.9, "train_io_mean_s": 0.4221,
        "train_io_max_s": 0.61, "train_io_gbps": 3.18, "train_io_aggregate_gbps": 8.8,
        "shutdown_s": 1.0, "integrity_ok": True,
    }
    base.update(overrides)
    return base


RECORDS = [  # given out of order on purpose: the table orders by size, then the spec's order
    record("dragon+ddict", sim_run_s=7.01, sim_io_mean_s=0.233, train_run_s=17.92,
           train_io_mean_s=1.194),
    record("parsl+filesystem", grid_size=256),
    record("parsl+futures", sim_run_s=14.384, sim_io_mean_s=1.5, sim_io_max_s=2.0,
           sim_io_gbps=None, train_run_s=26.59, train_io_mean_s=12.3456, train_io_max_s=13.0),
    record("parsl+filesystem"),
]


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_homework_rows_use_the_spec_names_and_formats():
    assert report.homework_rows(RECORDS) == [
        "| Parsl + file system | 1 | 0.336 | 11.22 / 0.094 | 14.90 / 0.422 |",
        "| Parsl + futures | 1 | 1.342 | 14.38 / 1.500 | 26.59 / 12.346 |",
        "| Parsl + file system | 1 | 1.342 | 11.22 / 0.094 | 14.90 / 0.422 |",
        "| DragonHPC + DDict | 1 | 1.342 | 7.01 / 0.233 | 17.92 / 1.194 |",
    ]


def test_tiny_sizes_stay_distinct():
    [row] = report.homework_rows([record("parsl+filesystem", grid_size=16)])
    assert row.startswith("| Parsl + file system | 1 | 0.00131 |")
    assert report.homework_rows([record("someone+else")])[0].startswith("| someone+else |")


def test_markdown_has_the_homework_header_and_a_details_table():
    text = report.render_markdown(RECORDS, "polaris (4 GPUs)")
    lines = text.splitlines()
    assert lines[0] == "Measured on polaris (4 GPUs)."
    assert ("| Implementation | Number of Nodes | Training Data Size (GB) | "
            "Simulation Run / IO Time (sec) | Training Run / IO Time (sec) |") in lines
    # the second table: runs, IO mean and max, GB/s (a dash where the record has none),
    # host, date
    assert ("| Parsl + futures | 1 | 32 x 512^2 | 4 | 1.342 | 1 | 7.50 | 1.500 | 2.000 | - | "
            "12.346 | 13.000 | 3.180 | 8.800 | x3005c0s7b0n0 | 2026-11-24 10:30 |") in lines
    assert "max over tasks" in text and "GB = 10^9 bytes" in text
    assert "Left out" not in text


# --------------------------------------------------------------------------- repeats
def repeats(transport, reads, **overrides):
    """Runs of one configuration that differ in their trainers' read time (and its GB/s),
    on other hosts and dates, as repeats of a main job or of other jobs are."""
    runs = []
    for k, read in enumerate(reads):
        nbytes = record(transport, **overrides)["bytes_read_per_trainer"]
        runs.append(record(transport, train_io_mean_s=read, train_io_gbps=nbytes / read / 1e9,
                           hosts=[f"x3005c0s{k}b0n0"], date=f"2026-11-2{k + 4}T10:30:00+0000",
                           **overrides))
    return runs


def test_repeats_of_a_configuration_are_one_row_with_median_and_range():
    runs = repeats("parsl+futures", [0.5, 0.2, 0.3])
    [config] = report.configurations(runs)
    assert len(config.runs) == 3
    assert config.median("train_io_mean_s") == 0.3
    assert config.span("train_io_mean_s") == (0.2, 0.5)
    assert report.homework_rows(runs) == [
        "| Parsl + futures | 1 | 1.342 | 11.22 / 0.094 (0.094-0.094) | "
        "14.90 / 0.300 (0.200-0.500) |"]
    [details] = [line for line in report.render_markdown(runs, "m").splitlines()
                 if line.startswith("| Parsl + futures | 1 | 32 x 512^2")]
    gbps = [f"{1.34217728 / t:.3f}" for t in (0.5, 0.3, 0.2)]
    assert details == ("| Parsl + futures | 1 | 32 x 512^2 | 4 | 1.342 | 3 | 7.50 (7.50-7.50) | "
                       "0.094 (0.094-0.094) | 0.250 (0.250-0.250) | 0.448 (0.448-0.448) | "
                       "0.300 (0.200-0.500) | 0.610 (0.610-0.610) | "
                       f"{gbps[1]} ({gbps[0]}-{gbps[2]}) | 8.800 (8.800-8.800) | "
                       "x3005c0s0b0n0 | 2026-11-24 10:30 |")


def test_the_median_of_an_even_number_of_runs_is_the_mean_of_the_middle_two():
    [config] = report.configurations(repeats("parsl+futures", [0.1, 0.4, 0.2, 0.3]))
    assert config.median("train_io_mean_s") == pytest.approx(0.25)


@pytest.mark.parametrize("change", [
    {"transport": "parsl+filesystem"}, {"num_nodes": 2}, {"nodes_share_machine": "vm"},
    {"num_sims": 16}, {"grid_size": 256}, {"steps_per_sim": 20}, {"compute_time_s": 0.0},
    {"epochs": 3}, {"num_trainers": 2}, {"kernel_sizes": [3, 3, 3, 3]},
    {"devices": ["cpu"] * 4},
    {"data_filesystem": {"type": "lustre", "source": "10.1.0.1@o2ib:/eagle", "mount_point": "/e"}},
])
def test_a_run_that_differs_in_a_setting_is_another_configuration(change):
    assert len(report.configurations([record("parsl+futures"),
                                      {**record("parsl+futures"), **change}])) == 2


def test_hosts_dates_and_other_measurements_do_not_split_a_configuration():
    other = record("parsl+futures", hosts=["other"], date="2027-01-01T00:00:00+0000",
                   startup_s=99.0, train_io_mean_s=9.0, data_dir="/elsewhere")
    assert len(report.configurations([record("parsl+futures"), other])) == 1


# --------------------------------------------------------------------------- bad runs
ON_CPU = "trainer 0 trained on the CPU of x3005c0s7b0n0, which has 4 GPU(s)"
BAD = [record("parsl+futures", devices_ok=False, devices_problem=ON_CPU, train_io_mean_s=0.001),
       record("dragon+ddict", integrity_ok=False, train_io_mean_s=0.002)]
LEFT_OUT = ("Left out: 2 runs, 1 with data that did not all arrive intact (integrity_ok: false), "
            "1 with trainers on the wrong devices (devices_ok: false).")


def test_runs_on_the_wrong_devices_or_with_lost_data_are_left_out_and_said_so():
    good = [record("parsl+filesystem")]
    assert report.homework_rows(good + BAD) == report.homework_rows(good)
    text = report.render_markdown(good + BAD, "m")
    assert LEFT_OUT in text
    assert f"- Parsl + futures, 1 node, 1.342 GB, 2026-11-24 10:30: trainers on the wrong " \
           f"devices (devices_ok: false): {ON_CPU}" in text.splitlines()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "x3005" in line]
    assert len(rows) == 1 and rows[0].startswith("| Parsl + file system |")
    said = report.observations(good + BAD)
    assert LEFT_OUT in said and "futures" not in said and "DDict" not in said


def test_a_run_with_both_problems_counts_once_with_both_reasons():
    both = record("parsl+futures", devices_ok=False, integrity_ok=False)
    assert report.left_out_line([both]) == (
        "Left out: 1 run, 1 with data that did not all arrive intact (integrity_ok: false) and "
        "trainers on the wrong devices (devices_ok: false).")


def test_trainers_on_gpu_only_when_every_trainer_of_every_run_used_one():
    gpu = record("parsl+futures")
    cpu = record("parsl+futures", devices=["cpu"] * 4)
    mixed = record("parsl+futures", devices=["cuda (CUDA_VISIBLE_DEVICES=0)"] + ["cpu"] * 3)
    assert "(trainers on GPU)" in report.machine_label([gpu, gpu])
    assert "(trainers on CPU and GPU)" in report.machine_label([gpu, cpu])
    assert "(trainers on CPU and GPU)" in report.machine_label([mixed])
    assert "(trainers on CPU)" in report.machine_label([cpu])


def test_command_line_with_only_bad_runs_says_so_in_one_line(tmp_path):
    records = write_records(tmp_path / "records.jsonl", BAD)
    proc = run_script(["report.py", records, "--plots", tmp_path / "plots"], cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"report.py: error: no run to show. {LEFT_OUT}\n"
    assert not (tmp_path / "plots").exists()


# --------------------------------------------------------------------------- observations
def one_and_two_nodes(reads: dict) -> list[dict]:
    """A run per transport and node count; reads: transport -> (read on 1 node, on 2)."""
    runs = []
    for transport, times in reads.items():
        for nodes, read in zip((1, 2), times):
            nbytes = record(transport)["bytes_read_per_trainer"]
            runs.append(record(transport, num_nodes=nodes, nodes_share_machine="vm",
                               train_io_mean_s=read, train_io_gbps=nbytes / read / 1e9))
    return runs


def sections(text: str) -> dict[str, list[str]]:
    """The observations' bullet lines by the bold heading above them."""
    found, heading = {}, None
    for line in text.splitlines():
        if line.startswith("**"):
            heading = line.split("**")[1]
        elif line.startswith("- "):
            found.setdefault(heading, []).append(line)
    return found


def test_observations_name_the_fastest_and_the_change_to_more_nodes():
    runs = one_and_two_nodes({"parsl+futures": (0.5, 0.6), "parsl+filesystem": (0.1, 0.3),
                              "dragon+ddict": (0.25, 0.25), "parsl+proxystore-redis": (0.4, 0.2)})
    random.Random(7).shuffle(runs)
    text = report.observations(runs)
    assert sections(text) == {
        "Which transport read fastest": [
            "- 1.342 GB (32 x 512^2), 1 node: **file system** 0.100 s (13.422 GB/s); then "
            "DDict 0.250 s (2.5x), ProxyStore (redis) 0.400 s (4.0x), futures 0.500 s (5.0x).",
            "- 1.342 GB (32 x 512^2), 2 nodes (one machine): **ProxyStore (redis)** 0.200 s "
            "(6.711 GB/s); then DDict 0.250 s (1.2x), file system 0.300 s (1.5x), "
            "futures 0.600 s (3.0x)."],
        "From fewer nodes to more": [
            "- 1.342 GB (32 x 512^2), 1 node -> 2 nodes (one machine): futures 0.500 -> "
            "0.600 s (1.2x slower), file system 0.100 -> 0.300 s (3.0x slower), DDict 0.250 -> "
            "0.250 s (about the same), ProxyStore (redis) 0.400 -> 0.200 s (2.0x faster)."]}
    assert "\"(one machine)\": those nodes were namespaces of one machine (vm)" in text
    assert "Each configuration ran once" in text
    assert text.startswith("Generated by `report.py --observations` from 8 runs.")
    # the same records in another order, or the same text twice: the same text
    assert report.observations(sorted(runs, key=lambda r: r["transport"])) == text


def test_observations_divide_the_numbers_the_table_shows():
    """0.0346 / 0.0124 is 2.79, but the table shows 0.035 and 0.012: 2.9x."""
    runs = [record("parsl+filesystem", train_io_mean_s=0.0124),
            record("parsl+futures", train_io_mean_s=0.0346)]
    [line] = sections(report.observations(runs))["Which transport read fastest"]
    assert line.endswith("then futures 0.035 s (2.9x).")
    assert [row.split(" / ")[-1] for row in report.homework_rows(runs)] == ["0.035 |", "0.012 |"]


def test_observations_show_the_spread_of_repeats_and_where_ranges_overlap():
    runs = (repeats("parsl+filesystem", [0.1, 0.2]) + repeats("dragon+ddict", [0.18, 0.3])
            + repeats("parsl+futures", [0.9, 1.0, 1.3]))
    text = report.observations(runs)
    found = sections(text)
    # the median of 2 runs' GB/s (13.422, 6.711), as the table's column, not bytes / 0.150 s
    assert found["Which transport read fastest"] == [
        "- 1.342 GB (32 x 512^2), 1 node: **file system** 0.150 s (10.066 GB/s); then DDict "
        "0.240 s (1.6x, the runs' ranges overlap), futures 1.000 s (6.7x)."]
    # futures 1.3/0.9 = 1.4x, file system 0.2/0.1 = 2.0x, DDict 0.3/0.18 = 1.7x
    assert found["Spread between repeated runs:"] == [
        "- 3 configurations ran 2 to 3 times each. Between the runs of one configuration a "
        "trainer's read time varied by up to 2.0x (file system, 1.342 GB (32 x 512^2), 1 node), "
        "by 1.7x at the median; the table gives each range in brackets, and above, \"the runs' "
        "ranges overlap\" marks an order that these runs do not settle."]
    assert "ran once" not in text


def test_observations_tell_apart_settings_that_differ():
    runs = [record("parsl+futures"), record("parsl+filesystem"),
            record("parsl+futures", epochs=3, train_io_mean_s=0.2)]
    lines = sections(report.observations(runs))["Which transport read fastest"]
    assert [line.split(":")[0] for line in lines] == [
        "- 1.342 GB (32 x 512^2), 1 node, 1 epoch", "- 1.342 GB (32 x 512^2), 1 node, 3 epochs"]
    assert lines[1].endswith("**futures** 0.200 s (3.180 GB/s), the only one that ran.")


def test_observations_name_the_file_system_once_or_per_row_where_it_differs():
    sshfs = {"type": "fuse.sshfs", "source": "storage:/pfs", "mount_point": "/pfs"}
    lustre = {"type": "lustre", "source": "10.1.0.1@o2ib:/eagle", "mount_point": "/eagle"}
    one = report.observations([record("parsl+filesystem", data_filesystem=sshfs),
                               record("parsl+proxystore-file", data_filesystem=sshfs)])
    assert "The file system and ProxyStore (file) runs kept their files on sshfs from " \
           "storage." in one
    two = report.observations([record("parsl+filesystem", data_filesystem=sshfs),
                               record("parsl+filesystem", data_filesystem=lustre,
                                      train_io_mean_s=0.1)])
    assert "**file system [lustre from 10.1.0.1@o2ib]** 0.100 s" in two
    assert "then file system [sshfs from storage] 0.422 s (4.2x)" in two


def test_every_read_time_in_the_observations_of_a_real_job_is_a_cell_of_its_table():
    records = report.load_records([LAPTOP])
    text = report.observations(records)
    # a cell is "median" or, for repeated runs, "median (min-max)"
    table = {row.split(" / ")[-1].strip(" |").split(" (")[0]
             for row in report.homework_rows(records)}
    fastest = sections(text)["Which transport read fastest"]
    said = {t for line in fastest for t in re.findall(r"(\d+\.\d{3}) s\b", line)}
    assert said == table
    cases = {(r["bytes_produced"], r["num_nodes"]) for r in records if not report.problem(r)}
    assert len(fastest) == len(cases)


def test_command_line_prints_the_observations(tmp_path):
    records = write_records(tmp_path / "records.jsonl", RECORDS + BAD)
    proc = run_script(["report.py", records, "--observations"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == report.observations(RECORDS + BAD)


README = """# Exercise

## Data Transfer Performance (Homework)

| Implementation   | Number of Nodes | Training Data Size (GB) | Simulation Run / IO Time (sec) | Training Run / IO Time (sec) |
|------------------|-----------------|--------------------|-----------------|---------------|
| Parsl + futures | 1   | 0.62   | 14.38 / NA   | 26.59 / NA   |
| ...   | ...   | ...   | ... / ...  | ... / ...  |

**Observations**
"""


def test_append_puts_rows_under_the_existing_rows_above_the_placeholder(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    line = report.append_rows(str(readme), ["| new | 1 |", "| newer | 2 |"])
    lines = readme.read_text().splitlines()
    assert line == 8 and lines[7:9] == ["| new | 1 |", "| newer | 2 |"]
    assert lines[6].startswith("| Parsl + futures | 1   | 0.62")
    assert lines[9].startswith("| ...   | ...")
    # nothing else changed
    assert [l for l in lines if not l.startswith("| new")] == README.splitlines()


def test_append_between_markers_picks_that_table(tmp_path):
    header = "| Implementation | Number of Nodes | Training Data Size (GB) | " \
             "Simulation Run / IO Time (sec) | Training Run / IO Time (sec) |"
    text = "\n".join([header, "|---|---|---|---|---|", "| first table | 1 |", "",
                      report.BEGIN_MARKER, header, "|---|---|---|---|---|", "| old row |",
                      report.END_MARKER, ""])
    path = tmp_path / "results.md"
    path.write_text(text)
    report.append_rows(str(path), ["| added |"])
    lines = path.read_text().splitlines()
    assert lines[7:10] == ["| old row |", "| added |", report.END_MARKER]
    assert lines[2] == "| first table | 1 |"


def test_append_refuses_a_file_without_the_table(tmp_path):
    path = tmp_path / "other.md"
    path.write_text("# no table here\n")
    with pytest.raises(ValueError, match="no table with the header"):
        report.append_rows(str(path), ["| x |"])


def test_command_line_writes_tables_plots_and_appends(tmp_path):
    records = write_records(tmp_path / "records.jsonl", RECORDS + BAD)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    proc = run_script(["report.py", records, "--markdown", tmp_path / "table.md",
                       "--plots", tmp_path / "plots", "--append-to", readme], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "table.md").read_text()
    assert "| DragonHPC + DDict | 1 | 1.342 | 7.01 / 0.233 | 17.92 / 1.194 |" in table
    assert LEFT_OUT in table and table.splitlines()[0] in proc.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(report.PLOTS)
    for name in report.PLOTS:
        png = (tmp_path / "plots" / name).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert "| Parsl + futures | 1 | 1.342 | 14.38 / 1.500 | 26.59 / 12.346 |" in readme.read_text()
    assert "4 row(s) added" in proc.stdout


def test_command_line_rejects_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"transport": "parsl+futures"}\nnot json\n')
    proc = run_script(["report.py", bad], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"report.py: error: {bad}:2: not a JSON record (Expecting value)"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = run_script(["report.py", empty], cwd=tmp_path)
    assert proc.returncode == 2 and "no records" in proc.stderr


def test_breakdown_parts_add_up_to_the_run_and_its_io_is_the_tables():
    r = RECORDS[0]
    parts = report.time_parts(r)
    assert parts[2] == 0.233 and parts[4] == 1.194            # the table's two IO times
    assert sum(parts) == pytest.approx(r["startup_s"] + r["sim_run_s"] + r["train_run_s"]
                                       + r["shutdown_s"])


# --------------------------------------------------------------------------- plots
def job() -> list[dict]:
    """Runs like a main job's: 3 transports, 2 sizes, 1 node and 2 nodes of one machine,
    the file system's 1-node runs 3 times."""
    runs = []
    for nodes in (1, 2):
        for grid in (256, 512):
            for transport in ("parsl+futures", "parsl+filesystem", "dragon+ddict"):
                reads = [0.3, 0.1, 0.2] if transport == "parsl+filesystem" and nodes == 1 else [0.4]
                runs += repeats(transport, reads, grid_size=grid, num_nodes=nodes,
                                nodes_share_machine="vm")
    return runs


@pytest.fixture
def drawn():
    figures = report.figures(job() + BAD, "vm (trainers on GPU), 2026-11-24")
    yield figures
    import matplotlib.pyplot as plt
    plt.close("all")


def test_main_figure_has_a_panel_per_node_count_and_a_line_per_transport(drawn):
    fig = drawn["io_vs_size.png"]
    assert [ax.get_title() for ax in fig.axes] == ["1 node", "2 nodes (one machine)"]
    names = ["Parsl + futures", "Parsl + file system", "DragonHPC + DDict"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == names
    for ax in fig.axes:
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.336", "1.342"]
        assert [c.get_label() for c in ax.containers] == names
    assert fig.axes[0].get_ylabel() == "GB/s per trainer (higher is better)"
    assert LEFT_OUT.split(",")[0] in fig.get_suptitle()


def test_main_figure_draws_the_median_with_the_range_as_its_error_bar(drawn):
    ax = drawn["io_vs_size.png"].axes[0]
    files = next(c for c in ax.containers if c.get_label() == "Parsl + file system")
    line, _, (bars,) = files.lines
    nbytes = record("parsl+filesystem", grid_size=512)["bytes_read_per_trainer"]
    assert line.get_ydata()[1] == pytest.approx(nbytes / 0.2 / 1e9)
    low, high = bars.get_segments()[1][:, 1]
    assert (low, high) == (pytest.approx(nbytes / 0.3 / 1e9), pytest.approx(nbytes / 0.1 / 1e9))
    # points moved aside by a few percent at most, so that the bars do not hide each other
    assert line.get_xdata() == pytest.approx([0.336, 1.342], rel=0.05)
    # no run of futures is repeated: no bar; its points sit beside the file system's
    futures = next(c for c in ax.containers if c.get_label() == "Parsl + futures")
    assert files.has_yerr and not futures.has_yerr
    assert futures.lines[0].get_xdata()[0] < line.get_xdata()[0]


def test_simulation_writes_have_their_own_figure(drawn):
    fig = drawn["sim_io_vs_size.png"]
    assert fig.axes[0].get_ylabel() == "GB/s per simulation (higher is better)"
    assert "simulation hands its data" in fig.get_suptitle()
    line = fig.axes[0].containers[0].lines[0]
    assert list(line.get_ydata()) == [0.448, 0.448]


def test_breakdown_has_a_bar_per_configuration_and_explains_its_labels(drawn):
    fig = drawn["time_breakdown.png"]
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["1 node", "2 nodes (one machine)"]
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels[1] == "Parsl + file system, 0.336 GB (3 runs)" and len(labels) == 6
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [name for name, _ in report.PARTS]
    assert "trainer read: one trainer's IO time" in legend
    texts = [t.get_text() for t in axes[0].texts]
    assert texts[1] == "  34.6 s (read 0.200 s)"       # 7.5 + 11.2234 + 14.9 + 1.0, IO inside
    assert "(read ...) a trainer's read time as the table shows it" in axes[1].get_xlabel()
    assert all(re.fullmatch(r"  \d+\.\d s \(read \d+\.\d{3} s\)", t) for t in texts)


def test_plots_with_one_node_count_have_one_panel_and_no_error_bars():
    figures = report.figures([record("parsl+futures"), record("dragon+ddict")], "m")
    fig = figures["io_vs_size.png"]
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "1 node"
    assert all(c.has_yerr is False for c in fig.axes[0].containers)
    assert "Left out" not in fig.get_suptitle()
    import matplotlib.pyplot as plt
    plt.close("all")


def test_rows_of_transports_with_files_name_the_file_system():
    """The record's data_filesystem labels the row: a network one with its server."""
    sshfs = {"type": "fuse.sshfs", "source": "storage:/r/cluster/.state/pfs", "mount_point": "/x"}
    lustre = {"type": "lustre", "source": "10.140.0.10@o2ib:/eagle", "mount_point": "/eagle"}
    local = {"type": "ext4", "source": "/dev/vda", "mount_point": "/"}
    names = [report.transport_name(record("parsl+filesystem", data_filesystem=fs))
             for fs in (sshfs, lustre, local, None)]
    assert names == ["Parsl + file system [sshfs from storage]",
                     "Parsl + file system [lustre from 10.140.0.10@o2ib]",
                     "Parsl + file system [ext4]", "Parsl + file system"]
    rows = report.homework_rows([record("parsl+proxystore-file", data_filesystem=sshfs),
                                 record("dragon+ddict", data_filesystem=None)])
    assert rows[0].startswith("| DragonHPC + DDict | 1 |")
    assert rows[1].startswith("| Parsl + ProxyStore (file) [sshfs from storage] | 1 |")


@pytest.mark.parametrize("path", ["/", "/proc/self", "/dev/shm", "/sys/kernel", "."])
def test_the_file_system_of_a_path_is_the_one_findmnt_names(path):
    """records.filesystem_of, against util-linux's findmnt on the same path."""
    import subprocess
    from plumbing import records
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,TARGET", "--target", path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        unavailable(f"findmnt cannot tell: {out.stderr.strip()}")
    fs_type, source, target = out.stdout.splitlines()[-1].split(maxsplit=2)
    assert records.filesystem_of(path) == {"type": fs_type, "source": source,
                                           "mount_point": target}
