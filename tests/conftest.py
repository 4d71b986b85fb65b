"""Helpers for running the real workflow scripts, at tiny sizes, in subprocesses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# tiny but real: 16x16 grids, no emulated compute time
TINY = ["--grid_size", "16", "--compute_time", "0"]


TAG = "PC_TEST_RUN"   # every process a test starts inherits this tag, so leftovers can be found


def script_env(tag=None, **overrides) -> dict:
    """The environment a user has after sourcing 0_activate_env.sh: the venv's bin/ on PATH.

    `tag` (e.g. the test's directory) marks the processes started with this environment.
    """
    env = dict(os.environ)
    if tag is not None:
        env[TAG] = str(tag)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


def leftover_processes(tag) -> list:
    """Command lines of live processes started with script_env(tag), children included."""
    needle = f"{TAG}={tag}".encode() + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle not in f.read() + b"\0":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def run_script(argv, cwd, timeout=600, env=None) -> subprocess.CompletedProcess:
    """Run a command (argv[0] a script name under the repository, or a program) and capture it."""
    argv = [str(a) for a in argv]
    if argv[0].endswith(".py"):
        argv = [sys.executable, str(ROOT / argv[0])] + argv[1:]
    return subprocess.run(argv, cwd=cwd, env=env or script_env(cwd), capture_output=True,
                          text=True, timeout=timeout)


def read_records(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch directory the script runs in, with a data directory under it."""
    (tmp_path / "data").mkdir()
    return tmp_path
