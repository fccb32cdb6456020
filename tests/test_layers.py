"""Per-layer curvature (layers.csv) against the diagonal blocks of the dense reference Hessian, and through a
run, a resume and the report."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_config, reference_hessian
from omegaconf import OmegaConf, open_dict

from sane_cli.errors import UsageError
from sane_cli.examples import residual_mlp
from sane_cli.losses import loss_function
from sane_cli.methods import check_config, layers_wanted, measure
from sane_cli.models import CNN, MLP
from sane_cli.records import LAYER_COLUMNS, load_run
from sane_cli.report import report
from sane_cli.tables import flat_config
from sane_cli.training import train

HESSIAN = OmegaConf.load("conf/hessian/exact.yaml")


def hcfg(**keys):
    h = copy.deepcopy(HESSIAN)
    h.update(keys)
    return h


def model_and_data(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mlp":
        model, x = MLP(7, 3, 3, 6, "tanh"), torch.randn(60, 7)
    elif kind == "cnn":
        model, x = CNN((12,), 3, depth=2, channels=3, kernel=3, pooling="max", activation="tanh"), torch.randn(60, 12)
    else:  # a model of the user's own, without a layer-structured build
        model, x = residual_mlp((7,), 3, width=5, blocks=1), torch.randn(60, 7)
    model = model.double()
    y = torch.randint(0, 3, (60,))
    return model, loss_function("cross_entropy", 3), x.double(), y


def module_ranges(model) -> list[tuple[str, slice]]:
    """Each module's parameters as a range of the flat vector, from the parameter names (not the code under
    test): consecutive parameters whose names share the module prefix."""
    ranges, start = [], 0
    for name, p in model.named_parameters():
        prefix = name.rsplit(".", 1)[0] if "." in name else "(model)"
        if ranges and ranges[-1][0] == prefix:
            ranges[-1] = (prefix, slice(ranges[-1][1].start, start + p.numel()))
        else:
            ranges.append((prefix, slice(start, start + p.numel())))
        start += p.numel()
    return ranges


EPS = np.finfo(np.float64).eps


def expected(values: np.ndarray, alpha: float, rho: float, k: int, net_scale: float) -> dict:
    """What a layer's row says of its block's eigenvalues, from the formulas (eig_mode abs)."""
    m = np.abs(values)
    own = rho * np.sort(m)[::-1][min(k, len(m)) - 1]
    return {
        "lambda_max": values.max(), "lambda_min": values.min(), "trace": values.sum(),
        "n_negative": int((values < 0).sum()), "n_eff": float(np.sum(m / (m + alpha))),
        "sane": float(np.sum(m / (m + own))), "sane_net": float(np.sum(m / (m + net_scale))),
    }  # fmt: skip


def blocks_of(h: torch.Tensor, ranges) -> list[np.ndarray]:
    return [torch.linalg.eigvalsh(h[r, r]).numpy() for _, r in ranges]


@pytest.mark.parametrize(
    "kind,method",
    [("mlp", "exact"), ("mlp", "block_diag"), ("mlp", "block_band"), ("cnn", "exact"), ("cnn", "block_diag"),
     ("custom", "exact"), ("mlp", "slq"), ("custom", "slq")],
)  # fmt: skip
def test_each_layer_row_is_its_diagonal_block_of_the_dense_hessian(kind, method):
    """Every method's layer rows against the blocks of torch.func's dense Hessian: taken from the matrix the exact
    methods build, or (slq, blocks within the exact size) from the block's own Hessian-vector products."""
    model, loss_fn, x, y = model_and_data(kind)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    ranges = module_ranges(model)
    settings = dict(alpha=0.3, rho=0.5, k=2)
    result = measure(model, loss_fn, x, y, hcfg(method=method, layers=True, band=0, probes=8, steps=30, **settings))
    # SANE's net scale: the whole spectrum the method measured (block_diag's is that of the diagonal blocks)
    net = ref.clone()
    if method in ("block_diag", "block_band"):  # band 0: only the diagonal blocks
        mask = torch.zeros_like(net, dtype=torch.bool)
        for _, r in ranges:
            mask[r, r] = True
        net[~mask] = 0
    net_values = torch.linalg.eigvalsh(net).numpy()
    if method == "slq":  # the top eigenvalues by Lanczos, to its tolerance
        net_values = result.eigenvalues
    net_scale = 0.5 * np.sort(np.abs(net_values))[::-1][1]
    assert [r["module"] for r in result.layers] == [name for name, _ in ranges]
    assert [r["params"] for r in result.layers] == [r.stop - r.start for _, r in ranges]
    assert [r["layer"] for r in result.layers] == list(range(1, len(ranges) + 1))
    for row, values in zip(result.layers, blocks_of(ref, ranges), strict=True):
        assert row["method"] == "exact" and row["converged"]
        for key, want in expected(values, net_scale=net_scale, **settings).items():
            if key == "n_negative":  # below -P eps max|lambda|: a zero at rounding's distance is no negative
                assert row[key] == (values < -len(values) * EPS * np.abs(values).max()).sum(), row["module"]
                continue
            assert row[key] == pytest.approx(want, rel=1e-8, abs=1e-10), (row["module"], key)
    if method == "block_diag":  # the union of the blocks: its N_eff and SANE are the layers' sums
        assert sum(r["n_eff"] for r in result.layers) == pytest.approx(result.row["n_eff"], rel=1e-12)
        assert sum(r["sane_net"] for r in result.layers) == pytest.approx(result.row["sane"], rel=1e-12)
    # every block's eigenvalues are kept in the spectra file's arrays
    kept = np.split(result.arrays["layer_eigenvalues"], np.cumsum(result.arrays["layer_sizes"])[:-1])
    for got, values in zip(kept, blocks_of(ref, ranges), strict=True):
        np.testing.assert_allclose(got, np.sort(values)[::-1], rtol=1e-8, atol=1e-10)


