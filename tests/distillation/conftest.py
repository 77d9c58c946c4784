"""One torch thread per test: these tests run tiny models, for which thread synchronisation on a
shared machine costs more than it gives."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
