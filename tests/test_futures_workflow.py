"""5_parsl_fut_producer_consumer.py end to end: real Parsl, data by value, tiny sizes."""
from conftest import leftover_processes, run_end_to_end

SCRIPT = "5_parsl_fut_producer_consumer.py"


def test_futures_workflow_moves_every_sample_and_reports_its_io(workdir):
    record, _ = run_end_to_end([SCRIPT], workdir, "parsl+futures")
    # unlike the earlier public version, the futures transfer has an IO time, and says what it is
    assert record["sim_io_gbps"] > 0 and record["train_io_gbps"] > 0
    assert {"sim_io", "train_io"} <= set(record["io_includes"])
    probe = record["serialization_probe"]
    assert probe["sim_result_bytes"] > 10 * 2 * 16 * 16 * 8      # one simulation's pairs, pickled
    assert probe["trainer_args_bytes"] > record["bytes_produced"]  # all of them, pickled
    assert probe["trainer_args_serialize_s"] > 0 and probe["trainer_args_deserialize_s"] > 0
    assert leftover_processes(workdir) == []
    # without --proxystore the data travels by value, as before ProxyStore was added
    assert "proxystore" not in record
    assert "proxy" not in record["io_includes"]["sim_io"]
