"""Loss basins: spike detection on synthetic loss curves with known spikes, subspace similarity and
spectrum distance against closed forms, the basin table of a hand-made run, and the runner's on_spike
checkpoints on a real large-learning-rate run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import make_config

from sane_cli.basins import analyse, basin_bounds, similarity_matrix, subspace_similarity
from sane_cli.measures import spectrum_distance
from sane_cli.records import HESSIAN_COLUMNS, RunWriter, load_run
from sane_cli.schedule import SpikeDetector, detect_spikes
from sane_cli.training import train


def curve_with_spikes(spikes: list[int], n: int = 400, seed: int = 0) -> np.ndarray:
    """A decaying loss with small noise, multiplied up over a few steps at each spike step."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    loss = 2.0 * np.exp(-steps / 60) + 0.05
    for s in spikes:
        bump = np.zeros(n)
        bump[s : s + 6] = [1.0, 2.5, 4.0, 3.0, 1.5, 0.5][: n - s]
        loss *= 1 + bump
    return loss * (1 + 0.01 * rng.standard_normal(n))


@pytest.mark.parametrize("spikes", [[], [120], [80, 200, 330]])
def test_detects_known_spikes(spikes):
    loss = curve_with_spikes(spikes)
    assert detect_spikes(np.arange(len(loss)), loss, threshold=0.5) == spikes


def test_online_detector_agrees_with_offline_and_ignores_noise():
    loss = curve_with_spikes([150, 260], seed=3)
    online = SpikeDetector(0.5)
    assert [s for s, x in enumerate(loss) if online.update(x)] == detect_spikes(np.arange(400), loss, 0.5)
    # noise of 10 % never crosses a 50 % threshold; a rise straight from the start is not a spike
    rng = np.random.default_rng(0)
    assert detect_spikes(np.arange(300), 1 + 0.1 * rng.random(300), 0.5) == []
    assert detect_spikes(np.arange(5), np.array([1.0, 3.0, 9.0, 4.0, 2.0]), 0.5) == []
    assert detect_spikes(np.arange(4), np.array([1.0, np.nan, 0.5, 2.0]), 0.5) == [3]


def test_basin_bounds():
    assert basin_bounds([], 0, 100) == [(0, 100)]
    assert basin_bounds([30, 70], 0, 100) == [(0, 30), (30, 70), (70, 100)]


def test_subspace_similarity_closed_forms():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    assert subspace_similarity(q[:, :3], q[:, :3]) == pytest.approx(1.0)
    assert subspace_similarity(q[:, :3], q[:, 3:]) == pytest.approx(0.0, abs=1e-12)
    # the same subspace in another basis is still the same subspace
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    assert subspace_similarity(q[:, :3], q[:, :3] @ rot) == pytest.approx(1.0)
    # one of two directions turned by theta out of the subspace: (1 + cos^2 theta) / 2
    theta = 0.7
    turned = np.column_stack([q[:, 0], np.cos(theta) * q[:, 1] + np.sin(theta) * q[:, 5]])
    assert subspace_similarity(q[:, :2], turned) == pytest.approx((1 + np.cos(theta) ** 2) / 2)


def test_spectrum_distance_closed_forms():
    a = np.array([-1.0, 0.0, 2.0, 5.0])
    assert spectrum_distance(a, None, a, None) == 0.0
    # shifting every eigenvalue by c moves the distribution by c: W1 = c, over mean |a| = 2
    assert spectrum_distance(a, None, a + 0.3, None) == pytest.approx(0.3 / 2.0)
    # weights: two atoms of mass 1/2 against one atom in the middle
    assert spectrum_distance(np.array([1.0, 3.0]), np.array([0.5, 0.5]), np.array([2.0]), None) == pytest.approx(0.5)


