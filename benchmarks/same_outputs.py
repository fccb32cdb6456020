"""Whether two sets of reference runs (benchmarks/same_outputs.sh) hold the same outputs.

Every file under A against B's: byte-identical, or else the same but for what differs from run to run by design:
the folder's own path (A's root read as B's), the folder sane-run was started in, the executable's path in
summary.json's command, timings (hessian.csv's ``seconds``, summary.json's ``wall_seconds`` and ``started``,
checkpoint.pt's copy of the last row), the CSV sizes a checkpoint records (they hold the timings' text), when a
signal stopped the resumed run, NaN against NaN; logs are not compared. Prints each file that differs and a count;
exits 1 if any does.

Usage: python benchmarks/same_outputs.py A B    (then A-report against B-report)
"""

from __future__ import annotations

import filecmp
import json
import re
import sys
from pathlib import Path

import pandas as pd
import torch

SKIP = {"seconds", "wall_seconds", "started", "finished", "sizes", "resumed"}


def compare(a_root: Path, b_root: Path) -> int:
    roots = sorted({str(a_root), str(b_root), str(a_root).removesuffix("-report"), str(b_root).removesuffix("-report")},
                   key=len, reverse=True)  # fmt: skip

    def unroot(text: str) -> str:
        for root in roots:
            text = text.replace(root, "ROOT")
        return text

    def norm(x):
        if isinstance(x, dict):
            return {k: norm(v[1:] if k == "command" else v) for k, v in x.items() if k not in SKIP}
        if isinstance(x, list | tuple):
            return [norm(v) for v in x]
        if isinstance(x, str):
            x = unroot(x)
            if x[:1] in "{[":
                try:
                    return norm(json.loads(x))
                except ValueError:
                    pass
            return x
        if isinstance(x, float) and x != x:
            return "nan"
        if torch.is_tensor(x):
            return (x.dtype, tuple(x.shape), x.numpy().tobytes())
        return x

    same = alike = differ = 0
    for fa in sorted(p for p in a_root.rglob("*") if p.is_file()):
        rel = fa.relative_to(a_root)
        fb = b_root / rel
        if not fb.exists():
            print(f"only in {a_root}: {rel}")
            differ += 1
            continue
        if filecmp.cmp(fa, fb, shallow=False):
            same += 1
            continue
        if fa.suffix in (".log", ".out"):
            continue
        if fa.suffix == ".csv":
            a, b = pd.read_csv(fa), pd.read_csv(fb)
            bad = list(a.columns) != list(b.columns) or [
                c for c in a.columns if c not in SKIP and not a[c].map(norm).equals(b[c].map(norm))
            ]
        elif fa.suffix == ".pt":
            bad = norm(torch.load(fa, weights_only=True)) != norm(torch.load(fb, weights_only=True))
        elif fa.suffix == ".json":
            bad = norm(json.loads(fa.read_text())) != norm(json.loads(fb.read_text()))
        elif fa.suffix in (".yaml", ".html"):
            ta, tb = (re.sub(r"(?m)^\s*cwd: .*$", "", unroot(f.read_text())) for f in (fa, fb))  # where it was started
            if fa.suffix == ".html":  # the time it was written
                ta, tb = (re.sub(r"Written [0-9-]+ [0-9:]+", "", t) for t in (ta, tb))
            bad = ta != tb
        else:
            bad = True
        if bad:
            print(f"differs: {rel}" + (f" (columns {bad})" if isinstance(bad, list) else ""))
            differ += 1
        else:
            alike += 1
    for fb in sorted(p for p in b_root.rglob("*") if p.is_file()):
        if not (a_root / fb.relative_to(b_root)).exists():
            print(f"only in {b_root}: {fb.relative_to(b_root)}")
            differ += 1
    print(f"{a_root} vs {b_root}: {same} byte-identical, {alike} the same but for paths and timings, {differ} differ")
    return differ


if __name__ == "__main__":
    a, b = (Path(p).resolve() for p in sys.argv[1:3])
    bad = compare(a, b) + compare(Path(f"{a}-report"), Path(f"{b}-report"))
    sys.exit(1 if bad else 0)
