# shellcheck shell=bash
# Set up and activate the environment for the producer-consumer scripts. Source it:
#
#     source 0_activate_env.sh
#
# On a machine without ALCF modules (a laptop, a workstation, CI) it creates .venv next to
# this file the first time, installs the pinned requirements.txt into it, and activates it.
# Sourcing it again only activates: it reinstalls only when requirements.txt changed.
# PC_VENV=/path overrides where the virtual environment lives.

_pc_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)

_pc_on_polaris() {
    # ALCF Polaris: PBS and the Cray programming environment with Lmod modules
    [[ -d /opt/cray/pe && -n "${PBS_O_HOST:-}${PBS_JOBID:-}" ]] || [[ "$(hostname -f 2>/dev/null)" == *polaris* ]]
}

_pc_setup_polaris() {
    # Polaris set-up (issue #5): site conda module, project environment, PBS tools on PATH.
    echo "0_activate_env.sh: Polaris set-up is not written yet; using a local virtual environment" >&2
    return 1
}

_pc_setup_local() {
    local venv=${PC_VENV:-$_pc_root/.venv}
    local stamp="$venv/.requirements.sha256"
    local wanted
    wanted=$(sha256sum "$_pc_root/requirements.txt" | cut -d' ' -f1)
    if [[ ! -x "$venv/bin/python" ]]; then
        echo "0_activate_env.sh: creating $venv" >&2
        python3 -m venv "$venv" || return 1
    fi
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
        echo "0_activate_env.sh: installing requirements.txt into $venv (once)" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$_pc_root/requirements.txt" || return 1
        echo "$wanted" > "$stamp"
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
}

if _pc_on_polaris; then
    _pc_setup_polaris || _pc_setup_local
else
    _pc_setup_local
fi
_pc_status=$?
unset -f _pc_on_polaris _pc_setup_polaris _pc_setup_local
[[ $_pc_status -eq 0 ]] || echo "0_activate_env.sh: set-up failed (status $_pc_status)" >&2
# shellcheck disable=SC2317
return "$_pc_status" 2>/dev/null || exit "$_pc_status"