def hand_made_run(tmp_path, spike: int = 50, extra=(), threshold: float | None = None):
    """A run folder written with RunWriter: a loss curve with one spike at ``spike`` and two curvature
    checkpoints around it whose top eigenvectors span known subspaces (and the ``extra`` checkpoints: step,
    top-2 eigenvectors, top eigenvalue); with ``threshold``, each checkpoint's sharpness ratio is lambda_max over
    it."""
    w = RunWriter.create(tmp_path / "run")
    loss = curve_with_spikes([spike], n=100)
    for step, x in enumerate(loss):
        w.log_step_loss(step, float(x))
    for step in range(0, 100, 10):
        w.log_metrics({"step": step, "epoch": step, "train_loss": loss[step], "train_acc": 0.5, "test_loss": 1.0,
                       "test_acc": 0.5, "lr": 0.1})  # fmt: skip
    e = np.eye(6)
    checkpoints = [  # step, kind, eigenvalues, top-2 eigenvectors
        (0, "scheduled", [9.0, 4.0, 1.0, 0.5, 0.1, 0.0], e[:, [0, 1]]),
        (spike - 1, "pre_spike", [16.0, 4.0, 1.0, 0.5, 0.1, 0.0], e[:, [0, 1]]),
        (spike + 5, "post_spike", [8.0, 4.0, 1.0, 0.5, 0.1, 0.0], e[:, [0, 2]]),
        (99, "scheduled", [8.0, 4.0, 1.0, 0.5, 0.1, 0.0], e[:, [0, 2]]),
        *[(step, "scheduled", [*top, 4.0, 1.0, 0.5, 0.1, 0.0], vec) for step, vec, *top in extra],
    ]
    checkpoints.sort(key=lambda c: c[0])
    for step, kind, ev, vec in checkpoints:
        row = dict.fromkeys(HESSIAN_COLUMNS, 0.0)
        row.update(step=step, kind=kind, lambda_max=ev[0], sane=float(step), method="exact", lr=0.1, k=1, rho=0.5)
        if threshold is not None:
            row.update(stability_threshold=threshold, sharpness_ratio=ev[0] / threshold)
        w.log_curvature(row, np.array(ev), vec)
    w.write_summary({"status": "completed", "config": {"hessian": {"spike_threshold": 0.5, "rho": 0.5, "k": 1}}})
    w.close()
    return load_run(tmp_path / "run")


def test_basin_table_of_a_hand_made_run(tmp_path):
    run = hand_made_run(tmp_path)
    table = analyse(run)
    assert list(table.basin) == [0, 1] and list(table.start) == [0, 50] and list(table.end) == [50, 99]
    spike = table.iloc[0]
    assert (spike.spike_step, spike.before_step, spike.after_step) == (50, 49, 55)
    assert spike.lambda_max_before == 16.0 and spike.lambda_max_after == 8.0 and spike.flattening == 0.5
    assert (spike.sane_scale_before, spike.sane_scale_after) == (8.0, 4.0)
    assert spike.similarity == pytest.approx(0.5)  # one of the two top directions kept
    ev_b, ev_a = np.array([16.0, 4, 1, 0.5, 0.1, 0]), np.array([8.0, 4, 1, 0.5, 0.1, 0])
    assert spike.spectrum_distance == pytest.approx(np.mean(np.abs(ev_b - ev_a)) / np.mean(ev_b))
    assert spike.peak_loss == pytest.approx(run.losses["loss"][50:].max())
    assert np.isnan(table.iloc[1].spike_step)  # the last basin ends with the run
    steps, sim = similarity_matrix(run)
    assert steps == [0, 49, 55, 99]
    np.testing.assert_allclose(sim, [[1, 1, 0.5, 0.5], [1, 1, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.5, 0.5, 1, 1]])


