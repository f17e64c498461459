"""Fixtures of the training layer's tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread only fights the other processes on this machine for a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
