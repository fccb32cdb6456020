"""auto's cost estimates (sane_cli.costs) and its choice between exact and SLQ (sane_cli.methods.auto_choice).

The estimates' accuracy is measured, not tested: benchmarks/auto_cost.py times both methods beside them. Here:
the counts they rest on against hand counts and torch's own flop counter, how they scale, and the choice's
rules (the cap, memory, a model that cannot be counted)."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import make_config
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sane_cli import costs
from sane_cli.methods import auto_choice, resolve_method
from sane_cli.models import CNN, MLP
from sane_cli.training import train


def auto_config(**overrides):
    return OmegaConf.merge(make_config().hessian, {"method": "auto", **overrides})


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_profile_counts_each_layer_by_hand():
    mlp = costs.profile(MLP(40, 10, depth=3, width=24), (40,))
    assert mlp.macs == (40 * 24, 24 * 24, 24 * 10) and mlp.conv == (False, False, False)
    assert mlp.outputs == 24 + 24 + 24 + 24 + 10 and mlp.logits == 10  # linear, relu, linear, relu, linear
    # conv 1 -> 4 channels at 40 positions (kernel 3), pool to 20, conv 4 -> 4, pool to 10, linear 40 -> 10
    cnn = costs.profile(CNN((40,), 10, depth=2, channels=4, kernel=3), (40,))
    assert cnn.macs == (40 * 4 * 3, 20 * 4 * 12, 40 * 10) and cnn.conv == (True, True, False)
    # unflatten, conv, relu, pool, conv, relu, pool, flatten, linear
    assert cnn.outputs == 40 + 160 + 160 + 80 + 80 + 80 + 40 + 40 + 10
    assert (cnn.linear_macs, cnn.conv_macs) == (400, 480 + 960)


@pytest.mark.parametrize("model", [CNN((1, 8, 8), 10, depth=2, channels=3, kernel=3), MLP(12, 5, 4, 9)])
def test_profile_agrees_with_torch_flop_counter(model):
    shape = (1, 8, 8) if isinstance(model, CNN) else (12,)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    assert sum(costs.profile(model, shape).macs) == counter.get_total_flops() // 2


def test_estimates_scale_with_examples_and_size():
    """The builds and SLQ's products grow with the examples, eigvalsh does not; more channels cost more."""
    hcfg = auto_config()
    small, large = CNN((40,), 10, depth=3, channels=8), CNN((40,), 10, depth=3, channels=24)
    e1, e4 = costs.estimate(small, (40,), 1000, hcfg), costs.estimate(small, (40,), 4000, hcfg)
    assert e1.exact < e4.exact and e1.slq < e4.slq < 4 * e1.slq + 1e-9
    assert costs.estimate(large, (40,), 4000, hcfg).exact > e4.exact
    more_steps = costs.estimate(small, (40,), 4000, auto_config(steps=600))
    assert more_steps.slq > 1.9 * e4.slq and more_steps.exact == e4.exact
    assert costs.estimate(small, (40,), 4000, auto_config(auto_slq_dtype="float64")).slq == pytest.approx(2 * e4.slq)
    # SLQ's reorthogonalisation: against every earlier Lanczos vector (full), the deflated ones, or none
    kept = [costs.estimate(small, (40,), 4000, auto_config(reorth=r)).slq for r in ("none", "selective", "full")]
    assert kept[0] < kept[1] < kept[2] == e4.slq
    # a curved activation takes the build without the Gauss-Newton split: every parameter's direction carried
    curved = CNN((40,), 10, depth=3, channels=8, activation="tanh")
    assert costs.estimate(curved, (40,), 4000, hcfg).exact > e4.exact


def test_slq_prices_the_probes_as_the_operator_takes_them():
    """A batch of probes goes through in one vectorised pass only where curvature.vectorises says the
    operator takes it so (a small product, no convolution); else at the single product's rate, per vector."""
    from sane_cli.curvature import vectorises

    hcfg = auto_config(reorth="none")
    cases = [(MLP(40, 10, depth=2, width=14), 4000, True), (MLP(40, 10, depth=3, width=256), 4000, False),
             (CNN((40,), 10, depth=3, channels=8), 50, False)]  # fmt: skip
    for model, n, vectorised in cases:
        prof = costs.profile(model, (40,))
        assert vectorises(n, prof.linear_macs + prof.conv_macs, any(prof.conv)) == vectorised
        per_vector = costs._product(costs.BATCHED if vectorised else costs.SINGLE, prof, n)
        expected = hcfg.max_iter * costs._product(costs.SINGLE, prof, n) + hcfg.probes * hcfg.steps * per_vector
        assert costs.slq_seconds(prof, n, n_params(model), hcfg) == pytest.approx(expected)


def choice(model, n=4000, shape=(40,), **overrides):
    return auto_choice(auto_config(**overrides), model, n_params(model), n=n, input_shape=shape)


