"""Models other than the MLP (the CNN) through every curvature method that takes them, against the dense
float64 Hessian of torch.func; the digits dataset; model-specific config checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import make_config, reference_hessian, write_cifar10
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sane_cli.config import validate
from sane_cli.curvature import hessian
from sane_cli.data import load_data
from sane_cli.errors import UsageError
from sane_cli.iterative import hvp_operator, lanczos
from sane_cli.losses import loss_function
from sane_cli.methods import measure
from sane_cli.models import CNN, build_model
from sane_cli.records import load_run
from sane_cli.training import train


@pytest.mark.parametrize(
    "shape,pooling,activation,loss",
    [((12,), "max", "relu", "cross_entropy"), ((2, 9), "avg", "tanh", "mse"),
     ((1, 6, 5), "max", "gelu", "cross_entropy"), ((3, 4, 4), "none", "softplus", "cross_entropy")],
)  # fmt: skip
def test_cnn_hessian_matches_dense_reference(shape, pooling, activation, loss, device):
    torch.manual_seed(len(shape))
    model = CNN(shape, 3, depth=2, channels=3, kernel=3, pooling=pooling, activation=activation)
    x, y = torch.randn(23, *shape), torch.randint(0, 3, (23,))
    loss_fn = loss_function(loss, 3)
    ref = reference_hessian(copy.deepcopy(model), loss_fn, x, y)
    h = hessian(model.to(device), loss_fn, x.to(device), y.to(device)).cpu()
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    # Lanczos on the same model's Hessian-vector products
    ev = np.linalg.eigvalsh(ref.numpy())[::-1]
    matvec, p = hvp_operator(model, loss_fn, x.to(device), y.to(device))
    top = lanczos(matvec, p, 4, tol=1e-10, max_iter=p, device=device)
    np.testing.assert_allclose(top.values, ev[:4], rtol=1e-6)


def test_cnn_measures_equal_those_of_its_dense_spectrum():
    torch.manual_seed(1)
    model = CNN((10,), 4, depth=2, channels=3)
    x, y = torch.randn(40, 10), torch.randint(0, 4, (40,))
    loss_fn = loss_function("cross_entropy", 4)
    ev = np.linalg.eigvalsh(reference_hessian(copy.deepcopy(model), loss_fn, x, y).numpy())
    hcfg = OmegaConf.merge(make_config().hessian, {"method": "exact"})
    row = measure(model, loss_fn, x, y, hcfg).row
    scale = 0.5 * np.sort(np.abs(ev))[::-1][0]
    assert row["n_eff"] == pytest.approx(np.sum(np.abs(ev) / (np.abs(ev) + hcfg.alpha)), rel=1e-9)
    assert row["sane"] == pytest.approx(np.sum(np.abs(ev) / (np.abs(ev) + scale)), rel=1e-9)
    assert row["trace"] == pytest.approx(ev.sum(), rel=1e-9, abs=1e-12)


def config(*overrides: str):
    """The real config with ``overrides`` only (helpers.TINY sets MLP and synthetic-data keys)."""
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        return compose("config", overrides=list(overrides))


def digits_config(*overrides: str):
    return config("dataset=digits", *overrides).dataset


def test_digits_are_the_bundled_images_split_by_seed():
    from sklearn.datasets import load_digits

    data = load_data(digits_config())
    assert data.x_train.shape == (1400, 1, 8, 8) and data.x_test.shape == (397, 1, 8, 8)
    assert data.input_shape == (1, 8, 8) and data.n_classes == 10
    # scikit-learn's images, shuffled by the seed, split, standardised with the training images' statistics
    raw_x, raw_y = load_digits(return_X_y=True)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0)).numpy()
    x, y = raw_x[order] / 16.0, raw_y[order]
    mean, std = x[:1400].mean(), x[:1400].std(ddof=1)
    np.testing.assert_allclose(data.x_train.reshape(1400, 64).numpy(), (x[:1400] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.x_test.reshape(397, 64).numpy(), (x[1400:] - mean) / std, atol=1e-5)
    assert np.array_equal(data.y_train.numpy(), y[:1400]) and np.array_equal(data.y_test.numpy(), y[1400:])
    assert not torch.equal(load_data(digits_config("dataset.data_seed=1")).y_train, data.y_train)
    with pytest.raises(UsageError, match=r"dataset.n_train=1500 .* plus dataset.n_test \(400\) must be at most 1797"):
        validate(config("dataset=digits", "dataset.n_train=1500", "dataset.n_test=400"))


def test_a_cnn_trains_on_digits_and_is_measured(tmp_path):
    cfg = config("model=cnn", "dataset=digits", "dataset.per_class=5", "dataset.n_test=50", "depth=2",
                 "model.channels=2", "steps=6", "hessian.every=3", "lr=0.05", "device=cpu")  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "completed" and run.config["width"] is None and run.config["model"]["channels"] == 2
    model = build_model(cfg.model, (1, 8, 8), 10)
    assert run.summary["n_params"] == sum(p.numel() for p in model.parameters())
    assert (run.hessian.method == "exact").all() and len(run.hessian) == 3


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=cnn", "model.kernel=4"], "model.kernel=4 is invalid: must be odd"),
        (["model=cnn", "model.pooling=sum"], "model.pooling='sum' is invalid: must be one of max, avg, none"),
        (["model=cnn", "model.channels=0"], "model.channels=0 is invalid"),
        (["dataset=digits", "dataset.n_train=1500"], "dataset.n_train=1500 is invalid: plus dataset.n_test"),
    ],
)
def test_cnn_config_errors(overrides, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(config(*overrides))


def test_cnn_takes_odd_kernels_only():
    """The class itself refuses an even kernel (its padding would not keep the size), as the config check does."""
    from sane_cli.models import CNN

    with pytest.raises(ValueError, match="kernel must be odd"):
        CNN((12,), 3, depth=2, channels=2, kernel=4)


def test_a_cnn_run_with_the_layer_ordered_methods(tmp_path):
    """block_band with every band (a CNN of depth d has d + 1 layers) gives the exact run's spectrum;
    block_diag the union of the dense Hessian's diagonal layer blocks."""
    import copy

    import numpy as np
    from helpers import reference_hessian

    from sane_cli.curvature import layer_sizes
    from sane_cli.data import load_data
    from sane_cli.losses import loss_function

    base = ["model=cnn", "dataset=digits", "dataset.per_class=6", "dataset.n_test=30", "depth=2", "model.channels=2",
            "steps=4", "hessian.every=4", "lr=0.05", "device=cpu", "hessian.topk_vectors=2"]  # fmt: skip
    spectra = {}
    for method in ("exact", "block_band", "block_diag"):
        train(config(*base, f"hessian={method}", "hessian.band=2"), tmp_path / method, progress=False)
        run = load_run(tmp_path / method)
        assert (run.hessian.method == method).all()
        spectra[method] = run.spectrum(4)[0]
    np.testing.assert_allclose(spectra["block_band"], spectra["exact"], rtol=1e-9, atol=1e-12)
    cfg = validate(config(*base))
    data = load_data(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    state = torch.load(tmp_path / "exact" / "checkpoint.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    ref = reference_hessian(copy.deepcopy(model), loss_function("cross_entropy", 10), data.x_train, data.y_train)
    starts = np.cumsum([0, *layer_sizes(model)])
    blocks = [np.linalg.eigvalsh(ref[a:b, a:b].numpy()) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    np.testing.assert_allclose(spectra["block_diag"], np.sort(np.concatenate(blocks))[::-1], rtol=1e-8, atol=1e-11)


def test_custom_models_the_meta_device_cannot_build_or_that_share_a_layer(tmp_path):
    """A factory that reads a tensor's value (not possible on the meta device the size checks build on) is
    built on the CPU for them; a model that uses one layer twice trains, its curvature that of the dense float64
    Hessian in its parameters counted once (the cost profile leaves its weights where they were)."""
    from sane_cli.cli import precheck
    from sane_cli.costs import profile

    precheck(["model=custom", "model.factory=helpers:item_width_mlp", "steps=2"])
    cfg = config("model=custom", "model.factory=helpers:shared_layer_mlp", "hessian=exact", "steps=10",
                 "hessian.every=10", "dataset=synthetic", "dataset.n_train=64", "dataset.n_features=5",
                 "dataset.n_classes=3", "device=cpu")  # fmt: skip
    model = build_model(cfg.model, (5,), 3)
    profile(model, (5,))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "completed" and run.summary["n_params"] == 5 * 6 + 6 + 6 * 6 + 6 + 6 * 3 + 3
    data = load_data(validate(cfg).dataset)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"])
    ref = reference_hessian(copy.deepcopy(model), loss_function("cross_entropy", 3), data.x_train, data.y_train)
    np.testing.assert_allclose(run.spectrum(10)[0], np.linalg.eigvalsh(ref.numpy())[::-1], rtol=1e-8, atol=1e-10)


def test_a_model_whose_outputs_are_not_finite_from_the_start_diverges(tmp_path):
    """NaN outputs at step 0: the run ends diverged (no curvature of a NaN loss), not failed."""
    cfg = config("model=custom", "model.factory=helpers:nan_outputs", "steps=10", "hessian.every=5",
                 "dataset=synthetic", "dataset.n_train=32", "device=cpu")  # fmt: skip
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "diverged" and load_run(tmp_path / "run").hessian.empty


def test_resnet20_has_the_papers_size_and_refuses_other_depths():
    """ResNet-20 for CIFAR-10 with option-A shortcuts has 0.27M parameters (He et al. 2016, table 6): 269,722,
    counted by hand: 3x3x3x16 stem, 2x16 norm, 9 blocks of two 3x3 convolutions and two norms at 16/32/64
    filters (the first of stages 2 and 3 from half as many), 64x10 + 10 head."""
    from sane_cli.models import ResNet

    conv = 3 * 9 * 16 + 2 * 16
    for c_in, c in [(16, 16)] * 3 + [(16, 32)] + [(32, 32)] * 2 + [(32, 64)] + [(64, 64)] * 2:
        conv += 9 * c_in * c + 9 * c * c + 4 * c
    assert conv + 64 * 10 + 10 == 269722
    assert sum(p.numel() for p in ResNet((3, 32, 32), 10, depth=20).parameters()) == 269722
    with pytest.raises(ValueError, match=r"depth is 6n \+ 2"):
        ResNet((3, 32, 32), 10, depth=21)
    with pytest.raises(UsageError, match=r"^depth=3 is invalid: model=resnet takes depth 6n \+ 2: 8, 14, 20"):
        validate(config("model=resnet"))
    with pytest.raises(UsageError, match=r"model.channels=0 is invalid"):
        validate(config("model=resnet", "depth=8", "model.channels=0"))


@pytest.mark.parametrize("shape,batchnorm", [((12,), True), ((2, 5, 5), True), ((12,), False)])
def test_resnet_hessian_is_the_eval_mode_models_and_matches_dense_reference(shape, batchnorm):
    """The Hessian of a ResNet (Hessian-vector products, as any model without a layer-structured build) is that of
    the model in eval mode, its batch normalisation by the running statistics: the dense torch.func Hessian of the
    eval-mode model to 1e-10, and not the training mode's (batch statistics), which differs."""
    from sane_cli.models import ResNet

    torch.manual_seed(2)
    model = ResNet(shape, 3, depth=8, channels=2, batchnorm=batchnorm).double()
    x, y = torch.randn(17, *shape, dtype=torch.float64), torch.randint(0, 3, (17,))
    for _ in range(3):  # running statistics away from their start
        model(x + torch.randn_like(x))
    loss_fn = loss_function("cross_entropy", 3)
    ref = reference_hessian(copy.deepcopy(model).eval(), loss_fn, x, y)
    h = hessian(model, loss_fn, x, y)
    assert model.training  # measuring leaves the model's mode alone
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
    if batchnorm:
        training = copy.deepcopy(model).train()
        for m in training.modules():  # batch statistics, the running ones left as they are
            m.track_running_stats = False
        batch_stats = reference_hessian(training, loss_fn, x, y)
        assert (batch_stats - ref).abs().max() > 1e-3 * ref.abs().max()


def test_a_resnet_trains_on_cifar10_files_and_its_spectrum_is_the_eval_mode_models(tmp_path):
    """model=resnet on CIFAR-10-format files (6 training images): trained with batch statistics, measured exactly
    at its last checkpoint; that checkpoint's eigenvalues are those of the dense Hessian of the saved model in
    eval mode on the same images."""
    write_cifar10(tmp_path / "data", n_per_batch=2)
    cfg = config("model=resnet", "depth=8", "model.channels=1", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
                 "dataset.download=false", "dataset.n_train=6", "dataset.n_test=4", "steps=4", "hessian.every=4",
                 "hessian.at_start=false", "hessian=exact", "lr=0.05", "precision=float64", "device=cpu")  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    model = build_model(cfg.model, (3, 32, 32), 10).double()
    assert run.status == "completed" and run.summary["n_params"] == sum(p.numel() for p in model.parameters())
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    data = load_data(cfg.dataset)
    ev = np.linalg.eigvalsh(reference_hessian(model.eval(), loss_function("cross_entropy", 10), data.x_train,
                                              data.y_train).numpy())  # fmt: skip
    last = run.hessian.iloc[-1]
    assert last["step"] == 4 and last["lambda_max"] == pytest.approx(ev[-1], rel=1e-9)
    assert last["trace"] == pytest.approx(ev.sum(), rel=1e-9)
