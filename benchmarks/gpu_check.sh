#!/usr/bin/env bash
# On a machine with a CUDA GPU, in about 10 minutes, stage by stage (STAGES picks them; each prints its result as it
# ends, so that a run cut short still says what it did):
#   tests   the test suite's CUDA cases (tests that take the `device` fixture run on every device present)
#   agree   CUDA against the CPU (benchmarks/gpu_check.py: exact and Lanczos spectra compared in float64, and a
#           timing table)
#   run     one short `sane-run device=cuda`
#   ddp     2 ranks against 1 process (NCCL where there are 2 GPUs; with one GPU, gloo on the CPU)
#   host    an SLQ checkpoint of a 17M-parameter MLP whose Lanczos vectors the host's memory keeps
#           (hessian.memory_gb=6) against the same kept on the GPU
#   resnet  one ResNet-20 checkpoint (top-10 eigenvalues, trace, SLQ's N_eff and SANE with their bias bounds) over
#           50,000 CIFAR-10-format training images (random images in the official format, written here: the
#           machine may be offline), float32; the target is at most 5 minutes. One Hessian-vector product over the
#           50,000 is timed first and SLQ's steps (4 probes) are sized to RESNET_BUDGET seconds (default 240)
#
#   bash benchmarks/gpu_check.sh                 (PYTHON=... to name the interpreter; python3 by default)
#   STAGES=agree,resnet bash benchmarks/gpu_check.sh
#   DRY=1 bash benchmarks/gpu_check.sh           run, ddp, host and resnet on the CPU at toy sizes, in about 3
#                                                minutes: checks the script itself before a GPU's minutes are spent
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
dry="${DRY:-0}"
stages=",${STAGES:-tests,agree,run,ddp,host,resnet},"
dev=cuda
if [[ "$dry" == 1 ]]; then
  dev=cpu
  stages="${stages//,tests,/,}"
  stages="${stages//,agree,/,}"
  echo "gpu_check: DRY=1: on the CPU at toy sizes; no timing or agreement below means anything"
else
  "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here; nothing to check')"
  "$py" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
fi
want() { [[ "$stages" == *",$1,"* ]]; }
toy() { if [[ "$dry" == 1 ]]; then echo "$2"; else echo "$1"; fi; } # toy FULL DRY: the size this run takes
out="$(mktemp -d)"

if want tests; then
  echo "== tests: the suite's CUDA cases"
  "$py" -m pytest -q -x -k cuda -n 4 -p no:cacheprovider
fi

if want agree; then
  echo "== agree: CUDA against the CPU"
  "$py" benchmarks/gpu_check.py --devices cpu,cuda
fi

if want run; then
  echo "== run: sane-run device=$dev"
  sane-run device=$dev steps="$(toy 200 20)" hessian.every="$(toy 100 10)" hydra.run.dir="$out/run" >/dev/null
  "$py" -c "import json, sys; s = json.load(open(sys.argv[1])); e = s['environment']; print(s['status'], e['device'], e.get('device_name'))" "$out/run/summary.json"
fi

if want ddp; then
  echo "== ddp: 2 ranks against 1 process (NCCL for GPU tensors where there are 2 GPUs, else gloo on the CPU)"
  args="steps=$(toy 100 10) hessian.every=$(toy 50 5) hessian=slq precision=float64 $(toy '' 'hessian.probes=2 hessian.steps=20')"
  gpus="$("$py" -c "import torch; print(torch.cuda.device_count())")"
  where="device=$dev"
  if [[ "$gpus" -lt 2 ]]; then where="device=cpu"; fi # NCCL does not put two ranks on one GPU
  sane-run $args $where hydra.run.dir="$out/one" >/dev/null
  torchrun --standalone --nproc_per_node 2 --no-python sane-run $args $where hydra.run.dir="$out/two" >/dev/null 2>&1
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
fi

