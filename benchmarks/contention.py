"""A run on a shared machine: the default run's wall time alone and beside a competing job, with OpenMP's idle
threads spinning as GNU OpenMP does by default (``GOMP_SPINCOUNT=300000``), spinning briefly then sleeping
(sane-run's default, 3,000), never spinning (``OMP_WAIT_POLICY=PASSIVE``), and with ``threads=1``.

The competing job is another process doing matrix products on as many threads as the cores this process may use
(a second run, another user's job on a shared node), with the runtime's default wait policy. Each run is a fresh
``sane-run`` in a scratch folder; prints the seconds and the ratios to the quiet default.

    python benchmarks/contention.py [sane-run overrides...]     (alone on the machine; about 7 minutes on 2 cores)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import torch
torch.set_num_threads({threads})
a = torch.randn(512, 512)
while True:
    for _ in range(20):
        b = a @ a
    torch.randn(1)  # a serial stretch between parallel regions, as a training loop has
"""


def timed(folder: Path, name: str, env: dict[str, str], extra: list[str]) -> float:
    start = time.perf_counter()
    clean = {k: v for k, v in os.environ.items() if "OMP" not in k}  # the case's own OpenMP settings only
    out = subprocess.run(["sane-run", *extra, f"hydra.run.dir={folder / name}"], env={**clean, **env},
                         capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{name} failed: {out.stderr.strip().splitlines()[-1]}")
    return seconds


def main(extra: list[str]) -> None:
    cores = len(os.sched_getaffinity(0))
    folder = Path(tempfile.mkdtemp(prefix="sane-contention-"))
    timed(folder, "warm", {}, ["steps=1"])  # the imports and the dataset's cache outside the timings
    runtime, ours, passive = {"GOMP_SPINCOUNT": "300000"}, {}, {"OMP_WAIT_POLICY": "PASSIVE"}
    cases = [("quiet, runtime's spin", runtime, [], False), ("quiet, sane-run default", ours, [], False),
             ("quiet, never spinning", passive, [], False), ("loaded, runtime's spin", runtime, [], True),
             ("loaded, sane-run default", ours, [], True), ("loaded, never spinning", passive, [], True),
             ("loaded, sane-run default, threads=1", ours, ["threads=1"], True)]  # fmt: skip
    rows = []
    for i, (name, env, more, loaded) in enumerate(cases):
        load = None
        if loaded:
            load = subprocess.Popen([sys.executable, "-c", LOAD.format(threads=cores)],
                                    env={k: v for k, v in os.environ.items() if "OMP" not in k})  # fmt: skip
            time.sleep(3)  # its threads up and busy
        try:
            rows.append((name, timed(folder, f"run{i}", env, [*extra, *more])))
        finally:
            if load is not None:
                load.kill()
                load.wait()
        print(f"{name:40s} {rows[-1][1]:7.1f} s", flush=True)
        shutil.rmtree(folder / f"run{i}")
    base = rows[1][1]
    print(f"\n{cores} cores; ratios to the quiet sane-run default ({base:.1f} s):")
    for name, seconds in rows:
        print(f"{name:40s} {seconds / base:5.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