def test_a_block_beyond_the_exact_size_is_estimated_by_slq_within_its_errors():
    """A layer whose block has more parameters than hessian.exact_max_params gets SLQ on its own Hessian-vector
    products: lambda_max to Lanczos' tolerance, trace, N_eff and both SANEs within 4 standard errors plus the
    bound on the quadrature's bias (where there is one), of the dense block's values."""
    model, loss_fn, x, y = model_and_data("mlp", seed=1)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    ranges = module_ranges(model)  # 48, 42 and 21 parameters
    h = hcfg(method="slq", layers=True, exact_max_params=30, probes=32, steps=25, alpha=0.05)
    result = measure(model, loss_fn, x, y, h)
    net_scale = 0.5 * np.abs(result.eigenvalues).max()
    methods = [r["method"] for r in result.layers]
    assert methods == ["slq", "slq", "exact"]
    assert "layer_eigenvalues" not in result.arrays  # not every block is exact
    for row, values in zip(result.layers, blocks_of(ref, ranges), strict=True):
        want = expected(values, 0.05, 0.5, 1, net_scale)
        assert row["lambda_max"] == pytest.approx(want["lambda_max"], rel=1e-5)
        for key in ("trace", "n_eff", "sane", "sane_net"):
            se = row.get(f"{key}_se", 0.0)
            assert abs(row[key] - want[key]) <= 4 * se + 1e-6 * abs(want[key]) + 0.05, (row["module"], key)
            if row["method"] == "slq":
                assert se > 0


def test_lanczos_layers_give_the_top_eigenvalue_and_trace_only():
    model, loss_fn, x, y = model_and_data("mlp")
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    result = measure(model, loss_fn, x, y, hcfg(method="lanczos", layers=True, exact_max_params=30, probes=64))
    for row, values in zip(result.layers, blocks_of(ref, module_ranges(model)), strict=True):
        assert row["lambda_max"] == pytest.approx(values.max(), rel=1e-5)
        if row["method"] == "lanczos":
            assert np.isnan(row["sane"]) and np.isnan(row["sane_net"]) and np.isnan(row["n_eff"])
            assert abs(row["trace"] - values.sum()) <= 4 * row["trace_se"]