def test_on_spike_checkpoints_measure_the_states_around_the_spike(tmp_path):
    """A large-lr run: each detected spike gets a pre_spike checkpoint of the state one step before it and
    a post_spike one spike_after steps later; the pre_spike numbers equal a scheduled checkpoint taken at
    that step by an identical run (training is deterministic)."""
    cfg = make_config("lr=2.0", "steps=100", "hessian.spike_after=3")
    summary = train(cfg, tmp_path / "a", progress=False)
    run = load_run(tmp_path / "a")
    spikes = detect_spikes(*run.step_losses(), threshold=0.5)
    assert summary["spikes_measured"] == len(spikes) >= 1
    pre = run.hessian[run.hessian.kind == "pre_spike"]
    post = run.hessian[run.hessian.kind == "post_spike"]
    scheduled = set(run.hessian.step[run.hessian.kind == "scheduled"])
    assert set(pre.step) == {s - 1 for s in spikes} - scheduled
    assert set(post.step) <= {s + 3 for s in spikes} and len(post) >= 1
    first = int(pre.step.iloc[0])
    train(make_config("lr=2.0", f"steps={first}", "hessian.on_spike=false"), tmp_path / "b", progress=False)
    again = load_run(tmp_path / "b").hessian.iloc[-1]
    for key in ("lambda_max", "trace", "sane", "n_eff"):
        assert pre.iloc[0][key] == pytest.approx(again[key], rel=1e-9)
    assert isinstance(analyse(run), pd.DataFrame) and analyse(run).spike_step.notna().sum() == len(spikes)


