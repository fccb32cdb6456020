"""Shared fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_config


def pytest_configure(config):
    """Under pytest-xdist (the default: ``-n 2 --dist worksteal``, an idle worker taking tests queued for the
    other), each worker keeps to its own share of the cores, and so do the sane-run processes it starts (they take
    their threads from the cores they may use): two workers on 2 cores never wait on each other's threads."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if count <= len(cores):
        mine = set(cores[int(worker.removeprefix("gw")) :: count])
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(len(mine))


# tests that take ``device`` run on every device present: the CPU, and CUDA where a GPU is
# (benchmarks/gpu_check.sh runs the suite there)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def tiny_cfg():
    return make_config()
