"""Every config file composes, and bad values are rejected with one line naming key, value and what is allowed."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra import compose, initialize_config_module

from sane_cli.cli import GROUPS, group_options, precheck
from sane_cli.config import validate
from sane_cli.errors import UsageError


def test_every_config_file_composes():
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        for group in GROUPS:
            options = group_options(group)
            assert options, group
            for option in options:
                cfg = compose("config", overrides=[f"{group}={option}"])
                validate(cfg)
                if group == "experiment":  # a global sweep: it sets Hydra's sweeper parameters
                    hydra_cfg = compose("config", overrides=[f"{group}={option}"], return_hydra_config=True).hydra
                    assert hydra_cfg.mode.name == "MULTIRUN" and hydra_cfg.sweeper.params
                else:
                    assert cfg[group] is not None


def test_config_files_are_installed_with_the_package():
    root = resources.files("sane_cli.conf")
    assert (root / "config.yaml").is_file()
    assert group_options("dataset") == ["cifar10", "digits", "fashion_mnist", "mnist", "mnist1d", "synthetic"]
    assert group_options("model") == ["cnn", "mlp"] and group_options("hydra/launcher") == ["slurm"]


def test_shortcuts_reach_the_groups():
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        cfg = validate(compose("config", overrides=["lr=0.5", "depth=8", "width=128"]))
        assert cfg.optim.lr == 0.5 and cfg.model.depth == 8 and cfg.model.width == 128
        # a group key wins, and the shortcut is made to agree with it
        cfg = validate(compose("config", overrides=["optim.lr=0.25", "model.depth=4"]))
        assert cfg.lr == 0.25 and cfg.depth == 4
        # without `lr`, each optimiser's own default step size
        assert validate(compose("config")).lr == 0.2 == validate(compose("config", overrides=["optim=sgd"])).lr
        assert validate(compose("config", overrides=["optim=adam"])).optim.lr == 0.001
        assert validate(compose("config", overrides=["optim=adam", "lr=0.01"])).optim.lr == 0.01
        # hessian.reorth of configs before 0.5: true / false
        assert validate(compose("config", overrides=["hessian.reorth=true"])).hessian.reorth == "full"
        assert validate(compose("config", overrides=["hessian.reorth=false"])).hessian.reorth == "none"


BAD = [
    (["lr=-0.1"], r"optim.lr=-0.1 is invalid: must be a number > 0"),
    (["stop.train_acc=1.5"], r"stop.train_acc=1.5 is invalid: must be in \(0, 1\]"),
    (["stop.train_loss=-1"], r"stop.train_loss=-1 is invalid: must be a number >= 0"),
    (["lr=0"], r"optim.lr=0 is invalid"),
    (["depth=0"], r"model.depth=0 is invalid: must be an integer >= 1"),
    (["model.width=0"], r"model.width=0 is invalid"),
    (["model.activation=swish"], r"model.activation='swish' is invalid: must be one of relu, tanh, gelu"),
    (["dataset=imagenet"], r"dataset='imagenet' is unknown; choose one of cifar10, digits, fashion_mnist, mnist"),
    (["optim=rmsprop"], r"optim='rmsprop' is unknown; choose one of adam, gd, sgd"),
    (["optim=adam", "optim.beta1=1"], r"optim.beta1=1 is invalid: must be in \[0, 1\)"),
    (["optim=adam", "optim.beta2=-0.5"], r"optim.beta2=-0.5 is invalid: must be a number >= 0"),
    (["optim=adam", "optim.eps=0"], r"optim.eps=0 is invalid: must be a number > 0"),
    (["optim=adam", "optim.momentum=0.9"], r"optim.momentum is not a key of optim=adam"),
    (
        ["optim.batch_size=32"],
        r"optim.batch_size=32 is invalid: must be null for optim=gd \(full batch\); for "
        r"mini-batches use optim=sgd",
    ),
    (["optim=sgd", "optim.batch_size=0"], r"optim.batch_size=0 is invalid: must be an integer >= 1"),
    (
        ["optim.weight_decay=25"],
        r"optim.weight_decay=25 is invalid: must be below the stability threshold it "
        r"lowers \(10 at this lr and momentum\)",
    ),
    (["lr=1e39"], r"optim.lr=1e\+39 is invalid: must be at most 3.403e\+38, the largest float32"),
    (["threads=0"], r"threads=0 is invalid: must be an integer >= 1"),
    (["optim.nesterov=true"], r"optim.nesterov=True is invalid: needs optim.momentum > 0"),
    (["hessian.subset=0"], r"hessian.subset=0 is invalid: must be an integer >= 1"),
    (["hessian.subset=5000"], r"hessian.subset=5000 is invalid: must be at most the training set size \(4000\)"),
    (["hessian.every=0"], r"hessian.every=0 is invalid: must be an integer >= 1"),
    (["loss=hinge"], r"loss='hinge' is invalid: must be one of cross_entropy, mse"),
    (["device=tpu"], r"device='tpu' is invalid"),
    (["hessian.dtype=float16"], r"hessian.dtype='float16' is invalid"),
    (["hessian.reorth=partial"], r"hessian.reorth='partial' is invalid: must be one of none, selective, full"),
    (["optim=sgd", "optim.momentum=1.0"], r"optim.momentum=1.0 is invalid: must be in \[0, 1\)"),
    (["-m", "lr=0.1,0.2,-3"], r"optim.lr=-3 is invalid"),  # the last job of a sweep, caught before the first
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_values_are_rejected_before_work(argv, message):
    with pytest.raises(UsageError, match=message) as info:
        precheck(argv)
    assert "\n" not in str(info.value)


def test_good_sweep_passes_precheck():
    precheck(["-m", "lr=0.01,0.1,0.5", "depth=2,4,8", "dataset=mnist1d,synthetic"])


def test_each_list_of_choices_matches_its_config_files():
    """The choices validation allows are the options installed in each config group: adding a dataset,
    model or optimiser means its code and its config file, and this test says when one is missing."""
    from sane_cli.data import DATASETS
    from sane_cli.methods import CHOICES
    from sane_cli.models import MODELS
    from sane_cli.optim import OPTIMISERS

    assert group_options("dataset") == sorted(DATASETS)
    assert group_options("model") == sorted(MODELS)
    assert group_options("optim") == sorted(OPTIMISERS)
    assert group_options("hessian") == sorted(CHOICES)
    from sane_cli.data import dataset_sizes

    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        for name in DATASETS:  # every dataset has its sizes (what the checks before a sweep need)
            shape, classes, n_train = dataset_sizes(compose("config", overrides=[f"dataset={name}"]).dataset)
            assert len(shape) in (1, 3) and classes >= 2 and n_train >= 1, name
