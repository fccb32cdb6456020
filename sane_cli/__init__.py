"""sane-run: train neural nets and log the Hessian spectrum, sharpness, N_eff and SANE per checkpoint.

Reproduces the studies of Wang & Roberts, "SANE: The phases of gradient descent through Sharpness Adjusted
Number of Effective parameters" (arXiv 2305.18490).

The Python API (sane_cli.api; imported on first use, so that ``import sane_cli`` stays light):
:func:`measure_curvature` (one checkpoint of a model on a dataset), :class:`CurvatureProbe` (a run folder written
from the caller's own training loop), :func:`hessian_config`, :func:`stability_threshold`, :class:`Curvature`.
"""

__version__ = "0.19.0"

__all__ = ["Curvature", "CurvatureProbe", "hessian_config", "measure_curvature", "stability_threshold"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sane_cli' has no attribute {name!r}")
