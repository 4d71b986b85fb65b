"""benchmarks/gpu_check.sh's own safety, without a GPU: it sources and runs a virtual
environment, so it refuses one that another user owns or others can write in."""
import os
import subprocess

import pytest

from conftest import ROOT, unavailable


@pytest.mark.parametrize("how", ["writable by others", "another user's"])
def test_an_environment_others_could_change_is_refused(tmp_path, how):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("echo SOURCED\n")
    if how == "writable by others":
        (venv / "bin").chmod(0o777)
    elif os.geteuid() == 0:
        os.chown(venv, 65534, 65534)
    else:
        unavailable("only root can give a folder to another user")
    proc = subprocess.run(["bash", ROOT / "benchmarks" / "gpu_check.sh", tmp_path / "out"],
                          env={**os.environ, "GPU_CHECK_VENV": str(venv)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "SOURCED" not in proc.stdout
    assert f"FAILED: {venv} is not this user's own, or others can write in it" in proc.stdout