def test_layers_auto_measures_them_where_the_method_builds_the_blocks():
    assert layers_wanted(hcfg(layers="auto"), "exact") and layers_wanted(hcfg(layers="auto"), "block_diag")
    assert not layers_wanted(hcfg(layers="auto"), "slq") and not layers_wanted(hcfg(layers="auto"), "lanczos")
    assert layers_wanted(hcfg(layers=True), "slq") and not layers_wanted(hcfg(layers=False), "exact")
    model, loss_fn, x, y = model_and_data("mlp")
    assert measure(model, loss_fn, x, y, hcfg(method="slq", probes=4, steps=10)).layers == []
    assert measure(model, loss_fn, x, y, hcfg(layers=False)).layers == []


def test_a_config_from_before_the_key_measures_no_layers_and_a_wrong_value_is_refused():
    cfg = make_config()
    with open_dict(cfg):
        del cfg.hessian["layers"]
    check_config(cfg)  # a run config of sane-run 0.9, resumed: it measured none, and goes on so
    assert cfg.hessian.layers is False
    for value in ("sometimes", 1, 0):
        cfg.hessian.layers = value
        with pytest.raises(UsageError, match=r"hessian.layers=.* must be auto, true or false"):
            check_config(cfg)


def test_a_run_writes_a_row_per_layer_at_every_checkpoint(tmp_path):
    folder = tmp_path / "run"
    train(make_config("depth=3", "lr=2", "steps=60", "hessian.every=20", "dataset.n_train=200"), folder)
    run = load_run(folder)
    assert list(run.layers.columns) == LAYER_COLUMNS
    per_step = run.layers.groupby(["step", "kind"]).size()
    assert set(per_step) == {3}  # three linear layers at each checkpoint
    assert sorted(per_step.index) == sorted(zip(run.hessian.step, run.hessian.kind, strict=True))
    # the layers' eigenvalues, kept in the spectrum file, are those of the blocks of the checkpoint's matrix
    for step in run.hessian.step:
        with np.load(folder / "spectra" / f"step_{step}.npz") as f:
            values, sizes = f["layer_eigenvalues"], f["layer_sizes"]
        rows = run.layers[run.layers.step == step].sort_values("layer")
        assert list(sizes) == list(rows.params) and sizes.sum() == run.summary["n_params"]
        for row, block in zip(rows.itertuples(), np.split(values, np.cumsum(sizes)[:-1]), strict=True):
            assert row.lambda_max == pytest.approx(block[0]) and row.trace == pytest.approx(block.sum())
    # interlacing: a diagonal block's eigenvalues lie within the net's, so its scale is at most the net's and its
    # SANE at the net's scale at most that at its own
    both = run.layers.merge(run.hessian[["step", "kind", "lambda_max", "lambda_min"]], on=["step", "kind"])
    assert (both.lambda_max_x <= both.lambda_max_y * (1 + 1e-9)).all()
    assert (both.lambda_min_x >= both.lambda_min_y - 1e-9 * both.lambda_max_y).all()
    assert (run.layers.sane_net <= run.layers.sane * (1 + 1e-9)).all()

    train(make_config("hessian.layers=false"), tmp_path / "off")
    off = load_run(tmp_path / "off")
    assert off.layers is not None and len(off.layers) == 0


