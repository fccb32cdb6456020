"""Every config file composes, and bad values are rejected with one line naming key, value and what is allowed."""

from __future__ import annotations

import os
from importlib import resources

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sane_cli.cli import GROUPS, group_options, precheck
from sane_cli.config import validate
from sane_cli.errors import UsageError

# options with a key to give (the top-level depth's default, 3, is an MLP's: a ResNet's is 6n + 2)
REQUIRED = {"model=custom": ["model.factory=sane_cli.examples:residual_mlp"], "model=resnet": ["depth=20"]}


def test_every_config_file_composes():
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        for group in GROUPS:
            options = group_options(group)
            assert options, group
            for option in options:
                cfg = compose("config", overrides=[f"{group}={option}", *REQUIRED.get(f"{group}={option}", [])])
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
    assert group_options("model") == ["cnn", "custom", "mlp", "resnet"] and group_options("hydra/launcher") == ["slurm"]


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
    (["hydra.output_subdir=.hydra"], r"hydra.output_subdir cannot be set: sane-run writes each run's .hydra/"),
    (["threads=999999"], r"threads=999999 is invalid: must be at most this machine's \d+ CPUs"),
    (["optim.nesterov=true"], r"optim.nesterov=True is invalid: needs optim.momentum > 0"),
    (["hessian.subset=0"], r"hessian.subset=0 is invalid: must be an integer >= 1"),
    (["hessian.subset=5000"], r"hessian.subset=5000 is invalid: must be at most the training set size \(4000\)"),
    (["hessian.every=0"], r"hessian.every=0 is invalid: must be an integer >= 1"),
    (["hessian.prior_precision=-1"], r"hessian.prior_precision=-1 is invalid: must be a number > 0"),
    (["hessian=foo"], r"hessian='foo' is unknown; choose one of auto, block_band, block_diag, exact, lanczos, slq"),
    (["loss=hinge"], r"loss='hinge' is invalid: must be one of cross_entropy, mse"),
    (["device=tpu"], r"device='tpu' is invalid"),
    (["hessian.dtype=float16"], r"hessian.dtype='float16' is invalid"),
    (["hessian.reorth=partial"], r"hessian.reorth='partial' is invalid: must be one of none, selective, full"),
    (["optim=sgd", "optim.momentum=1.0"], r"optim.momentum=1.0 is invalid: must be in \[0, 1\)"),
    (["-m", "lr=0.1,0.2,-3"], r"optim.lr=-3 is invalid"),  # the last job of a sweep, caught before the first
    (
        ["model=custom", "model.factory=helpers:one_output_too_many"],
        r"model.factory=helpers:one_output_too_many gives outputs of shape \(2, 11\) for a batch of 2, not \(2, 10\)",
    ),
    (["model=custom", "model.factory=helpers:exits"], r"model.factory=helpers:exits failed .*: SystemExit: 3"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_values_are_rejected_before_work(argv, message):
    with pytest.raises(UsageError, match=message) as info:
        precheck(argv)
    assert "\n" not in str(info.value)


# checks of a model's and the data's sizes and of custom models, each for the last job of a sweep before the
# first runs: the message's start, as sane-run prints it after "sane-run: error: "
SIZED = [
    (["-m", "hessian.k=1,100000"], "hessian.k=100000 is invalid: must be at most the number"),
    (["-m", "lr=0.1,0.2", "optim=sgd", "optim.batch_size=5000"], "optim.batch_size=5000"),
    (["hessian=block_diag", "width=2000"], "hessian.method=block_diag needs about 358,039 GiB"),
    (["hessian=exact", "width=2000"], "hessian.method=exact needs about 376,468 GiB"),
    (["model=custom"], "model.factory=None is invalid: must be package.module:callable"),
    (
        ["model=custom", "model.factory=no_such_mod:f"],
        "model.factory=no_such_mod:f: cannot import",
    ),
    (
        ["model=custom", "model.factory=torch.nn:Identity"],
        "model.factory=torch.nn:Identity returned a module without trainable parameters",
    ),
    (
        ["model=custom", "model.factory=sane_cli.examples:residual_mlp", "model.kwargs={depth: 3}"],
        "model.factory=sane_cli.examples:residual_mlp failed with model.kwargs={'depth': 3}: TypeError",
    ),
    (
        ["model=custom", "model.factory=sane_cli.examples:residual_mlp", "hessian=block_diag"],
        "hessian.method='block_diag' is invalid: needs a model of layer blocks (mlp, cnn)",
    ),
    (["dataset.data_seed=abc"], "dataset.data_seed='abc' is invalid: must be an integer >= 0"),
    (["dataset.data_seed=2.5"], "dataset.data_seed=2.5 is invalid: must be an integer >= 0"),
    (["hessian.prior_precision=0"], "hessian.prior_precision=0 is invalid: must be a number > 0"),
    (["model=cnn", "model.bias=maybe"], "model.bias='maybe' is invalid: must be true or false"),
    pytest.param(
        ["-m", "device=cpu,cuda", "steps=10"],
        "device='cuda' is invalid: no CUDA device is available",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
]


@pytest.mark.parametrize("argv,message", SIZED)
def test_sizes_and_custom_models_are_checked_before_work(argv, message):
    with pytest.raises(UsageError) as info:
        precheck(argv)
    assert str(info.value).startswith(message) and "\n" not in str(info.value), str(info.value)


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


def test_every_registry_refuses_an_unknown_name_with_the_known_ones():
    """No fall-through: an optimiser, method, model, dataset or loss that is not registered is a one-line error
    naming the key and every known name, wherever the name is looked up (not SGD, SLQ or a KeyError)."""
    from types import SimpleNamespace

    from sane_cli.data import DATASETS, load_data
    from sane_cli.losses import LOSSES, loss_function
    from sane_cli.methods import METHODS
    from sane_cli.models import MODELS, build_model
    from sane_cli.optim import OPTIMISERS, build_optimizer, stability_threshold

    for registry, key in ((OPTIMISERS, "optim.name"), (METHODS, "hessian.method"), (MODELS, "model.name"),
                          (DATASETS, "dataset.name"), (LOSSES, "loss")):  # fmt: skip
        with pytest.raises(UsageError, match=rf"^{key}='nope' is unknown; choose one of {', '.join(registry)}$"):
            registry["nope"]
    with pytest.raises(UsageError, match="optim.name='rmsprop' is unknown"):
        build_optimizer([], SimpleNamespace(name="rmsprop"))
    with pytest.raises(UsageError, match="optim.name='rmsprop' is unknown"):
        stability_threshold(SimpleNamespace(name="rmsprop"))
    with pytest.raises(UsageError, match="model.name='vit' is unknown"):
        build_model(SimpleNamespace(name="vit"), (4,), 2)
    with pytest.raises(UsageError, match="dataset.name='imagenet' is unknown"):
        load_data(SimpleNamespace(name="imagenet"))
    with pytest.raises(UsageError, match="loss='hinge' is unknown"):
        loss_function("hinge", 3)


def test_a_model_and_an_optimiser_are_added_by_their_registry_entry_and_config_alone(tmp_path, monkeypatch):
    """The recipes in sane_cli.models and sane_cli.optim are true: a new model (a layered one, so the structured
    exact Hessian and the block methods apply) and a new optimiser, each registered in its group with its config
    (here through Hydra's ConfigStore instead of a yaml file), train and are measured with no other change."""
    import torch
    from hydra.core.config_store import ConfigStore
    from torch import nn

    from sane_cli import models, optim
    from sane_cli.records import load_run
    from sane_cli.training import train

    class Wide(models.MLP):  # an MLP whose hidden width is given as a multiple of its input's
        pass

    def build(cfg, shape, out_dim):
        return Wide(shape[0], out_dim, depth=int(cfg.depth), width=int(cfg.factor) * shape[0])

    def check(cfg):
        from sane_cli import checks

        checks.number(cfg, "model.factor", minimum=1, integer=True)

    def rms(params, cfg):
        return torch.optim.RMSprop(params, lr=float(cfg.lr), alpha=float(cfg.alpha))

    monkeypatch.setitem(models.MODELS, "wide", models.ModelSpec(Wide, build, check, ("depth", "factor")))
    monkeypatch.setitem(
        optim.OPTIMISERS, "rms", optim.OptimiserSpec(rms, lambda cfg: 2 / float(cfg.lr), lambda c: None)
    )
    store = ConfigStore.instance()
    for group, name in (("model", "wide"), ("optim", "rms")):  # taken out of the store again after the test
        monkeypatch.setitem(store.repo.setdefault(group, {}), f"{name}.yaml", None)
    store.store(group="model", name="wide", node={"name": "wide", "depth": "${depth}", "factor": 2,
                                                   "activation": "tanh", "bias": True})  # fmt: skip
    store.store(group="optim", name="rms", node={"name": "rms", "default_lr": 0.01, "lr": "${lr}", "alpha": 0.9,
                                                  "weight_decay": 0.0, "batch_size": None})  # fmt: skip
    from helpers import TINY

    def make_config(*overrides):  # the tiny run, without the MLP's width
        with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
            return compose("config", overrides=[o for o in TINY if not o.startswith("model.width")] + list(overrides))

    for method in ("exact", "block_band"):
        cfg = make_config("model=wide", "optim=rms", "lr=0.01", f"hessian={method}")
        train(cfg, tmp_path / method, progress=False)
        run = load_run(tmp_path / method)
        assert run.status == "completed" and run.hessian.n_params.iloc[0] == 6 * 12 + 12 + 12 * 3 + 3
        assert (run.hessian.stability_threshold == 2 / 0.01).all() and (run.hessian.method == method).all()
    with pytest.raises(UsageError, match="model.factor=0 is invalid"):
        validate(make_config("model=wide", "optim=rms", "model.factor=0"))
    assert isinstance(build(make_config("model=wide").model, (6,), 3)[0], nn.Linear)


PATH_KEYS = {"dataset.root", "dataset.cache_dir", "logger.dir"}  # any text is a path
SCOPES = ("dataset", "model", "optim", "hessian", "logger")  # the groups whose keys the test sets


def test_every_key_of_every_option_refuses_a_value_of_the_wrong_kind():
    """Each leaf key of the config, under every option of every group, set to text, -1 or nan (and an integer
    key to 2.5): refused by `validate` with a UsageError, before any work. Paths accept any text, and only
    text."""
    accepted, checked = [], set()
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        for group in SCOPES:
            for option in group_options(group):
                composed = compose("config", overrides=[f"{group}={option}", *REQUIRED.get(f"{group}={option}", [])])
                for key, default in _leaves(OmegaConf.to_container(composed, resolve=False)):
                    scope = key.split(".")[0] if key.split(".")[0] in SCOPES else ""
                    seen = (key, option if scope == group else "")  # a key of the group per option, others once
                    if key.startswith(("hydra.", "experiment")) or key == "resume" or seen in checked:
                        continue
                    checked.add(seen)
                    bad = [-1, float("nan")] + ([] if key in PATH_KEYS else ["abc"])
                    if isinstance(default, int) and not isinstance(default, bool):
                        bad.append(2.5)
                    for value in bad:
                        cfg = composed.copy()
                        OmegaConf.update(cfg, key, value)
                        try:
                            validate(cfg)
                            accepted.append(f"{option}: {key}={value}")
                        except UsageError:
                            pass
    assert accepted == []


def _leaves(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_a_linear_model_has_no_width():
    """depth=1 is a linear model: its width is recorded as null, so runs differing only in width are one."""
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        a, b = (validate(compose("config", overrides=["depth=1", f"width={w}"])) for w in (16, 32))
        deep = validate(compose("config", overrides=["depth=2", "width=32"]))
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b) and a.model.width is None and a.width is None
    assert deep.model.width == 32


def test_the_keys_that_change_nothing_are_listed_once():
    """records.NO_EFFECT is the one list of config keys that do not change what a run computes: Hydra's folder
    names leave out only keys of it (or Hydra's own), a resumed run may change only keys of it, and each of its
    keys is a key of the composed config under some dataset (none is stale)."""
    from sane_cli.records import MAY_DIFFER, NO_EFFECT, no_effect

    conf = OmegaConf.load(resources.files("sane_cli.conf") / "config.yaml")
    excluded = list(conf.hydra.job.config.override_dirname.exclude_keys)
    assert excluded and [k for k in excluded if not (k.startswith("hydra.") or no_effect(k))] == []
    assert [k for k in MAY_DIFFER if not no_effect(k)] == []
    assert no_effect("logger.dir") and no_effect("dataset.root") and not no_effect("dataset.n_train")
    assert not no_effect("loggers") and not no_effect("lr")  # a key below one, not one that starts alike
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        composed = [compose("config", overrides=[f"dataset={name}"]) for name in ("mnist1d", "mnist")]
    missing = [k for k in NO_EFFECT if not any(OmegaConf.select(c, k, default="<none>") != "<none>" for c in composed)]
    assert missing == []


def test_every_subpackage_is_installed():
    """pyproject.toml lists its packages by name: each folder of sane_cli with an __init__.py is among them (a
    non-editable install leaves out one that is not)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "sane_cli").rglob("__init__.py")}
    assert found - listed == set()


def test_the_cores_a_run_may_use_count_the_cgroup_quota(tmp_path, monkeypatch):
    """The default threads: the CPUs of the affinity, fewer where a cgroup quota (v2's cpu.max, v1's
    cfs_quota_us / cfs_period_us) allows less time than that; no quota, or none readable, changes nothing."""
    from sane_cli import devices

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert devices._cgroup_quota(str(v2)) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert devices._cgroup_quota(str(v2)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert devices._cgroup_quota(str(v1)) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert devices._cgroup_quota(str(v1)) is None and devices._cgroup_quota(str(tmp_path / "none")) is None
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(devices, "_cgroup_quota", lambda: 0.5)
    assert devices.usable_cores() == 1
    monkeypatch.setattr(devices, "_cgroup_quota", lambda: affinity + 7.0)
    assert devices.usable_cores() == affinity
