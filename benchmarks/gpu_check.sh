#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 10 minutes: the test suite with its CUDA cases (tests that take the
# `device` fixture run on every device present), then CUDA against the CPU (benchmarks/gpu_check.py:
# exact and Lanczos spectra compared in float64, and a timing table), then one short `sane-run device=cuda`.
#   bash benchmarks/gpu_check.sh          (PYTHON=... to name the interpreter; python3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
"$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here; nothing to check')"
"$py" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
echo "== test suite with CUDA cases"
"$py" -m pytest -q -x -m "not slow" -p no:cacheprovider
echo "== CUDA against the CPU"
"$py" benchmarks/gpu_check.py --devices cpu,cuda
echo "== sane-run device=cuda"
out="$(mktemp -d)"
sane-run device=cuda steps=200 hessian.every=100 hydra.run.dir="$out/run"
"$py" -c "import json, sys; s = json.load(open(sys.argv[1])); print(s['status'], s['environment']['device'], s.get('environment', {}).get('device_name'))" "$out/run/summary.json"
