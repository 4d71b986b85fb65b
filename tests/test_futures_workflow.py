"""5_parsl_fut_producer_consumer.py end to end: real Parsl, data by value, tiny sizes."""
import os

from conftest import TINY, leftover_processes, read_records, run_script

SCRIPT = "5_parsl_fut_producer_consumer.py"


def test_futures_workflow_moves_every_sample_and_reports_its_io(workdir):
    # 128 simulations: far above the 41 distinct names of the earlier public version
    data, results = workdir / "data", workdir / "results.jsonl"
    proc = run_script([SCRIPT, "--num_sims", 128, "--num_trainers", 2, *TINY,
                       "--data_dir", data, "--results_file", results], cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    expected = 128 * 10 * 2 * 16 * 16 * 8
    assert record["transport"] == "parsl+futures"
    assert record["bytes_produced"] == expected
    assert record["bytes_read_per_trainer"] == expected
    assert record["integrity_ok"] is True
    assert record["num_sims"] == 128 and record["num_trainers"] == 2 and record["num_nodes"] == 1
    # unlike the earlier public version, the futures transfer has an IO time, and says what it is
    for key in ("startup_s", "sim_run_s", "sim_io_mean_s", "sim_io_max_s", "train_run_s",
                "train_io_mean_s", "train_io_max_s"):
        assert isinstance(record[key], float) and record[key] > 0, key
    assert record["sim_io_max_s"] >= record["sim_io_mean_s"]
    assert record["train_io_max_s"] >= record["train_io_mean_s"]
    assert record["sim_io_gbps"] > 0 and record["train_io_gbps"] > 0
    assert {"sim_io", "train_io"} <= set(record["io_includes"])
    probe = record["serialization_probe"]
    assert probe["sim_result_bytes"] > 10 * 2 * 16 * 16 * 8      # one simulation's pairs, pickled
    assert probe["trainer_args_bytes"] > expected                 # all of them, pickled
    assert probe["trainer_args_serialize_s"] > 0 and probe["trainer_args_deserialize_s"] > 0
    assert "Integrity               : OK" in proc.stdout
    # Parsl's run files lived in a run directory under data/, now gone; nothing else was made
    assert os.listdir(data) == []
    assert sorted(os.listdir(workdir)) == ["data", "results.jsonl"]
    assert leftover_processes(workdir) == []
