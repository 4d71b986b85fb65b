"""0_activate_env.sh on a platform whose Python already has torch and numpy (conda's on
Polaris, built for its CUDA and driver): it keeps them and installs the other pins around
them, instead of pip-installing the pinned wheels over them."""
import importlib.metadata
import os
import subprocess
import sys
import sysconfig

from conftest import ROOT


def test_the_platforms_torch_and_numpy_are_kept(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    # the platform: this environment's packages, seen by the new one as a venv made with
    # --system-site-packages sees conda's
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "platform.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PC_SITE")}
    proc = subprocess.run(["bash", "-c", f"PC_SITE=local PC_VENV={venv} source "
                           f"{ROOT}/0_activate_env.sh && python -c 'import torch, numpy; "
                           "print(torch.__file__, numpy.__file__)'"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # as pip names them: the distribution's version, not torch.__version__ ("2.15.0+cu132")
    kept = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "numpy")]
    assert (venv / "platform-packages.txt").read_text().split() == kept
    assert f"keeping the platform's {' '.join(kept)}" in proc.stderr
    installed = (venv / "requirements-installed.txt").read_text()
    assert "torch==" not in installed and "numpy==" not in installed and "parsl==" in installed
    # the venv runs with the platform's copies; none was installed into it
    torch_file, numpy_file = proc.stdout.split()
    assert not torch_file.startswith(str(venv)) and not numpy_file.startswith(str(venv))
    assert not list(site.glob("torch*")) and not list(site.glob("numpy*"))
