"""``python -m sane_cli`` is ``sane-run`` (``torchrun --nproc_per_node N -m sane_cli ...`` starts a data-parallel
job)."""

from .cli import run_main

if __name__ == "__main__":
    run_main()