def test_sgd_runs_take_no_spike_checkpoints_and_use_the_full_loss(tmp_path):
    train(make_config("optim=sgd", "optim.batch_size=16", "lr=2.0", "steps=60"), tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert set(run.hessian.kind) == {"scheduled"}
    steps, losses = run.step_losses()
    assert list(steps) == list(run.metrics.step) and np.array_equal(losses, run.metrics.train_loss)
    assert len(run.losses) == 60  # the mini-batch losses are still logged


def test_the_null_similarity_is_that_of_pairs_as_far_apart_without_a_spike(tmp_path):
    """Across the spike the pair is 6 steps apart (49, 55); the pairs (10, 16) and (60, 66) are too, with no
    spike between, and keep both and one of their two top directions: null 0.75 over 2 pairs. The pair across
    the spike itself is no null pair (with it the mean would be 2/3)."""
    e = np.eye(6)
    extra = [(10, e[:, [0, 1]], 8.0), (16, e[:, [0, 1]], 12.0), (60, e[:, [0, 2]], 10.0), (66, e[:, [0, 3]], 5.0)]
    spike = analyse(hand_made_run(tmp_path, extra=extra)).iloc[0]
    assert spike.similarity == pytest.approx(0.5) and (spike.null_similarity, spike.null_pairs) == (0.75, 2)
    assert spike.null_flattening == pytest.approx((12 / 8 + 5 / 10) / 2)  # lambda_max 8 -> 12, 10 -> 5
    assert np.isnan(analyse(hand_made_run(tmp_path / "bare")).iloc[0].null_similarity)


def test_after_a_spike_is_its_post_spike_checkpoint_even_with_a_scheduled_one_between(tmp_path):
    """A scheduled checkpoint at step 52 lies between the spike (50) and its post-spike checkpoint (55): the
    state after the spike is still the post-spike one, as far from the pre-spike one as every spike's."""
    e = np.eye(6)
    spike = analyse(hand_made_run(tmp_path, extra=[(52, e[:, [4, 5]], 8.0)])).iloc[0]
    assert (spike.before_step, spike.after_step, spike.similarity) == (49, 55, pytest.approx(0.5))


def test_the_matched_null_leaves_out_the_transient_and_pairs_of_another_sharpness(tmp_path):
    """The pair across the spike (49 -> 55) starts at sharpness ratio 16 / 10 = 1.6. Of the pairs 6 steps apart
    without a spike, (10, 16) lies in the initial transient, (60, 66) starts at ratio 1.0 (more than a factor
    1.15 away); (70, 76) at 1.7 and (80, 86) at 1.5 are matched: similarity 1 and 0.5, lambda_max 17 -> 9 and
    15 -> 15, and their spectrum distances."""
    from sane_cli.basins import MATCH, TRANSIENT

    assert TRANSIENT == 20 and MATCH == 1.15
    e = np.eye(6)
    extra = [(10, e[:, [0, 1]], 8.0), (16, e[:, [0, 1]], 12.0), (60, e[:, [0, 2]], 10.0), (66, e[:, [0, 3]], 5.0)]
    extra += [(70, e[:, [0, 1]], 17.0), (76, e[:, [0, 1]], 9.0), (80, e[:, [0, 1]], 15.0), (86, e[:, [0, 3]], 15.0)]
    spike = analyse(hand_made_run(tmp_path, extra=extra, threshold=10.0)).iloc[0]
    assert spike.sharpness_ratio_before == pytest.approx(1.6) and spike.null_pairs == 4
    assert spike.matched_pairs == 2 and spike.matched_similarity == pytest.approx(0.75)
    assert spike.matched_flattening == pytest.approx((9 / 17 + 15 / 15) / 2)
    rest = [4.0, 1.0, 0.5, 0.1, 0.0]
    distances = [
        spectrum_distance(np.array([a, *rest]), None, np.array([b, *rest]), None) for a, b in ((17, 9), (15, 15))
    ]
    assert spike.matched_distance == pytest.approx(np.mean(distances))
    bare = analyse(hand_made_run(tmp_path / "bare", threshold=10.0)).iloc[0]  # no pair as far apart: empty
    assert bare.matched_pairs == 0 and np.isnan(bare.matched_flattening)


def test_the_adjusted_null_is_the_null_pairs_regression_read_at_the_spikes_sharpness(tmp_path):
    """The null pairs 6 steps apart after the transient, (60, 66) at sharpness ratio 1.0, (70, 76) at 1.7 and
    (80, 86) at 1.5 (the transient's (10, 16) left out), give least-squares lines of their similarity (0.5, 1,
    0.5) and log lambda_max ratio on log ratio; the spike's pair starts at 1.6, where the lines are read. A
    pair that starts inside the spike is no null pair; with two pairs left there is no line."""
    e = np.eye(6)
    extra = [(10, e[:, [0, 1]], 8.0), (16, e[:, [0, 1]], 12.0), (60, e[:, [0, 2]], 10.0), (66, e[:, [0, 3]], 5.0)]
    extra += [(70, e[:, [0, 1]], 17.0), (76, e[:, [0, 1]], 9.0), (80, e[:, [0, 1]], 15.0), (86, e[:, [0, 3]], 15.0)]
    spike = analyse(hand_made_run(tmp_path, extra=extra, threshold=10.0)).iloc[0]
    x = np.log([1.0, 1.7, 1.5])
    slope = lambda y: np.cov(x, y, bias=True)[0, 1] / np.var(x)  # noqa: E731
    at = lambda y: np.mean(y) + slope(y) * (np.log(1.6) - np.mean(x))  # noqa: E731
    flat = np.log([5 / 10, 9 / 17, 15 / 15])
    assert spike.adjusted_pairs == 3
    assert spike.adjusted_similarity == pytest.approx(at(np.array([0.5, 1.0, 0.5])), rel=1e-12)
    assert spike.adjusted_flattening == pytest.approx(np.exp(at(flat)), rel=1e-12)
    # a pair starting 2 steps into the spike (50) is inside it: the line is unchanged
    inside = analyse(hand_made_run(tmp_path / "in", extra=[*extra, (52, e[:, [4, 5]], 30.0), (58, e[:, [0, 1]], 3.0)],
                                   threshold=10.0)).iloc[0]  # fmt: skip
    assert (inside.adjusted_pairs, inside.adjusted_flattening) == (3, pytest.approx(spike.adjusted_flattening))
    # a pair after the transient but before the run first reaches its threshold (ratios 0.8, 0.9; the edge is
    # the pre-spike checkpoint at 49) is no null pair either
    early = [(30, e[:, [4, 5]], 8.0), (36, e[:, [0, 1]], 9.0), *extra[2:]]
    before = analyse(hand_made_run(tmp_path / "early", extra=early, threshold=10.0)).iloc[0]
    assert (before.adjusted_pairs, before.adjusted_similarity) == (3, pytest.approx(spike.adjusted_similarity))
    two = analyse(hand_made_run(tmp_path / "two", extra=extra[:6], threshold=10.0)).iloc[0]
    assert two.adjusted_pairs == 2 and np.isnan(two.adjusted_flattening) and np.isnan(two.adjusted_similarity)