if want host; then
  echo "== host: Lanczos vectors in the host's memory, a 17M-parameter MLP within hessian.memory_gb=6, against none"
  args="width=$(toy 4096 64) steps=1 hessian=slq hessian.at_start=false hessian.every=1 hessian.probes=2
    hessian.steps=$(toy 60 20) hessian.max_iter=$(toy 60 20) precision=float64 device=$dev save_checkpoint=false"
  sane-run $args hydra.run.dir="$out/device" >/dev/null
  sane-run $args hessian.memory_gb=6 hydra.run.dir="$out/host" >"$out/host.log" 2>&1 || { tail -5 "$out/host.log"; exit 1; }
  grep -o "within memory: .*" "$out/host.log" | head -1 || echo "the plan: as configured (no change was needed)"
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
fi

if want resnet; then
  echo "== resnet: ResNet-20, one checkpoint over 50,000 CIFAR-10-format images (float32)"
  "$py" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import resnet; resnet.write_cifar10(Path(sys.argv[1]), per_batch=$(toy 10000 30))" "$out/cifar"
  # one product over every image, timed as a checkpoint takes it; SLQ's steps sized to the budget from it
  sizing="$("$py" - "$out/cifar" "${RESNET_BUDGET:-$(toy 240 30)}" "$dev" <<'PY'
import sys
import time

import torch
from omegaconf import OmegaConf

from sane_cli.curvature import hvp_operator
from sane_cli.data import load_data
from sane_cli.models import ResNet

root, budget, dev = sys.argv[1], float(sys.argv[2]), sys.argv[3]
spec = dict(name="cifar10", root=root, download=False, mirror=None, n_train=None, n_test=1, per_class=None,
            label_noise=0.0, label_noise_seed=0)  # fmt: skip
data = load_data(OmegaConf.create(spec))
x, y = data.x_train.to(dev), data.y_train.to(dev)
torch.manual_seed(0)
model = ResNet((3, 32, 32), 10, depth=20).to(dev).eval()
matvec, p = hvp_operator(model, torch.nn.CrossEntropyLoss(), x, y, dtype=torch.float32)
v = torch.randn(1, p, device=dev)
matvec(v)
times = []
for _ in range(2):
    if dev == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    matvec(v)
    if dev == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
t = min(times)
probes, top = 4, 60  # the top-10 run's products: about 36-60
steps = int(min(300, max(10, (budget / t - top) / probes)))
print(f"one Hessian-vector product over {len(y):,} images: {t:.2f} s; {budget:.0f} s allow about {budget / t:.0f}: "
      f"SLQ at {probes} probes x {steps} steps", file=sys.stderr)
print(f"hessian.probes={probes} hessian.steps={steps}")
PY
)"
  sane-run model=resnet depth=20 dataset=cifar10 dataset.root="$out/cifar" dataset.download=false dataset.n_train=null \
    dataset.n_test=$(toy 1000 8) optim=sgd steps=1 hessian=slq hessian.dtype=float32 hessian.at_start=false \
    hessian.every=1 device=$dev $sizing $(toy '' 'hessian.max_iter=10') hydra.run.dir="$out/resnet" >/dev/null
  "$py" - "$out/resnet" <<'PY'
import sys

import pandas as pd

row = pd.read_csv(f"{sys.argv[1]}/hessian.csv").iloc[-1]
print(f"ResNet-20 checkpoint over {int(row['subset']):,} images: {row['seconds']:.0f} s (target: 300 s); "
      f"lambda_max {row['lambda_max']:.4g}, trace {row['trace']:.4g} +- {row['trace_se']:.2g}, "
      f"N_eff {row['n_eff']:.4g} +- {row['n_eff_se']:.2g} (bias bound {row['n_eff_bound']:.2g}), "
      f"SANE {row['sane']:.4g} +- {row['sane_se']:.2g} (bias bound {row['sane_bound']:.2g})")
PY
fi
