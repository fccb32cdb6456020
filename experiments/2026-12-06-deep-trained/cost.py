"""The cost table: seconds and peak memory of one curvature checkpoint by each method on the final state of each
net (seed 0), each in a fresh process, so that a method's peak is its own. The peak is the process's peak resident
memory after a first checkpoint on the state minus its peak before it (after loading the model and data and a
checkpoint of a net of a few parameters, which takes the imports and first calls out of the figure); the seconds
are those of a second checkpoint on the same state.

Methods: exact, block_diag, block_band (band 1) and slq where the net's runs used them, and block_band on the
smallest net of width 48 too (its banded matrix is P x P like exact's: its cost beside the others).

Usage: python cost.py OUT.csv RUN_FOLDER...   (the study's run folders; seed 0's are measured)
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time

import numpy as np
import pandas as pd


def _job(folder: str, method: str, queue) -> None:
    import torch
    from omegaconf import OmegaConf

    from sane_cli.data import load_data
    from sane_cli.losses import loss_function
    from sane_cli.methods import measure
    from sane_cli.models import build_model
    from sane_cli.records import load_run, read_checkpoint

    torch.set_num_threads(2)
    cfg = OmegaConf.create(load_run(folder).config)
    data = load_data(cfg.dataset)
    model = build_model(cfg.model, data.input_shape, data.n_classes)
    model.load_state_dict(read_checkpoint(folder)["model"])
    loss_fn = loss_function(cfg.loss, data.n_classes)
    hcfg = OmegaConf.merge(cfg.hessian, {"method": method})
    # imports and first calls out of the figures, on a net of a few parameters (a warm-up on the net itself would
    # allocate its P x P matrix or Lanczos basis, which do not depend on the examples, before the baseline)
    tiny = build_model(OmegaConf.merge(cfg.model, {"depth": 2, "width": 2}), data.input_shape, data.n_classes)
    measure(tiny, loss_fn, data.x_train[:8], data.y_train[:8], OmegaConf.merge(hcfg, {"topk": 2, "probes": 2,
            "steps": 4, "max_iter": 4, "topk_vectors": 2}))  # fmt: skip
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    measure(model, loss_fn, data.x_train, data.y_train, hcfg)  # the peak: first call on the net
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()  # the seconds: a second call, with the first call's one-off work done
    row = measure(model, loss_fn, data.x_train, data.y_train, hcfg).row
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_mib": (peak - base) / 1024, "n_eff": row["n_eff"], "sane": row["sane"]})


def measured(folder: str, method: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_job, args=(folder, method, queue))
    p.start()
    try:
        out = queue.get(timeout=3600)
    except Exception:  # the child died (killed for memory) or hung: that method's cost is not measured
        p.kill()
        out = {"seconds": np.nan, "peak_mib": np.nan, "n_eff": np.nan, "sane": np.nan}
    p.join()
    return out


def main(out: str, folders: list[str]) -> None:
    from sane_cli.records import load_run

    nets: dict[tuple[int, int], dict[str, str]] = {}
    for folder in folders:
        cfg = load_run(folder).config
        if int(cfg["seed"]) == 0:
            nets.setdefault((cfg["model"]["depth"], cfg["model"]["width"]), {})[cfg["hessian"]["method"]] = folder
    smallest_wide = min((k for k in nets if k[1] == 48), default=None)
    rows = []
    for (depth, width), runs in sorted(nets.items()):
        methods = list(runs) + (["block_band"] if (depth, width) == smallest_wide else [])
        folder = next(iter(runs.values()))  # every method's run holds the same final state
        for method in dict.fromkeys(methods):
            r = measured(folder, method)
            n_params = int(load_run(folder).summary["n_params"])
            rows.append({"depth": depth, "width": width, "n_params": n_params, "method": method, **r})
            print(f"depth {depth} width {width} ({n_params} parameters) {method}: {r['seconds']:.1f} s, "
                  f"{r['peak_mib']:.0f} MiB", flush=True)  # fmt: skip
    pd.DataFrame(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
