#!/bin/sh
# Install the pinned torch (constraints.txt) into the environment of the interpreter $PY, saying which build and why:
# - a CUDA device (nvidia-smi lists one): the default index's build (CUDA wheels on PyPI for Linux);
# - no CUDA device and $TORCH_INDEX answers: the CPU build from it (PyTorch's CPU wheel index by default);
# - no CUDA device and $TORCH_INDEX empty or unreachable: the default index, whatever it serves (on PyPI for
#   Linux that is the ~2.5 GB CUDA build; on a mirror that carries CPU wheels, those).
set -eu
PIP="$PY -m pip"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "cnnlab set-up: CUDA device found, torch from the default package index"
  $PIP install --quiet -c constraints.txt torch
elif [ -n "${TORCH_INDEX:-}" ] && \
     $PY -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5)" "$TORCH_INDEX" 2>/dev/null; then
  echo "cnnlab set-up: no CUDA device, torch (CPU build) from $TORCH_INDEX"
  $PIP install --quiet -c constraints.txt --index-url "$TORCH_INDEX" torch
else
  echo "cnnlab set-up: no CUDA device and ${TORCH_INDEX:-no TORCH_INDEX} is not reachable: torch from the default package index"
  $PIP install --quiet -c constraints.txt torch
fi
