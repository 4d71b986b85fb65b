"""The shell scripts parse, pass shellcheck, and 0_activate_env.sh behaves as documented."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, unavailable
from test_multinode import installed_or_skip

SCRIPTS = ["0_activate_env.sh", "9_submit_multinode.sh", ".ci/run", "cluster/slurm.sh",
           "cluster/install_packages.sh", "benchmarks/gpu_check.sh", "benchmarks/gpu_wheels.sh"]


@pytest.fixture(scope="session")
def shellcheck():
    return installed_or_skip("shellcheck", "shellcheck")


def _existing(script: str):
    assert (ROOT / script).exists(), f"{script} is not in this checkout"
    return ROOT / script


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", _existing(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script, shellcheck):
    # -x follows `source`, from the repository root as the scripts do
    proc = subprocess.run([shellcheck, "-x", str(_existing(script).relative_to(ROOT))],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PC_SITE")}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_sourcing_again_only_activates(tmp_path):
    venv = sys.prefix
    if not os.path.exists(os.path.join(venv, ".requirements.sha256")):
        unavailable("these tests run only in an environment 0_activate_env.sh made")
    # a strict caller (set -euo pipefail, as CI and batch scripts are) from another directory
    proc = _bash(f"set -euo pipefail; PC_VENV={venv} source {ROOT}/0_activate_env.sh; "
                 'echo "python=$(command -v python) venv=$VIRTUAL_ENV"', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"python={venv}/bin/python venv={venv}" in proc.stdout
    assert "creating" not in proc.stderr and "installing" not in proc.stderr
    assert os.listdir(tmp_path) == []


def test_running_instead_of_sourcing_says_how(tmp_path):
    venv = sys.prefix
    if not os.path.exists(os.path.join(venv, ".requirements.sha256")):
        unavailable("these tests run only in an environment 0_activate_env.sh made")
    proc = _bash(f"PC_VENV={venv} bash {ROOT}/0_activate_env.sh", cwd=tmp_path)
    assert proc.returncode == 0
    assert "source 0_activate_env.sh" in proc.stderr


def test_a_python_too_old_or_missing_is_refused_in_one_line(tmp_path):
    """A fresh environment needs Python 3.11+: PC_PYTHON naming none stops with one line
    (and creates nothing), instead of a venv that cannot install the pins."""
    venv = tmp_path / "venv"
    proc = _bash(f"PC_VENV={venv} PC_PYTHON={tmp_path}/no-such-python source {ROOT}/0_activate_env.sh",
                 cwd=tmp_path)
    assert proc.returncode != 0
    assert f"{tmp_path}/no-such-python is missing or older than 3.11" in proc.stderr
    assert not venv.exists()



def test_the_oldest_python_accepted_is_the_one_every_pin_supports():
    """0_activate_env.sh and the README ask for the newest Requires-Python of the pinned
    packages (DragonHPC 0.15: 3.11), so no environment is built that cannot install them."""
    import re
    from importlib import metadata
    needed = max(tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", metadata.metadata(p)
                                          ["Requires-Python"] or ">=3.0").groups()))
                 for p in ("dragonhpc", "parsl", "torch", "numpy", "proxystore"))
    script = (ROOT / "0_activate_env.sh").read_text()
    [accepted] = re.findall(r"sys\.version_info < \((\d+), (\d+)\)", script)
    assert tuple(map(int, accepted)) == needed
    assert f"Python {needed[0]}.{needed[1]} or newer" in (ROOT / "README.md").read_text()
