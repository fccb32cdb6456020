"""train(cfg): the run folder's contents, determinism, divergence, SGD, and the logged curvature against
a dense reference Hessian of the saved checkpoint."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import make_config, reference_hessian

from sane_cli.data import load_data
from sane_cli.errors import UsageError
from sane_cli.losses import loss_function
from sane_cli.models import build_model
from sane_cli.records import HESSIAN_COLUMNS, METRICS_COLUMNS, load_run
from sane_cli.schedule import checkpoint_steps
from sane_cli.training import train


def test_checkpoint_steps():
    assert checkpoint_steps(250, 1000) == [0, 250, 500, 750, 1000]
    assert checkpoint_steps(300, 1000) == [0, 300, 600, 900, 1000]
    assert checkpoint_steps(5000, 10) == [0, 10]
    assert checkpoint_steps(250, 1000, at_start=False) == [250, 500, 750, 1000]


def test_a_run_without_the_start_checkpoint(tmp_path):
    """hessian.at_start=false: no curvature at step 0, the rest as with it (the same rows at the other steps)."""
    with_start = train(make_config(), tmp_path / "a")
    without = train(make_config("hessian.at_start=false"), tmp_path / "b")
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert a.hessian.step.tolist() == [0, 10, 20] and b.hessian.step.tolist() == [10, 20] == b.spectrum_steps()
    cols = ["step", "lambda_max", "trace", "n_eff", "sane"]
    assert a.hessian[cols].iloc[1:].reset_index(drop=True).equals(b.hessian[cols].reset_index(drop=True))
    assert with_start["final_sane"] == without["final_sane"]


def test_run_folder_contents(tiny_cfg, tmp_path):
    summary = train(tiny_cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert summary["status"] == run.status == "completed"
    assert list(run.metrics.columns) == METRICS_COLUMNS and list(run.hessian.columns) == HESSIAN_COLUMNS
    assert run.metrics.step.tolist() == [0, 5, 10, 15, 20]
    assert run.hessian.step.tolist() == [0, 10, 20] == run.spectrum_steps()
    assert (run.hessian.method == "exact").all() and (run.hessian.stability_threshold == 2 / 0.1).all()
    n_params = 6 * 5 + 5 + 5 * 3 + 3
    assert summary["n_params"] == n_params and (run.hessian.n_params == n_params).all()
    ev, vecs = run.spectrum(20)
    assert ev.shape == (n_params,) and np.all(np.diff(ev) <= 0) and vecs.shape == (n_params, 3)
    assert run.hessian.lambda_max.iloc[-1] == pytest.approx(ev[0])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("torch", "python", "device"):
        assert key in on_disk["environment"]
    assert on_disk["config"]["optim"]["lr"] == 0.1 and on_disk["wall_seconds"] > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def checkpoint_model(cfg, run_dir):
    """The model saved in run_dir/checkpoint.pt, and the run's data."""
    state = torch.load(run_dir / "checkpoint.pt")
    data = load_data(cfg.dataset)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    model.load_state_dict(state["model"])
    return model, data, state["step"]


def test_logged_curvature_matches_reference_of_checkpoint(tmp_path):
    """By default every logged number is of the Hessian of the mean loss over the whole training set."""
    cfg = make_config("model.activation=tanh", "loss=mse")
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    model, data, step = checkpoint_model(cfg, tmp_path / "run")
    assert step == 20
    x, y = data.x_train, data.y_train  # the loss that gradient descent descends
    ref = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss_function("mse", 3), x, y).numpy())[::-1]
    ev, vecs = run.spectrum(20)
    np.testing.assert_allclose(ev, ref, rtol=1e-9, atol=1e-11)
    last = run.hessian.iloc[-1]
    assert last.lambda_max == pytest.approx(ref[0], rel=1e-9)
    assert last.trace == pytest.approx(ref.sum(), rel=1e-9, abs=1e-11)
    assert last.n_negative == int((ref < -len(ref) * np.finfo(np.float64).eps * np.abs(ref).max()).sum())
    assert last.n_eff == pytest.approx(float(np.sum(np.abs(ref) / (np.abs(ref) + 0.5))), rel=1e-9)
    assert last.sane == pytest.approx(float(np.sum(np.abs(ref) / (np.abs(ref) + 0.5 * np.abs(ref).max()))), rel=1e-9)
    assert last.subset == len(y) == run.summary["n_train"] and last.lambda_max_train == last.lambda_max
    assert last.stability_threshold == 2 / 0.1 and last.sharpness_ratio == pytest.approx(ref[0] * 0.1 / 2, rel=1e-9)


