#!/usr/bin/env bash
# On a machine with a CUDA GPU, in under 10 minutes: the test suite with its CUDA cases (tests that take the
# `device` fixture run on every device present), then CUDA against the CPU (benchmarks/gpu_check.py:
# exact and Lanczos spectra compared in float64, and a timing table), then one short `sane-run device=cuda`, 2 ranks
# against 1 process, an SLQ checkpoint whose Lanczos vectors the host's memory keeps, and one ResNet-20 checkpoint
# (top-10 eigenvalues, trace, SLQ's N_eff and SANE with their bias bounds) over 50,000 CIFAR-10-format training
# images (random images in the official format, written here: the machine may be offline); the target is at most
# 5 minutes.
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
echo "== data-parallel: 2 ranks against 1 process (NCCL for GPU tensors where there are 2 GPUs, else gloo on the CPU)"
args="steps=100 hessian.every=50 hessian=slq precision=float64"
gpus="$("$py" -c "import torch; print(torch.cuda.device_count())")"
where="device=cuda"
if [[ "$gpus" -lt 2 ]]; then where="device=cpu"; fi  # NCCL does not put two ranks on one GPU
sane-run $args $where hydra.run.dir="$out/one" >/dev/null
torchrun --standalone --nproc_per_node 2 --no-python sane-run $args $where hydra.run.dir="$out/two" >/dev/null
"$py" - "$out/one" "$out/two" <<'PY'
import json
import sys

import numpy as np
import pandas as pd

a, b = (pd.read_csv(f"{d}/hessian.csv") for d in sys.argv[1:])
cols = ["lambda_max", "trace", "n_eff", "sane"]
worst = float((np.abs(a[cols] - b[cols]) / np.abs(a[cols]).max()).max().max())
env = json.load(open(f"{sys.argv[2]}/summary.json"))["environment"]
print(f"2 ranks ({env['backend']}, {env['device']}) against 1 process: largest difference {worst:.1e} of scale")
PY
echo "== Lanczos vectors in the host's memory: a 17M-parameter MLP within hessian.memory_gb=6 against none"
args="width=4096 steps=1 hessian=slq hessian.at_start=false hessian.every=1 hessian.probes=2 hessian.steps=60
  hessian.max_iter=60 precision=float64 device=cuda save_checkpoint=false"
sane-run $args hydra.run.dir="$out/device" >/dev/null
sane-run $args hessian.memory_gb=6 hydra.run.dir="$out/host" > "$out/host.log" 2>&1
grep -o "within memory: .*" "$out/host.log" | head -1
"$py" - "$out/device" "$out/host" <<'PY'
import sys

import numpy as np
import pandas as pd

a, b = (pd.read_csv(f"{d}/hessian.csv") for d in sys.argv[1:])
cols = ["lambda_max", "trace", "n_eff", "sane"]
worst = float((np.abs(a[cols] - b[cols]) / np.abs(a[cols])).max().max())
print(f"kept on the host against on the GPU: largest relative difference {worst:.1e} (seconds {b['seconds'].iloc[-1]:.0f}"
      f" against {a['seconds'].iloc[-1]:.0f})")
PY
echo "== ResNet-20, one SLQ checkpoint over 50,000 CIFAR-10-format images"
"$py" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import resnet; resnet.write_cifar10(Path(sys.argv[1]), per_batch=10000)" "$out/cifar"
sane-run model=resnet depth=20 dataset=cifar10 dataset.root="$out/cifar" dataset.download=false dataset.n_train=null \
  dataset.n_test=1000 optim=sgd steps=1 hessian=slq hessian.at_start=false hessian.every=1 device=cuda \
  hydra.run.dir="$out/resnet" >/dev/null
"$py" - "$out/resnet" <<'PY'
import sys

import pandas as pd

row = pd.read_csv(f"{sys.argv[1]}/hessian.csv").iloc[-1]
print(f"ResNet-20 checkpoint over {int(row['subset'])} images: "
      f"{row['seconds']:.0f} s (target: 300 s); lambda_max {row['lambda_max']:.4g}, trace {row['trace']:.4g}, "
      f"N_eff {row['n_eff']:.4g}, SANE {row['sane']:.4g}")
PY
