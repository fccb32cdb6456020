"""The layout of a run folder: its files, their columns, the statuses a run can have, and the config keys that
the folder's readers rely on (sane_cli.records' writer, reader, resume and upgrade modules follow it).

A run folder holds::

    .hydra/                   config.yaml (as composed), hydra.yaml, overrides.yaml (written by Hydra)
    run.log                   the log of the run (written by Hydra's logging)
    metrics.csv               one row per logged step: step, epoch (passes over the training set),
                              train_loss, train_acc, test_loss, test_acc, lr (no timings, so that the
                              same config gives the same file)
    loss.csv                  one row per optimiser step: step, loss (the loss of the batch the step was
                              taken on, before the update; for spike detection)
    hessian.csv               one row per curvature checkpoint: step, lr, method (the one that ran),
                              dtype, reorth (slq's reorthogonalisation: none, selective or full; empty
                              for other methods), n_params, subset (examples the Hessian was taken on: the whole
                              training set unless hessian.subset is set), lambda_max, lambda_max_train
                              (the top eigenvalue of the whole training loss; = lambda_max without a
                              subset), lambda_min, trace, trace_se, n_negative (the eigenvalues below
                              -negative_below: exact methods' rounding, P eps max|l|; slq's resolution,
                              width / steps), n_negative_se, negative_below, n_eff, n_eff_se, n_eff_bound,
                              sane, sane_se, sane_bound (standard errors of estimates and bounds on SLQ's
                              quadrature error; 0 for exact values), log_evidence
                              (Laplace, exact method only; sane_cli.measures), weight_norm_sq (|theta|^2,
                              the squared norm of the parameters measured), alpha, rho, k,
                              eig_mode, preconditioned_sharpness (lambda_max(P^-1 H) of the training
                              loss under Adam's preconditioner P; empty for other optimisers and
                              before Adam's first step), stability_threshold (of the optimiser: 2/lr
                              for plain GD, 38/lr for Adam), sharpness_ratio (the sharpness the
                              optimiser meets over its threshold: lambda_max_train, or for Adam
                              preconditioned_sharpness, / stability_threshold), converged
                              (iterative methods), seconds, kind (scheduled, pre_spike: the state just
                              before a loss spike, post_spike)
    layers.csv                one row per layer per curvature checkpoint (hessian.layers): step, kind, layer
                              (1 = the input's), module (its name in the model), module_type, params, method
                              (exact, or slq / lanczos for a block too large for its exact build), lambda_max,
                              lambda_min, trace, trace_se, n_negative, n_negative_se, negative_below (as
                              hessian.csv's), n_eff, n_eff_se, sane (at the block's own
                              scale), sane_se, sane_net (at the whole net's scale), sane_net_se, converged: of
                              the diagonal block of the Hessian that belongs to the layer's parameters
                              (sane_cli.methods.layer_rows)
    spectra/step_<step>.npz   eigenvalues, descending: all of them (exact, block_*) or the top Ritz values
                              (lanczos, slq); eigenvectors (P, topk_vectors), as columns; slq_nodes and
                              slq_weights (probes, steps) for slq; layer_eigenvalues (each layer block's,
                              descending, one after the other) and layer_sizes, where every block was exact
    summary.json              status, final metrics, resolved config, versions, device, wall time
    checkpoint.pt             model and optimiser state at the latest curvature checkpoint (or the step a
                              signal stopped the run at), with all a resumed run needs: the step, the
                              bytes of each CSV written by then, the batch order and RNG states, the
                              spike detector's state (sane_cli.training._Training.state_dict)

Rows are appended and flushed as they are made and summary.json is rewritten atomically, so a run that
stops for any reason keeps everything it had logged; a resumed run cuts the CSVs back to the bytes its
checkpoint recorded and appends from there. The folder is locked (flock) while a run writes it.
"""

from __future__ import annotations

from typing import Any

