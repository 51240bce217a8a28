import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These tensors are tiny: one thread is faster, and on a busy 2-core machine OpenMP barriers between two
    threads cost ~20 ms per op (measured: 15x slower), so run single-threaded and restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