def test_subset_logs_the_top_eigenvalue_of_the_training_loss(tmp_path):
    """With hessian.subset, the spectrum is the subset's and lambda_max_train (which the sharpness ratio uses)
    is the top eigenvalue of the whole training loss, each against its own dense reference."""
    cfg = make_config("hessian.subset=40", "lr=0.5", "steps=40", "hessian.every=20")
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    model, data, step = checkpoint_model(cfg, tmp_path / "run")
    loss_fn = loss_function("cross_entropy", 3)
    x, y = data.hessian_subset(40, cfg.seed)
    on_subset = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss_fn, x, y).numpy())
    on_train = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss_fn, data.x_train, data.y_train).numpy())
    last = run.hessian.set_index("step").loc[step]
    assert last.subset == 40
    assert last.lambda_max == pytest.approx(on_subset[-1], rel=1e-9)
    assert last.lambda_max_train == pytest.approx(on_train[-1], rel=1e-6)
    assert abs(on_subset[-1] - on_train[-1]) > 1e-3 * on_train[-1]  # the two functions differ here
    assert last.sharpness_ratio == pytest.approx(last.lambda_max_train / (2 / 0.5), rel=1e-12)


@pytest.mark.parametrize(
    "overrides,threshold",
    [
        ([], 2 / 0.1),
        (["optim.momentum=0.9"], 3.8 / 0.1),
        (["optim.momentum=0.9", "optim.nesterov=true"], 3.8 / (2.8 * 0.1)),
        (["optim=sgd", "optim.batch_size=32", "optim.momentum=0.5", "optim.weight_decay=0.01"], 3.0 / 0.1 - 0.01),
    ],
)
def test_stability_threshold_follows_the_optimiser(tmp_path, overrides, threshold):
    train(make_config(*overrides, "steps=10"), tmp_path / "run")
    h = load_run(tmp_path / "run").hessian
    assert h.stability_threshold.tolist() == pytest.approx([threshold] * len(h), rel=1e-12)
    assert h.sharpness_ratio.tolist() == pytest.approx((h.lambda_max_train / threshold).tolist(), rel=1e-12)


