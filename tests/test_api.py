"""The Python API (sane_cli.api): measure_curvature and CurvatureProbe give sane-run's numbers for the same model,
data and step; optimisers' stability thresholds read from the optimiser itself, checked against torch's own
optimisers run on quadratics either side of them; bad input in one line."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_config
from torch.utils.data import DataLoader, TensorDataset

import sane_cli
from sane_cli import CurvatureProbe, hessian_config, measure_curvature, stability_threshold
from sane_cli.data import load_data
from sane_cli.errors import UsageError
from sane_cli.losses import loss_function
from sane_cli.models import build_model
from sane_cli.optim import stability_threshold as config_threshold
from sane_cli.records import load_run
from sane_cli.training import train

# the columns that depend on the run's wall time
TIMED = ["seconds"]


def start_of(cfg):
    """sane-run's data and freshly seeded model for ``cfg`` (as sane_cli.training sets them up)."""
    data = load_data(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    dtype = torch.float64 if cfg.precision == "float64" else torch.float32
    model = build_model(cfg.model, data.input_shape, data.n_classes).to(dtype)
    return data, model, dtype


def test_the_api_is_exported():
    assert set(sane_cli.__all__) <= set(dir(sane_cli.api))
    assert sane_cli.measure_curvature is sane_cli.api.measure_curvature
    with pytest.raises(AttributeError):
        sane_cli.no_such_name  # noqa: B018


@pytest.mark.parametrize("method", ["exact", "slq", "block_diag"])
def test_measure_curvature_equals_sane_runs_checkpoint(tmp_path, method):
    """The API on the model sane-run saved at its last checkpoint gives that checkpoint's hessian.csv row and
    layers.csv rows, to the bit."""
    cfg = make_config(f"hessian={method}", "hessian.probes=4", "hessian.steps=20", "precision=float64",
                      "hessian.layers=true")  # fmt: skip
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    data, model, _ = start_of(cfg)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    overrides = {"probes": 4, "steps": 20, "layers": True, "topk_vectors": 3}
    c = measure_curvature(model, (data.x_train, data.y_train), method=method, hessian=overrides, optimizer=opt,
                          step=20)  # fmt: skip
    last = run.hessian.iloc[-1]
    assert last.step == 20
    for col, value in c.row.items():
        if col in TIMED:
            continue
        if isinstance(value, str) or isinstance(last[col], str) or pd.isna(last[col]):
            assert (value or "") == (last[col] if isinstance(last[col], str) else "") or (
                pd.isna(last[col]) and (value is None or value == "" or math.isnan(value))
            ), col
        else:
            assert float(value) == float(last[col]), col
    assert c.lambda_max == last.lambda_max and c.sane == last.sane and c.n_eff == last.n_eff
    layers = run.layers[run.layers.step == 20]
    assert [row["lambda_max"] for row in c.layers] == layers.lambda_max.tolist()
    with np.load(tmp_path / "run" / "spectra" / "step_20.npz") as f:
        np.testing.assert_array_equal(c.eigenvalues, f["eigenvalues"])
        np.testing.assert_array_equal(c.eigenvectors, f["eigenvectors"])


@pytest.mark.parametrize(
    "overrides",
    [["optim=gd"], ["optim=gd", "hessian=slq", "hessian.probes=4", "hessian.steps=20"],
     ["optim=adam", "lr=0.01", "optim.weight_decay=0.01"], ["optim=gd", "optim.momentum=0.5"]],
)  # fmt: skip
def test_a_probe_in_a_plain_loop_writes_sane_runs_files(tmp_path, overrides):
    """A plain PyTorch loop that trains as sane-run's default does (full batch, the same seeded start), probed at
    sane-run's checkpoints, writes the same hessian.csv (but the seconds) and metrics.csv (but the epoch)."""
    cfg = make_config(*overrides)
    train(cfg, tmp_path / "sane-run")
    data, model, dtype = start_of(cfg)
    x, y = data.x_train.to(dtype), data.y_train
    loss_fn = loss_function(cfg.loss, data.n_classes)
    o = cfg.optim
    if o.name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                               weight_decay=o.weight_decay)  # fmt: skip
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    hessian = {k: cfg.hessian[k] for k in ("probes", "steps", "topk_vectors")}
    with CurvatureProbe(tmp_path / "probe", model, (x, y), method=cfg.hessian.method, hessian=hessian,
                        optimizer=opt, test_data=(data.x_test, data.y_test)) as probe:  # fmt: skip
        for step in range(cfg.steps + 1):
            if step % cfg.hessian.every == 0 or step == cfg.steps:
                probe.measure(step)
            if step % cfg.log_every == 0 or step == cfg.steps:
                probe.log_metrics(step, epoch=float(step))
            if step < cfg.steps:
                model.train()
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    ours, theirs = load_run(tmp_path / "probe"), load_run(tmp_path / "sane-run")
    assert ours.status == "completed"
    pd.testing.assert_frame_equal(
        ours.hessian.drop(columns=TIMED), theirs.hessian.drop(columns=TIMED), check_exact=True
    )
    pd.testing.assert_frame_equal(
        ours.metrics.drop(columns="epoch"), theirs.metrics.drop(columns="epoch"), check_exact=True
    )
    pd.testing.assert_frame_equal(ours.layers, theirs.layers, check_exact=True)
    assert ours.summary["final_sane"] == theirs.summary["final_sane"]
    assert ours.summary["final_test_loss"] == theirs.summary["final_test_loss"]
    if overrides == ["optim=gd"]:  # the report reads both folders and copies each one's checkpoints
        from sane_cli.report import report

        out = report([tmp_path], tmp_path / "report").parent
        table = pd.read_csv(out / "summary.csv")
        assert len(table) == 2 and (table.sane == ours.summary["final_sane"]).all()
        assert sorted(table.optim) == ["gd", "sgd"]  # the probe names the optimiser's class


