"""Long checks of the science on the default study (marked slow: `python -m pytest -m slow`)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from sane_cli.records import load_run
from sane_cli.training import train


@pytest.mark.slow
def test_default_study_reaches_the_edge_of_stability(tmp_path):
    """Full-batch GD at lr 0.2 on MNIST-1D: lambda_max of the training loss starts far below 2/lr, rises to
    it, and then hovers within 10-20 % of it (Cohen et al. 2021) while the training loss keeps falling."""
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        cfg = compose("config", overrides=["device=cpu"])
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "completed" and len(run.hessian) == 11
    ratio = run.hessian.set_index("step").sharpness_ratio  # lambda_max / (2 / lr)
    assert (run.hessian.subset == 4000).all()  # the whole training set
    assert ratio.loc[0] < 0.1
    late = ratio.loc[600:]
    assert late.min() > 0.9 and late.max() < 1.2, late.tolist()
    loss = run.metrics.set_index("step").train_loss
    assert loss.loc[2000] < loss.loc[600] < loss.loc[0]
