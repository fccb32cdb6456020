"""The study's figure and table from probe_bias.py's CSVs: SLQ's quadrature bias (estimate minus the same
probes' exact value) in standard errors against the Lanczos steps, for the Gauss rule (sane-run before 0.6)
and the averaged Gauss rule (0.6), with the bias bound; full reorthogonalisation, float32, seed means.

    python experiments/2026-11-29-slq-bias/figure.py OUT.png NAME=probe_bias.csv ...
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for net, d in frames.items():
        if "probes" not in d:  # written before the probes and deflation were varied: 8, deflated
            d = d.assign(probes=8, deflate=True)
        d = d.assign(
            averaged=(d.estimate - d.probe_truth) / d.se,
            gauss=(d.gauss - d.probe_truth) / d.se,
            bound_se=d.bound / d.se,
            sampling=(d.probe_truth - d.exact) / d.se,
            rel=(d.estimate - d.probe_truth) / d.exact,
        )
        g = d.groupby(["step", "quantity", "reorth", "steps", "probes", "deflate"])
        means = g[["gauss", "averaged", "bound_se", "rel", "sampling", "seconds"]].mean().reset_index()
        means["worst_averaged"] = g["averaged"].apply(lambda s: s.abs().max()).values
        rows.append(means.assign(net=net))
    return pd.concat(rows, ignore_index=True)


def main(out: str, pairs: list[str]) -> None:
    frames = {name: pd.read_csv(path) for name, path in (p.split("=", 1) for p in pairs)}
    t = table(frames)
    print(t.round(2).to_string(index=False))
    full = t[(t.reorth == "full") & (t.probes == 8) & t.deflate]
    panels = [(net, q) for net in frames for q in ("n_eff", "sane")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharey=True, squeeze=False)
    for ax, (net, q) in zip(axes[0], panels, strict=True):
        for step, style in zip(sorted(full.step.unique()), ("-", "--"), strict=False):
            d = full[(full.net == net) & (full.quantity == q) & (full.step == step)].sort_values("steps")
            ax.plot(d.steps, d.gauss, "o" + style, color="C3", label=f"Gauss rule, step {step}")
            ax.plot(d.steps, d.averaged, "s" + style, color="C0", label=f"averaged Gauss, step {step}")
            bound_style = ":" if step == 0 else "-."
            ax.plot(d.steps, d.bound_se, bound_style, color="C0", alpha=0.6, label=f"bias bound, step {step}")
        ax.axhspan(-1, 1, color="0.9", zorder=0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"{net}: {q.replace('_', ' ')}")
        ax.set_xlabel("Lanczos steps")
    axes[0][0].set_ylabel("quadrature bias / standard error")
    axes[0][0].set_ylim(-4, 10)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("SLQ's quadrature bias (8 probes, full reorthogonalisation, float32; mean of 3 seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    t.to_csv(out.rsplit(".", 1)[0] + ".csv", index=False, float_format="%.4g")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
