"""6_parsl_fs_producer_consumer.py end to end: real Parsl, real files, tiny sizes."""
import os

from conftest import TINY, read_records, run_script

SCRIPT = "6_parsl_fs_producer_consumer.py"


def test_filesystem_workflow_moves_every_sample_exactly_once(workdir):
    # 128 simulations: far above the 41 distinct names of the earlier public version
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([SCRIPT, "--num_sims", 128, "--num_trainers", 2, *TINY,
                       "--data_dir", data, "--results_file", results], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    expected = 128 * 10 * 2 * 16 * 16 * 8
    assert record["transport"] == "parsl+filesystem"
    assert record["bytes_produced"] == expected
    assert record["bytes_read_per_trainer"] == expected
    assert record["integrity_ok"] is True
    assert record["num_sims"] == 128 and record["num_trainers"] == 2 and record["num_nodes"] == 1
    assert record["kernel_sizes"] == [3, 5]
    for key in ("startup_s", "sim_run_s", "sim_io_mean_s", "sim_io_max_s", "train_run_s",
                "train_io_mean_s", "train_io_max_s"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["sim_io_max_s"] >= record["sim_io_mean_s"]
    assert record["train_io_max_s"] >= record["train_io_mean_s"]
    assert "Integrity               : OK" in proc.stdout
    assert "0.005 GB (5,242,880 bytes" in proc.stdout
    # the run directory (data files and Parsl's own files) is gone, nothing else was created
    assert os.listdir(data) == []
    assert sorted(os.listdir(workdir)) == ["data", "results.jsonl"]


def test_keep_data_keeps_one_file_per_simulation(workdir):
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([SCRIPT, "--num_sims", 3, "--num_trainers", 1, *TINY, "--keep_data",
                       "--data_dir", data, "--results_file", results], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = os.listdir(data)
    files = sorted(f for f in os.listdir(data / run_dir) if f.endswith(".npy"))
    assert files == ["sim_000000.npy", "sim_000001.npy", "sim_000002.npy"]
    assert read_records(results)[0]["kept_run_dir"].endswith(run_dir)
