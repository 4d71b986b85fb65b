#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels that benchmarks/gpu_check.sh installs
# offline on a GPU machine that has Python and a CUDA PyTorch but neither Parsl nor Dragon
# (nor ProxyStore), and no network:
#
#     bash benchmarks/gpu_wheels.sh [DIR]        # DIR: default gpu-wheels/ (git ignores it)
#
# It gets parsl, dragonhpc and proxystore at the versions requirements.txt pins, with every
# dependency, as binary wheels for the target's Python and platform, not this machine's. Torch
# and numpy are not among their dependencies, so the target's own are used. Then it prints each
# wheel's size, their total and, with the repository's tracked files, the total that has to
# travel to the device machine (64 MiB at most: the tree plus the carried paths). It exits 1
# when that is over the limit.
#
# GPU_WHEELS_PYTHON=3.12    the target's Python, major.minor (3.12: the H200 machine's python3)
# GPU_WHEELS_GLIBC=2.28     the newest manylinux glibc the target may need (its glibc or older)
# GPU_WHEELS_LIMIT_MIB=64   what the tree and the wheels may weigh together
# GPU_WHEELS_PIP=pip==26.3  the pip that gpu_check.sh bootstraps its environment with (the
#                           target's python3 may lack ensurepip, or pip itself)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/gpu-wheels}
python_version=${GPU_WHEELS_PYTHON:-3.12}
glibc=${GPU_WHEELS_GLIBC:-2.28}
limit_mib=${GPU_WHEELS_LIMIT_MIB:-64}
tag=cp${python_version/./}

# the pins, from requirements.txt (one place says which versions every machine measures)
pins=()
for name in parsl dragonhpc proxystore; do
    pin=$(grep -E "^${name}==" "$root/requirements.txt" || true)
    if [[ -z $pin ]]; then
        echo "gpu_wheels.sh: requirements.txt pins no ${name}==VERSION" >&2
        exit 1
    fi
    pins+=("$pin")
done

# pip takes platform tags literally: name every manylinux tag up to the target's glibc
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64
           --platform manylinux2014_x86_64)
for ((minor = 5; minor <= ${glibc#2.}; minor++)); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
done

mkdir -p "$dir"
rm -f "$dir"/*.whl       # only this run's wheels (an older pin's would be installable too)
echo "gpu_wheels.sh: downloading ${pins[*]} and their dependencies for CPython" \
     "$python_version (manylinux, glibc <= $glibc, x86-64) into $dir" >&2
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$python_version" --implementation cp --abi "$tag" "${platforms[@]}" \
    --dest "$dir" "${pins[@]}"
python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
    --dest "$dir" "${GPU_WHEELS_PIP:-pip==26.3}"
# what gpu_check.sh installs, and for which Python (it refuses another)
printf '%s\n' "${pins[@]}" > "$dir/pins.txt"
echo "$python_version" > "$dir/python-version.txt"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo
echo "wheels in $dir (MiB):"
for wheel in "$dir"/*.whl; do
    printf '  %7s  %s\n' "$(mib "$(stat -c %s "$wheel")")" "$(basename "$wheel")"
done | sort -k1,1nr
wheels=$(du -cb "$dir" | tail -1 | cut -f1)
tree=$(cd "$root" && git ls-files -z | xargs -0 du -cb | awk '$2 == "total" { sum += $1 } END { print sum + 0 }')
untracked=$(cd "$root" && git ls-files -z --others --exclude-standard | xargs -0 -r du -cb |
            awk '$2 == "total" { sum += $1 } END { print sum + 0 }')
total=$((wheels + tree + untracked))
echo "wheels $(mib "$wheels") MiB ($(find "$dir" -name '*.whl' | wc -l) files)," \
     "tracked tree $(mib "$tree") MiB, untracked files $(mib "$untracked") MiB:" \
     "$(mib "$total") MiB of the ${limit_mib} MiB that may travel"
if ((total > limit_mib * 1048576)); then
    echo "gpu_wheels.sh: over the limit by $(mib $((total - limit_mib * 1048576))) MiB" >&2
    exit 1
fi
if [[ $dir == "$root"/* ]]; then
    echo "carry [\"${dir#"$root"/}\"] with the tree and run: bash benchmarks/gpu_check.sh" \
         "(docs/dev/performance.md, GPU check)"
fi
