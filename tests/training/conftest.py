"""Fixtures of the training layer's tests."""

import pytest
import torch

from abray.training.data import DataSplit, digits


@pytest.fixture(scope="module")
def small_digits():
    full = digits()
    # a quarter of the data keeps these tests fast; same shapes and classes
    idx = torch.arange(0, len(full.train), 4)
    tx, ty = full.train.tensors
    return DataSplit(train=torch.utils.data.TensorDataset(tx[idx], ty[idx]), test=full.test,
                     num_classes=10, input_shape=(1, 8, 8))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread only fights the other processes on this machine for a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
