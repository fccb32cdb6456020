"""N_eff and SANE against values worked by hand on known spectra."""

import numpy as np
import pytest

from sane_cli.measures import kth_largest, n_eff, sane, spectrum_summary


def test_n_eff_hand_worked():
    # |l| = 3, 1, 1, 0 with alpha = 1: 3/4 + 1/2 + 1/2 + 0 = 1.75
    assert n_eff([3.0, 1.0, -1.0, 0.0], alpha=1.0) == pytest.approx(1.75)
    # clip: the negative eigenvalue counts as 0: 3/4 + 1/2 = 1.25
    assert n_eff([3.0, 1.0, -1.0, 0.0], alpha=1.0, mode="clip") == pytest.approx(1.25)


def test_sane_hand_worked():
    # scale rho * |l|_(1) = 0.5 * 4 = 2: 4/6 + 2/4 + 1/3 = 1.5
    assert sane([4.0, 2.0, -1.0], rho=0.5, k=1) == pytest.approx(4 / 6 + 2 / 4 + 1 / 3)
    # k = 2: scale 0.5 * 2 = 1: 4/5 + 2/3 + 1/2
    assert sane([4.0, 2.0, -1.0], rho=0.5, k=2) == pytest.approx(4 / 5 + 2 / 3 + 1 / 2)
    # clip with k = 1: scale 2, the negative one is dropped: 4/6 + 2/4
    assert sane([4.0, 2.0, -1.0], rho=0.5, k=1, mode="clip") == pytest.approx(4 / 6 + 2 / 4)


def test_sane_is_scale_invariant_and_n_eff_is_not():
    rng = np.random.default_rng(0)
    lam = rng.standard_normal(200) * np.logspace(-3, 1, 200)
    for c in (1e-3, 0.5, 7.0, 1e4):
        assert sane(c * lam) == pytest.approx(sane(lam), rel=1e-12)
    assert n_eff(100 * lam) > n_eff(lam) + 1.0


def test_limits_and_k():
    # alpha -> 0 counts every nonzero eigenvalue, alpha -> inf counts none
    lam = [5.0, 0.2, -0.1, 0.0]
    assert n_eff(lam, alpha=1e-12) == pytest.approx(3.0)
    assert n_eff(lam, alpha=1e12) == pytest.approx(0.0, abs=1e-10)
    assert kth_largest([3.0, -5.0, 1.0], k=2) == 3.0
    assert sane([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        kth_largest([1.0, 2.0], k=3)
    with pytest.raises(ValueError):
        n_eff([1.0], alpha=0.0)


def test_negative_count_skips_rounding_zeros():
    """An eigenvalue within P eps max|lambda| of zero (an exact zero as the eigensolver returns it) is no negative,
    at float64's rounding unit by default and at float32's for a float32 spectrum; one beyond it is."""
    lam = np.array([3.0, 1e-17, -1e-17, -4e-16, -2e-14, -1e-9, -0.5])
    assert spectrum_summary(lam, alpha=0.5, rho=0.5, k=1)["n_negative"] == 3  # 7 * eps * 3 = 4.7e-15
    eps32 = float(np.finfo(np.float32).eps)
    assert spectrum_summary(lam, alpha=0.5, rho=0.5, k=1, eps=eps32)["n_negative"] == 1
    assert spectrum_summary(np.zeros(3), alpha=0.5, rho=0.5, k=1)["n_negative"] == 0


def test_spectrum_summary():
    lam = np.array([6.0, 2.0, 0.5, -0.25, -1.0])
    s = spectrum_summary(lam, alpha=0.5, rho=0.5, k=1)
    assert s["lambda_max"] == 6.0 and s["lambda_min"] == -1.0
    assert s["trace"] == pytest.approx(7.25)
    assert s["n_negative"] == 2
    assert s["n_eff"] == pytest.approx(sum(abs(x) / (abs(x) + 0.5) for x in lam))
    assert s["sane"] == pytest.approx(sum(abs(x) / (abs(x) + 3.0) for x in lam))
