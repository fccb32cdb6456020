#!/usr/bin/env bash
# sane-measure on saved models: a state_dict of sane-run's MLP, the same net as TorchScript, and a sane-run run's
# checkpoint measured again by SLQ; then one report over the four folders. A few minutes on 2 cores.
#   bash examples/measure_saved.sh [folder]        # default outputs/measure-example
set -euo pipefail
out=${1:-outputs/measure-example}
data="dataset.n_train=1000"  # MNIST-1D, 1,000 training examples
mkdir -p "$out"
python -W ignore - "$out" <<'PY'
import sys

import torch

from sane_cli.models import MLP

torch.manual_seed(0)
net = MLP(40, 10, depth=3, width=32)  # MNIST-1D's 40 inputs, 10 classes
torch.save(net.state_dict(), f"{sys.argv[1]}/weights.pt")
torch.jit.save(torch.jit.trace(net, torch.zeros(1, 40)), f"{sys.argv[1]}/net.ts")
PY
sane-measure "$out/weights.pt" model=mlp depth=3 width=32 lr=0.1 $data -o "$out/state_dict"
sane-measure "$out/net.ts" hessian=exact $data -o "$out/torchscript"   # the same numbers, by products
sane-run depth=3 width=32 steps=100 hessian.every=50 $data hydra.run.dir="$out/sane-run"
sane-measure "$out/sane-run" hessian=slq hessian.probes=4 hessian.steps=100 -o "$out/sane-run-slq"
sane-report "$out" -o "$out-report"
