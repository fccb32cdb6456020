"""The PyTorch Lightning callback (sane_cli.lightning.SaneCallback): a Trainer's run probed by it writes what a
plain loop probed at the same steps writes, and logs the measures to the trainer's logger."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sane_cli import CurvatureProbe
from sane_cli.errors import UsageError
from sane_cli.records import load_run

lightning = pytest.importorskip("lightning.pytorch")  # the lightning extra, part of the test extras
from sane_cli.lightning import SaneCallback  # noqa: E402


class Module(lightning.LightningModule):
    def __init__(self, net: nn.Module, lr: float, momentum: float = 0.0):
        super().__init__()
        self.net, self.lr, self.momentum = net, lr, momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def problem():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    return x, y, net


def trainer(tmp_path, callbacks, steps=12, **kw):
    logger = lightning.loggers.CSVLogger(tmp_path / "logs", name="lit")
    return lightning.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             log_every_n_steps=1, **kw)  # fmt: skip


def test_the_callback_writes_what_a_plain_loop_writes(tmp_path):
    """Full-batch SGD with momentum for 12 steps, measured every 4: the callback's hessian.csv (but the seconds)
    and metrics.csv equal a plain loop's probed at steps 0, 4, 8, 12, and the trainer's logger has the measures."""
    x, y, net = problem()
    start = copy.deepcopy(net.state_dict())
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    callback = SaneCallback(tmp_path / "lit", every_n_steps=4, method="exact", test_data=(x[:16], y[:16]))
    trainer(tmp_path, [callback]).fit(Module(net, lr=0.5, momentum=0.5), loader)

    net.load_state_dict(start)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.5)
    with CurvatureProbe(tmp_path / "loop", net, (x, y), method="exact", optimizer=opt,
                        test_data=(x[:16], y[:16])) as probe:  # fmt: skip
        for step in range(13):
            if step % 4 == 0:
                probe.measure(step)
                probe.log_metrics(step, epoch=float(step))
            if step < 12:
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
    ours, loop = load_run(tmp_path / "lit"), load_run(tmp_path / "loop")
    assert ours.status == "completed" and ours.hessian.step.tolist() == [0, 4, 8, 12]
    pd.testing.assert_frame_equal(ours.hessian.drop(columns="seconds"), loop.hessian.drop(columns="seconds"),
                                  check_exact=True)  # fmt: skip
    pd.testing.assert_frame_equal(ours.metrics.drop(columns="epoch"), loop.metrics.drop(columns="epoch"),
                                  check_exact=True)  # fmt: skip
    assert (ours.hessian.stability_threshold == (2 + 2 * 0.5) / 0.5).all()
    logged = pd.read_csv(next((tmp_path / "logs").rglob("metrics.csv")))
    rows = logged.dropna(subset=["sane/lambda_max"])
    assert rows.step.tolist() == [0, 4, 8, 12]
    assert rows["sane/lambda_max"].tolist() == ours.hessian.lambda_max.tolist()
    from sane_cli.report import report  # sane-report reads both folders, one row each, the same final SANE

    table = pd.read_csv(report([tmp_path / "lit", tmp_path / "loop"], tmp_path / "report").parent / "summary.csv")
    assert len(table) == 2 and (table.sane == ours.hessian.sane.iloc[-1]).all()


def test_every_epoch_on_a_subset_of_a_shuffled_loader(tmp_path):
    """Mini-batches, shuffled: the callback measures the whole training set's loss (the dataset in order) or a
    seeded subset, at the start and at each epoch's end; the config names the trainer and the module's class."""
    x, y, net = problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    callback = SaneCallback(tmp_path / "lit", every_n_epochs=1, subset=40, method="exact")
    trainer(tmp_path, [callback], steps=8).fit(Module(net, lr=0.1), loader)
    run = load_run(tmp_path / "lit")
    assert run.hessian.step.tolist() == [0, 4, 8] and (run.hessian.subset == 40).all()
    assert run.metrics.epoch.tolist() == [0.0, 1.0, 2.0]  # passes over the training set
    assert run.summary["config"]["model"]["name"] == "Module" and run.summary["config"]["optim"]["name"] == "sgd"
    assert run.summary["config"]["trainer"]["max_steps"] == 8
    c = SaneCallback(tmp_path / "other")  # by default every epoch
    assert c.every_n_epochs == 1 and c.every_n_steps is None


def test_a_failure_in_training_is_recorded_and_bad_options_are_one_line(tmp_path):
    x, y, net = problem()

    class Failing(Module):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("the module's own error")
            return super().training_step(batch, batch_idx)

    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    with pytest.raises(RuntimeError, match="the module's own error"):
        trainer(tmp_path, [SaneCallback(tmp_path / "lit", every_n_steps=2, method="exact")]).fit(
            Failing(net, lr=0.1), loader
        )
    run = load_run(tmp_path / "lit")
    assert run.status == "failed" and "the module's own error" in run.summary["error"]
    assert run.hessian.step.tolist() == [0, 2]
    for kw, words in [(dict(every_n_steps=2, every_n_epochs=1), "not both"), (dict(every_n_steps=0), "positive"),
                      (dict(method="nope"), "choose one of"), (dict(hessian={"probez": 1}), "probez")]:  # fmt: skip
        with pytest.raises(UsageError, match=words):
            SaneCallback(tmp_path / "x", **kw)
    with pytest.raises(UsageError, match="already holds a run"):
        SaneCallback(tmp_path / "lit")  # before any training


DDP_SCRIPT = """
import sys
from pathlib import Path

import lightning
from torch.utils.data import DataLoader, TensorDataset

from sane_cli.lightning import SaneCallback
from test_lightning import Module, problem

if __name__ == "__main__":
    x, y, net = problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=int(sys.argv[3]), shuffle=False)
    trainer = lightning.Trainer(max_steps=8, accelerator="cpu", devices=int(sys.argv[2]), strategy=sys.argv[4],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False,
                                callbacks=[SaneCallback(Path(sys.argv[1]), every_n_steps=4, method="exact")])
    trainer.fit(Module(net, lr=0.5), loader)
"""


@pytest.mark.slow
def test_under_ddp_rank_0_measures_the_whole_training_set(tmp_path):
    """2 CPU processes (ddp_spawn, gloo), each a shard of 32 examples: one run folder, written by rank 0, of the
    whole set's loss (64 examples), equal to one process's full-batch run to float32's rounding."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    for folder, devices, batch, strategy in [("ddp", 2, 32, "ddp_spawn"), ("one", 1, 64, "auto")]:
        subprocess.run([sys.executable, str(script), str(tmp_path / folder), str(devices), str(batch), strategy],
                       check=True, capture_output=True, env=env, timeout=600)  # fmt: skip
    ddp, one = load_run(tmp_path / "ddp"), load_run(tmp_path / "one")
    assert ddp.status == "completed" and ddp.hessian.step.tolist() == [0, 4, 8] and (ddp.hessian.subset == 64).all()
    assert ddp.summary["config"]["trainer"]["strategy"] == "DDPStrategy"
    pd.testing.assert_series_equal(ddp.hessian.lambda_max, one.hessian.lambda_max, rtol=1e-5)
    pd.testing.assert_series_equal(ddp.hessian.sane, one.hessian.sane, rtol=1e-5)
