"""Shared fixtures: deterministic seeds and a single torch thread pool size."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
