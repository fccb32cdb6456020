"""Shared fixtures."""

from __future__ import annotations

import pytest
from helpers import make_config


@pytest.fixture
def tiny_cfg():
    return make_config()