def test_measure_curvature_against_a_dense_reference():
    """A model of the user's (not a built-in) on a DataLoader: lambda_max, trace, N_eff and SANE from the dense
    float64 Hessian by torch.func, eigenvalues by numpy, the formulas written out here."""
    from helpers import reference_hessian

    torch.manual_seed(1)
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 4, (40,))
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4)).double()
    ev = np.linalg.eigvalsh(reference_hessian(model, torch.nn.functional.cross_entropy, x, y).numpy())
    c = measure_curvature(model, DataLoader(TensorDataset(x, y), batch_size=16), method="exact")
    m = np.abs(ev)
    assert c.lambda_max == pytest.approx(ev.max(), rel=1e-10) and c.trace == pytest.approx(ev.sum(), rel=1e-10)
    assert c.n_eff == pytest.approx(np.sum(m / (m + 0.5)), rel=1e-10)  # alpha 0.5
    assert c.sane == pytest.approx(np.sum(m / (m + 0.5 * m.max())), rel=1e-10)  # rho 0.5, k 1
    np.testing.assert_allclose(c.eigenvalues, ev[::-1], atol=1e-12)


def test_a_dataloader_gives_the_tensors_numbers():
    torch.manual_seed(0)
    x, y = torch.randn(50, 4, dtype=torch.float64), torch.randint(0, 3, (50,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    a = measure_curvature(model, (x, y), method="exact")
    b = measure_curvature(model, DataLoader(TensorDataset(x, y), batch_size=7), method="exact")
    assert a.row["subset"] == b.row["subset"] == 50
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=0, atol=1e-13)
    assert model.training  # the model is left in the mode it was in


def test_a_custom_loss_and_a_subset():
    """A loss function of the caller's gives the built-in's numbers; a subset is a seeded draw of the examples,
    the top eigenvalue of the whole loss beside it."""
    torch.manual_seed(0)
    x, y = torch.randn(60, 4, dtype=torch.float64), torch.randint(0, 3, (60,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    built_in = measure_curvature(model, (x, y), method="exact")
    own = measure_curvature(
        model, (x, y), method="exact", loss=lambda out, t: torch.nn.functional.cross_entropy(out, t)
    )
    assert own.row["lambda_max"] == built_in.row["lambda_max"] and own.row["sane"] == built_in.row["sane"]
    sub = measure_curvature(model, (x, y), method="exact", subset=20)
    assert sub.row["subset"] == 20 and sub.row["lambda_max"] != built_in.row["lambda_max"]
    assert sub.row["lambda_max_train"] == pytest.approx(built_in.row["lambda_max"], rel=1e-6)


def sgd_cfg(**kw):
    from omegaconf import OmegaConf

    return OmegaConf.create({"name": "sgd", "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, **kw})


def test_thresholds_of_sgd_and_adam_are_sane_runs():
    w = [torch.nn.Parameter(torch.zeros(3))]
    for kw in [dict(lr=0.3), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.5, nesterov=True),
               dict(lr=0.2, momentum=0.3, weight_decay=0.01)]:  # fmt: skip
        assert stability_threshold(torch.optim.SGD(w, **kw)) == pytest.approx(
            config_threshold(sgd_cfg(**kw)), rel=1e-15
        )
    from omegaconf import OmegaConf

    adam = OmegaConf.create(dict(name="adam", lr=0.003, beta1=0.8, weight_decay=0.1))
    assert stability_threshold(torch.optim.Adam(w, lr=0.003, betas=(0.8, 0.999), weight_decay=0.1)) == pytest.approx(
        config_threshold(adam), rel=1e-15
    )


def diverges(optimizer_cls, curvature: float, steps: int = 3000, start: float = 1e-3, **kw) -> bool:
    """torch's own optimiser on 0.5 curvature theta^2 from theta = ``start``: whether |theta| grows from a third
    of the way to the end (past any transient of the first steps)."""
    theta = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
    opt = optimizer_cls([theta], **kw)
    for step in range(steps):
        opt.zero_grad()
        (0.5 * curvature * theta**2).sum().backward()
        opt.step()
        if step == steps // 3:
            mid = float(theta.detach().abs())
    return float(theta.detach().abs()) > mid


@pytest.mark.parametrize(
    "cls,kw",
    [(torch.optim.SGD, dict(lr=0.1)), (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
     (torch.optim.SGD, dict(lr=0.1, momentum=0.6, dampening=0.5)),
     (torch.optim.SGD, dict(lr=0.1, momentum=0.6, nesterov=True, weight_decay=0.5))],
)  # fmt: skip
def test_sgd_thresholds_against_torchs_sgd(cls, kw):
    """SGD on a quadratic is stable just below the threshold read from it and diverges just above (dampening:
    heavy ball at the rate (1 - dampening) lr)."""
    limit = stability_threshold(cls([torch.nn.Parameter(torch.zeros(1))], **kw))
    assert not diverges(cls, 0.99 * limit, **kw) and diverges(cls, 1.01 * limit, **kw)


def test_adamw_threshold_against_torchs_adamw():
    """AdamW's decoupled decay lowers its threshold to (1 + beta1)(2 - lr wd)/((1 - beta1) lr) on lambda(P^-1 H).
    With eps far above the gradients (theta from 1e-20), P = (1 - beta1^t) eps -> eps: torch's AdamW is stable
    on a quadratic of curvature eps x 0.98 x the threshold and diverges at 1.02 x; without the decay (its
    threshold 11 % higher) 1.02 x is stable."""
    eps, kw = 1e4, dict(lr=0.1, betas=(0.9, 0.999), weight_decay=2.0)
    w = [torch.nn.Parameter(torch.zeros(1))]
    limit = stability_threshold(torch.optim.AdamW(w, eps=eps, **kw))
    assert limit == pytest.approx(1.9 * (2 - 0.2) / (0.1 * 0.1))
    assert stability_threshold(torch.optim.Adam(w, eps=eps, **kw)) == pytest.approx(limit * 2 / 1.8)
    assert not diverges(torch.optim.AdamW, 0.98 * limit * eps, start=1e-20, eps=eps, **kw)
    assert diverges(torch.optim.AdamW, 1.02 * limit * eps, start=1e-20, eps=eps, **kw)
    assert not diverges(torch.optim.AdamW, 1.02 * limit * eps, start=1e-20, eps=eps, lr=0.1, betas=(0.9, 0.999))
    adam = stability_threshold(torch.optim.Adam(w, eps=eps, lr=0.1))  # 38 / lr
    assert not diverges(torch.optim.Adam, 0.98 * adam * eps, start=1e-20, eps=eps, lr=0.1)
    assert diverges(torch.optim.Adam, 1.02 * adam * eps, start=1e-20, eps=eps, lr=0.1)


def test_an_unknown_optimiser_leaves_the_ratio_empty_with_one_warning(tmp_path, caplog):
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="sane_cli.api"):
        with CurvatureProbe(tmp_path / "run", model, (x, y), optimizer=opt) as probe:
            rows = [probe.measure(step).row for step in (0, 1, 2)]
    warnings = [r.getMessage() for r in caplog.records if "sharpness ratio" in r.getMessage()]
    assert len(warnings) == 1 and "RMSprop" in warnings[0] and "\n" not in warnings[0]
    assert all(math.isnan(r["sharpness_ratio"]) and r["lr"] == 0.01 for r in rows)
    assert math.isnan(stability_threshold(opt))
    groups = torch.optim.SGD([{"params": [model[0].weight], "lr": 0.1}, {"params": [model[0].bias], "lr": 0.2}])
    assert math.isnan(stability_threshold(groups))
    assert (
        stability_threshold(torch.optim.SGD([{"params": [model[0].weight]}, {"params": [model[0].bias]}], lr=0.1)) == 20
    )


def test_a_scheduler_moves_the_threshold():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    first = measure_curvature(model, (x, y), optimizer=opt)
    opt.step()
    sched.step()
    second = measure_curvature(model, (x, y), optimizer=opt)
    assert first.row["stability_threshold"] == pytest.approx(20) and second.row["stability_threshold"] == pytest.approx(
        40
    )
    assert second.row["lr"] == pytest.approx(0.05)


def test_bad_input_is_one_line(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    cases = [
        (lambda: measure_curvature("model", (x, y)), "torch.nn.Module"),
        (lambda: measure_curvature(model, [1, 2, 3]), "pair of tensors"),
        (lambda: measure_curvature(model, DataLoader(TensorDataset(x[:0], y[:0]))), "no examples"),
        (lambda: measure_curvature(model, (x, y[:5])), "as many labels"),
        (lambda: measure_curvature(model, (x, y), method="hutchinson"), "choose one of"),
        (lambda: measure_curvature(model, (x, y), hessian={"probez": 3}), "probez"),
        (lambda: measure_curvature(model, (x, y), hessian={"probes": 1}), "hessian.probes"),
        (lambda: measure_curvature(model, (x, y), loss="hinge"), "cross_entropy"),
        (lambda: measure_curvature(model, (x, y), subset=0), "subset"),
        (lambda: measure_curvature(model, (x, y), subset=21), "more than the 20 examples"),
        (lambda: measure_curvature(model, (x, y.double())), "integer class labels"),
        (lambda: measure_curvature(model, (x, y), method="block_diag"), "layer blocks"),
        (lambda: measure_curvature(torch.nn.ReLU(), (x, y)), "no trainable parameters"),
    ]
    for call, words in cases:
        with pytest.raises(UsageError, match=words) as e:
            call()
        assert "\n" not in str(e.value)
    with CurvatureProbe(tmp_path / "run", model, (x, y)) as probe:
        probe.measure(5)
        with pytest.raises(UsageError, match="must be larger"):
            probe.measure(5)
    with pytest.raises(UsageError, match="already holds a run"):
        CurvatureProbe(tmp_path / "run", model, (x, y))
    with pytest.raises(UsageError, match="closed"):
        probe.measure(6)


def test_a_failure_in_the_loop_is_recorded(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(RuntimeError, match="the loop's own"):
        with CurvatureProbe(tmp_path / "failed", model, (x, y)) as probe:
            probe.measure(0)
            raise RuntimeError("the loop's own error")
    run = load_run(tmp_path / "failed")
    assert run.status == "failed" and "the loop's own error" in run.summary["error"] and len(run.hessian) == 1
    with pytest.raises(KeyboardInterrupt):
        with CurvatureProbe(tmp_path / "stopped", model, (x, y)) as probe:
            probe.measure(0)
            raise KeyboardInterrupt
    assert load_run(tmp_path / "stopped").status == "interrupted"
    with pytest.raises(SystemExit):
        with CurvatureProbe(tmp_path / "exited", model, (x, y)) as probe:
            probe.measure(0)
            raise SystemExit(0)
    assert load_run(tmp_path / "exited").status == "completed"


def test_hessian_config_has_every_key_of_the_group():
    h = hessian_config("slq", probes=16)
    assert h.method == "slq" and h.probes == 16 and h.steps == 300 and "memory_gb" in h
    assert hessian_config().method == "auto"


# sane-measure: a saved model's checkpoint into a run folder


def test_sane_measure_of_a_runs_checkpoint_equals_the_run(tmp_path):
    """sane-measure on a sane-run run folder (its checkpoint.pt: model, Adam's state, config) writes the run's last
    hessian.csv row again, the preconditioned sharpness included; with hessian=slq, SLQ's row on the same model."""
    from sane_cli.saved import measure_saved

    cfg = make_config("optim=adam", "lr=0.01", "precision=float64", "hessian=exact")
    train(cfg, tmp_path / "run")
    folder, c = measure_saved(str(tmp_path / "run"), [], out=str(tmp_path / "again"))
    theirs, ours = load_run(tmp_path / "run"), load_run(folder)
    last = theirs.hessian.iloc[[-1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours.hessian.drop(columns=TIMED), last.drop(columns=TIMED), check_exact=True)
    assert c.row["preconditioned_sharpness"] > 0 and ours.summary["config"]["measured"]["kind"] == "checkpoint"
    assert ours.metrics.test_loss.iloc[0] == theirs.metrics.test_loss.iloc[-1]
    folder, c = measure_saved(str(tmp_path / "run" / "checkpoint.pt"), ["hessian=slq", "hessian.probes=4",
                              "hessian.steps=20"], out=str(tmp_path / "slq"))  # fmt: skip
    assert c.row["method"] == "slq" and c.row["step"] == 20
    assert c.lambda_max == pytest.approx(theirs.hessian.lambda_max.iloc[-1], rel=1e-6)
    # as Hydra: a group's choice before its keys whatever their order; lr= stands for optim.lr on a checkpoint too
    _, c = measure_saved(str(tmp_path / "run"), ["hessian.probes=4", "hessian=slq", "hessian.steps=20", "lr=0.05"],
                         out=str(tmp_path / "slq2"))  # fmt: skip
    run2 = load_run(tmp_path / "slq2")
    assert run2.summary["config"]["hessian"]["probes"] == 4 and run2.summary["config"]["optim"]["lr"] == 0.05
    assert c.row["stability_threshold"] == pytest.approx(38 / 0.05)


def test_sane_measure_of_a_state_dict_and_a_torchscript_file(tmp_path):
    """A state_dict with its model's config, and the same model as TorchScript, give the API's numbers; a
    state_dict without the right config, a garbage file and a missing one are refused in one line."""
    from sane_cli.saved import measure_saved

    cfg = make_config("depth=3", "model.width=7", "precision=float64")
    data, model, _ = start_of(cfg)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    tiny = ["dataset=synthetic", "dataset.n_train=96", "dataset.n_test=48", "dataset.n_features=6",
            "dataset.n_classes=3", "precision=float64", "hessian=exact", "device=cpu"]  # fmt: skip
    _, c = measure_saved(str(tmp_path / "weights.pt"), [*tiny, "depth=3", "model.width=7", "lr=0.1"],
                         out=str(tmp_path / "a"))  # fmt: skip
    ref = measure_curvature(model, (data.x_train.double(), data.y_train), method="exact")
    assert c.lambda_max == ref.lambda_max and c.sane == ref.sane
    assert c.row["stability_threshold"] == pytest.approx(20)  # lr=0.1 named: plain GD's 2 / lr
    torch.jit.save(torch.jit.trace(model, data.x_train[:2].double()), tmp_path / "net.ts")
    folder, c = measure_saved(str(tmp_path / "net.ts"), tiny, out=str(tmp_path / "b"))
    assert c.lambda_max == pytest.approx(ref.lambda_max, rel=1e-12) and math.isnan(c.row["sharpness_ratio"])
    assert load_run(folder).summary["config"]["model"]["name"] == "torchscript"
    from sane_cli.examples import residual_mlp  # a model of one's own, by its factory

    torch.manual_seed(3)
    own = residual_mlp((6,), 3, width=5, blocks=1).double()
    torch.save(own.state_dict(), tmp_path / "own.pt")
    factory = ["model=custom", "model.factory=sane_cli.examples:residual_mlp", "model.kwargs={width: 5, blocks: 1}"]
    _, c = measure_saved(str(tmp_path / "own.pt"), [*tiny, *factory], out=str(tmp_path / "c"))
    assert c.lambda_max == measure_curvature(own, (data.x_train.double(), data.y_train), method="exact").lambda_max
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a model" * 10)
    torch.save(model, tmp_path / "whole.pt")
    for file, extra, words in [
        (tmp_path / "weights.pt", ["depth=2"], "does not fit model=mlp"),
        (tmp_path / "garbage.pt", [], "not a model file"),
        (tmp_path / "whole.pt", [], "pickled objects beyond tensors"),
        (tmp_path / "missing.pt", [], "not a file"),
        (tmp_path / "weights.pt", ["depth=3", "model.width=7", "hessian.probez=3"], "bad override"),
        (tmp_path / "net.ts", ["dataset.n_features=5"], "does not take the data's inputs"),
    ]:
        with pytest.raises(UsageError, match=words) as e:
            measure_saved(str(file), [*tiny, *extra], out=str(tmp_path / "x"))
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_the_example_loop_and_sane_measure_beside_sane_run_in_one_report(tmp_path):
    """examples/plain_loop.py at two learning rates, sane-measure of one of sane-run's runs, and that run: one
    report reads the four folders, tells them apart by what their configs say, and copies each hessian.csv."""
    import subprocess
    import sys
    from pathlib import Path

    from sane_cli.report import report
    from sane_cli.saved import measure_saved

    script = Path(__file__).parent.parent / "examples" / "plain_loop.py"
    for lr in ("0.1", "0.5"):
        subprocess.run([sys.executable, str(script), "--lr", lr, "--steps", "20", "--every", "10", "--n-train", "100",
                        "--out", str(tmp_path / "runs" / "loop")], check=True, capture_output=True)  # fmt: skip
    train(make_config("lr=0.2"), tmp_path / "runs" / "sane-run")
    measure_saved(str(tmp_path / "runs" / "sane-run"), ["hessian=slq", "hessian.probes=4", "hessian.steps=20"],
                  out=str(tmp_path / "runs" / "measured"))  # fmt: skip
    out = report([tmp_path / "runs"], tmp_path / "report").parent
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 4 and set(table.status) == {"completed"}
    assert sorted(table.lr) == [0.1, 0.2, 0.2, 0.5]
    assert sorted(table.hessian) == ["auto", "auto", "auto", "slq"]
    checkpoints = pd.read_csv(out / "checkpoints.csv")
    for label, path in zip(table.label, table.run, strict=True):
        ours = checkpoints[checkpoints.run == label].drop(columns="run").reset_index(drop=True)
        assert len(ours) == len(pd.read_csv(Path(path) / "hessian.csv"))
        assert ours.lambda_max.tolist() == pd.read_csv(Path(path) / "hessian.csv").lambda_max.tolist()


def test_adams_preconditioner_follows_each_parameter_whatever_the_optimisers_order():
    """Adam over the model's parameters in another order (groups reversed) gives the same preconditioned
    sharpness; an optimiser of part of the model leaves the ratio empty (no crash at the second checkpoint)."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    start = copy.deepcopy(net.state_dict())
    values = []
    for groups in ([net[0], net[2]], [net[2], net[0]]):
        net.load_state_dict(start)
        opt = torch.optim.Adam([{"params": list(m.parameters())} for m in groups], lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        values.append(measure_curvature(net, (x, y), method="exact", optimizer=opt).row["preconditioned_sharpness"])
    assert values[0] > 0 and values[1] == pytest.approx(values[0], rel=1e-12)
    part = torch.optim.Adam(net[2].parameters(), lr=0.01)
    part.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    part.step()
    row = measure_curvature(net, (x, y), method="exact", optimizer=part).row
    assert math.isnan(row["sharpness_ratio"]) and math.isnan(row["stability_threshold"])
    zero = torch.optim.SGD(net.parameters(), lr=0.0)  # a warm-up from 0: stable along any curvature
    assert measure_curvature(net, (x, y), method="exact", optimizer=zero).row["sharpness_ratio"] == 0


def test_each_modules_own_mode_is_kept():
    """A training model with a frozen batch normalisation: measuring and logging leave it frozen (its running
    statistics untouched by the caller's next step)."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    net.train()
    net[1].eval()
    measure_curvature(net, (x, y), method="exact")
    assert net.training and not net[1].training


def test_data_and_models_that_do_not_fit_are_refused_before_any_folder(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x), x

    cases = [
        (lambda: CurvatureProbe(tmp_path / "a", model, (x, y), test_data=(x[:, :3], y)), "test_data's inputs"),
        (lambda: measure_curvature(model, (x[:, :3], y)), "does not take the data's inputs"),
        (lambda: measure_curvature(Pair(), (x, y)), "must return logits"),
        (lambda: measure_curvature(model, (x, y + 3)), "labels 0 to 2"),
        (lambda: measure_curvature(model, (x, y), classes=2), "classes=2"),
        (lambda: measure_curvature(model, (x * float("nan"), y)), "NaN"),
        (lambda: measure_curvature(model, (x, y), hessian=["probes"]), "mapping"),
        (lambda: measure_curvature(model, (x, y), hessian={"method": "slq"}), "differs from method"),
        (lambda: measure_curvature(model, (x, y), hessian={"probes": -3}), "hessian.probes"),
        (lambda: measure_curvature(model, (x, y), hessian={"k": 1000}), "k=1000"),
        (lambda: measure_curvature(model, (x, y), step="abc"), "whole number"),
        (lambda: stability_threshold(model), "torch.optim.Optimizer"),
    ]
    for call, words in cases:
        with pytest.raises(UsageError, match=words) as e:
            call()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()
    np_data = (x.numpy(), y.numpy())  # numpy arrays are taken as tensors
    assert measure_curvature(model, np_data, method="exact").lambda_max == measure_curvature(model, (x, y)).lambda_max
    with CurvatureProbe(tmp_path / "b", model, (x, y)) as probe:
        probe.log_metrics(3)
        with pytest.raises(UsageError, match="must be larger"):
            probe.log_metrics(2)
        with pytest.raises(UsageError, match="status="):
            probe.close("banana")
