"""report.py on hand-made records: the table's rows and numbers, appending to a README, plots."""
import json

import pytest

import report
from conftest import run_script, unavailable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_tiny_sizes_stay_distinct_and_failed_runs_are_marked():
    tiny = record("parsl+filesystem", grid_size=16, integrity_ok=False)
    [row] = report.homework_rows([tiny])
    assert row.startswith("| Parsl + file system (integrity check FAILED) | 1 | 0.00131 |")
    assert report.homework_rows([record("someone+else")])[0].startswith("| someone+else |")


def test_markdown_has_the_homework_header_and_a_details_table():
    text = report.render_markdown(RECORDS, "polaris (4 GPUs)")
    lines = text.splitlines()
    assert lines[0] == "Measured on polaris (4 GPUs)."
    assert ("| Implementation | Number of Nodes | Training Data Size (GB) | "
            "Simulation Run / IO Time (sec) | Training Run / IO Time (sec) |") in lines
    # the second table: max IO, GB/s (a dash where the record has none), host, date
    assert ("| Parsl + futures | 1 | 32 x 512^2 | 4 | 1.342 | 7.50 | 1.500 / 2.000 | - | "
            "12.346 / 13.000 | 3.180 | 8.800 | x3005c0s7b0n0 | 2026-11-24 10:30 |") in lines
    assert "max over tasks" in text and "GB = 10^9 bytes" in text


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
    records = write_records(tmp_path / "records.jsonl", RECORDS)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    proc = run_script(["report.py", records, "--markdown", tmp_path / "table.md",
                       "--plots", tmp_path / "plots", "--append-to", readme], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "table.md").read_text()
    assert "| DragonHPC + DDict | 1 | 1.342 | 7.01 / 0.233 | 17.92 / 1.194 |" in table
    assert table.splitlines()[0] in proc.stdout
    for name in ("io_vs_size.png", "time_breakdown.png"):
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


def test_breakdown_parts_add_up_to_the_run():
    r = RECORDS[0]
    parts = report.time_parts(r)
    assert parts[2] == pytest.approx(0.233 + 1.194)            # transfer = both IO means
    assert sum(parts) == pytest.approx(r["startup_s"] + r["sim_run_s"] + r["train_run_s"]
                                       + r["shutdown_s"])


def test_rows_of_transports_with_files_name_the_file_system():
    """The record's data_filesystem labels the row: a network one with its server."""
    sshfs = {"type": "fuse.sshfs", "source": "storage:/r/cluster/.state/pfs", "mount_point": "/x"}
    lustre = {"type": "lustre", "source": "10.140.0.10@o2ib:/eagle", "mount_point": "/eagle"}
    local = {"type": "ext4", "source": "/dev/vda", "mount_point": "/"}
    names = [report.implementation(record("parsl+filesystem", data_filesystem=fs))
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
