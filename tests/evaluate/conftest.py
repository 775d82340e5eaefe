import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Batch-1 decoding of tiny models is all small ops: on a shared 2-core machine one thread
    is several times faster than two competing ones.  Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
