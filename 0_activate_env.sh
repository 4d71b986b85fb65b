# shellcheck shell=bash
# Set up and activate the environment for the producer-consumer scripts. Source it:
#
#     source 0_activate_env.sh
#
# On a machine without ALCF modules (a laptop, a workstation, CI) it creates .venv next to
# this file the first time, installs the pinned requirements.txt into it, and activates it.
# Sourcing it again only activates: it reinstalls only when requirements.txt changed.
#
# On ALCF Polaris (a login node: compute nodes cannot reach the package index) it loads the
# site's conda module, creates a virtual environment on top of conda's base
# (--system-site-packages) in .venv-polaris next to this file the first time, and activates
# it; then it puts what Parsl and Dragon need on PATH. Conda's torch and numpy (built for
# Polaris's CUDA and driver) are kept, not replaced by the pinned wheels: the venv's
# platform-packages.txt names them, and every run's record names the versions it used.
#
# Anywhere else (a Slurm machine such as Perlmutter, a login node or inside a job) it is the
# local set-up. The environment is made with python3 when that is 3.11 or newer (DragonHPC 0.15
# needs 3.11); an older one (the system Python of many HPC machines) is passed over for the
# site's Python module (`module load python`) where there is a `module` command.
#
# PC_VENV=/path     where the virtual environment lives (both cases)
# PC_SITE=polaris   force the Polaris set-up; PC_SITE=local force the local one
# PC_PYTHON=/path   the Python to create the local environment with (default: see above)
#
# Dragon on several Polaris nodes: its DDict uses RDMA (Slingshot, through libfabric) only
# after you tell it once, per environment, where the Cray libfabric is:
#     dragon-config add --ofi-runtime-lib=/opt/cray/libfabric/<version>/lib64
# Without that, traffic between nodes silently falls back to TCP. This script prints the
# exact command while it is missing.

_pc_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)

_pc_on_polaris() {
    case ${PC_SITE:-} in
        polaris) return 0 ;;
        local) return 1 ;;
    esac
    # login nodes are polaris-login-NN; inside a job PBS_O_HOST names the login node
    [[ "$(hostname 2>/dev/null)" == polaris* || "${PBS_O_HOST:-}" == *polaris* ]]
}

_pc_make_env() {
    # _pc_make_env PYTHON VENV [venv options]: create VENV once, install the pins, activate
    local python=$1 venv=$2
    shift 2
    local stamp="$venv/.requirements.sha256"
    local wanted
    wanted=$(sha256sum "$_pc_root/requirements.txt" | cut -d' ' -f1)
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "0_activate_env.sh: creating $venv" >&2
        "$python" -m venv "$@" "$venv" || return 1
    fi
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
        echo "0_activate_env.sh: installing requirements.txt into $venv (once)" >&2
        # torch and numpy that the platform's Python provides (conda's on Polaris, built for
        # its CUDA and driver) stay as they are: the other pins are installed around them
        "$venv/bin/python" - "$_pc_root/requirements.txt" "$venv" <<'PY' || return 1
import importlib.metadata as metadata, os, sys
requirements, venv = sys.argv[1], os.path.realpath(sys.argv[2])
kept = []
for name in ("torch", "numpy"):
    try:
        where = os.path.realpath(metadata.distribution(name).locate_file(""))
    except metadata.PackageNotFoundError:
        continue
    if not where.startswith(venv + os.sep):
        kept.append(f"{name}=={metadata.version(name)}")
with open(os.path.join(venv, "platform-packages.txt"), "w") as f:
    f.writelines(line + "\n" for line in kept)
names = {line.split("==")[0] for line in kept}
with open(requirements) as f, open(os.path.join(venv, "requirements-installed.txt"), "w") as out:
    out.writelines(line for line in f if line.split("==")[0].strip() not in names)
PY
        if [[ -s $venv/platform-packages.txt ]]; then
            echo "0_activate_env.sh: keeping the platform's $(tr '\n' ' ' < "$venv/platform-packages.txt")" >&2
        fi
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$venv/requirements-installed.txt" -c "$venv/platform-packages.txt" || return 1
        echo "$wanted" > "$stamp"
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
}

_pc_setup_polaris() {
    local venv=${PC_VENV:-$_pc_root/.venv-polaris}
    # module functions and conda's hooks read unset variables: do not let a caller's -u kill us
    local had_u=0
    [[ $- == *u* ]] && had_u=1 && set +u
    local status=0
    _pc_polaris_env "$venv" || status=$?
    [[ $had_u -eq 1 ]] && set -u
    return "$status"
}