def test_auto_weighs_the_cnns_costly_products():
    """A relu CNN's Hessian-vector products share each weight across positions: SLQ costs it many times the
    exact build, which auto keeps well above the MLP's crossover; a wide MLP of about the same size, whose
    products are cheap, gets SLQ."""
    cnn = CNN((40,), 10, depth=3, channels=32)  # 7,946 parameters
    mlp = MLP(40, 10, depth=4, width=64)  # 11,594
    assert choice(cnn)[0] == "exact" and choice(MLP(40, 10, depth=3, width=24))[0] == "exact"
    method, why = choice(mlp)
    assert method == "slq" and "estimated" in why
    assert resolve_method(auto_config(), mlp, n_params(mlp), n=4000, input_shape=(40,)) == "slq"
    assert resolve_method(auto_config(method="exact"), mlp, n_params(mlp), n=4000, input_shape=(40,)) == "exact"


def test_auto_keeps_to_the_parameter_cap_and_memory(monkeypatch):
    cnn = CNN((40,), 10, depth=3, channels=8)
    method, why = choice(cnn, exact_max_params=n_params(cnn) - 1)
    assert method == "slq" and "exact_max_params" in why
    assert choice(cnn, exact_max_params=n_params(cnn))[0] == "exact"
    monkeypatch.setattr("sane_cli.methods.os.sysconf", lambda name: 1024 if name == "SC_PHYS_PAGES" else 4096)
    method, why = choice(cnn)  # 4 MiB: too little for the dense matrix
    assert method == "slq" and "GiB" in why


class Uncountable(nn.Module):
    """A model whose forward needs real values (it cannot run on the meta device)."""

    def __init__(self, width):
        super().__init__()
        self.a, self.b = nn.Linear(6, width), nn.Linear(width, 3)

    def forward(self, x):
        scale = float(x.abs().max().item()) + 1.0
        return self.b(torch.tanh(self.a(x / scale)))


def test_a_model_that_cannot_be_counted_is_weighed_by_its_products():
    """exact while its P Hessian-vector products are at most SLQ's probes x steps."""
    small, large = Uncountable(4), Uncountable(200)  # 43 and 2,003 parameters
    assert choice(small, n=50, shape=(6,), probes=4, steps=20)[0] == "exact"
    method, why = choice(large, n=50, shape=(6,), probes=4, steps=20)
    assert method == "slq" and "products" in why


def test_a_run_says_what_auto_chose(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="sane_cli.training"):
        train(make_config("steps=2", "hessian.every=2"), tmp_path / "run")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("hessian=auto"))
    assert line.startswith("hessian=auto: exact at every checkpoint (estimated per checkpoint: exact about")


def test_a_long_checkpoint_is_announced_with_the_keys_that_shorten_it():
    from sane_cli.methods import long_checkpoint
    from sane_cli.models import ResNet

    resnet = ResNet((40,), 10, depth=8)  # SLQ in float64 on 4,000 examples: about 26 minutes
    warning = long_checkpoint(auto_config(method="slq"), resnet, "slq", n=4000, input_shape=(40,))
    assert warning.startswith("each curvature checkpoint (slq, 4,000 examples) is estimated at about 26 min")
    assert "hessian.subset" in warning and "hessian.every" in warning
    assert long_checkpoint(auto_config(method="slq"), resnet, "slq", n=200, input_shape=(40,)) is None
    cnn = CNN((40,), 10, depth=3, channels=32)
    assert long_checkpoint(auto_config(), cnn, "exact", n=4000, input_shape=(40,)) is None  # about a minute
    assert long_checkpoint(auto_config(), cnn, "block_diag", n=4000, input_shape=(40,)) is None  # not estimated


def test_a_model_without_a_structured_build_is_weighed_by_its_products():
    """Its exact Hessian costs P Hessian-vector products: exact for a small one, SLQ well before the cap (the
    residual MLPs of benchmarks/auto_cost.py: 1,370 parameters exact 4.9 s against SLQ 4.0 s; 5,866 parameters
    79.6 s against 15.6 s)."""
    from sane_cli.examples import residual_mlp

    assert choice(residual_mlp((40,), 10, width=16, blocks=1))[0] == "exact"
    method, why = choice(residual_mlp((40,), 10, width=32, blocks=2))
    assert method == "slq" and why.startswith("estimated")


def test_a_model_in_training_mode_is_counted_in_eval_mode_and_left_as_it_was():
    """Batch normalisation on a batch of one fails in training mode: the count runs the model as every Hessian
    is taken (eval mode), so auto's choice does not depend on the mode, and each module keeps its own mode."""
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    net.train()
    net[1].eval()  # a frozen batch normalisation in a training model
    hcfg = auto_config()
    training = auto_choice(hcfg, net, n_params(net), n=200, input_shape=(6,))
    assert "estimated" in training[1]  # counted, not weighed by its products
    assert net.training and not net[1].training and net[0].training
    assert auto_choice(hcfg, net.eval(), n_params(net), n=200, input_shape=(6,)) == training