METRICS_COLUMNS = ["step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]

# hessian.csv's columns in their order on disk, each with its part: what identifies the checkpoint (key), what
# it measured (value: the summary's final_<column> and the report's columns follow from these), the settings it
# was measured with (setting: hessian.alpha, .rho, .k, .eig_mode, echoed in each row), and how it ran (run). A new
# column is one line here, its part saying where it goes.
HESSIAN_PARTS = {
    "step": "key", "lr": "key", "method": "key", "dtype": "key", "reorth": "key", "n_params": "key",
    "subset": "key", "lambda_max": "value", "lambda_max_train": "value", "lambda_min": "value", "trace": "value",
    "trace_se": "value", "n_negative": "value", "n_negative_se": "value", "negative_below": "run", "n_eff": "value",
    "n_eff_se": "value", "n_eff_bound": "value",
    "sane": "value", "sane_se": "value", "sane_bound": "value", "log_evidence": "value", "weight_norm_sq": "value",
    "alpha": "setting", "rho": "setting", "k": "setting", "eig_mode": "setting", "preconditioned_sharpness": "value",
    "stability_threshold": "value", "sharpness_ratio": "value", "converged": "run", "seconds": "run",
    "kind": "key",
}  # fmt: skip
HESSIAN_COLUMNS = list(HESSIAN_PARTS)
SETTING_COLUMNS = [c for c, part in HESSIAN_PARTS.items() if part == "setting"]
VALUE_COLUMNS = [c for c, part in HESSIAN_PARTS.items() if part == "value"]

# a run's final curvature in summary.json (final_<column>): the values without their standard errors and bounds
FINAL_COLUMNS = [c for c in VALUE_COLUMNS if not c.endswith(("_se", "_bound"))]

LOSS_COLUMNS = ["step", "loss"]

# layers.csv: a checkpoint's step and kind, then what sane_cli.methods.layer_rows measures of each layer
LAYER_COLUMNS = [
    "step", "kind", "layer", "module", "module_type", "params", "method", "lambda_max", "lambda_min", "trace",
    "trace_se", "n_negative", "n_negative_se", "negative_below", "n_eff", "n_eff_se", "sane", "sane_se", "sane_net",
    "sane_net_se", "converged",
]  # fmt: skip
# the measures of a layer that are followed over training and averaged over seeds (the report's layer profiles,
# a tracker's scalars)
LAYER_MEASURES = ("lambda_max", "trace", "n_eff", "sane", "sane_net")
# columns of text (every other column of the CSVs holds numbers)
TEXT_COLUMNS = {"method", "dtype", "reorth", "eig_mode", "converged", "kind", "module", "module_type"}
CHECKPOINT_KINDS = ("scheduled", "pre_spike", "post_spike")

STATUSES = ("running", "completed", "converged", "diverged", "failed", "interrupted")

FINISHED = ("completed", "converged")  # ran to its end: all its steps, or its stop criterion

ENDED = (*FINISHED, "diverged")  # nothing left to run: a sweep started again skips them, resume= refuses them


# the config keys sane-report sorts, groups and labels runs by: the report's column, the key in a run's config,
# and what its value must be (null: absent); sane_cli.records.reader refuses a summary.json that breaks them
REPORT_KEYS = {
    "dataset": ("dataset.name", "a name"), "model": ("model.name", "a name"), "depth": ("model.depth", "an integer"),
    "width": ("model.width", "an integer"), "activation": ("model.activation", "a name"),
    "optim": ("optim.name", "a name"), "lr": ("optim.lr", "a number"), "batch_size": ("optim.batch_size", "an integer"),
    "momentum": ("optim.momentum", "a number"), "weight_decay": ("optim.weight_decay", "a number"),
    "loss": ("loss", "a name"), "steps": ("steps", "an integer"), "hessian": ("hessian.method", "a name"),
    "seed": ("seed", "an integer"),
}  # fmt: skip
# config keys (each with everything below it) that do not change what a run computes: where it runs, where its
# data's files come from, how it was started, what else it records or reports to. The report does not tell runs
# apart by them, and Hydra's folder names leave out only keys of this list (checked by the tests)
NO_EFFECT = ("threads", "device", "resume", "logger", "dataset.root", "dataset.cache_dir", "dataset.download",
             "dataset.mirror", "save_checkpoint", "hessian.layers")  # fmt: skip
# of them, the top-level keys a resumed run may change (the others fix what its folder holds: checkpoint.pt,
# layers.csv, the data it was checked against)
MAY_DIFFER = ("threads", "device", "resume", "logger")


def no_effect(key: str) -> bool:
    """Whether a dotted config key is one of NO_EFFECT or below one."""
    return any(key == k or key.startswith(k + ".") for k in NO_EFFECT)


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a plain config (None where it has none)."""
    for part in key.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config