_pc_polaris_env() {
    local venv=$1 init
    if [[ "$(type -t module)" != function ]]; then
        # a non-login shell may lack the `module` function
        for init in /usr/share/lmod/lmod/init/bash /etc/profile.d/lmod.sh /etc/profile.d/modules.sh; do
            # shellcheck disable=SC1090
            [[ -f $init ]] && source "$init" && break
        done
    fi
    if [[ "$(type -t module)" != function ]]; then
        echo "0_activate_env.sh: no 'module' command on this Polaris node" >&2
        return 1
    fi
    module use /soft/modulefiles || return 1
    module load conda || return 1
    # XALT wraps every program launch; Dragon's launcher breaks under it
    module unload xalt >/dev/null 2>&1
    if [[ "$(type -t conda)" == function ]]; then
        conda activate base || return 1
    fi
    # the venv's python is conda's: conda's packages stay importable, pip adds the rest
    _pc_make_env "${CONDA_PREFIX:+$CONDA_PREFIX/bin/}python3" "$venv" --system-site-packages \
        || return 1

    # Dragon detects PBS by a qstat under .../pbs/... (batch jobs may lack it on PATH)
    if [[ -x /opt/pbs/bin/qstat && ":$PATH:" != *":/opt/pbs/bin:"* ]]; then
        PATH="$PATH:/opt/pbs/bin"
    fi
    # Parsl's MPI launcher and Dragon need the Cray PALS mpiexec first on PATH; conda
    # packages (mpi4py, mpich) may bring their own, which cannot start ranks on other nodes
    local pals="" dir dirs
    IFS=: read -ra dirs <<< "$PATH"
    for dir in "${dirs[@]}"; do
        if [[ $dir == */pals/*/bin && -x $dir/mpiexec ]]; then pals=$dir; break; fi
    done
    if [[ -z $pals ]]; then
        for dir in /opt/cray/pals/*/bin; do
            [[ -x $dir/mpiexec ]] && pals=$dir   # the glob sorts: the last is the newest
        done
    fi
    if [[ -n $pals ]]; then
        PATH="$pals:$PATH"
    else
        echo "0_activate_env.sh: no Cray PALS mpiexec found; multi-node runs will fail" >&2
    fi
    export PATH

    # the RDMA hint (see the top of this file), while this environment lacks the setting
    local config configured=0 lib="" candidate
    for config in "$venv"/lib/python3*/site-packages/dragon/.hsta-config/dragon-config.json; do
        grep -qs ofi_runtime_lib "$config" && configured=1
    done
    if [[ $configured -eq 0 ]]; then
        for candidate in /opt/cray/libfabric/*/lib64; do
            [[ -d $candidate ]] && lib=$candidate
        done
        echo "0_activate_env.sh: for RDMA between nodes in Dragon's DDict run once:" \
             "dragon-config add --ofi-runtime-lib=${lib:-/opt/cray/libfabric/<version>/lib64}" >&2
    fi
    return 0
}

# true if $1 is a Python this project runs on (3.11+)
_pc_recent_python() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

_pc_setup_local() {
    local venv=${PC_VENV:-$_pc_root/.venv} python=${PC_PYTHON:-python3}
    if [[ ! -x $venv/bin/python ]]; then       # only the first time: which Python to build on
        if ! _pc_recent_python "$python" && [[ -z ${PC_PYTHON:-} ]] &&
           [[ "$(type -t module)" == function ]]; then
            # module functions read unset variables: a caller's -u must not kill us
            local had_u=0
            [[ $- == *u* ]] && had_u=1 && set +u
            module load python >/dev/null 2>&1 &&
                echo "0_activate_env.sh: python3 is older than 3.11; loaded the site's python module" >&2
            [[ $had_u -eq 1 ]] && set -u
        fi
        if ! _pc_recent_python "$python"; then
            echo "0_activate_env.sh: $python is missing or older than 3.11 (DragonHPC 0.15 needs" \
                 "3.11); set PC_PYTHON to a Python 3.11+ (or load one, e.g. module load python)" >&2
            return 1
        fi
    fi
    _pc_make_env "$python" "$venv"
}

if _pc_on_polaris; then
    _pc_setup_polaris || {
        echo "0_activate_env.sh: the Polaris set-up failed; using a local virtual environment" >&2
        _pc_setup_local
    }
else
    _pc_setup_local
fi
_pc_status=$?
unset -f _pc_on_polaris _pc_make_env _pc_setup_polaris _pc_polaris_env _pc_setup_local \
    _pc_recent_python
[[ $_pc_status -eq 0 ]] || echo "0_activate_env.sh: set-up failed (status $_pc_status)" >&2
if [[ "${BASH_SOURCE[0]:-}" == "$0" ]]; then
    # run, not sourced: the environment dies with this process
    echo "0_activate_env.sh: source it (source 0_activate_env.sh) to activate the environment" >&2
    exit "$_pc_status"
fi
# the last command's status is what `source` returns (no `return`: shellcheck 0.9 would
# take it for the end of every script that sources this one)
[[ $_pc_status -eq 0 ]]
