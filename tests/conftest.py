"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
from helpers import make_config

# tests that take ``device`` run on every device present: the CPU, and CUDA where a GPU is
# (benchmarks/gpu_check.sh runs the suite there)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def tiny_cfg():
    return make_config()
