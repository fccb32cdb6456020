"""The registered studies' rules (experiments/2026-12-06-*/verdict.py) on synthetic tables whose answer is known:
each rule gives the verdict its README states for data that clearly do, and clearly do not, show the claim."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def study(folder: str, name: str = "verdict"):
    path = EXPERIMENTS / folder / f"{name}.py"
    for name in ("verdict", "decide"):  # each study's power.py imports its own verdict.py by that name, and the
        sys.modules.pop(name, None)  # verdicts import experiments/decide.py as it is on disk now
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"{folder.replace('-', '_')}_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_levers_rule_reads_the_partial_rho_both_ways():
    power = study("2026-12-06-generalisation-levers", "power")
    verdict = study("2026-12-06-generalisation-levers")
    rng = np.random.default_rng(0)
    table = power.simulated(rng, 0.95)  # the measure follows test error within each size
    assert verdict.family_verdict(table, quiet=True)["readings"]["n_eff"] == "tracks"
    table["n_eff"] = -table.n_eff  # ... and against it
    assert verdict.family_verdict(table, quiet=True)["readings"]["n_eff"] == "runs against"


def test_levers_rule_is_not_fooled_by_size():
    """A measure that only counts parameters (rises with size, as test error falls) says nothing."""
    verdict = study("2026-12-06-generalisation-levers")
    power = study("2026-12-06-generalisation-levers", "power")
    table = power.simulated(np.random.default_rng(1), 0.0)
    table["n_eff"] = table["size"] + 0.01 * np.random.default_rng(2).normal(size=len(table))
    assert verdict.family_verdict(table, quiet=True)["readings"]["n_eff"] == "says nothing"


def test_lr_rankings_rule_at_one_learning_rate():
    power = study("2026-12-06-lr-rankings", "power")
    verdict = study("2026-12-06-lr-rankings")
    rng = np.random.default_rng(3)
    assert verdict.decide(verdict.at_lr(power.simulated(rng, 0.99, 0.0))) == "reproduced"
    assert verdict.decide(verdict.at_lr(power.simulated(rng, 0.0, 0.99))) == "refuted"


def test_lr_rankings_premise_needs_the_two_alphas_apart():
    verdict = study("2026-12-06-lr-rankings")
    sub = pd.DataFrame({"unit": ["a", "b"] * 2, "test_error": [0.1, 0.5, 0.12, 0.52], "sharpness_ratio_late": 1.2,
                        "lambda_max_late": [0.8, 0.8, 0.8, 0.8]})  # fmt: skip
    ok, text = verdict.premise(sub)  # SANE's alpha 0.4 against N_eff's 0.5: one measure
    assert not ok and "factor 1.25" in text
    ok, _ = verdict.premise(sub.assign(lambda_max_late=4.0))  # alpha 2: a factor 4 apart
    assert ok


def test_basins_rule_thresholds():
    verdict = study("2026-12-06-basins-adjusted")
    assert verdict.judge(-0.2, -0.1, -0.05, -1) == "reproduced"
    assert verdict.judge(-0.04, 0.01, -0.05, -1) == "refuted"
    assert verdict.judge(-0.08, -0.02, -0.05, -1) == "undecided"
    assert verdict.judge(-0.08, -0.05, -0.05, -1) == "tie at the threshold"
    assert verdict.judge(0.03, 0.05, 0.02, +1) == "reproduced" and verdict.judge(-0.01, 0.01, 0.02, +1) == "refuted"


def test_basins_adjustment_removes_mean_reversion():
    """Spikes that flatten exactly as their quiet pairs at the same ratio predict have no excess."""
    verdict = study("2026-12-06-basins-adjusted")
    rng = np.random.default_rng(4)
    ratio = np.exp(rng.uniform(-0.2, 0.6, 300))
    quiet = pd.DataFrame({"kind": "quiet", "gap": 10, "ratio_a": ratio, "log_flattening": -0.5 * np.log(ratio),
                          "similarity_k10": 0.9 - 0.1 * np.log(ratio)})  # fmt: skip
    at = np.array([1.5, 1.7])
    spikes = pd.DataFrame({"kind": "spike", "gap": 10, "ratio_a": at, "log_flattening": -0.5 * np.log(at),
                           "similarity_k10": 0.9 - 0.1 * np.log(at) - 0.05})  # fmt: skip
    out = verdict.adjusted(pd.concat([quiet, spikes]))
    assert abs(out["flattening"]) < 1e-12 and abs(out["turn"] - 0.05) < 1e-12


def test_deep_rule_reads_agreement_within_depths():
    power = study("2026-12-06-deep-trained", "power")
    verdict = study("2026-12-06-deep-trained")
    rng = np.random.default_rng(5)
    good = power.simulated(rng, 0.01)
    assert verdict.agreement(good, "approx", "ref", "n_eff")[1] > verdict.AGREE
    bad = power.simulated(rng, 0.01)
    approx = bad.method == "approx"  # right about the depths, random within each
    bad.loc[approx, "n_eff"] = bad.loc[approx, "depth"] / 4 + rng.normal(size=int(approx.sum()))
    assert verdict.agreement(bad, "approx", "ref", "n_eff")[2] < verdict.AGREE


def test_runs_table_reads_n_eff_at_one_prior_from_the_spectrum(tmp_path):
    runs_table = study("", "runs_table")
    (tmp_path / "spectra").mkdir()
    ev = np.array([4.0, 1.0, -0.5, 0.0])
    np.savez(tmp_path / "spectra" / "step_10.npz", eigenvalues=ev)
    summary = pd.DataFrame({"model": ["mlp", "mlp"], "width": [8, 8], "dataset.n_train": [500, 500],
                            "dataset.label_noise": [0.0, 0.0], "lr": [0.1, 0.1], "seed": [0, 1],
                            "status": ["completed", "diverged"], "curvature_step": [10, np.nan],
                            "hessian_examples": [500, np.nan], "run": [str(tmp_path), str(tmp_path)]})  # fmt: skip
    table = runs_table.trimmed(summary)
    alpha = runs_table.PRIOR / 500
    assert table.n_eff_fixed_prior.iloc[0] == np.sum(np.abs(ev) / (np.abs(ev) + alpha))
    assert np.isnan(table.n_eff_fixed_prior.iloc[1]) and table["size"].tolist() == [8, 8]


def test_parts_refuse_a_cut_or_foreign_part_in_one_line(tmp_path):
    """A verdict is never read off fewer parts than are shipped: a cut, empty or foreign part stops it in one
    line naming the file."""
    parts = study("2026-12-06-basins-adjusted").parts  # experiments/decide.py's, as every verdict.py imports it
    good = pd.DataFrame({"run": ["a", "b"], "lr": [0.5, 1.0], "value": [0.1, 0.2]})
    good.to_csv(tmp_path / "runs-seed0.csv", index=False)
    good.to_csv(tmp_path / "runs-seed1.csv.gz", index=False)
    assert len(parts(tmp_path, "runs*")) == 4
    cases = {
        "runs-seed2.csv": (lambda p: p.write_text(good.to_csv(index=False)[:-5]), "ends mid-line"),
        "runs-seed3.csv.gz": (
            lambda p: p.write_bytes((tmp_path / "runs-seed1.csv.gz").read_bytes()[:-8]),
            "cannot be read",
        ),
        "runs-seed4.csv": (lambda p: p.write_text("garbage\n"), "has columns ['garbage']"),
        "runs-seed5.csv": (lambda p: p.write_text("run,lr,value\n"), "holds no rows"),
        "runs-seed6.csv": (lambda p: p.write_text(""), "cannot be read"),
    }
    for name, (spoil, message) in cases.items():
        spoil(tmp_path / name)
        try:
            parts(tmp_path, "runs*")
        except SystemExit as e:
            assert name in str(e) and message in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(f"{name} was read as a part")
        (tmp_path / name).unlink()
