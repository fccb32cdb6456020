"""sane-run: train neural nets and log the Hessian spectrum, sharpness, N_eff and SANE per checkpoint.

Reproduces the studies of Wang & Roberts, "SANE: The phases of gradient descent through Sharpness
Adjusted Number of Effective parameters" (arXiv 2305.18490).
"""

__version__ = "0.19.0"