@pytest.mark.parametrize("batch", ["optim.batch_size=null", "optim.batch_size=32"])
def test_adam_logs_its_preconditioned_sharpness_against_38_over_lr(tmp_path, batch):
    """An Adam run: hessian.csv's preconditioned_sharpness at the last checkpoint equals lambda_max(P^-1 H) of
    the dense training-loss Hessian and the P rebuilt from the saved optimiser state; NaN at step 0 (no P
    yet); the ratio is taken against 38/lr."""
    cfg = make_config("optim=adam", "lr=0.02", "optim.weight_decay=0.01", batch, "steps=40", "hessian.every=20")
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    h = run.hessian.set_index("step")
    assert np.isnan(h.loc[0, "preconditioned_sharpness"]) and np.isnan(h.loc[0, "sharpness_ratio"])
    assert h.stability_threshold.tolist() == pytest.approx([38 / 0.02] * len(h), rel=1e-12)
    model, data, step = checkpoint_model(cfg, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt")["optimizer"]["state"]
    v = torch.cat([saved[i]["exp_avg_sq"].double().reshape(-1) for i in range(len(saved))])
    t = float(saved[0]["step"])
    p = (1 - 0.9**t) * ((v / (1 - 0.999**t)).sqrt() + 1e-8)  # Cohen et al. 2022's P_t, independently
    ref = reference_hessian(copy.deepcopy(model), loss_function("cross_entropy", 3), data.x_train, data.y_train)
    ref += 0.01 * torch.eye(len(p), dtype=torch.float64)  # the weight decay's curvature
    expected = float(torch.linalg.eigvals(ref / p[:, None]).real.max())
    assert step == 40 and t == 40
    assert h.loc[40, "preconditioned_sharpness"] == pytest.approx(expected, rel=1e-6)
    assert h.loc[40, "sharpness_ratio"] == pytest.approx(expected * 0.02 / 38, rel=1e-6)
    assert run.summary["final_preconditioned_sharpness"] == h.loc[40, "preconditioned_sharpness"]


def test_same_config_gives_identical_metrics(tmp_path):
    cfg = make_config("optim=sgd", "optim.batch_size=32", "optim.momentum=0.9")
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    for name in ("metrics.csv", "spectra/step_20.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = make_config("optim=sgd", "optim.batch_size=32", "optim.momentum=0.9", "seed=1")
    train(other, tmp_path / "c")
    assert (tmp_path / "a" / "metrics.csv").read_bytes() != (tmp_path / "c" / "metrics.csv").read_bytes()


def test_epochs_with_sgd(tmp_path):
    cfg = make_config("optim=sgd", "optim.batch_size=32", "epochs=2", "hessian.every=100")
    summary = train(cfg, tmp_path / "run")
    assert summary["steps_planned"] == 2 * (96 // 32)
    run = load_run(tmp_path / "run")
    assert run.metrics.epoch.iloc[-1] == pytest.approx(2.0)
    assert run.hessian.step.tolist() == [0, 6]


def test_divergence_keeps_the_log_and_returns(tmp_path):
    summary = train(make_config("lr=500", "steps=50"), tmp_path / "run")
    assert summary["status"] == "diverged" and summary["steps_done"] < 50
    run = load_run(tmp_path / "run")
    assert run.status == "diverged"
    assert run.hessian.step.tolist()[0] == 0  # the checkpoint taken before divergence is kept
    last = run.metrics.train_loss.iloc[-1]
    assert not np.isfinite(last) or last > 1000.0


def test_data_dependent_checks(tmp_path):
    with pytest.raises(
        UsageError, match=r"hessian.subset=100 is invalid: must be at most the training set size \(24\)"
    ):
        train(make_config("dataset.per_class=8", "hessian.subset=100"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing started


def test_refuses_to_overwrite_a_run(tiny_cfg, tmp_path):
    train(tiny_cfg, tmp_path / "run")
    with pytest.raises(UsageError, match="already holds a run"):
        train(tiny_cfg, tmp_path / "run")


def test_failure_is_recorded(tiny_cfg, tmp_path, monkeypatch):
    import sane_cli.training as training

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(training, "measure", boom)
    with pytest.raises(RuntimeError):
        train(tiny_cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.status == "failed" and "out of memory" in run.summary["error"]
    assert list(run.metrics.columns) == METRICS_COLUMNS  # the header was written before the failure


def test_float32_hessian_agrees_with_float64(tmp_path):
    train(make_config(), tmp_path / "f64")
    train(make_config("hessian.dtype=float32"), tmp_path / "f32")
    a, b = load_run(tmp_path / "f64"), load_run(tmp_path / "f32")
    assert (b.hessian.dtype == "float32").all()
    ev64, _ = a.spectrum(20)
    ev32, vec32 = b.spectrum(20)
    np.testing.assert_allclose(ev32, ev64, atol=1e-5 * abs(ev64).max())
    assert vec32.shape == (len(ev32), 3)


def test_dense_hessian_too_large_for_memory_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"hessian.method=exact needs about [\d,]+ GiB .* use hessian=auto"):
        train(make_config("hessian=exact", "depth=3", "model.width=4000"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # SLQ's probes (P numbers each) and, at the least, one probe's 40 Lanczos vectors (sane_cli.budget)
    message = r"hessian.method=slq needs at least [\d,.]+ GiB for SLQ's 100000 probes .* raise hessian.memory_gb"
    with pytest.raises(UsageError, match=message):
        train(make_config("depth=3", "model.width=4000", "hessian.probes=100000"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stop", [["stop.train_loss=0.9"], ["stop.train_loss=2", "stop.train_acc=0.6"]])
def test_a_stop_criterion_ends_the_run_converged_with_a_checkpoint_there(tmp_path, stop):
    """The run ends at the first metrics row that meets every criterion set, with status converged and a
    curvature checkpoint at that step; the report counts it among the finished runs."""
    cfg = make_config("steps=400", "hessian.every=100", "log_every=10", "lr=0.5", *stop)
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    m = run.metrics
    loss_ok = m.train_loss <= cfg.stop.train_loss
    met = loss_ok & (m.train_acc >= cfg.stop.train_acc) if cfg.stop.train_acc is not None else loss_ok
    first = int(m.step[met].iloc[0])  # the first logged step that meets the criterion
    assert run.status == "converged" and run.summary["steps_done"] == first == int(m.step.iloc[-1]) < 400
    assert int(run.hessian.step.iloc[-1]) == first and run.summary["final_curvature_step"] == first
    assert run.summary["final_train_loss"] == m.train_loss.iloc[-1]
    # checkpoint.pt holds the state the last curvature was taken of: measured again, the same N_eff
    from sane_cli.data import load_data
    from sane_cli.losses import loss_function
    from sane_cli.methods import measure
    from sane_cli.models import build_model
    from sane_cli.records import read_checkpoint

    checkpoint = read_checkpoint(tmp_path / "run")
    assert checkpoint["step"] == first
    data = load_data(cfg.dataset)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    model.load_state_dict(checkpoint["model"])
    row = measure(model, loss_function(cfg.loss, data.n_classes), data.x_train, data.y_train, cfg.hessian).row
    assert row["n_eff"] == pytest.approx(run.hessian.n_eff.iloc[-1], rel=1e-10)
    from sane_cli.tables import group_table, summary_table

    assert group_table(summary_table([run])).n_runs.tolist() == [1]


def test_a_stop_criterion_not_reached_leaves_the_run_completed(tmp_path):
    train(make_config("stop.train_loss=1e-9"), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "completed" and run.summary["steps_done"] == 20


def _custom_config(*overrides: str):
    """TINY's data and schedule with a model of one's own (TINY's mlp keys left out)."""
    from helpers import TINY
    from hydra import compose, initialize_config_module

    base = [o for o in TINY if not o.startswith(("model.", "depth="))]
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        return compose("config", overrides=[*base, "model=custom", "model.factory=sane_cli.examples:residual_mlp",
                                            *overrides])  # fmt: skip


def test_a_model_of_ones_own_is_trained_and_measured_like_the_built_in_ones(tmp_path):
    """model=custom: the factory called with the data's sizes and model.kwargs; its Hessian (generic, exact)
    against the dense float64 reference of the saved state; its import path and arguments recorded."""
    cfg = _custom_config("model.kwargs={width: 4, blocks: 1}")
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "completed"
    assert run.config["model"] == {"name": "custom", "factory": "sane_cli.examples:residual_mlp",
                                   "kwargs": {"width": 4, "blocks": 1}}  # fmt: skip
    model, data, step = checkpoint_model(cfg, tmp_path / "run")
    n_params = (6 * 4 + 4) + 2 * (4 * 4 + 4) + (4 * 3 + 3)  # in, one residual block, read-out
    assert step == 20 and sum(p.numel() for p in model.parameters()) == run.summary["n_params"] == n_params
    loss = loss_function("cross_entropy", 3)
    ref = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss, data.x_train, data.y_train).numpy())[::-1]
    ev, _ = run.spectrum(20)
    np.testing.assert_allclose(ev, ref, rtol=1e-9, atol=1e-11)
    last = run.hessian.iloc[-1]
    assert last.method == "exact"
    assert last.n_eff == pytest.approx(float(np.sum(np.abs(ref) / (np.abs(ref) + 0.5))), rel=1e-9)
