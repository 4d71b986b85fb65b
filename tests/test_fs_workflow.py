"""6_parsl_fs_producer_consumer.py end to end: real Parsl, real files, tiny sizes."""
import os

from conftest import TINY, read_records, run_end_to_end, run_script

SCRIPT = "6_parsl_fs_producer_consumer.py"


def test_filesystem_workflow_moves_every_sample_exactly_once(workdir):
    record, proc = run_end_to_end([SCRIPT], workdir, "parsl+filesystem")
    assert record["kernel_sizes"] == [3, 5]
    assert "0.005 GB (5,242,880 bytes" in proc.stdout


def test_keep_data_keeps_one_file_per_simulation(workdir):
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([SCRIPT, "--num_sims", 3, "--num_trainers", 1, *TINY, "--keep_data",
                       "--data_dir", data, "--results_file", results], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = os.listdir(data)
    files = sorted(f for f in os.listdir(data / run_dir) if f.endswith(".npy"))
    assert files == ["sim_000000.npy", "sim_000001.npy", "sim_000002.npy"]
    assert read_records(results)[0]["kept_run_dir"].endswith(run_dir)
