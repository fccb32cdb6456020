"""sane-report on runs that sane-run makes in a temporary folder and on damaged copies: the files it
writes, its numbers against the logs, correlations against a direct computation, skipped folders, and
that run folders are never changed."""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_config

from sane_cli.errors import UsageError
from sane_cli.records import HESSIAN_COLUMNS, RunWriter, find_runs, load_run
from sane_cli.report import Options, main, report
from sane_cli.statistics import correlations
from sane_cli.training import train

LRS, SEEDS = (0.05, 0.2, 0.5), (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """An lr x seed sweep in multirun-like nested folders, plus a run that diverges."""
    root = tmp_path_factory.mktemp("outputs")
    for i, (lr, seed) in enumerate(itertools.product(LRS, SEEDS)):
        folder = root / "sweeps" / "day" / f"{i}_lr={lr},seed={seed}"
        train(make_config(f"lr={lr}", f"seed={seed}"), folder, progress=False)
    summary = train(make_config("lr=500", "seed=0"), root / "sweeps" / "day" / "6_lr=500", progress=False)
    assert summary["status"] == "diverged"
    return root


def digest(folder) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(sweep, tmp_path_factory):
    """The sweep's report, built once for the tests that only read it: (its folder, the sweep's files' digests
    before and after)."""
    out = tmp_path_factory.mktemp("built") / "rep"
    before = digest(sweep)
    report([sweep], out, Options(formats=("png", "pdf")))
    return out, before, digest(sweep)


def test_report_writes_every_file_and_changes_no_run(built):
    out, before, after = built
    assert after == before
    page = out / "report.html"
    for name in ("summary.csv", "groups.csv", "correlations.csv", "basins.csv", "spikes.csv", "spikes_per_run.csv",
                 "figures/lr_comparison.png",
                 "figures/lr_comparison.pdf"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "figures" / "lr_comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = pd.read_csv(out / "checkpoints.csv")  # every run's hessian.csv, row for row
    table = pd.read_csv(out / "summary.csv")
    for label, path in zip(table.label, table.run, strict=True):
        pd.testing.assert_frame_equal(
            checkpoints[checkpoints.run == label].drop(columns="run").reset_index(drop=True).dropna(axis=1, how="all"),
            pd.read_csv(Path(path) / "hessian.csv").dropna(axis=1, how="all"),
            check_dtype=False,
        )
    assert not (out / "figures" / "depth_comparison.png").exists()  # depth does not vary
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 7 and all((r / "dynamics.png").is_file() and (r / "basins.csv").is_file() for r in runs)
    text = page.read_text()
    assert text.count("<details><summary><b>") == 7 and "figures/lr_comparison.png" in text
    assert '<td class="bad">diverged</td>' in text


def test_summary_and_groups_equal_the_logs(built):
    out = built[0]
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 7 and set(table.status) == {"completed", "diverged"}
    assert table.loc[table.status == "diverged", "lr"].tolist() == [500]
    for _, row in table.iterrows():
        run = load_run(row.run)
        assert row.test_acc == run.summary["final_test_acc"]
        if row.status == "completed":
            last = run.hessian[run.hessian.kind != "pre_spike"].sort_values("step").iloc[-1]
            assert (row.sane, row.n_eff, row.lambda_max) == (last.sane, last.n_eff, last.lambda_max)
            assert row.curvature_step == last.step
            assert row.gen_gap == pytest.approx(run.summary["final_test_loss"] - run.summary["final_train_loss"])
            assert row.label == f"lr={row.lr:g} seed={row.seed}"
    groups = pd.read_csv(out / "groups.csv")
    assert sorted(groups.lr) == list(LRS) and (groups.n_runs == 2).all()  # seeds averaged, diverged run excluded
    for lr in LRS:
        values = table.loc[table.lr == lr, "sane"]
        g = groups[groups.lr == lr].iloc[0]
        assert g.sane_mean == pytest.approx(values.mean()) and g.sane_std == pytest.approx(values.std(ddof=1))


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b by counting pairs."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    n0 = concordant + discordant
    return (concordant - discordant) / np.sqrt((n0 + ties_x) * (n0 + ties_y))


def spearman(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the (average) ranks."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def test_correlations_match_a_direct_computation(built):
    out = built[0]
    table = pd.read_csv(out / "summary.csv")
    corr = pd.read_csv(out / "correlations.csv")
    done = table[table.status == "completed"]
    assert len(corr) == 5 * 3 and (corr.n_runs == len(done)).all() and (corr.scope == "all").all()
    sensitivity = pd.read_csv(out / "sensitivity_correlations.csv")  # the same units there
    assert (sensitivity.n_units == len(LRS)).all() and (sensitivity.n_runs == len(done)).all()
    means = done.groupby("lr").mean(numeric_only=True)  # the seeds of a learning rate are one unit
    assert (corr.n_units == len(LRS)).all() and (corr.seeds_min == corr.seeds_max).all()
    assert (corr.seeds_max == len(SEEDS)).all()
    for _, row in corr.iterrows():
        x, y = means[row.measure].to_numpy(), means[row.target].to_numpy()
        assert row.kendall_tau == pytest.approx(kendall_tau_b(x, y), abs=1e-12)
        assert row.spearman_rho == pytest.approx(spearman(x, y), abs=1e-12)
    # hand-made: a measure that orders the runs exactly as the target has tau = rho = 1
    toy = pd.DataFrame({"status": "completed", "sane": [1.0, 2, 3, 4], "test_loss": [0.1, 0.2, 0.5, 0.9]})
    row = correlations(toy, ["sane"], ["test_loss"]).iloc[0]
    assert (row.kendall_tau, row.spearman_rho) == (pytest.approx(1.0), pytest.approx(1.0))
    # every resample of a monotone relation is monotone: the interval is [1, 1]; 4 runs are few
    assert (row.kendall_lo, row.kendall_hi, row.spearman_lo, row.spearman_hi) == (1, 1, 1, 1) and row.few_units


def test_bootstrap_intervals_of_the_correlations():
    """Each resample's tau-b and rho (bootstrap resamples repeat runs: ties) equal scipy's; the interval
    holds the estimate, narrows with more runs, and is the same for the same seed."""
    from scipy.stats import kendalltau, spearmanr

    from sane_cli.statistics import bootstrap_rank_correlations

    rng = np.random.default_rng(1)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    idx = rng.integers(0, 12, size=(40, 12))
    taus, rhos = bootstrap_rank_correlations(x[idx], y[idx], chunk=7)
    for i in range(40):
        assert taus[i] == pytest.approx(kendalltau(x[idx[i]], y[idx[i]])[0], abs=1e-12)
        assert rhos[i] == pytest.approx(spearmanr(x[idx[i]], y[idx[i]])[0], abs=1e-12)
    widths = []
    for n in (10, 80):
        x = rng.normal(size=n)
        toy = pd.DataFrame({"status": "completed", "sane": x, "test_loss": x + rng.normal(size=n)})
        row = correlations(toy, ["sane"], ["test_loss"]).iloc[0]
        assert row.n_runs == row.n_units == n and not row.few_units
        assert row.kendall_lo < row.kendall_tau < row.kendall_hi
        assert row.spearman_lo < row.spearman_rho < row.spearman_hi
        widths.append(row.spearman_hi - row.spearman_lo)
        pd.testing.assert_series_equal(row, correlations(toy, ["sane"], ["test_loss"]).iloc[0])
    assert widths[1] < 0.6 * widths[0]


def test_correlations_average_seeds_within_units_and_split_families():
    """Runs that differ only in their seed are one unit: rho and tau are those of the unit means (a model run
    with more seeds counts once), and each family (model=...) gets its own rows beside all units."""
    rng = np.random.default_rng(3)
    rows = []
    for model, widths in (("mlp", (8, 16, 32, 64)), ("cnn", (4, 8, 16))):
        for w in widths:
            for s in range(1 + w % 3):  # 1 to 3 seeds
                loss, sane = (w if model == "mlp" else -w) + rng.normal(), w + rng.normal()
                rows.append(dict(status="converged", model=model, width=w, seed=s, sane=sane, test_loss=loss))
    table = pd.DataFrame(rows)
    corr = correlations(table, ["sane"], ["test_loss"])
    assert list(corr.scope) == ["all", "model=cnn", "model=mlp"]
    for scope in ("all", "model=cnn", "model=mlp"):
        sub = table if scope == "all" else table[table.model == scope[len("model=") :]]
        means, sizes = (sub.groupby(["model", "width"]).mean(numeric_only=True), sub.groupby(["model", "width"]).size())
        row = corr[corr.scope == scope].iloc[0]
        assert row.n_units == len(means) and row.n_runs == len(sub)
        assert (row.seeds_min, row.seeds_max) == (sizes.min(), sizes.max())
        x, y = means.sane.to_numpy(), means.test_loss.to_numpy()
        assert row.spearman_rho == pytest.approx(spearman(x, y), abs=1e-12)
        assert row.kendall_tau == pytest.approx(kendall_tau_b(x, y), abs=1e-12)
    # within each family the measure orders the units as the target does (+1 for the MLPs, -1 for the CNNs)
    assert corr.set_index("scope").spearman_rho["model=mlp"] == pytest.approx(1.0)
    assert corr.set_index("scope").spearman_rho["model=cnn"] == pytest.approx(-1.0)


def test_hierarchical_bootstrap_draws_units_then_their_own_seeds():
    """Each resampled unit mean averages as many draws from that unit's own runs as it has runs: over many
    resamples its mean is the unit's mean and its variance the runs' (population) variance over their number."""
    from sane_cli.statistics import BOOTSTRAP, hierarchical_resamples

    xs = np.array([[1.0, 2.0, 6.0], [10.0, np.nan, np.nan], [20.0, 30.0, np.nan]])
    counts = np.array([3, 1, 2])
    mx, my = hierarchical_resamples(xs, -xs, counts, seed=0)
    assert mx.shape == (BOOTSTRAP, 3) and np.array_equal(my, -mx)
    draws = {u: [] for u in range(3)}
    for seed in range(20):
        idx_rng = np.random.default_rng(seed)
        drawn = idx_rng.integers(0, 3, size=(BOOTSTRAP, 3))  # the units, drawn first from the same stream
        m, _ = hierarchical_resamples(xs, xs, counts, seed=seed)
        for u in range(3):
            draws[u].append(m[drawn == u])
    for u, c in enumerate(counts):
        v = np.concatenate(draws[u])
        runs = xs[u, :c]
        assert v.min() >= runs.min() and v.max() <= runs.max()
        assert v.mean() == pytest.approx(runs.mean(), rel=0.02)
        assert v.var() == pytest.approx(runs.var() / c, rel=0.08, abs=1e-12)


def test_damaged_folders_are_skipped_with_a_warning(sweep, tmp_path, caplog):
    root = tmp_path / "outputs"
    good = find_runs(sweep)[0]
    shutil.copytree(good, root / "good")
    shutil.copytree(good, root / "bad_hessian")
    (root / "bad_hessian" / "hessian.csv").write_text("step,lr\n0,0.1\n")
    shutil.copytree(good, root / "bad_summary")
    (root / "bad_summary" / "summary.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        page = report([root], options=Options(jobs=1))
    assert page == root / "report" / "report.html"
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(root / "bad_hessian") in warned and str(root / "bad_summary") in warned
    assert len(pd.read_csv(root / "report" / "summary.csv")) == 1
    assert "bad_hessian" in page.read_text()


def test_bad_input_is_one_usage_error(tmp_path, sweep):
    with pytest.raises(UsageError, match="does not exist"):
        main([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no sane-run run folders"):
        main([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="--format"):
        main([str(sweep), "--format", "svg"])
    with pytest.raises(UsageError, match="--measures"):
        main([str(sweep), "--measures", "sane,sharpness"])
    with pytest.raises(UsageError, match=r"--status='finished' is invalid: choose among running, completed"):
        main([str(sweep), "--status", "finished"])
    with pytest.raises(UsageError, match="has status converged; drop --status"):
        main([str(sweep), "--status", "converged", "-o", str(tmp_path / "rep")])
    run = find_runs(sweep)[0]
    with pytest.raises(UsageError, match="inside the run folder"):
        report([run], run / "report")
    with pytest.raises(UsageError, match=f"the output folder {sweep} holds run folders"):
        report([sweep], sweep)
    assert not (sweep / "report.html").exists() and not (sweep / "runs").exists()


def test_labels_alike_as_file_names_get_folders_of_their_own(sweep, tmp_path):
    """Two runs whose labels differ only in a character a file name cannot hold (/ and _): each gets its
    own figures folder, neither overwrites the other's."""
    good = find_runs(sweep)[0]
    for name, note in (("one", "a/b"), ("two", "a_b")):
        shutil.copytree(good, tmp_path / "runs" / name)
        path = tmp_path / "runs" / name / "summary.json"
        summary = json.loads(path.read_text())
        summary["config"]["optim"]["note"] = note
        path.write_text(json.dumps(summary))
    report([tmp_path / "runs"], tmp_path / "rep", Options(jobs=1))
    table = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert sorted(table.label) == ["optim.note=a/b", "optim.note=a_b"]
    folders = sorted(p.name for p in (tmp_path / "rep" / "runs").iterdir())
    assert folders == ["optim.note=a_b", "optim.note=a_b~2"]
    assert all((tmp_path / "rep" / "runs" / f / "dynamics.png").is_file() for f in folders)


def test_basins_of_a_large_lr_run_in_the_report(sweep, tmp_path):
    """Two paths (the sweep and a separate large-lr run): the spikes of the large-lr run reach basins.csv,
    its basins figure, and the summary's spike count."""
    train(make_config("lr=2.0", "steps=100"), tmp_path / "big" / "run", progress=False)
    report([sweep, tmp_path / "big"], tmp_path / "rep", Options(jobs=2))
    table = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert len(table) == 8
    big = table[table.lr == 2.0].iloc[0]
    basins = pd.read_csv(tmp_path / "rep" / "basins.csv")
    mine = basins[basins.run == big.label]
    assert big.spikes == mine.spike_step.notna().sum() >= 1
    assert (tmp_path / "rep" / "runs" / big.label.replace(" ", "_") / "basins.png").is_file()
    assert mine.flattening.notna().any()
    spikes = json.loads((tmp_path / "big" / "run" / "summary.json").read_text())["spikes_measured"]
    assert spikes >= 1


def test_depth_comparison_when_depth_varies(tmp_path):
    for depth, lr in itertools.product((1, 2), (0.1, 0.3)):
        train(make_config(f"depth={depth}", f"lr={lr}"), tmp_path / "runs" / f"d{depth}_lr{lr}", progress=False)
    report([tmp_path / "runs"], tmp_path / "rep", Options(jobs=1))
    assert (tmp_path / "rep" / "figures" / "depth_comparison.png").is_file()
    assert (tmp_path / "rep" / "figures" / "lr_comparison.png").is_file()
    groups = pd.read_csv(tmp_path / "rep" / "groups.csv")
    assert sorted(zip(groups.depth, groups.lr, strict=True)) == [(1, 0.1), (1, 0.3), (2, 0.1), (2, 0.3)]


def test_partial_runs_are_listed_and_a_broken_spectrum_costs_only_its_figures(sweep, tmp_path, caplog):
    """A run that has just started (headers only) is listed as running; a run whose spectra file is
    corrupt keeps its row and dynamics figure but loses those that need the spectra, with a warning naming
    it and the damaged file; the other runs are reported."""
    root = tmp_path / "outputs"
    started = RunWriter.create(root / "started")
    started.write_summary({"status": "running", "config": {"optim": {"name": "gd", "lr": 0.1}, "seed": 0}})
    good = find_runs(sweep)[0]
    shutil.copytree(good, root / "good")
    shutil.copytree(good, root / "broken_spectrum")
    (root / "broken_spectrum" / "spectra" / "step_0.npz").write_bytes(b"not a numpy file")
    try:  # the started run is still going: its writer holds the folder
        with caplog.at_level(logging.WARNING):
            page = report([root], options=Options(jobs=2))
    finally:
        started.close()
    table = pd.read_csv(root / "report" / "summary.csv")
    assert sorted(table.status) == ["completed", "completed", "running"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(root / "broken_spectrum") in warned and "step_0.npz: not a readable spectrum" in warned
    assert str(root / "good") not in warned
    folders = [p for p in (root / "report" / "runs").iterdir() if p.is_dir()]
    with_dynamics = [p for p in folders if (p / "dynamics.png").is_file()]
    without_spectra = [p for p in with_dynamics if not (p / "spectra.png").exists()]
    assert len(with_dynamics) == 3 and len(without_spectra) == 2  # the broken one, and the started one
    assert "broken_spectrum" in page.read_text()


def test_older_run_folders_and_subset_runs(sweep, tmp_path):
    """Run folders written before stability_threshold and lambda_max_train existed (and, older still, before
    checkpoint kinds) are read in today's columns; a run whose Hessian was taken on a subset is marked."""
    root = tmp_path / "runs"
    source = next(p for p in find_runs(sweep) if p.name.startswith("0_"))
    older = ["log_evidence", "preconditioned_sharpness", "reorth", "n_eff_bound", "sane_bound", "weight_norm_sq"]
    for name, drop in (("v0.2", ["lambda_max_train", *older]), ("v0.1", ["lambda_max_train", "kind", *older])):
        shutil.copytree(source, root / name)
        h = (
            pd.read_csv(root / name / "hessian.csv")
            .drop(columns=drop)
            .rename(columns={"stability_threshold": "two_over_lr"})
        )
        h["subset"] = 64  # those versions took the Hessian on a subset of the 96 training examples
        h.to_csv(root / name / "hessian.csv", index=False)
    train(make_config("hessian.subset=50", "seed=5"), root / "subset", progress=False)
    for name in ("v0.1", "v0.2"):
        h = load_run(root / name).hessian
        assert h.stability_threshold.tolist() == pytest.approx([2 / 0.05] * len(h))
        assert h.lambda_max_train.isna().all() and (h.kind == "scheduled").all()
        assert list(h.columns) == HESSIAN_COLUMNS and h[older].isna().all().all()
    report([root], tmp_path / "rep")
    table = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("label")
    on = dict(zip(table.run.map(lambda p: p.rsplit("/", 1)[-1]), table.hessian_on, strict=True))
    assert on == {"v0.1": "subset 64/96", "v0.2": "subset 64/96", "subset": "subset 50/96"}
    assert "3 of 3 runs took their curvature on a subset" in (tmp_path / "rep" / "report.html").read_text()
    # hessian.subset is null in two runs and 50 in the third: a varying key like any other
    labels = dict(zip(table.run.map(lambda p: p.rsplit("/", 1)[-1]), table.index, strict=True))
    assert "hessian.subset=50" in labels["subset"] and "hessian.subset=null" in labels["v0.1"]


def test_a_killed_run_is_reported_as_stopped_and_a_live_one_as_running(sweep, tmp_path):
    """status "running" in summary.json: "running" while a process holds the folder, else "stopped"."""
    good = find_runs(sweep)[0]
    for name in ("killed", "live"):
        shutil.copytree(good, tmp_path / "runs" / name)
        path = tmp_path / "runs" / name / "summary.json"
        path.write_text(path.read_text().replace('"status": "completed"', '"status": "running"'))
    from sane_cli.records.files import lock

    fd = lock(tmp_path / "runs" / "live")  # as a running sane-run holds its folder
    try:
        report([tmp_path / "runs"], tmp_path / "rep", Options(jobs=1))
    finally:
        os.close(fd)
    table = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("label")
    assert table.status.to_dict() == {"killed": "stopped", "live": "running"}


def test_a_resumed_run_groups_with_its_unstopped_twin(sweep, tmp_path):
    """`resume` and `threads` say how a run was started, not what it computed: no label or group splits on
    them."""
    good = find_runs(sweep)[0]
    for name, extra in (("plain", {}), ("resumed", {"resume": "/somewhere/run", "threads": 1})):
        shutil.copytree(good, tmp_path / "runs" / name)
        path = tmp_path / "runs" / name / "summary.json"
        summary = json.loads(path.read_text())
        summary["config"].update(extra)
        path.write_text(json.dumps(summary))
    report([tmp_path / "runs"], tmp_path / "rep", Options(jobs=1))
    groups = pd.read_csv(tmp_path / "rep" / "groups.csv")
    assert groups.n_runs.tolist() == [2]
    assert sorted(pd.read_csv(tmp_path / "rep" / "summary.csv").label) == ["plain", "resumed"]


def test_adam_runs_compare_their_preconditioned_sharpness_with_their_own_threshold(tmp_path):
    """GD and Adam at two learning rates: the summary carries Adam's preconditioned sharpness (empty for GD); in
    the lr comparison the lambda_max panel's threshold is GD's 2/lr alone, and a panel of lambda_max(P^-1 H)
    carries Adam's 38/lr."""
    import matplotlib.pyplot as plt

    from sane_cli import plots
    from sane_cli.tables import group_table, summary_table

    for optim, lr in itertools.product(("gd", "adam"), (0.01, 0.1)):
        train(
            make_config(f"optim={optim}", f"lr={lr}", "steps=10"), tmp_path / "runs" / f"{optim}_{lr}", progress=False
        )
    runs = [load_run(p) for p in find_runs(tmp_path / "runs")]
    table = summary_table(runs)
    adam = table.optim == "adam"
    assert table[adam].preconditioned_sharpness.notna().all() and table[~adam].preconditioned_sharpness.isna().all()
    np.testing.assert_allclose(table[adam].sharpness_ratio, table[adam].preconditioned_sharpness * table[adam].lr / 38)
    fig = plots.comparison(group_table(table), "lr", "optim", ["lambda_max", "preconditioned_sharpness"])
    dashed = {
        ax.get_ylabel(): sorted(y for line in ax.get_lines() if line.get_linestyle() == "--" for y in line.get_ydata())
        for ax in fig.axes[:2]
    }
    plt.close(fig)
    assert dashed[plots._label("lambda_max")] == pytest.approx([2 / 0.1, 2 / 0.01])
    assert dashed[plots._label("preconditioned_sharpness")] == pytest.approx([38 / 0.1, 38 / 0.01])
    out = tmp_path / "report"
    report([tmp_path / "runs"], out, Options(jobs=1))
    for name in ("lr_comparison", "sharpness", "correlations"):
        assert (out / "figures" / f"{name}.png").is_file(), name


def test_the_late_sharpness_ratio_is_the_median_over_the_last_third(tmp_path):
    from sane_cli.tables import late_sharpness_ratio

    train(make_config("lr=0.5", "steps=30", "hessian.every=5"), tmp_path / "run", progress=False)
    h = load_run(tmp_path / "run").hessian
    scheduled = h[h.kind == "scheduled"].set_index("step").sharpness_ratio
    assert late_sharpness_ratio(h) == pytest.approx(np.median(scheduled.loc[[20, 25, 30]]), rel=1e-12)
    assert np.isnan(late_sharpness_ratio(h.iloc[:0]))
    from sane_cli.tables import group_table, summary_table

    groups = group_table(summary_table([load_run(tmp_path / "run")]))
    assert groups.sharpness_ratio_late_mean.iloc[0] == late_sharpness_ratio(h)


def test_status_keeps_only_those_runs(sweep, tmp_path):
    statuses = {str(p): load_run(p).status for p in find_runs(sweep)}
    main([str(sweep), "--status", "diverged", "-o", str(tmp_path / "rep"), "-j", "1"])
    table = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert sorted(table.run) == sorted(p for p, s in statuses.items() if s == "diverged") and len(table)


def test_the_report_needs_no_torch(sweep, tmp_path):
    """sane-report reads run folders and draws; it imports neither torch nor the training code, so that it
    starts quickly and runs where torch is not installed (torch blocked in a fresh interpreter)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Block:\n"  # `import torch` (and any torch submodule) raises ImportError
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from sane_cli.cli import report_main\n"
        f"sys.argv = ['sane-report', {str(sweep)!r}, '-o', {str(tmp_path / 'rep')!r}, '-j', '1']\n"
        "report_main()\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'sane_cli.training']\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "summary.csv").is_file()


def test_sensitivity_recomputes_the_measures_from_the_saved_spectra(tmp_path):
    """sane-report's sensitivity.csv: N_eff and SANE at other alpha, rho and k, and N_eff at the evidence
    framework's optimal prior precision, from each run's saved spectrum, against the formulas on hand-made
    spectra; a run without a full spectrum (slq) is left empty with a note; bad settings are one line."""
    from sane_cli.sensitivity import sensitivity_table

    rng = np.random.default_rng(0)
    spectra = {}
    for i, method in enumerate(("exact", "exact", "exact", "slq")):
        folder = tmp_path / "runs" / f"run{i}"
        w = RunWriter.create(folder)
        ev = np.sort(np.r_[rng.random(5) * (i + 1), -0.01 * rng.random(3), np.zeros(4)])[::-1]
        spectra[f"run{i}"] = ev
        for s in (0, 10, 20, 30):  # the spectrum grows: ev x 1, 2, 3, 4; the last third is steps 20 and 30
            w.log_metrics({"step": s, "epoch": s, "train_loss": 1.0 - 0.1 * i, "train_acc": 0.5, "test_loss": 1.0 + i,
                           "test_acc": 0.5 - 0.1 * i, "lr": 0.1})  # fmt: skip
            row = dict.fromkeys(HESSIAN_COLUMNS, 0.0)
            row.update(
                step=s,
                method=method,
                kind="scheduled",
                subset=40,
                weight_norm_sq=3.0 + i,
                eig_mode="abs",
                n_params=len(ev),
            )
            if method == "slq":  # its top Ritz values and the quadrature's nodes and weights, as slq saves them
                nodes = np.tile(ev[:4], (2, 1))
                w.log_curvature(row, ev[:3], np.eye(len(ev))[:, :2], slq_nodes=nodes, slq_weights=nodes * 0 + 0.25)
            else:
                w.log_curvature(row, ev * (1 + s / 10), np.eye(len(ev))[:, :2])
        config = {"optim": {"name": "gd", "lr": 0.1}, "seed": i, "hessian": {"eig_mode": "abs"}}
        finals = {f"final_{k}": 0.5 for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
        w.write_summary({"status": "completed", "config": config, "n_train": 40, **finals})
        w.close()
    runs = [load_run(p) for p in find_runs(tmp_path / "runs")]
    sens, measures, notes = sensitivity_table(runs, [r.path.name for r in runs], (0.2, 1.0), (1, 2), (0.1,))
    first = ["n_eff[alpha=0.1]", "sane[rho=0.2,k=1]", "sane[rho=0.2,k=2]", "sane[rho=1,k=1]", "sane[rho=1,k=2]",
             "n_eff_evidence"]  # fmt: skip
    assert measures == first + [f"{m}_late" for m in first]
    for i in range(3):
        row = sens.iloc[i]
        for ev, suffix in ((4 * np.abs(spectra[f"run{i}"]), ""), (3 * np.abs(spectra[f"run{i}"]), "_late")):
            if suffix:  # the late value is the mean over steps 20 and 30, here over x3 and x4 (which it checks)
                ev3, ev4 = ev, 4 / 3 * ev
                assert row["n_eff[alpha=0.1]_late"] == pytest.approx(
                    (np.sum(ev3 / (ev3 + 0.1)) + np.sum(ev4 / (ev4 + 0.1))) / 2, rel=1e-12
                )
                continue
            assert row["n_eff[alpha=0.1]"] == pytest.approx(np.sum(ev / (ev + 0.1)), rel=1e-12)
            second = np.sort(ev)[::-1][1]
            assert row["sane[rho=0.2,k=2]"] == pytest.approx(np.sum(ev / (ev + 0.2 * second)), rel=1e-12)
            gamma = row["prior_precision_evidence"]  # MacKay: gamma |theta|^2 = sum n l / (n l + gamma), n = 40
            assert gamma * (3.0 + i) == pytest.approx(np.sum(40 * ev / (40 * ev + gamma)), rel=1e-9)
            assert row["n_eff_evidence"] == pytest.approx(np.sum(ev / (ev + gamma / 40)), rel=1e-9)
        # SANE does not change when the spectrum is scaled: its late mean equals its last value
        assert row["sane[rho=0.2,k=2]_late"] == pytest.approx(row["sane[rho=0.2,k=2]"], rel=1e-12)
    assert sens.iloc[3][measures].isna().all() and len(notes) == 1 and "slq" in notes[0]
    report([tmp_path / "runs"], tmp_path / "rep", Options(sane_rho=(0.2,), sane_k=(1,), neff_alpha=(0.1, 1.0)))
    corr = pd.read_csv(tmp_path / "rep" / "sensitivity_correlations.csv")
    first = {"n_eff[alpha=0.1]", "n_eff[alpha=1]", "sane[rho=0.2,k=1]", "n_eff_evidence"}
    assert set(corr.measure) == first | {f"{m}_late" for m in first}
    assert (tmp_path / "rep" / "sensitivity.csv").is_file() and "Sensitivity" in (
        tmp_path / "rep" / "report.html"
    ).read_text()
    for argv, message in ((["--sane-k", "0"], "--sane-k='0' is invalid: give integers >= 1"),
                          (["--neff-alpha=-1,2"], "--neff-alpha='-1,2' is invalid"),
                          (["--sane-rho", "abc"], "--sane-rho='abc' is invalid")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            main([str(tmp_path / "runs"), "-o", str(tmp_path / "rep2"), *argv])


def test_curvature_averaged_over_the_end_of_training(tmp_path):
    """summary.csv's <m>_late and <m>_late_std: the mean and spread over the scheduled checkpoints of the last
    third of a run (pre/post-spike checkpoints and earlier ones left out), and --measures may choose them."""
    from sane_cli.tables import late_means

    h = pd.DataFrame({
        "step": [0, 30, 60, 64, 65, 70, 80, 90],
        "kind": ["scheduled", "scheduled", "scheduled", "pre_spike", "post_spike", "scheduled", "scheduled",
                 "scheduled"],
        "sane": [1.0, 2.0, 3.0, 99.0, 99.0, 4.0, 6.0, 8.0],
    })  # fmt: skip
    for m in ("n_eff", "lambda_max", "trace"):
        h[m] = 2 * h.sane
    late = late_means(h)  # steps >= 60: 60, 70, 80, 90 (scheduled)
    assert late["late_checkpoints"] == 4
    assert late["sane_late"] == pytest.approx(np.mean([3, 4, 6, 8])) and late["trace_late"] == pytest.approx(10.5)
    assert late["sane_late_std"] == pytest.approx(np.std([3, 4, 6, 8], ddof=1))
    one = late_means(h[h.step == 0])
    assert one["sane_late"] == 1.0 and np.isnan(one["sane_late_std"])
    for lr, seed in itertools.product((0.05, 0.5), (0, 1, 2)):
        train(make_config(f"lr={lr}", f"seed={seed}", "steps=30"), tmp_path / "runs" / f"{lr}_{seed}", progress=False)
    main([str(tmp_path / "runs"), "-o", str(tmp_path / "rep"), "--measures", "sane_late,lambda_max_late", "-j", "1"])
    table = pd.read_csv(tmp_path / "rep" / "summary.csv")
    run = load_run(table.run.iloc[0])
    scheduled = run.hessian[(run.hessian.kind == "scheduled") & (run.hessian.step >= 20)]
    assert table.sane_late.iloc[0] == pytest.approx(scheduled.sane.mean(), rel=1e-12)
    assert set(pd.read_csv(tmp_path / "rep" / "correlations.csv").measure) == {"sane_late", "lambda_max_late"}
    with pytest.raises(UsageError, match="--measures='sane_early' is invalid: choose among .*sane_late"):
        main([str(tmp_path / "runs"), "-o", str(tmp_path / "rep2"), "--measures", "sane_early"])


def test_spike_inference_counts_each_run_once():
    """Each run's value is its median over spikes of each effect (log flattening against the matched null's,
    and so on), written out by hand here; the mean over runs carries a bootstrap interval over runs; the
    spikes without a matched null and the basins without a spike drop out."""
    from sane_cli.statistics import SPIKE_EFFECTS, spike_inference

    def spike(run, flat, matched_flat, sim, matched_sim, dist=0.3, matched_dist=0.1):
        return dict(run=run, spike_step=1, flattening=flat, matched_flattening=matched_flat, similarity=sim,
                    matched_similarity=matched_sim, spectrum_distance=dist, matched_distance=matched_dist,
                    null_flattening=1.0, null_similarity=0.9)  # fmt: skip

    basins = pd.DataFrame([
        spike("a", 0.5, 1.0, 0.5, 0.9), spike("a", 0.8, 1.0, 0.7, 0.9), spike("a", 0.9, np.nan, 0.6, np.nan),
        spike("b", 1.2, 1.0, 0.9, 0.8),
        spike("c", 0.6, 0.9, 0.4, 0.95), spike("c", 0.7, 0.9, 0.5, 0.95), spike("c", 0.4, 0.9, 0.3, 0.95),
        dict(run="c", similarity=np.nan),  # a basin that ends without a spike
    ])  # fmt: skip
    basins = pd.concat([basins, pd.DataFrame([spike("d", 0.1, 1.0, 0.1, 0.9)])], ignore_index=True)
    table = pd.DataFrame({"label": ["a", "b", "c", "d"], "lr": [1.0, 1.0, 2.0, 2.0], "seed": [0, 1, 0, 1],
                          "status": ["completed", "converged", "completed", "running"]})  # fmt: skip
    per_run, summary = spike_inference(basins, table)  # d, still running, is left out
    medians = {"a": np.median([np.log(0.5), np.log(0.8)]), "b": np.log(1.2), "c": np.log(0.6 / 0.9)}
    assert per_run.set_index("run").excess_flattening.to_dict() == pytest.approx(medians)
    assert per_run.set_index("run").excess_turn.to_dict() == pytest.approx({"a": 0.3, "b": -0.1, "c": 0.55})
    assert list(per_run.n_spikes) == [3, 1, 3] and list(per_run.excess_flattening_spikes) == [2, 1, 3]
    assert list(per_run.excess_flattening_unmatched_spikes) == [3, 1, 3]
    assert list(per_run.unit) == ["lr=1", "lr=1", "lr=2"]
    row = summary[(summary.scope == "all") & (summary.effect == "excess_flattening")].iloc[0]
    assert row.n_runs == 3 and row.n_spikes == 6
    assert row["mean"] == pytest.approx(np.mean(list(medians.values())))
    assert row.lo <= row["mean"] <= row.hi and row.share_positive == pytest.approx(1 / 3)
    assert set(summary.scope) == {"all", "lr=1", "lr=2"} and set(summary.effect) == set(SPIKE_EFFECTS)
    nothing_finished, nothing = spike_inference(basins, table.assign(status="running"))
    assert nothing_finished.empty and (nothing.n_runs == 0).all() and nothing["mean"].isna().all()
    one = summary[(summary.scope == "lr=2") & (summary.effect == "excess_turn")].iloc[0]
    assert one.n_runs == 1 and (one["mean"], one.lo, one.hi) == (pytest.approx(0.55),) * 3


def test_a_key_the_x_axis_determines_draws_no_line_of_its_own():
    """hessian.every set per learning rate varies, but with one value per lr it adds no line to the lr
    comparison; depth, with several values per lr, does."""
    from sane_cli.report import _determined_by

    t = pd.DataFrame({"lr": [0.1, 0.1, 0.5, 0.5], "hessian.every": [500, 500, 100, 100], "depth": [2, 3, 2, 3]})
    assert _determined_by(t, "hessian.every", "lr") and not _determined_by(t, "depth", "lr")
    assert _determined_by(t, "lr", "hessian.every") and not _determined_by(t, "lr", "depth")


def test_a_record_at_odds_with_itself_shows_no_stale_value(sweep, tmp_path, caplog):
    """A finished run whose hessian.csv lost its last whole row reads as a whole file: only the summary's
    record of the last checkpoint shows it. The report names the disagreement and leaves the run's final
    curvature empty rather than showing an earlier checkpoint's as final. Non-finite finals are empty too,
    values of the wrong type in a config cost that run only, and lists in a config group like any value."""
    root = tmp_path / "runs"
    good = find_runs(sweep)[0]
    for name in ("cut", "infinite", "typed", "listed", "intact"):
        shutil.copytree(good, root / name)

    def edit(name, change):
        path = root / name / "summary.json"
        summary = json.loads(path.read_text())
        change(summary)
        path.write_text(json.dumps(summary))

    lines = (root / "cut" / "hessian.csv").read_text().splitlines(keepends=True)
    (root / "cut" / "hessian.csv").write_text("".join(lines[:-1]))
    edit("infinite", lambda s: s.update(final_test_loss=float("inf"), final_train_loss=float("nan")))
    edit("typed", lambda s: s["config"]["optim"].update(lr="fast"))
    edit("listed", lambda s: s["config"]["hessian"].update(note=[1, [2, 3]]))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # no pandas or numpy warning leaks from non-finite values
        report([root], tmp_path / "rep", Options(jobs=1))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    table = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("run")
    cut, intact = table.loc[str(root / "cut")], table.loc[str(root / "intact")]
    last = load_run(root / "intact").hessian.iloc[-1]
    assert any(
        f"{root / 'cut'}: hessian.csv's last checkpoint is at step {int(last.step) - 10}, summary.json's at step "
        f"{int(last.step)}; its final curvature is left empty" in w
        for w in warned
    ), warned
    assert np.isnan(cut.sane) and np.isnan(cut.n_eff) and np.isnan(cut.sane_late)
    assert cut.test_loss == intact.test_loss  # the summary's finals stand
    assert intact.sane == pytest.approx(last.sane, rel=1e-12)
    infinite = table.loc[str(root / "infinite")]
    assert np.isnan(infinite.test_loss) and np.isnan(infinite.train_loss) and np.isnan(infinite.gen_gap)
    assert any("final train_loss nan, test_loss inf: not finite, left empty" in w for w in warned), warned
    assert str(root / "typed") not in table.index
    assert any("summary.json's config has optim.lr = 'fast', not a number" in w for w in warned), warned
    assert table.loc[str(root / "listed"), "hessian.note"] == "[1, [2, 3]]"
    assert len(pd.read_csv(tmp_path / "rep" / "groups.csv")) >= 1


def test_long_labels_make_short_distinct_file_names_and_the_output_folder_is_checked(sweep, tmp_path, caplog):
    """Runs differing in many keys have labels longer than a file name may be: their folders are cut and
    told apart by a hash, the whole label kept in the tables. `-o` a file is refused; an earlier report in
    `-o` is replaced whole (its files named), a folder holding other files refused."""
    good = find_runs(sweep)[0]
    for i in range(2):
        shutil.copytree(good, tmp_path / "runs" / str(i))
        path = tmp_path / "runs" / str(i) / "summary.json"
        summary = json.loads(path.read_text())
        summary["config"]["hessian"].update({f"note_{k:02d}_a_rather_long_key_name": f"{i}{k}" for k in range(14)})
        path.write_text(json.dumps(summary))
    out = tmp_path / "rep"
    report([tmp_path / "runs"], out, Options(jobs=1))
    table = pd.read_csv(out / "summary.csv")
    assert all(len(label.encode()) > 255 for label in table.label)
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert len(folders) == 2 and len(set(folders)) == 2 and all(len(f) <= 120 for f in folders)
    assert all((out / "runs" / f / "dynamics.png").is_file() for f in folders)
    assert all(label in (out / "report.html").read_text() for label in table.label)

    stale = out / "runs" / "a-run-no-longer-there"
    stale.mkdir()
    with caplog.at_level(logging.INFO):
        report([tmp_path / "runs"], out, Options(jobs=1))
    assert not stale.exists()
    assert any(f"replaced the earlier report in {out} (basins.csv" in r.getMessage() for r in caplog.records)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=rf"the output folder {out} holds files a report does not write \(notes.txt\)"):
        report([tmp_path / "runs"], out, Options(jobs=1))
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.html").is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file; choose a folder"):
        main([str(tmp_path / "runs"), "-o", str(tmp_path / "file")])


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHECKS = """<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });  // every run's figures laid out
  const width = document.documentElement.clientWidth, bad = [];
  for (const img of document.images) {
    if (!(img.complete && img.naturalWidth > 0)) bad.push("image not loaded: " + img.getAttribute("src"));
  }
  if (document.documentElement.scrollWidth > width) bad.push("page " + document.documentElement.scrollWidth);
  for (const e of document.querySelectorAll("body *")) {
    const box = e.parentElement.closest("div.wide, pre");  // a scroll box clips what it holds
    const r = e.getBoundingClientRect();
    if (!box && r.width && r.right > width + 1) bad.push(e.tagName + "." + e.className + " ends at " + r.right);
  }
  const out = document.createElement("pre");
  out.id = "checks";
  out.textContent = JSON.stringify({width: width, images: document.images.length, bad: bad});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (Debian: apt install chromium)")
def test_the_report_as_a_browser_shows_it(sweep, tmp_path):
    """report.html rendered by headless Chromium 1,400 px wide, every run's details open: every image loads
    and no element reaches past the page's right edge (a wide table scrolls in its own box). The screenshot
    is kept beside the test's output (report/screenshot.png)."""
    out = tmp_path / "report"
    report([sweep], out, Options(jobs=1))
    page = (out / "report.html").read_text()
    (out / "checked.html").write_text(page.replace("</body>", CHECKS + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--virtual-time-budget=10000"]
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", (out / "checked.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    found = re.search(r'<pre id="checks">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    checks = json.loads(html.unescape(found.group(1)))
    assert checks["width"] >= 1300 and checks["images"] >= 8 and checks["bad"] == [], checks
    subprocess.run([BROWSER, *flags, f"--screenshot={out / 'screenshot.png'}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert (out / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_rate_axes_carry_plain_numbers():
    """More learning rates than are labelled one by one: the log axis still reads 1, 2, 3, never 10^0."""
    import matplotlib

    matplotlib.use("Agg")
    from sane_cli import plots

    lrs = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
    groups = pd.DataFrame({"lr": lrs, "n_runs": 1, **{f"{m}_{s}": np.linspace(1, 2, len(lrs))
                           for m in ("sane", "n_eff") for s in ("mean", "std")}})  # fmt: skip
    fig = plots.comparison(groups, "lr", None, ["sane", "n_eff"])
    fig.canvas.draw()
    labels = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels


def test_file_system_faults_end_in_one_line_and_leave_no_part_of_a_report(sweep, tmp_path, monkeypatch, caplog):
    """`-o` below a file, names too long, a disk that fills as the report is written (nothing of it left, the
    earlier report whole), a folder that cannot be listed (named, not silently left out), a read-only input
    folder as the default output's parent: each a one-line error or warning."""
    import sane_cli.report as report_module

    runs = tmp_path / "runs"
    shutil.copytree(sweep, runs)
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(UsageError, match=r"file.txt is a file, not a folder; choose another folder with -o"):
        main([str(runs), "-o", str(tmp_path / "file.txt" / "sub")])
    with pytest.raises(UsageError, match=r"^-o: the name 'x{40}'\.\.\. is 300 bytes, more than the \d+"):
        main([str(runs), "-o", str(tmp_path / ("x" * 300))])
    with pytest.raises(UsageError, match=r"^PATH: the name 'y{40}'\.\.\. is 300 bytes"):
        main([str(tmp_path / ("y" * 300))])

    out = tmp_path / "rep"
    report([runs], out, Options(jobs=1))
    earlier = digest(out)
    real = report_module._html

    def full(*args):
        real(*args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "_html", full)
    with pytest.raises(UsageError, match=rf"cannot write the report to {out} \(No space left on device\); nothing"):
        report([runs], out, Options(jobs=1))
    monkeypatch.undo()
    assert digest(out) == earlier and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "rep", "runs"]

    hidden = next(p for p in runs.rglob("summary.json")).parent.parent  # a folder that holds runs
    if os.getuid() == 0:  # root reads any folder: it is made unreadable by refusing to list it
        scandir = os.scandir

        def refuse(path="."):
            if Path(path).resolve() == hidden.resolve():
                raise PermissionError(13, "Permission denied", str(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refuse)
    else:
        hidden.chmod(0)
    try:
        with caplog.at_level(logging.WARNING):
            with pytest.raises(UsageError, match="holds no sane-run run folders|no readable run folders"):
                report([runs], tmp_path / "rep2", Options(jobs=1))
    finally:
        monkeypatch.undo()
        hidden.chmod(0o755)
    assert any(f"cannot read {hidden} (Permission denied)" in r.getMessage() for r in caplog.records)


def test_two_reports_into_one_folder_at_once(sweep, tmp_path):
    """Two sane-report commands writing the same -o at the same time: both succeed and the folder holds one
    whole report (the later one), with no temporary folder left beside it."""
    command = shutil.which("sane-report")
    procs = [subprocess.Popen([command, str(sweep), "-o", str(tmp_path / "same"), "-j", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert (tmp_path / "same" / "report.html").is_file() and (tmp_path / "same" / "summary.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


@pytest.mark.slow
def test_a_report_into_a_mount_point(sweep, tmp_path):
    """-o a mount point (a folder that cannot be renamed): the report is written, and written again over the
    earlier one, in place."""
    target = tmp_path / "mounted"
    target.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(target)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a file system here ({made.stderr.decode().strip()[:80]})")
    try:
        report([sweep], target, Options(jobs=1))
        (target / "runs" / "a-run-no-longer-there").mkdir()
        report([sweep], target, Options(jobs=1))
        assert (target / "report.html").is_file() and not (target / "runs" / "a-run-no-longer-there").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted"]
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
