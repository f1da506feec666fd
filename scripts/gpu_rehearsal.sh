#!/usr/bin/env bash
# `make gpu-rehearsal`: rehearse the GPU check's last device call on this machine, without a GPU.
#
# A GPU machine is lent to few sessions and for about 15 minutes, so what can fail before CUDA is
# reached (Python 3.12, the image's torch and its exporter, the wheels carried in parts, servers started
# from PYTHONPATH) is checked here first. This builds an environment like the GPU machine's image
# (CPython 3.12; torch 2.11, the Linux wheel from PyPI, a CUDA 13 build, which also runs on the CPU;
# onnxruntime 1.30, CPU build; no FastAPI, pydantic or uvicorn: what its documentation lists), copies the
# working tree as a device call receives it (tracked and unignored files, plus .gpuwheels/, no .git),
# and runs there what the last call runs, `gpu_check.py`, with `--device cpu`: the setup from the wheels
# (the onnxruntime-gpu parts joined and verified), the probe, the GPU test files' fast tests (their GPU
# tests skip; their CPU twins run) and the benchmark with every section. The report is left in
# $RANET_REHEARSAL_DIR/GPU_REPORT.md, not in benchmarks/.
#
# Downloads about 3 GB once (torch and its nvidia-* wheels; the image environment is kept between runs)
# and takes about 6 minutes on 2 cores. Needs scripts/setup.sh's .venv (for scripts/gpu_wheels.py) and a
# CPython 3.12: the first argument, $PYTHON312, python3.12 on PATH or pyenv's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${RANET_REHEARSAL_DIR:-/tmp/ranet-gpu-rehearsal}
is_312() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
python312=""
# A pyenv shim named python3.12 may be on PATH and fail, so each candidate is asked for its version.
for candidate in "${1:-}" "${PYTHON312:-}" "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12.*/bin/python; do
  if is_312 "$candidate"; then python312=$candidate; break; fi
done
if [[ -z "$python312" ]]; then
  echo "gpu-rehearsal: no CPython 3.12 found (give its path as the first argument or \$PYTHON312)" >&2
  exit 2
fi
# The GPU machine's image as its documentation describes it (versions where it gives them).
image_packages=(torch==2.11.0 onnxruntime==1.30.0 onnx onnxscript numpy pillow prometheus-client typer
  httpx grpcio uvloop pytest msgpack protobuf)
image_lacks=(pydantic pydantic-core pydantic-settings fastapi starlette uvicorn python-multipart)

image="$work/image"
if [[ ! -x "$image/bin/python3" ]]; then
  echo "gpu-rehearsal: building the image environment in $image (about 3 GB)"
  "$python312" -m venv "$image"
  "$image/bin/python3" -m pip install --quiet --upgrade pip
  "$image/bin/python3" -m pip install --quiet "${image_packages[@]}"
  "$image/bin/python3" -m pip uninstall --quiet --yes "${image_lacks[@]}" 2>/dev/null || true
fi

if [[ ! -f .gpuwheels/PLAN.json || requirements/constraints.txt -nt .gpuwheels/PLAN.json ]]; then
  .venv/bin/python scripts/gpu_wheels.py
fi

tree="$work/tree"
# As on a fresh machine: no site folder (gpu_check.py installs into it) and no ImageNet-shaped bundle
# (benchmarks/gpu.py makes one, about 100 s on 2 cores, and reuses it when it is there).
rm -rf "$tree" /tmp/ranet-gpu-site /tmp/ranet-gpu-imagenet
mkdir -p "$tree"
# Tracked files deleted in the working tree are not there to copy (nor would a device call carry them).
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d "" file; do if [[ -e "$file" || -L "$file" ]]; then printf "%s\0" "$file"; fi; done \
  | xargs -0 cp --parents --no-dereference -t "$tree"
cp -r .gpuwheels "$tree/" && rm -rf "$tree/.gpuwheels/cache"

cd "$tree"
clean_env=(env -i "HOME=$HOME" "PATH=$image/bin:/usr/bin:/bin" PYTHONUNBUFFERED=1)
"${clean_env[@]}" python3 scripts/gpu_check.py --parts
status=0
"${clean_env[@]}" python3 scripts/gpu_check.py --device cpu --setup wheels --report "$work/GPU_REPORT.md" \
  || status=$?
echo "gpu-rehearsal: exit $status; report $work/GPU_REPORT.md (tree $tree, from $repo)"
exit "$status"
