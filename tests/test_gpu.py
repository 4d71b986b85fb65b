"""On a machine with GPUs: the workflows train one trainer per GPU, on that GPU, and a run
says so. Elsewhere these tests skip (they need the hardware); tests/test_placement.py checks
the same placement logic without a GPU."""
import pytest
import torch

from conftest import CPU_ONLY, TINY, read_records, run_script, script_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a GPU that torch can use")


def gpu_env(workdir) -> dict:
    """The environment of a user on a GPU node: the GPU count is the machine's."""
    env = script_env(workdir)
    for name in CPU_ONLY:
        env.pop(name, None)
    return env


@pytest.mark.parametrize("script", ["6_parsl_fs_producer_consumer.py",
                                    "8_dragon_producer_consumer.py"])
def test_every_trainer_gets_a_gpu_of_its_own(workdir, script):
    results = workdir / "r.jsonl"
    proc = run_script([script, "--num_sims", 4, *TINY, "--data_dir", workdir / "data",
                       "--results_file", results], cwd=workdir, env=gpu_env(workdir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_records(results)
    assert record["devices_ok"] is True and record["integrity_ok"] is True
    assert record["num_trainers"] == record["gpus_per_node"] >= 1
    assert all(t["device"].startswith("cuda") and t["uuid"] for t in record["trainer_gpus"])
    assert len({t["uuid"] for t in record["trainer_gpus"]}) == record["num_trainers"]
