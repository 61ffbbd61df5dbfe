#!/usr/bin/env bash
# Builds the offline bundle for scripts/gpu_check.sh: a wheelhouse with
# resumable-scheduler and everything it needs *except* JAX (the GPU machine
# already has JAX with CUDA, which must not be replaced).
#
#   scripts/build_gpu_bundle.sh [OUT_DIR]          (default: build/gpu_bundle)
#
# Environment:
#   PYTHON            interpreter used to build (default: python3)
#   PYTHON_VERSION    target CPython version, e.g. 3.10 or 3.12 (default: the
#                     building interpreter's); binary wheels are fetched for it
#   PLATFORM          target platform tag (default: manylinux2014_x86_64)
#
# The bundle goes into an ignored folder (build/); it is built on demand and
# never committed. Copy it next to the repository on the GPU machine (or carry
# build/gpu_bundle with the working tree) and run scripts/gpu_check.sh.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/build/gpu_bundle}"
python="${PYTHON:-python3}"
pyver="${PYTHON_VERSION:-$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
platform="${PLATFORM:-manylinux2014_x86_64}"
wheels="$out/wheels"

rm -rf "$wheels"
mkdir -p "$wheels"

echo "== our wheel"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "$root"

echo "== dependencies for CPython $pyver on $platform (binary wheels only)"
"$python" -m pip download --quiet --dest "$wheels" \
    --only-binary=:all: --python-version "$pyver" --platform "$platform" \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
    keras h5py orbax-checkpoint jax

# JAX is already on the GPU machine, built for CUDA: never ship a CPU jaxlib
# that pip could "upgrade" it to, nor JAX's own dependencies (NumPy, SciPy,
# opt_einsum: installed with it). If the machine's JAX is too old for these
# packages, the offline install fails and says so. This keeps the bundle
# under ~40 MB.
rm -f "$wheels"/jax-*.whl "$wheels"/jaxlib-*.whl "$wheels"/jax_cuda*.whl "$wheels"/jax_plugins*.whl \
      "$wheels"/nvidia_*.whl "$wheels"/numpy-*.whl "$wheels"/scipy-*.whl "$wheels"/opt_einsum-*.whl

cat > "$out/MANIFEST.txt" <<EOF
resumable-scheduler GPU check bundle
built: $(date -u +%Y-%m-%dT%H:%M:%SZ)
target: CPython $pyver, $platform
$(cd "$wheels" && ls -1)
EOF
echo "== $(ls "$wheels" | wc -l) wheels, $(du -sh "$wheels" | cut -f1), in $wheels"
