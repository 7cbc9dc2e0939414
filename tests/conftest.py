"""Shared fixtures: a deterministic seed for every test, and ``one_thread`` for files of tiny
training runs (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny recurrent models run fastest on one thread (and CI's two cores stay calm)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