def test_the_report_averages_each_layer_over_seeds(tmp_path):
    for depth in (2, 3):
        for seed in (0, 1):
            train(make_config(f"depth={depth}", f"seed={seed}"), tmp_path / "runs" / f"d{depth}s{seed}")
    page = report([tmp_path / "runs"], tmp_path / "report")
    out = page.parent
    profiles = pd.read_csv(out / "layer_profiles.csv")
    assert sorted(zip(profiles.unit, profiles.layer, strict=True)) == [
        ("depth=2", 1), ("depth=2", 2), ("depth=3", 1), ("depth=3", 2), ("depth=3", 3)
    ]  # fmt: skip
    assert (profiles.n_runs == 2).all()
    # the mean over the two seeds of each layer's final row, read from the run folders themselves
    for depth in (2, 3):
        finals = []
        for seed in (0, 1):
            layers = pd.read_csv(tmp_path / "runs" / f"d{depth}s{seed}" / "layers.csv")
            finals.append(layers[layers.step == layers.step.max()].set_index("layer"))
        mine = profiles[profiles.unit == f"depth={depth}"].set_index("layer")
        for key in ("lambda_max", "sane", "sane_net", "trace", "n_eff"):
            want = (finals[0][key] + finals[1][key]) / 2
            np.testing.assert_allclose(mine[f"{key}_mean"], want.loc[mine.index], rtol=1e-12)
    every = pd.read_csv(out / "layers.csv")
    assert len(every) == sum(len(pd.read_csv(p)) for p in (tmp_path / "runs").glob("*/layers.csv"))
    assert (out / "figures" / "layer_profile.png").is_file()
    assert len(list((out / "runs").glob("*/layers.png"))) == 4
    text = page.read_text()
    assert "layer_profile.png" in text
    assert "<h2>Curvature by layer</h2>" in text and text.count("<td>depth=3</td>") == 3  # its table, a row per layer


def test_a_damaged_layers_file_costs_only_its_run(tmp_path, caplog):
    for seed in (0, 1):
        train(make_config(f"seed={seed}"), tmp_path / "runs" / f"s{seed}")
    damaged = tmp_path / "runs" / "s1" / "layers.csv"
    damaged.write_text(damaged.read_text() + "20,scheduled,1,0,Linear,35,exact,garbage")  # a row cut off
    with pytest.raises(UsageError, match=r"layers.csv: the last row is cut off"):
        load_run(damaged.parent)
    page = report([tmp_path / "runs"], tmp_path / "report")
    assert "layers.csv: the last row is cut off" in page.read_text()
    assert len(pd.read_csv(page.parent / "summary.csv")) == 1


def test_what_else_a_run_recorded_does_not_make_it_another_model():
    """hessian.layers and the logger change what is recorded, not what is computed: the report does not group
    runs by them, so a sweep over them is one unit per model."""
    config = {"hessian": {"layers": True, "alpha": 0.5}, "logger": {"name": "tensorboard", "dir": None}, "seed": 1}
    assert flat_config(config) == {"hessian.alpha": 0.5, "seed": 1}


def test_a_stopped_run_of_sane_run_0_9_resumes_as_it_ran(tmp_path):
    """A run stopped under 0.9 (its configs without hessian.layers or logger, its checkpoint without a size for
    layers.csv): resume= continues it measuring no layers; a job of a 0.9 sweep started again with today's
    defaults is refused in one line naming hessian.layers, and with hessian.layers=false it resumes."""
    from test_resume import _as_stored, _stopped_run

    from sane_cli.records import resume_point

    folder = _stopped_run(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=False)
    config = json.loads(checkpoint["resume"]["config"])
    for c in (summary["config"], config):
        del c["hessian"]["layers"], c["logger"]
    (folder / "summary.json").write_text(json.dumps(summary))
    checkpoint["resume"]["config"] = json.dumps(config)
    del checkpoint["resume"]["sizes"]["layers.csv"]
    torch.save(checkpoint, folder / "checkpoint.pt")
    (folder / "layers.csv").unlink()

    today = make_config("steps=200", "hessian.every=50")
    with pytest.raises(UsageError, match=r"another config \(hessian.layers: False there, 'auto' now\)"):
        resume_point(folder, _as_stored(today))
    with open_dict(today):
        today.hessian.layers = False
    train(today, folder, progress=False, resume=True)
    run = load_run(folder)
    assert run.status == "completed" and len(run.layers) == 0 and run.config["hessian"]["layers"] is False
