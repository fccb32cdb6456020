#!/usr/bin/env bash
# Reference runs for checking that a change leaves every output as it was: run it with the sane-run of the commit
# before the change and with the one after, then compare the two folders with benchmarks/same_outputs.py.
#   bash benchmarks/same_outputs.sh BIN_DIR OUT    (BIN_DIR: the folder holding that sane-run and sane-report)
# 27 runs of a few seconds to a minute (about 3 min on 2 cores): an MLP, a CNN, a custom model, SLQ, block_band,
# mini-batch Adam with label noise, spiking GD and Adam (pre- and post-spike checkpoints), a converged, a diverged
# and a subset run, one stopped by SIGTERM and resumed, a 2 x 2 sweep; then sane-report over all of them (OUT-report).
set -u
bin=$1
out=$(realpath -m "$2")
rm -rf "$out" "$out-report"
mkdir -p "$out"
export PATH="$bin:$PATH"
cd "$(mktemp -d)"
r() {
  name=$1
  shift
  sane-run "$@" threads=1 hydra.run.dir="$out/$name" >"$out/$name.out" 2>&1 || echo "FAILED: $name (see $out/$name.out)"
}
r mlp steps=300 hessian.every=100
r cnn model=cnn steps=100 hessian.every=50
r custom model=custom model.factory=sane_cli.examples:residual_mlp 'model.kwargs={width: 16, blocks: 2}' steps=100 \
  hessian.every=50
r slq steps=100 hessian.every=50 hessian=slq
r band steps=100 hessian.every=50 hessian=block_band
r adam optim=adam optim.batch_size=100 dataset.label_noise=0.2 steps=200 hessian.every=100 lr=0.01
r spikes lr=3 steps=300 hessian.every=100 dataset.n_train=1000
r adamspikes optim=adam lr=0.1 hessian.spike_threshold=0.1 steps=300 hessian.every=100 dataset.n_train=1000
r converged stop.train_acc=0.3 steps=600 hessian.every=250
r diverged lr=60 steps=60 hessian.every=20
r subset hessian.subset=500 steps=100 hessian.every=50
r adamfull optim=adam lr=0.03 steps=200 hessian.every=100
# stopped by SIGTERM once two checkpoints are logged, then resumed (where it stops varies; what it ends with does not)
sane-run steps=400 hessian.every=50 threads=1 hydra.run.dir="$out/resumed" >"$out/resumed.out" 2>&1 &
pid=$!
for _ in $(seq 1200); do
  [ "$(wc -l <"$out/resumed/hessian.csv" 2>/dev/null || echo 0)" -ge 3 ] && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$pid"
sane-run resume="$out/resumed" >>"$out/resumed.out" 2>&1 || echo "FAILED: resume (see $out/resumed.out)"
sane-run -m lr=0.05,0.1 depth=2,3 steps=100 hessian.every=50 threads=1 hydra.sweep.dir="$out/sweep" \
  >"$out/sweep.out" 2>&1 || echo "FAILED: sweep (see $out/sweep.out)"
sane-report "$out" -o "$out-report" >"$out/report.out" 2>&1 || echo "FAILED: report (see $out/report.out)"
