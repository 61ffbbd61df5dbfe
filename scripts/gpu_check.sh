#!/usr/bin/env bash
# The kill-and-resume check on an NVIDIA GPU, offline.
#
# For a machine with a GPU and JAX with CUDA already installed, but no Keras
# and no network. Build the bundle first, where there is a network:
#
#   scripts/build_gpu_bundle.sh                     # -> build/gpu_bundle/
#
# then, on the GPU machine, from the repository root (with build/gpu_bundle
# copied along):
#
#   scripts/gpu_check.sh [BUNDLE_DIR] [-- gpu_check.py options]
#
# It makes a virtual environment that sees the machine's JAX
# (--system-site-packages), installs resumable-scheduler and its
# dependencies from the bundle's wheels only (--no-index), then runs
# scripts/gpu_check.py with deterministic XLA GPU flags. It prints the final
# learning rates and whether the weights match, then the time the training
# thread is blocked per save of about 50 MB (rs.BackupAndRestore, goal
# <= 10 ms; rs.OrbaxCheckpoint, goal <= 50 ms; measured with the code of
# benchmarks/bench_backup.py and bench_orbax.py, so run it from a copy of the
# whole repository), and exits 0 only if the weights match and the measures
# ran (`-- --no-blocking` skips them). The children are killed and restarted
# by resumable_scheduler.harness, which the bundle's wheel must contain:
# rebuild the bundle after updating the repository.
# Takes about 1-3 minutes on one H200-class GPU (limit: 5 minutes).
#
# Environment: PYTHON (the interpreter with JAX+CUDA, default python3),
# RS_GPU_VENV (where to make the venv, default: a temporary directory).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$root/build/gpu_bundle"
if [[ $# -gt 0 && "$1" != "--" ]]; then bundle="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
python="${PYTHON:-python3}"

if [[ ! -d "$bundle/wheels" ]]; then
    echo "gpu_check: no wheels in $bundle/wheels; run scripts/build_gpu_bundle.sh first" >&2
    exit 2
fi
"$python" - <<'EOF' || { echo "gpu_check: $python has no working JAX" >&2; exit 2; }
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
EOF

venv="${RS_GPU_VENV:-$(mktemp -d /tmp/rs_gpu_venv.XXXXXX)}"
"$python" -m venv --system-site-packages "$venv"
# Also see $python's own site-packages when it is itself a venv or conda env.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$python" -c 'import site, sysconfig; print("\n".join(dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])))' \
    > "$site/zz_gpu_check_base.pth"
# Offline: only the bundle. JAX (with CUDA) comes from the system site.
"$venv/bin/python" -m pip install --quiet --no-index --find-links "$bundle/wheels" \
    --disable-pip-version-check resumable-scheduler \
  && "$venv/bin/python" -m pip install --quiet --no-index --no-deps --force-reinstall \
    --disable-pip-version-check "$bundle"/wheels/resumable_scheduler-*.whl \
  || { echo "gpu_check: offline install failed (is the machine's JAX too old for the bundled orbax-checkpoint/keras? rebuild the bundle with PYTHON_VERSION=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'))" >&2; exit 2; }

export KERAS_BACKEND=jax
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export XLA_FLAGS="--xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0 ${XLA_FLAGS:-}"
export TF_DETERMINISTIC_OPS=1
cd "$root/scripts"  # not the repository root: import the installed wheel, not src/
exec timeout 290 "$venv/bin/python" "$root/scripts/gpu_check.py" "$@"
