"""cluster/install_packages.sh: what it does around apt-get, with a stand-in apt-get that
records what a Debian package's maintainer script would see (the real one runs in
tests/conftest.py's session start, where packages are missing)."""
import os
import shutil
import subprocess

from conftest import ROOT

SCRIPT = ROOT / "cluster" / "install_packages.sh"
TOOLS = ("bash", "sh", "cat", "chmod", "rm", "tr", "flock")

FAKE_APT_GET = """#!/bin/bash
# what a package's postinst does before starting its service: ask policy-rc.d
if [[ $1 == install ]]; then
    if [[ -x $PC_POLICY_RC_D ]]; then "$PC_POLICY_RC_D" redis-server start; echo "policy $?"
    else echo "no policy: the service would start"; fi >> "$LOG"
    printf '#!/bin/sh\\n' > "$BIN/redis-server" && chmod +x "$BIN/redis-server"
fi
"""


def run_install(tmp_path, policy):
    """install_packages.sh redis on a PATH without redis-server (only the tools it uses)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    env = {"PATH": str(bin_dir), "LOG": str(tmp_path / "log"), "BIN": str(bin_dir),
           "PC_POLICY_RC_D": str(policy)}
    proc = subprocess.run(["bash", SCRIPT, "redis"], env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, (tmp_path / "log").read_text()


def test_the_packages_start_no_service_and_the_guard_goes(tmp_path):
    policy = tmp_path / "policy-rc.d"
    proc, log = run_install(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    assert log == "policy 101\n"            # "not now": Debian's code for a denied start
    assert not policy.exists()              # the machine's files are as they were


def test_an_existing_policy_is_left_alone(tmp_path):
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n# the machine's own\n")
    policy.chmod(0o755)
    proc, log = run_install(tmp_path, policy)
    assert proc.returncode == 0, proc.stderr
    assert log == "policy 101\n" and policy.read_text().endswith("# the machine's own\n")
