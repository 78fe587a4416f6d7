"""Shared fixtures of the model tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convs gain nothing from 2 threads, and OpenMP threads spin badly when the 2 cores
    # are shared with other work (measured: 1 s single-threaded vs 10-25 s with 2 threads).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
