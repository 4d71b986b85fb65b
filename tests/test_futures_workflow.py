"""5_parsl_fut_producer_consumer.py end to end: real Parsl, data by value, tiny sizes."""
from conftest import leftover_processes, run_end_to_end

SCRIPT = "5_parsl_fut_producer_consumer.py"


def test_futures_workflow_moves_every_sample_and_reports_its_io(workdir):
    record, _ = run_end_to_end([SCRIPT], workdir, "parsl+futures")
    # unlike the earlier public version, the futures transfer has an IO time, and says what it is
    assert record["sim_io_gbps"] > 0 and record["train_io_gbps"] > 0
    assert {"sim_io", "train_io"} <= set(record["io_includes"])
    assert leftover_processes(workdir) == []
    # without --proxystore the data travels by value, as before ProxyStore was added
    assert "proxystore" not in record
    assert "proxy" not in record["io_includes"]["sim_io"]


def test_the_serialization_probe_pickles_what_script_5_sends():
    """benchmarks/serialization_probe.py: one result holds one simulation's pairs, one
    trainer's arguments all of them, each pickled by Parsl's own serializers."""
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from serialization_probe import probe
    measured = probe(num_sims=4, grid_size=16)
    one = 10 * 2 * 16 * 16 * 8
    assert measured["sim_result_bytes"] > one
    assert measured["trainer_args_bytes"] > 4 * one
    assert measured["trainer_args_serialize_s"] > 0 and measured["trainer_args_deserialize_s"] > 0
