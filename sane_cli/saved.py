"""``sane-measure``: one curvature checkpoint of a saved model into a run folder that ``sane-report`` reads.

    sane-measure outputs/runs/2026-12-07/10-15-40.016463             # a sane-run run (its checkpoint.pt) again,
    sane-measure outputs/runs/.../checkpoint.pt hessian=slq          #   by another method
    sane-measure weights.pt model=mlp depth=4 width=64 lr=0.1        # a state_dict, with the config of its model
    sane-measure weights.pt model=custom model.factory=mypkg.nets:build dataset=cifar10
    sane-measure net.ts dataset=fashion_mnist hessian.subset=2000    # a TorchScript file (torch.jit.save)

The model file is one of: a sane-run run folder or its ``checkpoint.pt`` (the model, its optimiser's state and
the config it was trained with, which the overrides change); a ``state_dict`` (``torch.save(model.state_dict())``)
of a model that the config describes (``model=...``, ``depth=``, ``width=``, or ``model.factory=`` for your own);
or a TorchScript file. The data, loss and ``hessian`` config are the run config's (conf/config.yaml, the same keys
as ``sane-run``'s). The sharpness is read against the optimiser's threshold where the optimiser is known: a
sane-run checkpoint's own (with Adam's preconditioner from its saved state), else the one the overrides name
(``optim=``, ``lr=``); without either the ratio is left empty.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import UsageError


def _kind(path: Path) -> str:
    """'torchscript' (a TorchScript archive), else 'state' (a state_dict or a sane-run checkpoint.pt, for
    torch.load).

    Raises:
        UsageError: the file is none of them.
    """
    if not path.is_file():
        raise UsageError(f"{path} is not a file; give a model file (a state_dict, a TorchScript file, a sane-run "
                         "checkpoint.pt) or a sane-run run folder")  # fmt: skip
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    return "state"


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e) and "Unsupported global" in str(e):
            raise UsageError(f"{path} holds pickled objects beyond tensors (a whole model, torch.save(model)?); save "
                             "model.state_dict(), or a TorchScript file (torch.jit.save)") from None  # fmt: skip
        raise UsageError(f"{path} is not a model file torch can read (a state_dict, a TorchScript file or a sane-run "
                         f"checkpoint.pt; torch.load: {type(e).__name__})") from None  # fmt: skip
    if not isinstance(state, dict) or not state:
        raise UsageError(f"{path} holds {type(state).__name__}, not a state_dict (a mapping of parameter names to "
                         "tensors) or a sane-run checkpoint")  # fmt: skip
    return state


GROUPS = ("dataset", "model", "optim", "hessian", "logger")
SHORTCUTS = {"lr": ("optim.lr",), "depth": ("model.depth",), "width": ("model.width",)}  # as conf/config.yaml's


def _compose(base: DictConfig | None, overrides: list[str]) -> DictConfig:
    """The run config: the packaged config composed with ``overrides``, or a checkpoint's config (``base``) with
    them applied in order (a group's choice, ``hessian=slq``, replaces that group by its defaults).

    Raises:
        UsageError: an override that is not one of the config's keys or values.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        GlobalHydra.instance().clear()
        with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
            if base is None:
                return compose("config", overrides=overrides)
            cfg = base.copy()
            OmegaConf.set_struct(cfg, True)
            groups = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
            for o in groups:  # as Hydra does: the groups' choices first, then the keys over them
                with open_dict(cfg):
                    cfg[o.split("=", 1)[0]] = compose("config", overrides=[o])[o.split("=", 1)[0]]
            for o in overrides:
                if o in groups:
                    continue
                key, value = o.split("=", 1)
                for dotted in (key, *SHORTCUTS.get(key, ())):  # lr=, depth=, width=: the keys they stand for too
                    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{dotted}={value}"]))
            return cfg
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UsageError(f"bad override: {str(e).splitlines()[0]} (the keys: sane-run --cfg job; a model of your "
                         "own: model=custom model.factory=module:function)") from None  # fmt: skip
    finally:
        GlobalHydra.instance().clear()


def measure_saved(model_path: str, overrides: list[str], out: str | None = None, step: int | None = None):
    """One checkpoint of the saved model at ``model_path`` into the run folder ``out``; the probe's Curvature."""
    from .api import CurvatureProbe
    from .config import validate
    from .data import load_data
    from .devices import resolve_device
    from .models import build_model
    from .optim import build_optimizer

    path = Path(model_path)
    if path.is_dir():
        if not (path / "checkpoint.pt").is_file():
            raise UsageError(f"{path} holds no checkpoint.pt; give a run folder of sane-run (save_checkpoint=true) "
                             "or a model file")  # fmt: skip
        path = path / "checkpoint.pt"
    kind = _kind(path)
    state = None if kind == "torchscript" else _load_state(path)
    checkpoint = isinstance(state, dict) and "resume" in state and "model" in state
    base = None
    if checkpoint:
        try:
            base = OmegaConf.create(json.loads(state["resume"]["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{path}: a sane-run checkpoint without a readable config ({e})") from None
    cfg = validate(_compose(base, overrides))
    device = resolve_device(cfg.device)
    dtype = torch.float64 if cfg.get("precision", "float32") == "float64" else torch.float32
    data = load_data(cfg.dataset)
    if kind == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated, in favour of torch.export
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise UsageError(
                f"{path} is not a TorchScript file torch can load: {str(e).splitlines()[0][:200]}"
            ) from None
        name = "torchscript"
    else:
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model, data.input_shape, data.n_classes).to(dtype)  # the weights in their precision
        weights = state["model"] if checkpoint else state
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise UsageError(f"{path} does not fit model={cfg.model.name} as configured ({first[:200]}); give the "
                             "model's config: model=, depth=, width=, or model.factory=") from None  # fmt: skip
        name = None
    with warnings.catch_warnings():  # a TorchScript module's .to() reads each parameter's .grad, and warns
        warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
        model = model.to(device, dtype)
    optimizer = None
    named = any(o.split("=", 1)[0] in ("lr", "optim") or o.startswith("optim.") for o in overrides)
    if checkpoint or named:
        optimizer = build_optimizer(model.parameters(), cfg.optim)
        if checkpoint and not named:
            optimizer.load_state_dict(state["optimizer"])
    if step is None:
        step = int(state["step"]) if checkpoint else 0
    config = OmegaConf.to_container(cfg, resolve=True)
    if name is not None:
        config["model"] = {"name": name}
    config["measured"] = {"file": str(path.resolve()), "kind": "checkpoint" if checkpoint else kind}
    if out is None:
        stamp = dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S.%f")
        out = f"outputs/measure/{stamp}"
    hcfg = OmegaConf.to_container(cfg.hessian, resolve=True)
    method = hcfg.pop("method")
    subset = hcfg.get("subset")
    x, y = data.x_train.to(device, dtype), data.y_train.to(device)
    test = (data.x_test.to(device, dtype), data.y_test.to(device))
    with CurvatureProbe(out, model, (x, y), loss=cfg.loss, method=method, hessian=hcfg, optimizer=optimizer,
                        test_data=test, subset=subset, classes=data.n_classes, config=config) as probe:  # fmt: skip
        probe.log_metrics(step)
        c = probe.measure(step)
    return probe.dir, c


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="sane-measure", description="One curvature checkpoint of a saved model into a run folder.",
        epilog="KEY=VALUE: sane-run's config keys (model=, depth=, width=, dataset=, loss=, hessian=, lr=, ...).",
    )  # fmt: skip
    parser.add_argument("model", help="a state_dict, a TorchScript file, or a sane-run run folder / checkpoint.pt")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("-o", "--out", help="the run folder to write (default outputs/measure/<date>/<time>)")
    parser.add_argument("--step", type=int, help="the step recorded (default: the checkpoint's, else 0)")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise UsageError(f"{bad[0]!r} is not KEY=VALUE; the model file comes first, then the config's overrides")
    folder, c = measure_saved(args.model, args.overrides, args.out, args.step)
    row = c.row
    print(
        f"step {row['step']}: lambda_max {c.lambda_max:.4g} (threshold {row['stability_threshold']:.4g}), N_eff "
        f"{c.n_eff:.4g}, SANE {c.sane:.4g}, trace {c.trace:.4g} [{row['method']}, {row['seconds']:.1f} s]"
    )
    print(f"wrote {folder}")
